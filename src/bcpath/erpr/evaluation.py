"""Evaluation of the ER/PR/HER2 system: AUC with bootstrap CIs, patch labels, ROC figures.

Gamble et al. 2021 report one-vs-all patch AUC of the biomarker-positive class over annotated
patches and slide-level AUC of the stage-2 score, each with a 95 % confidence interval from
1,000 bootstrap resamples. Here:

- :func:`auc_with_ci` resamples the scored items (patches or slides) with replacement;
  resamples that hold a single class (AUC undefined) are drawn again up to a bound and
  counted; the CI is the percentile interval of the remaining AUCs. Deterministic per seed.
- :func:`label_patches` gives each predicted patch the class of the annotated region its
  centre lies in (``LABEL_ORDER`` index; −1 when unlabelled), the same labelling the training
  sampler uses.
- :func:`roc_png` draws ROC curves (matplotlib, Agg backend) to a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bcpath.erpr.sampling import LABEL_ORDER

UNLABELLED = -1
"""Patch label of a patch whose centre lies in no labelled region."""


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN when only one
    class is present.

    Args:
        labels: (N,) 0/1 (1 = positive).
        scores: (N,) higher = more likely positive.
    """
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_with_ci(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC and its percentile bootstrap confidence interval.

    Args:
        labels: (N,) 0/1 (1 = positive).
        scores: (N,) scores.
        n_resamples: bootstrap resamples with both classes (the paper: 1,000).
        confidence: CI level (0.95 = 2.5th to 97.5th percentile).
        seed: numpy seed of the resampling.

    Returns:
        {"auc", "ci_low", "ci_high", "n", "n_positive", "n_negative", "n_resamples",
        "n_redrawn"}: AUC and CI bounds are NaN (null after :func:`bcpath.io.json_ready`) when a
        class is missing; ``n_redrawn`` counts single-class resamples that were drawn again.
    """
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    result: dict[str, Any] = {
        "auc": auc(y, s),
        "ci_low": math.nan,
        "ci_high": math.nan,
        "confidence": confidence,
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "n_resamples": 0,
        "n_redrawn": 0,
    }
    if math.isnan(result["auc"]) or n_resamples <= 0:
        return result
    rng = np.random.default_rng(seed)
    values: list[float] = []
    redrawn = 0
    max_draws = 20 * n_resamples
    draws = 0
    while len(values) < n_resamples and draws < max_draws:
        batch = rng.integers(0, y.size, size=(min(n_resamples, max_draws - draws), y.size))
        draws += len(batch)
        for index in batch:
            value = auc(y[index], s[index])
            if math.isnan(value):
                redrawn += 1
                continue
            values.append(value)
            if len(values) == n_resamples:
                break
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values), [tail, 1.0 - tail])
    result.update(ci_low=float(low), ci_high=float(high), n_resamples=len(values), n_redrawn=redrawn)
    return result


def label_patches(
    features: Sequence[dict[str, Any]],
    biomarker: str,
    x0: npt.ArrayLike,
    y0: npt.ArrayLike,
    patch_level0_px: float,
) -> npt.NDArray[np.int64]:
    """Class of the annotated region under each patch centre.

    Args:
        features: QuPath GeoJSON features of the slide (region annotations).
        biomarker: "ER", "PR" or "HER2" (which tumor classes count, see
            :func:`bcpath.labels.region_label`).
        x0, y0: (N,) level-0 px of the patches' top-left corners.
        patch_level0_px: patch side in level-0 px.

    Returns:
        (N,) int64: ``LABEL_ORDER`` index (0 positive tumor, 1 negative tumor, 2 non-tumor) or
        :data:`UNLABELLED`. Where regions of two classes overlap, the lower index wins.
    """
    import shapely

    from bcpath.erpr.sampling import _class_geometries

    cx = np.asarray(x0, dtype=np.float64) + patch_level0_px / 2.0
    cy = np.asarray(y0, dtype=np.float64) + patch_level0_px / 2.0
    labels = np.full(cx.shape, UNLABELLED, dtype=np.int64)
    for index, geometry in reversed(list(enumerate(_class_geometries(features, biomarker, LABEL_ORDER)))):
        if geometry is not None and cx.size:
            labels[shapely.contains_xy(geometry, cx, cy)] = index
    return labels


def roc_points(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of the ROC curve, from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(np.int64), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def roc_png(path: str | os.PathLike[str], title: str, curves: Sequence[tuple[str, Any, Any]]) -> None:
    """Draw ROC curves to a PNG, atomically.

    Args:
        path: the PNG to write.
        title: figure title.
        curves: (legend label, labels, scores) per curve; curves with one class are listed in
            the legend as "undefined" and not drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bcpath.io import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, labels, scores in curves:
        value = auc(labels, scores)
        if math.isnan(value):
            ax.plot([], [], label=f"{name}: AUC undefined (one class)")
            continue
        fpr, tpr = roc_points(labels, scores)
        ax.plot(fpr, tpr, linewidth=2, label=f"{name}: AUC {value:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
