"""Nuclei metrics fall monotonically as a prediction is shifted away from the ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from bcpath.nuclei.metrics import evaluate


def _separated_discs(rng: np.random.Generator) -> np.ndarray:
    """Discs of random radius (3.5-7 px) centred on a 30 px grid."""
    labels = np.zeros((150, 150), dtype=np.int32)
    yy, xx = np.mgrid[0:150, 0:150]
    ids = rng.permutation(25) + 1
    for k, (cy, cx) in enumerate((15 + 30 * i, 15 + 30 * j) for i in range(5) for j in range(5)):
        radius = rng.uniform(3.5, 7.0)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = ids[k]
    return labels


def _shift(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate without wrap-around (pixels shifted in are background)."""
    out = np.zeros_like(labels)
    h, w = labels.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = labels[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize(("seed", "direction"), [(0, (0, 1)), (1, (1, 0)), (2, (1, 1))])
def test_scores_fall_as_prediction_shifts(seed, direction):
    gt = _separated_discs(np.random.default_rng(seed))
    scores = [
        evaluate(gt, _shift(gt, step * direction[0], step * direction[1])) for step in range(8)
    ]
    assert scores[0]["aji"] == scores[0]["map"] == 1.0
    for key in ("aji", "aji_plus", "map", "dice", "f1_50"):
        values = [s[key] for s in scores]
        assert np.all(np.diff(values) <= 1e-12), (key, values)
        assert values[-1] < values[0], (key, values)
    aji = [s["aji"] for s in scores]
    assert np.all(np.diff(aji) < 0), aji  # every pixel of shift costs AJI
    # Separated discs: each GT meets only its own shifted copy, so AJI == AJI+.
    assert [s["aji_plus"] for s in scores] == pytest.approx(aji)
    # A shift of half the grid (15 px > two radii) leaves every disc between its neighbours.
    far = evaluate(gt, _shift(gt, 15 * direction[0], 15 * direction[1]))
    assert far["aji"] == far["map"] == far["dice"] == 0.0
