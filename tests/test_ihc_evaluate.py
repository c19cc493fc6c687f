"""Point matching, DeepLIIF ground truth and cell metrics (bcpath.ihc.evaluate)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bcpath.ihc.evaluate import (
    cell_metrics,
    estimate_mask_shift,
    first_panel,
    ground_truth_cells,
    load_deepliif,
    match_points,
    pool_metrics,
)


def _pairs(a):
    return sorted(map(tuple, np.asarray(a).tolist()))


def test_match_points_is_one_to_one_within_radius():
    pred = [[0, 0], [10, 0], [50, 50]]
    gt = [[1, 0], [9, 0], [12, 0], [80, 80]]
    pairs = match_points(pred, gt, radius=3)
    assert _pairs(pairs) == [(0, 0), (1, 1)]  # closest partners; (12, 0) left over, 50/80 too far
    # Inclusive radius: 5.0 matches at radius 5, 5.0001 does not.
    assert len(match_points([[0, 0]], [[3, 4]], 5.0)) == 1
    assert len(match_points([[0, 0]], [[3, 4.0001]], 5.0)) == 0
    # Coincident points and empty inputs.
    assert _pairs(match_points([[5, 5]], [[5, 5]], 1)) == [(0, 0)]
    assert match_points(np.zeros((0, 2)), gt).shape == (0, 2)
    assert match_points(pred, []).shape == (0, 2)


def test_hungarian_matches_more_than_greedy():
    # Greedy gives gt 0 to pred 0 (distance 3) and leaves pred 1 unmatched; the optimal
    # assignment pairs pred 0 with gt 1 (4) and pred 1 with gt 0 (3.5).
    pred = [[0, 0], [6.5, 0]]
    gt = [[3, 0], [-4, 0]]
    assert _pairs(match_points(pred, gt, 5, method="greedy")) == [(0, 0)]
    assert _pairs(match_points(pred, gt, 5)) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="matching method"):
        match_points(pred, gt, 5, method="nearest")


def test_hungarian_minimises_distance_among_maximal_matchings():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(15)), axis=-1).reshape(-1, 2) * 20.0
    gt = grid + rng.uniform(-3, 3, grid.shape)  # 300 points at least 14 px apart
    pred = gt + rng.uniform(-2, 2, gt.shape)  # each within 3 px of its own partner
    # Radius 16 > 14 - 3: most points have several candidates; the own partners give the
    # smallest sum (any other pair is >= 11 px long).
    pairs = match_points(pred[::-1], gt, radius=16)
    # Every point finds its own partner again (indices reversed by the flip).
    assert len(pairs) == 300
    assert np.array_equal(pairs[:, 1], 299 - pairs[:, 0])
    # Each index at most once.
    assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))
    # Two matchings of equal size: the shorter one (sum 2, not 8) wins.
    assert _pairs(match_points([[0, 0], [4, 0]], [[1, 0], [5, 0]], 5)) == [(0, 0), (1, 1)]


def _draw_mask(cells, size=128):
    """DeepLIIF-style mask: filled discs (red positive / blue negative) with a green rim."""
    mask = np.zeros((size, size, 3), np.uint8)
    for x, y, r, pos in cells:
        cv2.circle(mask, (x, y), r, (255, 0, 0) if pos else (0, 0, 255), -1)
        cv2.circle(mask, (x, y), r, (0, 255, 0), 1)
    return mask


def test_ground_truth_cells_from_a_synthetic_mask():
    cells = [(20, 20, 8, True), (60, 20, 8, False), (75, 20, 8, False), (100, 100, 10, True)]
    mask = _draw_mask(cells)
    mask[5, 120] = (255, 0, 0)  # one stray pixel: below min_area_px
    gt = ground_truth_cells(mask)
    assert len(gt["xy"]) == 4  # the green rim keeps the two touching negatives apart
    order = np.lexsort((gt["xy"][:, 1], gt["xy"][:, 0]))
    np.testing.assert_allclose(gt["xy"][order], [[20, 20], [60, 20], [75, 20], [100, 100]], atol=0.6)
    assert gt["positive"][order].tolist() == [True, False, False, True]
    assert gt["area_px"].dtype.kind == "i" and np.all(gt["area_px"] > 100)
    empty = ground_truth_cells(np.zeros((16, 16, 3), np.uint8))
    assert empty["xy"].shape == (0, 2) and empty["positive"].size == 0


def test_cell_metrics_on_a_hand_made_case():
    gt_xy = np.array([[10, 10], [30, 10], [50, 10], [70, 10]])
    gt_pos = np.array([True, True, False, False])
    # 3 detections near gt 0, 1, 2 (one positive call wrong), 2 false positives far away.
    pred_xy = np.array([[11, 10], [30, 12], [50, 9], [200, 200], [300, 300]])
    pred_pos = np.array([True, False, False, True, False])
    m = cell_metrics(pred_xy, pred_pos, gt_xy, gt_pos, radius=5)
    assert (m.n_pred, m.n_gt, m.n_matched) == (5, 4, 3)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 3 / 9)
    assert m.accuracy == pytest.approx(2 / 3)  # gt0 correct, gt1 missed, gt2 correct
    assert m.sensitivity == pytest.approx(1 / 2)
    assert m.specificity == pytest.approx(1.0)
    assert m.percent_positive_pred == pytest.approx(40.0)
    assert m.percent_positive_gt == pytest.approx(50.0)
    assert m.percent_positive_abs_error == pytest.approx(10.0)
    assert m.as_dict()["f1"] == round(2 / 3, 4)
    with pytest.raises(ValueError, match="positive flags"):
        cell_metrics(pred_xy, pred_pos[:3], gt_xy, gt_pos)


def test_pool_metrics_counts_cells_not_images():
    a = (np.array([[0, 0]]), np.array([True]), np.array([[0, 0]]), np.array([True]))
    b = (np.zeros((0, 2)), np.zeros(0, bool), np.array([[5, 5], [9, 9], [30, 30]]), np.array([False, False, False]))
    m = pool_metrics([a, b], radius=2)
    assert (m.n_pred, m.n_gt, m.n_matched) == (1, 4, 1)
    assert m.recall == pytest.approx(0.25) and m.precision == pytest.approx(1.0)
    assert m.percent_positive_gt == pytest.approx(25.0)
    assert np.isnan(cell_metrics(np.zeros((0, 2)), [], np.zeros((0, 2)), []).f1)


def test_mask_shift_is_recovered():
    rng = np.random.default_rng(1)
    cells = [(int(x), int(y), 7, bool(p)) for x, y, p in zip(rng.integers(15, 240, 40), rng.integers(15, 240, 40), rng.integers(0, 2, 40), strict=True)]
    mask = _draw_mask(cells, size=256)
    # An "IHC image": the same cells, dark on white, 5 px right and 3 px up of the mask.
    fg = ((mask[..., 0] > 127) | (mask[..., 2] > 127)).astype(np.uint8)
    img = np.where(np.roll(fg, (-3, 5), axis=(0, 1))[..., None] > 0, np.uint8(90), np.uint8(240)).repeat(3, axis=-1)
    assert estimate_mask_shift(img, mask) == (5, -3)


def test_deepliif_files_and_counts(require_shared):
    root = require_shared("ihc/deepliif_ki67")
    test, val = load_deepliif(root, "test"), load_deepliif(root, "val")
    assert [t.name for t in test] == ["22_2", "6_2"] and [t.name for t in val] == ["Bladder1", "Lung1"]
    for t in test + val:
        assert t.rgb.shape == t.mask.shape == (512, 512, 3) and t.rgb.dtype == np.uint8
    # The val mask panel reproduces the published counts (positives exactly).
    for t in val:
        gt = ground_truth_cells(t.mask)
        assert int(gt["positive"].sum()) == t.counts["num_pos"]
        assert abs(len(gt["xy"]) - t.counts["num_pos"] - t.counts["num_neg"]) <= 2
    # The val masks sit 6-7 px off their IHC images; the test masks are registered.
    shifts = {t.name: estimate_mask_shift(t.rgb, t.mask) for t in test + val}
    assert shifts["Bladder1"] == pytest.approx((6, 1), abs=1)
    assert shifts["Lung1"] == pytest.approx((0, -7), abs=1)
    assert max(map(abs, shifts["22_2"] + shifts["6_2"])) <= 1
    assert first_panel(np.zeros((4, 24, 3), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="split"):
        load_deepliif(root, "train")
