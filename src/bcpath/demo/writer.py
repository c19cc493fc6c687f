"""Write a painted slide: pyramidal JPEG TIFF, QuPath GeoJSON regions, ground-truth CSVs.

All files are written to a temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping

from bcpath.demo.painting import NucleusLog, polygons_of
from bcpath.demo.scene import Layout
from bcpath.geojson import feature, write_geojson
from bcpath.io import atomic_path
from bcpath.labels import BIOMARKERS, NEGATIVE_COLOR, NON_TUMOR, POSITIVE_COLOR, tumor_class

TILE_SIZE = 256
JPEG_QUALITY = 90


def write_slide_tiff(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    mpp: float,
    tile: int = TILE_SIZE,
    quality: int = JPEG_QUALITY,
    concurrency: int | None = None,
) -> None:
    """Save (H, W, 3) uint8 RGB as a tiled, JPEG-compressed pyramidal TIFF with µm/px.

    The resolution is stored in the TIFF resolution tags (pixels per cm), which OpenSlide's
    generic-tiff reader reports as ``openslide.mpp-x``/``mpp-y``. Each pyramid level halves
    the previous one down to a single tile. Output is byte-identical for identical input.
    """
    import pyvips

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"write_slide_tiff: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    previous = pyvips.concurrency_get()
    if concurrency:
        pyvips.concurrency_set(concurrency)
    try:
        image = pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).copy(interpretation="srgb")
        px_per_mm = 1000.0 / mpp  # libvips resolution unit is pixels per millimetre
        with atomic_path(path) as tmp:
            image.tiffsave(
                str(tmp),
                tile=True,
                tile_width=tile,
                tile_height=tile,
                pyramid=True,
                compression="jpeg",
                Q=quality,
                xres=px_per_mm,
                yres=px_per_mm,
                resunit="cm",
                bigtiff=rgb.nbytes > 3_500_000_000,
            )
    finally:
        pyvips.concurrency_set(previous)


def region_features(layout: Layout, status: dict[str, str]) -> list[dict[str, Any]]:
    """QuPath annotation features for one slide's regions (see ``bcpath.labels``).

    Args:
        layout: region polygons in level-0 px.
        status: biomarker -> "positive" | "negative" for the slide's tumor.
    """
    features: list[dict[str, Any]] = []
    for k, region in enumerate(layout.tumor, start=1):
        geometry = _geometry(region)
        for biomarker in BIOMARKERS:
            value = status[biomarker]
            color = POSITIVE_COLOR if value == "positive" else NEGATIVE_COLOR
            features.append(feature(geometry, "annotation", tumor_class(biomarker, value), color, f"tumor {k}"))
    others = [("stroma", p) for p in polygons_of(layout.stroma, min_area=1.0)]
    others += [("fat", p) for p in layout.fat] + [("normal lobule", p) for p in layout.lobules]
    for name, region in others:
        features.append(feature(_geometry(region), "annotation", NON_TUMOR, name=name))
    return features


def _geometry(geom: shapely.Geometry) -> dict[str, Any]:
    """GeoJSON geometry of a region, simplified by 0.5 px and snapped to a 0.1 px grid.

    ``set_precision`` keeps the result valid (plain rounding can make rings self-touch).
    """
    simple = geom.simplify(0.5, preserve_topology=True)
    snapped = shapely.set_precision(simple, 0.1)
    polygons = polygons_of(snapped)
    if len(polygons) == 1:
        snapped = polygons[0]
    elif polygons:
        snapped = shapely.MultiPolygon(polygons)
    return _listify(mapping(snapped))


def _listify(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def write_annotations(path: str | os.PathLike[str], layout: Layout, status: dict[str, str]) -> int:
    """Write the region annotations as QuPath GeoJSON; returns the number of features."""
    features = region_features(layout, status)
    write_geojson(path, features)
    return len(features)


def write_nuclei_csv(path: str | os.PathLike[str], nuclei: NucleusLog, mpp: float) -> None:
    """Ground truth of every planted nucleus.

    Columns: x, y (level-0 px, centre), radius_um (equal-area radius), kind (tumor |
    lymphocyte | stromal | normal_epithelial | mitosis), major_um, minor_um (semi-axes),
    angle_deg (of the major axis, clockwise from +x as drawn by OpenCV).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["x", "y", "radius_um", "kind", "major_um", "minor_um", "angle_deg"])
        for x, y, a, b, ang, kind in zip(nuclei.x, nuclei.y, nuclei.a, nuclei.b, nuclei.angle, nuclei.kind, strict=True):
            out.writerow(
                [f"{x:.1f}", f"{y:.1f}", f"{(a * b) ** 0.5 * mpp:.2f}", kind, f"{a * mpp:.2f}", f"{b * mpp:.2f}", f"{ang % 180:.1f}"]
            )


def write_mitoses_csv(path: str | os.PathLike[str], nuclei: NucleusLog) -> None:
    """Centres (level-0 px) of the planted mitotic figures; columns x, y."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["x", "y"])
        for x, y, kind in zip(nuclei.x, nuclei.y, nuclei.kind, strict=True):
            if kind == "mitosis":
                out.writerow([f"{x:.1f}", f"{y:.1f}"])
