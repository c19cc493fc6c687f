"""Clinical mitotic count: the densest 2 mm² window of tumour and its mitotic score.

TUPAC16 and MIDOG count mitoses in the 2 mm² of tumour with the most of them (about 10
high-power fields); the mitotic score follows TUPAC16's cut-offs per 2 mm²: 1 for ≤ 5, 2 for
6–10, 3 for ≥ 11. Cree et al. 2021 ("Counting mitoses: SI(ze) matters!", Mod Pathol 34:1651)
recommend reporting mitoses per mm² with the area counted; both are reported.

The window is a square of ``area_mm2`` slid over a grid of ``step_um`` bins; windows whose
centre lies in the tumour are considered and the one with the most detections wins (ties: the
one covering the most tumour). With ``field_diameter_mm`` the cut-offs instead come from the
Elston–Ellis field-diameter table: Elston & Ellis 1991 (Histopathology 19:403) defined ≤ 9,
10–19, ≥ 20 mitoses per 10 fields of 0.274 mm² (field diameter 0.59 mm), and the CAP and
RCPath tables scale those cut-offs by field area for other microscopes; the count is then taken
over 10 fields' area (a 0.44 mm field: ≤ 5 / 6–11 / ≥ 12 over 1.52 mm²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

TUPAC_CUTOFFS: tuple[int, int] = (5, 10)
"""Largest counts of score 1 and score 2 per 2 mm² (TUPAC16)."""

ELSTON_ELLIS_FIELD_MM2 = 0.274
ELSTON_ELLIS_CUTOFFS: tuple[int, int] = (9, 19)


def elston_ellis_cutoffs(field_diameter_mm: float) -> tuple[int, int, float]:
    """(score-1 maximum, score-2 maximum, area of 10 fields in mm²) for a field diameter (mm)."""
    if not 0.2 <= field_diameter_mm <= 1.0:
        raise ValueError(f"field diameter {field_diameter_mm} mm is outside 0.2-1.0 mm; give the microscope's field diameter")
    field = math.pi * (field_diameter_mm / 2) ** 2
    scale = field / ELSTON_ELLIS_FIELD_MM2
    return round(ELSTON_ELLIS_CUTOFFS[0] * scale), round(ELSTON_ELLIS_CUTOFFS[1] * scale), 10 * field


def mitotic_score(count: int, cutoffs: tuple[int, int] = TUPAC_CUTOFFS) -> int:
    """1, 2 or 3 from a hotspot count and (score-1 maximum, score-2 maximum)."""
    return 1 if count <= cutoffs[0] else (2 if count <= cutoffs[1] else 3)


@dataclass(frozen=True)
class Hotspot:
    """The densest window.

    Attributes:
        count: detections in the window.
        x0, y0, x1, y1: window bounds in level-0 px.
        area_mm2: window area.
        tumor_fraction: fraction of the window that is tumour.
        score: mitotic score from ``count``.
        cutoffs: the (score-1 max, score-2 max) used.
    """

    count: int
    x0: float
    y0: float
    x1: float
    y1: float
    area_mm2: float
    tumor_fraction: float
    score: int
    cutoffs: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "bounds_level0": [self.x0, self.y0, self.x1, self.y1], "area_mm2": self.area_mm2,
            "tumor_fraction": round(self.tumor_fraction, 4), "score": self.score, "cutoffs": list(self.cutoffs),
        }


def _box_sum(grid: NDArray[Any], k: int) -> NDArray[np.float64]:
    """Sum of every k×k window of ``grid`` (valid positions only), via an integral image."""
    integral = np.pad(np.cumsum(np.cumsum(grid.astype(np.float64), 0), 1), ((1, 0), (1, 0)))
    return integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]


def find_hotspot(
    x0: NDArray[np.floating],
    y0: NDArray[np.floating],
    tumor: NDArray[np.bool_],
    tumor_mpp: float,
    level0_mpp: float,
    area_mm2: float = 2.0,
    step_um: float = 50.0,
    cutoffs: tuple[int, int] = TUPAC_CUTOFFS,
) -> Hotspot | None:
    """The densest ``area_mm2`` square of detections with its centre in tumour.

    Args:
        x0, y0: detections in level-0 px.
        tumor: (H, W) bool tumour mask whose pixel (0, 0) is at level-0 (0, 0).
        tumor_mpp: µm/px of ``tumor``; level0_mpp: µm/px of level 0.
        area_mm2: window area (2 mm² = TUPAC16 / MIDOG).
        step_um: window positions are multiples of this.
        cutoffs: mitotic score cut-offs for the window's count.

    Returns:
        :class:`Hotspot`, or None when there is no tumour.
    """
    import cv2

    if not tumor.any():
        return None
    side_um = math.sqrt(area_mm2) * 1000.0
    k = max(1, int(round(side_um / step_um)))
    height_um, width_um = tumor.shape[0] * tumor_mpp, tumor.shape[1] * tumor_mpp
    n_rows, n_cols = max(k, math.ceil(height_um / step_um)), max(k, math.ceil(width_um / step_um))
    tumor_bins = cv2.resize(tumor.astype(np.float32), (n_cols, n_rows), interpolation=cv2.INTER_AREA)
    counts = np.zeros((n_rows, n_cols), np.float64)
    if len(x0):
        cols = np.clip((np.asarray(x0) * level0_mpp / step_um).astype(int), 0, n_cols - 1)
        rows = np.clip((np.asarray(y0) * level0_mpp / step_um).astype(int), 0, n_rows - 1)
        np.add.at(counts, (rows, cols), 1.0)
    window_counts = _box_sum(counts, k)
    window_tumor = _box_sum(tumor_bins, k) / (k * k)
    centre = tumor_bins[k // 2 : k // 2 + window_counts.shape[0], k // 2 : k // 2 + window_counts.shape[1]] > 0.5
    if not centre.any():
        centre = window_tumor == window_tumor.max()
    score = np.where(centre, window_counts + 1e-3 * window_tumor, -np.inf)
    r, c = np.unravel_index(int(np.argmax(score)), score.shape)
    count = int(round(window_counts[r, c]))
    px = step_um / level0_mpp
    return Hotspot(
        count=count, x0=c * px, y0=r * px, x1=(c + k) * px, y1=(r + k) * px, area_mm2=(k * step_um / 1000.0) ** 2,
        tumor_fraction=float(window_tumor[r, c]), score=mitotic_score(count, cutoffs), cutoffs=cutoffs,
    )


def hotspot_feature(hotspot: Hotspot) -> dict[str, Any]:
    """The window as a QuPath annotation (class "Mitotic hotspot") in level-0 px."""
    from bcpath import geojson

    ring = [[hotspot.x0, hotspot.y0], [hotspot.x1, hotspot.y0], [hotspot.x1, hotspot.y1], [hotspot.x0, hotspot.y1], [hotspot.x0, hotspot.y0]]
    return geojson.feature(
        {"type": "Polygon", "coordinates": [[[round(x, 1), round(y, 1)] for x, y in ring]]},
        object_type="annotation", classification="Mitotic hotspot", color=[255, 128, 0],
        name=f"hotspot {hotspot.area_mm2:.2f} mm²: {hotspot.count} mitoses (score {hotspot.score})",
        measurements={"mitoses": float(hotspot.count), "area mm2": hotspot.area_mm2, "tumor fraction": hotspot.tumor_fraction},
    )
