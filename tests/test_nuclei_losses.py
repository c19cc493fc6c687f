"""Targets (bcpath.nuclei.targets) and losses (bcpath.nuclei.losses), with hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from bcpath.errors import BcpathError
from bcpath.nuclei.losses import combined_loss, soft_dice_loss, weighted_cross_entropy
from bcpath.nuclei.metrics import aji
from bcpath.nuclei.targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    class_balance_weights,
    encode_targets,
    instances_from_probabilities,
    unet_weight_map,
)


def _touching_squares() -> np.ndarray:
    """Two 10×10 squares sharing an edge: label 1 at cols 10..19, label 2 at cols 20..29."""
    labels = np.zeros((32, 40), dtype=np.int32)
    labels[10:20, 10:20] = 1
    labels[10:20, 20:30] = 2
    return labels


def _one_hot(target: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float64)[target].transpose(2, 0, 1)


# --- targets ---------------------------------------------------------------------------------


def test_touching_squares_get_a_boundary_line_between_them():
    labels = _touching_squares()
    target = encode_targets(labels, boundary_px=2)
    # 2 px band on each side of the shared edge: cols 18, 19 (square 1) and 20, 21 (square 2).
    assert (target[10:20, 18:22] == BOUNDARY).all()
    # Interiors: 6×6 per square, separated by those 4 columns.
    assert (target[12:18, 12:18] == INTERIOR).all() and (target[12:18, 22:28] == INTERIOR).all()
    assert (target == INTERIOR).sum() == 2 * 36
    assert (target == BOUNDARY).sum() == 2 * 64
    assert (target[labels == 0] == BACKGROUND).all()
    # No interior pixel of one square touches one of the other, even diagonally.
    interior = target == INTERIOR
    grown = ndi.binary_dilation(interior & (labels == 1), structure=np.ones((3, 3), dtype=bool))
    assert not (grown & interior & (labels == 2)).any()


def test_instances_recovered_from_one_hot_target():
    labels = _touching_squares()
    pred = instances_from_probabilities(_one_hot(encode_targets(labels)), min_area_px=10)
    assert pred.dtype == np.int32 and pred.max() == 2
    assert aji(labels, pred) == 1.0


def test_thin_nucleus_keeps_a_seed():
    labels = np.zeros((16, 16), dtype=np.int32)
    labels[5:8, 3:13] = 1  # 3 px thick: all boundary with boundary_px=2
    target = encode_targets(labels)
    assert (target == INTERIOR).sum() > 0
    assert set(np.unique(labels[target == INTERIOR])) == {1}
    pred = instances_from_probabilities(_one_hot(target), min_area_px=1)
    assert aji(labels, pred) == 1.0


def test_instances_drop_small_interiors_and_empty_input():
    probs = np.zeros((3, 20, 20))
    probs[0] = 1.0
    assert instances_from_probabilities(probs).max() == 0
    probs[:, 5:7, 5:7] = [[[0.0]], [[1.0]], [[0.0]]]  # 4 px interior
    assert instances_from_probabilities(probs, min_area_px=5).max() == 0
    assert instances_from_probabilities(probs, min_area_px=4).max() == 1
    with pytest.raises(BcpathError, match=r"\(3, H, W\)"):
        instances_from_probabilities(probs[:2])


def test_class_balance_weights_by_hand():
    target = np.array([[0, 0, 0], [0, 1, 2]])
    # 6 pixels, 3 classes present: 6 / (3 · (4, 1, 1)).
    np.testing.assert_allclose(class_balance_weights(target), [0.5, 2.0, 2.0])
    np.testing.assert_allclose(class_balance_weights(np.zeros((2, 2), dtype=int)), [1.0, 0.0, 0.0])


def test_weight_map_peaks_in_the_gap_and_decays():
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[10:20, 5:15] = 1
    labels[10:20, 16:26] = 2  # 1 px gap at col 15
    weights = unet_weight_map(labels, w0=10.0, sigma=5.0, boundary_px=2)
    # Classes: 2 × (36 interior + 64 boundary) px, 1024 - 200 = 824 background; K = 3.
    w_background = 1024 / (3 * 824)
    # Gap pixels: d1 = d2 = 1 px, so the gap term is 10 · exp(-(1 + 1)² / (2 · 5²)) = 10 · e^{-0.08}.
    expected_gap = w_background + 10 * math.exp(-0.08)
    np.testing.assert_allclose(weights[10:20, 15], expected_gap, rtol=1e-6)
    assert expected_gap == pytest.approx(9.6454, abs=1e-4)
    background = labels == 0
    assert weights[background].max() == pytest.approx(expected_gap, rel=1e-6)
    # Up the gap column, away from the squares, the weight decays monotonically.
    above = weights[:10, 15][::-1]  # rows 9, 8, ..., 0
    assert (np.diff(np.concatenate([[expected_gap], above])) < 0).all()
    # Row 9, col 15: d1 = d2 = sqrt(2) (diagonal neighbours of both squares).
    np.testing.assert_allclose(weights[9, 15], w_background + 10 * math.exp(-((2 * math.sqrt(2)) ** 2) / 50), rtol=1e-6)
    # Nucleus pixels carry only their class weight.
    np.testing.assert_allclose(weights[12:18, 7:13], 1024 / (3 * 72), rtol=1e-6)
    np.testing.assert_allclose(weights[10, 5:15], 1024 / (3 * 128), rtol=1e-6)


def test_weight_map_single_nucleus_has_no_gap_term():
    labels = np.zeros((16, 16), dtype=np.int32)
    labels[4:10, 4:10] = 7
    weights = unet_weight_map(labels)
    np.testing.assert_allclose(weights, class_balance_weights(encode_targets(labels))[encode_targets(labels)], rtol=1e-6)


# --- losses ----------------------------------------------------------------------------------


def test_weighted_ce_with_uniform_weights_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    expected = F.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, torch.ones(2, 4, 5)), expected)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), expected)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, torch.full((2, 4, 5), 3.0)), 3 * expected)


def test_weighted_ce_by_hand():
    logits = torch.zeros(1, 2, 1, 2)  # p = 1/2 everywhere: CE = log 2 per pixel
    target = torch.tensor([[[0, 1]]])
    weights = torch.tensor([[[1.0, 3.0]]])
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weights), torch.tensor(2 * math.log(2)))


def test_dice_zero_for_perfect_logits():
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    logits = 50.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


def test_dice_by_hand_2x2():
    # Zero logits: p = 1/3 for every class at each of the 4 pixels.
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([[[1, 1], [2, 0]]])
    # class 1: Σpg = 2/3, Σp = 4/3, Σg = 2 → (4/3 + 1) / (4/3 + 2 + 1) = 7/13
    # class 2: Σpg = 1/3, Σp = 4/3, Σg = 1 → (2/3 + 1) / (4/3 + 1 + 1) = 1/2
    expected = 1 - (7 / 13 + 1 / 2) / 2  # = 25/52
    assert float(soft_dice_loss(logits, target, eps=1.0)) == pytest.approx(25 / 52, rel=1e-6)
    assert expected == pytest.approx(25 / 52)


def test_combined_loss_is_the_sum():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    weights = torch.rand(1, 4, 4) + 0.5
    total = combined_loss(logits, target, weights)
    torch.testing.assert_close(total, weighted_cross_entropy(logits, target, weights) + soft_dice_loss(logits, target))
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_loss_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        weighted_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        soft_dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int32))
