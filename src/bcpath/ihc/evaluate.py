"""Cell-level evaluation of IHC scoring against DeepLIIF-style ground truth.

DeepLIIF Ki67 data (Ghahremani et al. 2022) as laid out in ``../shared/data/ihc/deepliif_ki67``:

- ``test/*.png``, ``val/*.png``: 512 x 3072 strips; the first 512 x 512 panel is the IHC tile.
  In ``val`` the sixth panel is the per-cell mask (same colours as ``test_groundtruth``).
- ``test_groundtruth/*.png``: 512 x 512 per-cell masks, red = positive cell, blue = negative
  cell, green = cell boundary (separates touching cells).
- ``val/*.json``: ``num_pos``, ``num_neg``, ``percent_pos`` (counts only, no positions).

Resolution: DeepLIIF's tiles come from 40x scans, and its models expect 40x input; we take
**0.25 µm/px** (``DEEPLIIF_MPP``). The annotated nuclei agree: median area ~550 px = ~34 µm²
(~6.6 µm diameter) at that scale, typical of lymphocytes and small tumour nuclei; at 0.5 µm/px
they would be 13 µm across.

The masks come from co-registered multiplex immunofluorescence, so they can sit a few pixels
off the IHC image (the two ``val`` masks by 6-7 px); :func:`estimate_mask_shift` measures
that offset so ground-truth points can be moved onto the image before matching.

Positive (Ki67) = a DAB-positive nucleus: mean nuclear DAB OD at or above the 1+ threshold
(0.2 OD, :data:`bcpath.ihc.cells.INTENSITY_THRESHOLDS`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

logger = logging.getLogger(__name__)

DEEPLIIF_MPP = 0.25
#: Default matching radius: 3 µm at DeepLIIF's 0.25 µm/px, about half a nucleus diameter.
MATCH_RADIUS_PX = 12.0


def first_panel(strip: np.ndarray, size: int | None = None) -> np.ndarray:
    """The first square panel of a DeepLIIF strip.

    Args:
        strip: (H, W, 3) uint8 with W a multiple of H (512 x 3072 for DeepLIIF).
        size: panel edge; default H.

    Returns:
        (size, size, 3) uint8 view.
    """
    size = size or strip.shape[0]
    return strip[:size, :size, :3]


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (alpha dropped, grayscale stacked)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in {"L", "I", "I;16", "F"}:
            arr = np.asarray(im.convert("L"))
            return np.repeat(arr[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def _cell_components(mask_rgb: np.ndarray) -> list[tuple[bool, np.ndarray, np.ndarray, int]]:
    """[(positive, pixels (H, W) bool, components (H, W) int32, count)] for red then blue cells
    of a DeepLIIF mask (8-connected; green boundaries keep touching cells apart)."""
    m = np.asarray(mask_rgb).astype(np.int16)
    r, g, b = m[..., 0], m[..., 1], m[..., 2]
    out = []
    for is_pos, sel in ((True, (r > 127) & (g < 100) & (b < 100)), (False, (b > 127) & (r < 100) & (g < 100))):
        lab, n = ndi.label(sel, structure=np.ones((3, 3), bool))
        out.append((is_pos, sel, lab.astype(np.int32), int(n)))
    return out


def ground_truth_labels(mask_rgb: np.ndarray, shift: tuple[int, int] = (0, 0), min_area_px: int = 10) -> np.ndarray:
    """(H, W) int32 nucleus instance labels (0 = background) from a DeepLIIF mask.

    Each red or blue cell of at least ``min_area_px`` px grows by up to 2 px into the green
    boundary drawn around it (the outline belongs to the nucleus), then the labels move by
    ``shift`` = (dx, dy) (:func:`estimate_mask_shift`) onto the IHC image; pixels moved in
    from outside the mask are background.
    """
    from skimage.segmentation import expand_labels

    m = np.asarray(mask_rgb)[..., :3].astype(np.int16)
    green = (m[..., 1] > 127) & (m[..., 0] < 100) & (m[..., 2] < 100)
    labels = np.zeros(m.shape[:2], np.int32)
    cells = np.zeros(m.shape[:2], bool)
    for _, _, lab, n in _cell_components(mask_rgb):
        if n == 0:
            continue
        big = np.bincount(lab.ravel(), minlength=n + 1) >= min_area_px
        big[0] = False
        keep = big[lab]
        labels[keep] = lab[keep] + labels.max()
        cells |= keep
    labels = np.where(cells | green, expand_labels(labels, 2), 0).astype(np.int32)
    # integer shift, nearest (order 0): labels stay labels; what enters from outside is 0
    return np.asarray(ndi.shift(labels, (int(shift[1]), int(shift[0])), order=0, mode="constant", cval=0), dtype=np.int32)


def ground_truth_cells(mask_rgb: np.ndarray, min_area_px: int = 10) -> dict[str, np.ndarray]:
    """Cell centroids from a DeepLIIF ground-truth mask.

    Connected components (8-connectivity) of red pixels are positive cells, of blue pixels
    negative cells; green boundaries keep touching cells apart. Components smaller than
    ``min_area_px`` (stray anti-aliased pixels) are dropped.

    Args:
        mask_rgb: (H, W, 3) uint8 ground-truth image.
        min_area_px: smallest component kept.

    Returns:
        ``{"xy": (N, 2) float64 (x, y) centroids in px, "positive": (N,) bool,
        "area_px": (N,) int}``.
    """
    xy: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    for is_pos, sel, lab, n in _cell_components(mask_rgb):
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = ndi.sum_labels(np.ones_like(lab), lab, idx).astype(int)
        cy, cx = np.asarray(ndi.center_of_mass(sel, lab, idx)).T.reshape(2, -1)
        keep = area >= min_area_px
        xy.append(np.stack([cx[keep], cy[keep]], axis=1))
        pos.append(np.full(int(keep.sum()), is_pos))
        areas.append(area[keep])
    if not xy:
        return {"xy": np.zeros((0, 2)), "positive": np.zeros(0, bool), "area_px": np.zeros(0, int)}
    return {"xy": np.concatenate(xy), "positive": np.concatenate(pos), "area_px": np.concatenate(areas)}


def estimate_mask_shift(rgb: np.ndarray, mask_rgb: np.ndarray, max_shift: int = 16) -> tuple[int, int]:
    """Integer (dx, dy) that moves a cell mask onto its image (mask pixel (x, y) -> (x + dx, y + dy)).

    Maximises the cross-correlation of the mask's cell pixels with the image's optical density
    sum over shifts up to ``max_shift`` px (FFT, circular; the tiles are far larger than the
    shift).

    Args:
        rgb: (H, W, 3) uint8 IHC image.
        mask_rgb: (H, W, 3) uint8 DeepLIIF mask (red / blue cells on black).
        max_shift: largest |dx|, |dy| searched.

    Returns:
        (dx, dy) ints.
    """
    from bcpath.stain.deconvolution import rgb_to_od

    m = np.asarray(mask_rgb)[..., :3]
    cells = ((m[..., 0] > 127) | (m[..., 2] > 127)) & (m[..., 1] < 100)
    a = cells.astype(np.float64) - cells.mean()
    od = rgb_to_od(rgb).sum(axis=-1).astype(np.float64)
    b = od - od.mean()
    if a.shape != b.shape:
        raise ValueError(f"mask {a.shape} and image {b.shape} differ in size")
    xc = np.fft.irfft2(np.fft.rfft2(b) * np.conj(np.fft.rfft2(a)), s=a.shape)
    xc = np.fft.fftshift(xc)
    cy, cx = a.shape[0] // 2, a.shape[1] // 2
    win = xc[cy - max_shift : cy + max_shift + 1, cx - max_shift : cx + max_shift + 1]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    return int(ix - max_shift), int(iy - max_shift)


@dataclass
class DeepliifTile:
    """One annotated DeepLIIF tile.

    Attributes:
        name: file stem.
        rgb: (512, 512, 3) uint8 IHC image.
        mask: (512, 512, 3) uint8 per-cell mask (red positive, blue negative, green boundary).
        counts: ``val/*.json`` content (num_pos, num_neg, percent_pos, ...) or None.
    """

    name: str
    rgb: np.ndarray
    mask: np.ndarray
    counts: dict[str, Any] | None = None


def load_deepliif(root: str | Path, split: str = "test") -> list[DeepliifTile]:
    """Annotated tiles of a DeepLIIF folder.

    Args:
        root: folder holding ``test/``, ``test_groundtruth/`` and ``val/``.
        split: "test" (mask from ``test_groundtruth``) or "val" (mask = sixth panel; counts
            from the JSON beside the image).

    Returns:
        Tiles sorted by name.
    """
    root = Path(root)
    if split not in ("test", "val"):
        raise ValueError(f"unknown DeepLIIF split {split!r}; use 'test' or 'val'")
    tiles = []
    for path in sorted((root / split).glob("*.png")):
        strip = read_rgb(path)
        size = strip.shape[0]
        if split == "test":
            mask = read_rgb(root / "test_groundtruth" / path.name)
            counts = None
        else:
            if strip.shape[1] < 6 * size:
                raise ValueError(f"{path}: expected a 6-panel strip ({6 * size} px wide), got {strip.shape[1]}")
            mask = strip[:, 5 * size : 6 * size]
            json_path = path.with_suffix(".json")
            counts = json.loads(json_path.read_text()) if json_path.exists() else None
        tiles.append(DeepliifTile(path.stem, np.ascontiguousarray(first_panel(strip)), np.ascontiguousarray(mask), counts))
    return tiles


def match_points(pred_xy: np.ndarray, gt_xy: np.ndarray, radius: float = MATCH_RADIUS_PX, method: str = "hungarian") -> np.ndarray:
    """One-to-one matching of predicted to ground-truth points closer than ``radius``.

    ``"hungarian"`` (default) finds the largest number of pairs within ``radius`` and, among
    those, the smallest summed distance; it is solved per connected group of candidate pairs,
    so large images stay fast. ``"greedy"`` pairs the closest remaining points first (can
    match fewer: a point may take the only partner of another).

    Args:
        pred_xy: (P, 2) float (x, y) px.
        gt_xy: (G, 2) float (x, y) px.
        radius: maximum centroid distance in px (inclusive).
        method: "hungarian" or "greedy".

    Returns:
        (M, 2) int array of (pred_index, gt_index) pairs, sorted by pred_index.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if method not in ("hungarian", "greedy"):
        raise ValueError(f"unknown matching method {method!r}; use 'hungarian' or 'greedy'")
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    gt_xy = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    if len(pred_xy) == 0 or len(gt_xy) == 0:
        return np.zeros((0, 2), dtype=int)
    dist = cKDTree(pred_xy).sparse_distance_matrix(cKDTree(gt_xy), radius, output_type="coo_matrix")
    if dist.nnz == 0:
        return np.zeros((0, 2), dtype=int)
    pi, gi, d = dist.row, dist.col, dist.data
    if method == "greedy":
        used_p, used_g, pairs = set(), set(), []
        for k in np.lexsort((gi, pi, d)):
            if pi[k] not in used_p and gi[k] not in used_g:
                used_p.add(pi[k])
                used_g.add(gi[k])
                pairs.append((pi[k], gi[k]))
        out = np.asarray(pairs, dtype=int).reshape(-1, 2)
        return out[np.argsort(out[:, 0], kind="stable")]
    # Connected groups of the bipartite candidate graph (pred i -> node i, gt j -> node P + j).
    n_p = len(pred_xy)
    graph = coo_matrix((np.ones(len(pi)), (pi, n_p + gi)), shape=(n_p + len(gt_xy),) * 2)
    _, comp = connected_components(graph, directed=False)
    pairs_out: list[np.ndarray] = []
    for c in np.unique(comp[pi]):
        sel = comp[pi] == c
        rows_u, r_inv = np.unique(pi[sel], return_inverse=True)
        cols_u, c_inv = np.unique(gi[sel], return_inverse=True)
        # A non-candidate pair costs more than any set of candidate pairs, so the assignment
        # first maximises the number of candidate pairs, then minimises their distance.
        big = radius * (min(len(rows_u), len(cols_u)) + 1) + 1.0
        cost = np.full((len(rows_u), len(cols_u)), big)
        cost[r_inv, c_inv] = d[sel]
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        pairs_out.append(np.stack([rows_u[rows[ok]], cols_u[cols[ok]]], axis=1))
    out = np.concatenate(pairs_out).astype(int)
    return out[np.argsort(out[:, 0], kind="stable")]


@dataclass
class CellMetrics:
    """Detection and classification metrics of one image or a pooled set.

    Attributes:
        n_pred, n_gt, n_matched: detected cells, ground-truth cells, matched pairs.
        precision, recall, f1: detection (a match is within the matching radius).
        accuracy: positive/negative agreement on matched pairs.
        sensitivity, specificity: of the positive class on matched pairs (NaN if undefined).
        percent_positive_pred, percent_positive_gt: over all detected / all ground-truth cells.
        percent_positive_abs_error: absolute difference of the two, percentage points.
    """

    n_pred: int
    n_gt: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    sensitivity: float
    specificity: float
    percent_positive_pred: float
    percent_positive_gt: float
    percent_positive_abs_error: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, floats rounded to 4 decimals."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _check_lengths(xy: np.ndarray, positive: np.ndarray, what: str) -> None:
    if len(np.asarray(xy).reshape(-1, 2)) != len(positive):
        raise ValueError(f"{what}: {len(np.asarray(xy).reshape(-1, 2))} points but {len(positive)} positive flags")


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def cell_metrics(
    pred_xy: np.ndarray,
    pred_positive: np.ndarray,
    gt_xy: np.ndarray,
    gt_positive: np.ndarray,
    radius: float = MATCH_RADIUS_PX,
) -> CellMetrics:
    """Detection P/R/F1 and positive/negative accuracy of detected cells against ground truth.

    Args:
        pred_xy: (P, 2) detected centroids (x, y) px.
        pred_positive: (P,) bool.
        gt_xy: (G, 2) ground-truth centroids.
        gt_positive: (G,) bool.
        radius: matching radius in px (``MATCH_RADIUS_PX``, 12 px = 3 µm at 0.25 µm/px).
    """
    pred_positive = np.asarray(pred_positive, bool)
    gt_positive = np.asarray(gt_positive, bool)
    _check_lengths(pred_xy, pred_positive, "prediction")
    _check_lengths(gt_xy, gt_positive, "ground truth")
    pairs = match_points(pred_xy, gt_xy, radius)
    return _metrics_from_counts(
        n_pred=len(pred_positive),
        n_gt=len(gt_positive),
        matched_pred=pred_positive[pairs[:, 0]],
        matched_gt=gt_positive[pairs[:, 1]],
        n_pred_pos=int(pred_positive.sum()),
        n_gt_pos=int(gt_positive.sum()),
    )


def _metrics_from_counts(
    n_pred: int, n_gt: int, matched_pred: np.ndarray, matched_gt: np.ndarray, n_pred_pos: int, n_gt_pos: int
) -> CellMetrics:
    m = len(matched_pred)
    precision = _safe_div(m, n_pred)
    recall = _safe_div(m, n_gt)
    f1 = _safe_div(2 * m, n_pred + n_gt)
    tp = int(np.sum(matched_pred & matched_gt))
    tn = int(np.sum(~matched_pred & ~matched_gt))
    pp_pred = 100 * _safe_div(n_pred_pos, n_pred)
    pp_gt = 100 * _safe_div(n_gt_pos, n_gt)
    return CellMetrics(
        n_pred=n_pred,
        n_gt=n_gt,
        n_matched=m,
        precision=precision,
        recall=recall,
        f1=f1,
        accuracy=_safe_div(tp + tn, m),
        sensitivity=_safe_div(tp, int(matched_gt.sum())),
        specificity=_safe_div(tn, int((~matched_gt).sum())),
        percent_positive_pred=pp_pred,
        percent_positive_gt=pp_gt,
        percent_positive_abs_error=abs(pp_pred - pp_gt),
    )


def pool_metrics(per_image: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], radius: float = MATCH_RADIUS_PX) -> CellMetrics:
    """Metrics pooled over images (micro-average: all cells counted together).

    Args:
        per_image: (pred_xy, pred_positive, gt_xy, gt_positive) per image; matching is done
            within each image.
        radius: matching radius in px.
    """
    mp: list[np.ndarray] = []
    mg: list[np.ndarray] = []
    n_pred = n_gt = n_pred_pos = n_gt_pos = 0
    for pred_xy, pred_pos, gt_xy, gt_pos in per_image:
        pred_pos = np.asarray(pred_pos, bool)
        gt_pos = np.asarray(gt_pos, bool)
        _check_lengths(pred_xy, pred_pos, "prediction")
        _check_lengths(gt_xy, gt_pos, "ground truth")
        pairs = match_points(pred_xy, gt_xy, radius)
        mp.append(pred_pos[pairs[:, 0]])
        mg.append(gt_pos[pairs[:, 1]])
        n_pred += len(pred_pos)
        n_gt += len(gt_pos)
        n_pred_pos += int(pred_pos.sum())
        n_gt_pos += int(gt_pos.sum())
    return _metrics_from_counts(
        n_pred, n_gt, np.concatenate(mp) if mp else np.zeros(0, bool), np.concatenate(mg) if mg else np.zeros(0, bool), n_pred_pos, n_gt_pos
    )
