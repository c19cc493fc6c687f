"""Instance-segmentation metrics for nuclei, as used by Lagree et al. 2021 (Sci Rep 11:8025).

All functions take ``(gt, pred)``: 2-D (or N-D) non-negative integer label images of the same
shape, 0 = background, any other value = one instance. Label values need not be consecutive,
and every metric is invariant to relabelling either image (up to exact IoU ties in AJI, which
are broken towards the lower prediction label).

- :func:`aji`: Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI 36(7)). Each ground-truth
  nucleus is paired with the predicted nucleus of highest IoU (a prediction may serve several
  ground-truth nuclei, as in the paper); C = sum of intersections, U = sum of unions + areas of
  predictions never paired; AJI = C / U.
- :func:`aji_plus`: AJI+ (Graham et al. 2019, HoVer-Net), with one-to-one pairing.
- :func:`mean_average_precision`: the Data Science Bowl 2018 definition used by Lagree et al.:
  for t in 0.50, 0.55, ..., 0.95, TP(t)/(TP(t)+FP(t)+FN(t)) with one-to-one matches at IoU > t,
  averaged over t.
- :func:`object_scores`: detection precision / recall / F1 at one IoU threshold (0.5 default);
  Lagree et al. Table 2 reports them at IoU 0.5 and 0.7.
- :func:`panoptic_quality`: PQ = SQ × DQ (Kirillov et al. 2019, CVPR), matches at IoU > 0.5
  (unique); SQ = mean IoU of the matches, DQ = TP / (TP + FP/2 + FN/2) (= F1 at IoU 0.5).
- :func:`pixel_dice`: Dice of the foreground masks.

Conventions when both images are empty: every score is 1.0 (nothing to find, nothing found).
When exactly one is empty, every score is 0.0. When both hold nuclei but nothing matches, PQ,
DQ and F1 are 0.0, and SQ (a mean over no matches) is defined as 0.0 too.

The overlap of every (gt, pred) label pair is computed in one pass: labels are compressed to
0..n, and a contingency table is counted with ``np.bincount`` over the pair index (or with
``np.unique`` on the overlapping pixels when the dense table would be too large), so no Python
loop runs over pixels or pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Overlap",
    "aji",
    "aji_components",
    "aji_plus",
    "evaluate",
    "mean_average_precision",
    "object_scores",
    "overlap",
    "panoptic_quality",
    "pixel_dice",
]

MAP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_DENSE_LIMIT = 1 << 24  # cells of the dense contingency table before switching to np.unique


@dataclass(frozen=True)
class Overlap:
    """Areas and pairwise intersections of two label images (sparse: only pairs that touch).

    Instances are indexed 0..n-1 in increasing order of their original labels
    (``gt_labels``, ``pred_labels``).
    """

    gt_labels: NDArray[np.int64]
    pred_labels: NDArray[np.int64]
    gt_area: NDArray[np.int64]
    pred_area: NDArray[np.int64]
    pair_gt: NDArray[np.int64]  # index into gt_labels, one entry per touching pair
    pair_pred: NDArray[np.int64]
    pair_inter: NDArray[np.int64]

    @property
    def n_gt(self) -> int:
        return int(self.gt_labels.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_labels.size)

    @property
    def pair_union(self) -> NDArray[np.int64]:
        return self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> NDArray[np.float64]:
        return self.pair_inter / self.pair_union

    def iou_matrix(self) -> NDArray[np.float64]:
        """Dense (n_gt, n_pred) IoU matrix."""
        out = np.zeros((self.n_gt, self.n_pred), dtype=np.float64)
        out[self.pair_gt, self.pair_pred] = self.pair_iou
        return out


def _compress(labels: NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Map labels to 0 (background), 1..n (instances in label order); return (image, labels)."""
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if flat.min() < 0:
        raise ValueError("label images must be non-negative (0 = background)")
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        lut[0] = 0
        return lut[flat], np.flatnonzero(present).astype(np.int64)
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        return inverse.astype(np.int64), uniq[1:].astype(np.int64)
    return inverse.astype(np.int64) + 1, uniq.astype(np.int64)


def _check(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> None:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    for name, arr in (("gt", gt), ("pred", pred)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"{name} must be an integer label image, got {arr.dtype}")


def overlap(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> Overlap:
    """Contingency table of two label images (see :class:`Overlap`)."""
    _check(gt, pred)
    g, gt_labels = _compress(np.asarray(gt).astype(np.int64, copy=False))
    p, pred_labels = _compress(np.asarray(pred).astype(np.int64, copy=False))
    ng, npr = gt_labels.size, pred_labels.size
    gt_area = np.bincount(g, minlength=ng + 1)[1:].astype(np.int64)
    pred_area = np.bincount(p, minlength=npr + 1)[1:].astype(np.int64)
    both = (g > 0) & (p > 0)
    key = (g[both] - 1) * npr + (p[both] - 1)
    if ng * npr <= _DENSE_LIMIT:
        table = np.bincount(key, minlength=ng * npr)
        keys = np.flatnonzero(table)
        counts = table[keys]
    else:
        keys, counts = np.unique(key, return_counts=True)
    return Overlap(
        gt_labels=gt_labels,
        pred_labels=pred_labels,
        gt_area=gt_area,
        pred_area=pred_area,
        pair_gt=(keys // max(npr, 1)).astype(np.int64),
        pair_pred=(keys % max(npr, 1)).astype(np.int64),
        pair_inter=counts.astype(np.int64),
    )


def _as_overlap(gt: NDArray[np.integer] | Overlap, pred: NDArray[np.integer] | None) -> Overlap:
    if isinstance(gt, Overlap):
        return gt
    if pred is None:
        raise TypeError("pred is required unless an Overlap is given")
    return overlap(gt, pred)


def aji(gt: NDArray[np.integer] | Overlap, pred: NDArray[np.integer] | None = None) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017), in [0, 1].

    Each ground-truth nucleus G_i is paired with argmax_j IoU(G_i, S_j); a ground-truth nucleus
    that touches no prediction adds its area to U only. A prediction may be paired with several
    ground-truth nuclei (the paper's algorithm; see :func:`aji_plus` for one-to-one).
    """
    ov = _as_overlap(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    inter, union = aji_components(ov)
    return inter / union if union > 0 else 0.0


def aji_components(
    gt: NDArray[np.integer] | Overlap, pred: NDArray[np.integer] | None = None
) -> tuple[float, float]:
    """(C, U) of :func:`aji`: summed intersections and unions, in px. The pooled AJI of a set
    of images (as HoVer-Net reports CoNSeP) is sum(C) / sum(U) over the images."""
    ov = _as_overlap(gt, pred)
    union = float(ov.gt_area.sum())  # unpaired GT contribute |G|
    inter = 0.0
    used = np.zeros(ov.n_pred, dtype=bool)
    if ov.pair_gt.size:
        iou = ov.pair_iou
        # Best prediction per GT: sort by gt, then IoU descending, then pred label ascending.
        order = np.lexsort((ov.pair_pred, -iou, ov.pair_gt))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ov.pair_gt[order][1:] != ov.pair_gt[order][:-1]
        best = order[first]
        inter = float(ov.pair_inter[best].sum())
        # |G ∪ S| = |G| + |S| - |G ∩ S|; |G| already counted.
        union += float((ov.pred_area[ov.pair_pred[best]] - ov.pair_inter[best]).sum())
        used[ov.pair_pred[best]] = True
    union += float(ov.pred_area[~used].sum())
    return inter, union


def aji_plus(gt: NDArray[np.integer] | Overlap, pred: NDArray[np.integer] | None = None) -> float:
    """AJI+ (Graham et al. 2019): AJI with a one-to-one pairing maximising total IoU."""
    ov = _as_overlap(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    inter = 0.0
    union = float(ov.gt_area.sum() + ov.pred_area.sum())
    if ov.pair_gt.size:
        iou_matrix = ov.iou_matrix()
        inter_matrix = np.zeros((ov.n_gt, ov.n_pred), dtype=np.float64)
        inter_matrix[ov.pair_gt, ov.pair_pred] = ov.pair_inter
        rows, cols = linear_sum_assignment(iou_matrix, maximize=True)
        inter = float(inter_matrix[rows, cols].sum())  # pairs with IoU 0 add nothing
        union -= inter  # |G ∪ S| = |G| + |S| - |G ∩ S| for each pair; other areas added once
    return inter / union if union > 0 else 0.0


def _matches(ov: Overlap, threshold: float) -> int:
    """Number of one-to-one matches at IoU > threshold (unique when threshold >= 0.5)."""
    if ov.pair_gt.size == 0:
        return 0
    iou = ov.pair_iou
    if threshold >= 0.5:
        # IoU > 0.5 with both G and S forces a unique partner on either side.
        return int(np.count_nonzero(iou > threshold))
    matrix = ov.iou_matrix()
    matrix[matrix <= threshold] = 0.0
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return int(np.count_nonzero(matrix[rows, cols] > threshold))


def object_scores(
    gt: NDArray[np.integer] | Overlap,
    pred: NDArray[np.integer] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Detection scores at one IoU threshold: ``precision, recall, f1, tp, fp, fn``.

    A predicted and a ground-truth nucleus match when their IoU exceeds ``iou_threshold``
    (one-to-one; below 0.5 the matching maximises total IoU with the Hungarian algorithm).
    """
    ov = _as_overlap(gt, pred)
    tp = _matches(ov, iou_threshold)
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    if ov.n_gt == 0 and ov.n_pred == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / ov.n_pred if ov.n_pred else 0.0
        recall = tp / ov.n_gt if ov.n_gt else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
    }


def panoptic_quality(
    gt: NDArray[np.integer] | Overlap, pred: NDArray[np.integer] | None = None
) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019): ``pq, dq, sq, tp, fp, fn``.

    Matches are (gt, pred) pairs with IoU > 0.5, which are one-to-one without any assignment.
    SQ = sum of matched IoU / TP, DQ = TP / (TP + FP/2 + FN/2), PQ = SQ × DQ, all in [0, 1].
    Both images empty: pq = dq = sq = 1.0; no match (incl. exactly one image empty): 0.0.
    """
    ov = _as_overlap(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0.0, "fp": 0.0, "fn": 0.0}
    iou = ov.pair_iou if ov.pair_gt.size else np.zeros(0, dtype=np.float64)
    matched = iou[iou > 0.5]
    tp = int(matched.size)
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    sq = float(matched.sum()) / tp if tp else 0.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": sq * dq, "dq": dq, "sq": sq, "tp": float(tp), "fp": float(fp), "fn": float(fn)}


def mean_average_precision(
    gt: NDArray[np.integer] | Overlap,
    pred: NDArray[np.integer] | None = None,
    thresholds: tuple[float, ...] = MAP_THRESHOLDS,
) -> float:
    """mAP@[.5:.95] as in DSB 2018: mean over t of TP/(TP+FP+FN) at IoU > t."""
    ov = _as_overlap(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    scores = []
    for t in thresholds:
        tp = _matches(ov, t)
        scores.append(tp / (ov.n_gt + ov.n_pred - tp))
    return float(np.mean(scores))


def pixel_dice(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> float:
    """Dice coefficient of the foreground masks (label > 0)."""
    _check(gt, pred)
    a, b = np.asarray(gt) > 0, np.asarray(pred) > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


EVALUATE_THRESHOLDS: tuple[float, ...] = (0.5, 0.7)  # IoU thresholds of Lagree et al. Table 2


def evaluate(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> dict[str, float]:
    """All metrics of Lagree et al. 2021 (and PQ) for one image pair, from one contingency table.

    Keys: ``aji, aji_plus, map, f1_0.5, precision_0.5, recall_0.5, f1_0.7, precision_0.7,
    recall_0.7, pq, dq, sq, dice, n_gt, n_pred``; the older names ``f1_50, precision_50, ...,
    recall_70`` carry the same values.
    """
    ov = overlap(gt, pred)
    out = {
        "aji": aji(ov),
        "aji_plus": aji_plus(ov),
        "map": mean_average_precision(ov),
    }
    for t in EVALUATE_THRESHOLDS:
        scores = object_scores(ov, iou_threshold=t)
        for name in ("f1", "precision", "recall"):
            out[f"{name}_{t:g}"] = scores[name]
    pq = panoptic_quality(ov)
    out.update(pq=pq["pq"], dq=pq["dq"], sq=pq["sq"])
    out["dice"] = pixel_dice(gt, pred)
    out["n_gt"], out["n_pred"] = float(ov.n_gt), float(ov.n_pred)
    for t in EVALUATE_THRESHOLDS:  # older key names, kept for existing callers
        for name in ("f1", "precision", "recall"):
            out[f"{name}_{int(round(t * 100))}"] = out[f"{name}_{t:g}"]
    return out
