"""Mitosis candidates: hyperchromatic, size-filtered nuclei found on the hematoxylin channel.

Shah et al. classify nuclei candidates rather than every pixel. A mitotic figure is among the
darkest hematoxylin objects of a field (condensed chromatin), so candidates are the local
maxima of the smoothed hematoxylin optical density (Ruifrok–Johnston H&E deconvolution) above
``min_od``, at least ``min_distance_um`` apart; each candidate's object is the connected region
of OD ≥ ``region_fraction`` × its peak around it (:func:`measure_objects`: area, eccentricity,
solidity, mean OD); detections whose area is outside ``area_um2`` are dropped. Objects are only
measured for candidates the classifier calls mitotic, which keeps a slide's thousands of
candidates cheap.

Everything runs at the caller's µm/px (the mitosis model's); distances and areas are in µm.
Returned coordinates are in the input image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

CANDIDATE_COLUMNS: tuple[str, ...] = ("x", "y", "area_um2", "eccentricity", "solidity", "mean_od", "peak_od")


@dataclass(frozen=True)
class CandidateParams:
    """Candidate detection settings (µm, OD).

    Attributes:
        min_od: smallest peak hematoxylin OD (after smoothing) of a candidate.
        smooth_um: Gaussian sigma of the smoothing, µm.
        min_distance_um: two peaks closer than this are one candidate.
        region_fraction: a candidate's object is OD ≥ this fraction of its peak.
        area_um2: (min, max) object area in µm²; smaller specks and larger blotches are dropped.
    """

    min_od: float = 0.35
    smooth_um: float = 1.0
    min_distance_um: float = 4.0
    region_fraction: float = 0.5
    area_um2: tuple[float, float] = (4.0, 250.0)


def hematoxylin_od(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(H, W) hematoxylin optical density of an (H, W, 3) uint8 H&E image."""
    from bcpath.stain.ihc_render import hematoxylin_from_he

    return hematoxylin_from_he(rgb)[0].astype(np.float32)


def find_candidates(
    rgb: NDArray[np.uint8], mpp: float, params: CandidateParams = CandidateParams(), mask: NDArray[np.bool_] | None = None
) -> pd.DataFrame:
    """Candidate nuclei of an H&E image: peaks of the smoothed hematoxylin OD.

    Args:
        rgb: (H, W, 3) uint8 at ``mpp`` µm/px.
        mpp: µm/px of ``rgb``.
        params: thresholds.
        mask: optional (H, W) bool; only peaks inside it are kept.

    Returns:
        DataFrame with columns x, y (px, the peak) and peak_od; the smoothed OD image is in
        ``attrs["od"]`` for :func:`measure_objects`.
    """
    import cv2
    from skimage.feature import peak_local_max

    od = hematoxylin_od(rgb)
    smooth = cv2.GaussianBlur(od, (0, 0), max(params.smooth_um / mpp, 0.3))
    distance_px = max(1, int(round(params.min_distance_um / mpp)))
    peaks = peak_local_max(smooth, min_distance=distance_px, threshold_abs=params.min_od, exclude_border=False)
    if mask is not None and len(peaks):
        peaks = peaks[mask[peaks[:, 0], peaks[:, 1]]]
    table = pd.DataFrame(
        {"x": peaks[:, 1].astype(np.float64), "y": peaks[:, 0].astype(np.float64), "peak_od": smooth[peaks[:, 0], peaks[:, 1]].astype(np.float64)}
    )
    table.attrs["od"] = (od, smooth)
    return table


def measure_objects(
    od: NDArray[np.float32], smooth: NDArray[np.float32], x: NDArray[np.floating], y: NDArray[np.floating], mpp: float,
    params: CandidateParams = CandidateParams(),
) -> pd.DataFrame:
    """Morphometry of the object around each peak (x, y px): area, eccentricity, solidity, OD.

    The object is the connected region of smoothed OD ≥ ``region_fraction`` × peak within
    12 µm of the peak. Returns a DataFrame with :data:`CANDIDATE_COLUMNS` (one row per point;
    area 0 and NaN shape where the peak is not above the fraction, which cannot happen for
    peaks from :func:`find_candidates`) and a boolean column ``size_ok`` (area in
    ``params.area_um2``).
    """
    from skimage.measure import label, regionprops

    rows: list[tuple[float, ...]] = []
    radius = max(4, int(round(12.0 / mpp)))
    height, width = od.shape
    for cx, cy in zip(np.round(x).astype(int), np.round(y).astype(int), strict=True):
        peak = float(smooth[cy, cx])
        r0, r1 = max(0, cy - radius), min(height, cy + radius + 1)
        c0, c1 = max(0, cx - radius), min(width, cx + radius + 1)
        labels = label(smooth[r0:r1, c0:c1] >= params.region_fraction * peak, connectivity=2)
        own = labels[cy - r0, cx - c0]
        if own == 0:
            rows.append((float(cx), float(cy), 0.0, np.nan, np.nan, float(od[cy, cx]), peak))
            continue
        obj = labels == own
        prop = regionprops(obj.astype(np.uint8))[0]
        rows.append(
            (float(cx), float(cy), float(obj.sum()) * mpp * mpp, float(prop.eccentricity), float(prop.solidity),
             float(od[r0:r1, c0:c1][obj].mean()), peak)
        )
    table = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    table["size_ok"] = table["area_um2"].between(*params.area_um2)
    return table


def non_maximum_suppression(x: NDArray[np.floating], y: NDArray[np.floating], score: NDArray[np.floating], radius: float) -> NDArray[np.int64]:
    """Indices kept when every point suppresses lower-scored points within ``radius`` (same units).

    Greedy: points are visited by decreasing score; a point is kept unless a kept point lies
    within ``radius``. Returns kept indices sorted by decreasing score.
    """
    from scipy.spatial import cKDTree

    if len(x) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(score), kind="stable")
    points = np.stack([np.asarray(x, float), np.asarray(y, float)], axis=1)
    tree = cKDTree(points)
    suppressed = np.zeros(len(points), bool)
    kept: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        suppressed[tree.query_ball_point(points[i], radius)] = True
    return np.asarray(kept, np.int64)
