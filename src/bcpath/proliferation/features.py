"""Slide features of the proliferation system (Shah et al.) and the bag of mitosis words.

Per slide (:func:`slide_features`), from the detections (level-0 px, morphometry, atypical
probability) and the tumour mask:

- counts: ``mitosis_count``, ``mitoses_per_mm2`` (of tumour), ``hotspot_count`` (densest 2 mm²),
  ``mitotic_score`` (its TUPAC16 score), ``atypical_fraction`` (detections with atypical p ≥ 0.5);
- morphometry: mean and SD of area (µm²), eccentricity, solidity and mean hematoxylin OD;
- spatial distribution: mean and SD of nearest-neighbour distances (µm), the Clark–Evans index
  (observed mean NN distance / 0.5·sqrt(area / n); 1 = random, < 1 clustered), and skewness,
  kurtosis and entropy of the density map (counts per 250 µm bin over tumour bins);
- tumour extent: area (mm²), number of regions, perimeter / area (1/mm).

Undefined values (e.g. NN distances with < 2 mitoses) are 0 with a ``no_tumor`` / ``few_mitoses``
flag so that every slide has a complete, finite feature vector.

Bag of words (:class:`BagOfWords`): k-means on the detections' classifier embeddings of the
training slides only (k = 200 in the paper; fewer when there are fewer training mitoses — the
model JSON records the k used and why), each slide a normalised histogram of word counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

MORPHOMETRY = ("area_um2", "eccentricity", "solidity", "mean_od")
DENSITY_BIN_UM = 250.0


def _skew_kurt(values: NDArray[np.float64]) -> tuple[float, float]:
    from scipy.stats import kurtosis, skew

    if len(values) < 3 or float(np.std(values)) == 0.0:
        return 0.0, 0.0
    return float(skew(values)), float(kurtosis(values))


def tumor_extent(tumor: NDArray[np.bool_], tumor_mpp: float) -> dict[str, float]:
    """Area (mm²), region count and perimeter/area (1/mm) of a tumour mask at ``tumor_mpp``."""
    import cv2

    area_mm2 = float(tumor.sum()) * tumor_mpp**2 * 1e-6
    if area_mm2 == 0:
        return {"tumor_area_mm2": 0.0, "tumor_regions": 0.0, "tumor_perimeter_per_mm": 0.0}
    n, _ = cv2.connectedComponents(tumor.astype(np.uint8), connectivity=8)
    contours, _ = cv2.findContours(tumor.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter_mm = sum(cv2.arcLength(c, True) for c in contours) * tumor_mpp * 1e-3
    return {"tumor_area_mm2": area_mm2, "tumor_regions": float(n - 1), "tumor_perimeter_per_mm": perimeter_mm / area_mm2}


def slide_features(
    detections: pd.DataFrame,
    tumor: NDArray[np.bool_],
    tumor_mpp: float,
    level0_mpp: float,
    hotspot_count: int,
    mitotic_score: int,
) -> tuple[dict[str, float], list[str]]:
    """The handcrafted features of one slide (module doc) and its flags.

    Args:
        detections: mitoses.parquet rows (x0, y0 level-0 px, DETECTION_COLUMNS morphometry,
            atypical_probability).
        tumor: (H, W) bool tumour mask, pixel (0, 0) at level-0 (0, 0), at ``tumor_mpp`` µm/px.
        level0_mpp: µm/px of level 0.
        hotspot_count, mitotic_score: from :func:`bcpath.proliferation.hotspot.find_hotspot`.

    Returns:
        (feature name → finite float, flags).
    """
    import cv2
    from scipy.spatial import cKDTree

    flags: list[str] = []
    extent = tumor_extent(tumor, tumor_mpp)
    n = len(detections)
    area = extent["tumor_area_mm2"]
    if area == 0:
        flags.append("no_tumor")
    if n < 2:
        flags.append("few_mitoses")
    feats: dict[str, float] = {
        "mitosis_count": float(n),
        "mitoses_per_mm2": n / area if area else 0.0,
        "hotspot_count": float(hotspot_count),
        "mitotic_score": float(mitotic_score),
        "atypical_fraction": float((detections["atypical_probability"] >= 0.5).mean()) if n else 0.0,
        "mean_probability": float(detections["probability"].mean()) if n else 0.0,
    }
    for column in MORPHOMETRY:
        values = detections[column].to_numpy(dtype=np.float64) if n else np.zeros(0)
        values = values[np.isfinite(values)]
        feats[f"{column}_mean"] = float(values.mean()) if len(values) else 0.0
        feats[f"{column}_sd"] = float(values.std()) if len(values) > 1 else 0.0
    xy_um = detections[["x0", "y0"]].to_numpy(dtype=np.float64) * level0_mpp if n else np.zeros((0, 2))
    if n >= 2:
        nn = cKDTree(xy_um).query(xy_um, k=2)[0][:, 1]
        expected = 0.5 * math.sqrt(area * 1e6 / n) if area else 0.0
        feats.update(nn_mean_um=float(nn.mean()), nn_sd_um=float(nn.std()), clark_evans=float(nn.mean() / expected) if expected else 0.0)
    else:
        feats.update(nn_mean_um=0.0, nn_sd_um=0.0, clark_evans=0.0)
    # Density map: counts per DENSITY_BIN_UM bin over bins that are mostly tumour.
    skew_v = kurt_v = entropy_v = 0.0
    if area:
        n_rows = max(1, math.ceil(tumor.shape[0] * tumor_mpp / DENSITY_BIN_UM))
        n_cols = max(1, math.ceil(tumor.shape[1] * tumor_mpp / DENSITY_BIN_UM))
        tumor_bins = cv2.resize(tumor.astype(np.float32), (n_cols, n_rows), interpolation=cv2.INTER_AREA) > 0.5
        counts = np.zeros((n_rows, n_cols))
        if n:
            rows = np.clip((xy_um[:, 1] / DENSITY_BIN_UM).astype(int), 0, n_rows - 1)
            cols = np.clip((xy_um[:, 0] / DENSITY_BIN_UM).astype(int), 0, n_cols - 1)
            np.add.at(counts, (rows, cols), 1.0)
        values = counts[tumor_bins] if tumor_bins.any() else counts.ravel()
        skew_v, kurt_v = _skew_kurt(values)
        if values.sum() > 0:
            p = values[values > 0] / values.sum()
            entropy_v = float(-(p * np.log2(p)).sum())
    feats.update(density_skewness=skew_v, density_kurtosis=kurt_v, density_entropy=entropy_v)
    feats.update(extent)
    return {k: (float(v) if math.isfinite(float(v)) else 0.0) for k, v in feats.items()}, flags


@dataclass
class BagOfWords:
    """k-means words over mitosis embeddings (fitted on training slides only).

    Attributes:
        centers: (k, D) float cluster centres; k: words used; requested_k: asked for.
        note: why k differs from requested_k ("" when equal).
    """

    centers: NDArray[np.float64]
    requested_k: int
    note: str = ""
    mean: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    scale: NDArray[np.float64] = field(default_factory=lambda: np.ones(0))

    @property
    def k(self) -> int:
        return int(len(self.centers))

    @staticmethod
    def fit(embeddings: NDArray[np.floating], requested_k: int = 200, seed: int = 0, min_per_word: int = 2) -> BagOfWords:
        """k-means with k = min(requested_k, n // min_per_word) (at least 1; 0 words when no mitoses)."""
        from sklearn.cluster import KMeans

        x = np.asarray(embeddings, np.float64)
        n = len(x)
        k = min(requested_k, n // min_per_word)
        note = "" if k == requested_k else f"k = {k} instead of {requested_k}: the training slides hold {n} detected mitoses (≥ {min_per_word} per word)"
        if k < 1:
            return BagOfWords(np.zeros((0, x.shape[1] if x.ndim == 2 else 0)), requested_k, note or "no training mitoses")
        mean, scale = x.mean(0), x.std(0) + 1e-6
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit((x - mean) / scale)
        return BagOfWords(km.cluster_centers_, requested_k, note, mean, scale)

    def histogram(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        """(k,) word frequencies of one slide's detections (sums to 1; zeros without detections)."""
        hist = np.zeros(self.k)
        x = np.asarray(embeddings, np.float64)
        if self.k == 0 or len(x) == 0:
            return hist
        z = (x - self.mean) / self.scale
        words = ((z[:, None, :] - self.centers[None]) ** 2).sum(-1).argmin(1)
        np.add.at(hist, words, 1.0)
        return hist / hist.sum()

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k, "requested_k": self.requested_k, "note": self.note, "centers": self.centers.round(6).tolist(),
            "mean": self.mean.round(6).tolist(), "scale": self.scale.round(6).tolist(),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> BagOfWords:
        return BagOfWords(np.asarray(data["centers"], np.float64).reshape(int(data["k"]), -1) if data["k"] else np.zeros((0, 0)),
                          int(data["requested_k"]), data.get("note", ""), np.asarray(data["mean"], np.float64), np.asarray(data["scale"], np.float64))
