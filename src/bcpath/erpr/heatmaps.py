"""Patch-probability heatmaps (Gamble et al. 2021, Fig. 3): arrays, OME-Zarr, PNG, QuPath GeoJSON.

A heatmap lives on the *cell grid* of a prediction run: cell (i, j) is the stride × stride square
``[j·s, (j+1)·s) × [i·s, (i+1)·s)`` of tiles.zarr (analysis px), i.e. the central square of the
patch whose centre it holds (see :mod:`bcpath.erpr.inference`). Cells without a patch (no tissue)
are NaN. In level-0 px, cell (i, j) covers ``origin + [j, j+1)·s·level0_px_per_px`` in x (same in y).

Files (``heatmaps/{model}.*``):

    .zarr     OME-NGFF 0.5 image (Zarr v3; bcpath.tiling.NGFF_VERSION), array "0" of shape (n_classes, H', W') float32 (fill
              NaN), one channel per class (omero labels = class names); scale/translation in µm so
              it overlays tiles.zarr and the slide; attrs["bcpath"] repeats the grid in px.
    .png      p(positive) over tissue, blue (0) → grey (0.5) → red (1), black outside tissue.
    .geojson  QuPath annotations: regions with p ≥ threshold, classification = class name,
              measurement "mean probability".

Only numpy, OpenCV, shapely and zarr are used here (no torch), so stage 2 and the report can
import it cheaply.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bcpath.tiling import ZARR_FORMAT, ngff_attrs, ngff_multiscales

if TYPE_CHECKING:
    import pandas as pd


# Diverging blue → light grey → red (the end and middle colours of matplotlib's "coolwarm").
COLORMAP_STOPS = np.array([[59, 76, 192], [221, 221, 221], [180, 4, 38]], dtype=np.float32)


def _probability_columns(columns: Any) -> list[str]:
    from bcpath.erpr.inference import _probability_columns_of

    return _probability_columns_of(columns)


def heatmap_arrays(
    predictions: pd.DataFrame, grid_shape_px: tuple[int, int], stride_px: int, patch_px: int
) -> np.ndarray:
    """Per-class probability maps on the cell grid.

    Args:
        predictions: ``predict_slide`` output (columns x, y and p_0..p_{K-1}).
        grid_shape_px: (H, W) of the tiles.zarr image in analysis px.
        stride_px: the stride s of the prediction run (one cell per stride).
        patch_px: the patch side P of the prediction run.

    Returns:
        (K, ceil(H / s), ceil(W / s)) float32; cell (i, j) holds the probabilities of the patch
        whose centre ``(x + P/2, y + P/2)`` lies in it; NaN where no patch (non-tissue).
    """
    columns = _probability_columns(predictions.columns)
    if not columns:
        raise ValueError("predictions have no probability columns p_0, p_1, ...; pass predict_slide's output")
    height, width = grid_shape_px
    n_rows, n_cols = math.ceil(height / stride_px), math.ceil(width / stride_px)
    maps = np.full((len(columns), n_rows, n_cols), np.nan, dtype=np.float32)
    if len(predictions) == 0:
        return maps
    x = predictions["x"].to_numpy(dtype=np.int64)
    y = predictions["y"].to_numpy(dtype=np.int64)
    # Centre in half-pixels, floor-divided by the stride in half-pixels (exact in integers).
    cols = (2 * x + patch_px) // (2 * stride_px)
    rows = (2 * y + patch_px) // (2 * stride_px)
    inside = (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
    values = predictions[columns].to_numpy(dtype=np.float32)
    maps[:, rows[inside], cols[inside]] = values[inside].T
    return maps


def write_heatmap_zarr(
    path: str | os.PathLike[str],
    maps: np.ndarray,
    class_names: Sequence[str],
    stride_px: int,
    analysis_mpp: float,
    origin_level0: tuple[float, float],
    level0_mpp: float,
    model_id: str | None = None,
    patch_px: int | None = None,
) -> None:
    """Write heatmaps as an OME-NGFF image (``bcpath.tiling.NGFF_VERSION``, Zarr v3), atomically.

    Args:
        path: the ``.zarr`` directory to write.
        maps: (K, H', W') float32 from :func:`heatmap_arrays`.
        class_names: K names, registry order (channel labels).
        stride_px: cell edge in analysis px.
        analysis_mpp: µm/px of the analysis image (tiles.zarr).
        origin_level0: (x0, y0) level-0 px of tiles.zarr's top-left corner.
        level0_mpp: µm/px of the slide's level 0.
        model_id, patch_px: recorded in attrs["bcpath"] when given.

    The coordinate transforms follow tiles.zarr: scale = cell edge in µm; translation = the
    origin in µm plus ``(s − 1)/2`` analysis px, so that under the pixel-centre convention
    (napari, OME-NGFF viewers) a cell's centre sits on the centre of the tiles.zarr pixels it
    summarises.
    """
    import zarr

    from bcpath.io import atomic_dir

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(class_names):
        raise ValueError(f"maps must be (n_classes={len(class_names)}, H, W); got shape {maps.shape}")
    cell_um = stride_px * analysis_mpp
    origin_um = (origin_level0[0] * level0_mpp, origin_level0[1] * level0_mpp)
    half = (stride_px - 1) / 2 * analysis_mpp
    translation = [0.0, origin_um[1] + half, origin_um[0] + half]
    channels = [
        {"label": name, "color": color, "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}, "active": k == 0}
        for k, (name, color) in enumerate(zip(class_names, ("FF0000", "0000FF", "00FF00", "FFFF00", "FF00FF"), strict=False))
    ]
    multiscales = ngff_multiscales(
        model_id or "heatmap",
        cell_um,
        translation,
        kind="mean",
        description="patch class probabilities per stride cell; NaN = no tissue patch",
    )
    attrs = ngff_attrs(
        multiscales,
        {
            "model_id": model_id,
            "classes": list(class_names),
            "stride_px": int(stride_px),
            "patch_px": None if patch_px is None else int(patch_px),
            "analysis_mpp": float(analysis_mpp),
            "cell_mpp": float(cell_um),
            "level0_mpp": float(level0_mpp),
            "origin_x0": float(origin_level0[0]),
            "origin_y0": float(origin_level0[1]),
            "level0_px_per_cell": float(cell_um / level0_mpp),
        },
        omero={"name": model_id or "heatmap", "channels": channels, "rdefs": {"model": "greyscale"}},
    )
    chunk = (1, min(1024, max(1, maps.shape[1])), min(1024, max(1, maps.shape[2])))
    with atomic_dir(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=ZARR_FORMAT)
        group.attrs.update(attrs)
        array = group.create_array(
            "0", shape=maps.shape, chunks=chunk, dtype="float32", fill_value=float("nan"),
            dimension_names=["c", "y", "x"],
        )
        array[...] = maps


def read_heatmap_zarr(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """(maps (K, H', W') float32, attrs["bcpath"]) of a heatmap written by :func:`write_heatmap_zarr`."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    array: Any = group["0"]
    meta: Any = group.attrs["bcpath"]
    return np.asarray(array[...], dtype=np.float32), dict(meta)


COLORIZE_BLOCK_ROWS = 256
"""Rows coloured at once: the float32 (rows, W, 3) temporaries stay a few MB on a whole-slide
thumbnail (2,765 × 1,990 px for a 352 mm² slide at 8 µm/px) instead of several copies of it."""


def colorize(p_map: np.ndarray) -> np.ndarray:
    """(H, W) probabilities → (H, W, 3) uint8 RGB: blue (0) → grey (0.5) → red (1); NaN → black.

    Coloured in blocks of :data:`COLORIZE_BLOCK_ROWS` rows (same numbers as all at once)."""
    rgb = np.empty((*p_map.shape, 3), dtype=np.uint8)
    for top in range(0, p_map.shape[0], COLORIZE_BLOCK_ROWS):
        rgb[top : top + COLORIZE_BLOCK_ROWS] = _colorize_rows(p_map[top : top + COLORIZE_BLOCK_ROWS])
    return rgb


def _colorize_rows(p_map: np.ndarray) -> np.ndarray:
    """:func:`colorize` of one block of rows."""
    p = np.clip(np.nan_to_num(p_map, nan=0.0), 0.0, 1.0).astype(np.float32)
    low = p < 0.5
    t = np.where(low, p * 2.0, (p - 0.5) * 2.0)[..., None]
    start = np.where(low[..., None], COLORMAP_STOPS[0], COLORMAP_STOPS[1])
    end = np.where(low[..., None], COLORMAP_STOPS[1], COLORMAP_STOPS[2])
    rgb = np.round(start + (end - start) * t).astype(np.uint8)
    rgb[np.isnan(p_map)] = 0
    return rgb


def heatmap_overlay_png(
    thumbnail_rgb: np.ndarray,
    thumbnail_mpp: float,
    p_pos_map: np.ndarray,
    cell_mpp: float,
    origin_um: tuple[float, float],
    alpha: float = 1.0,
) -> np.ndarray:
    """The Gamble et al. Fig. 3 view: p(positive) per cell on the thumbnail's pixel grid.

    Args:
        thumbnail_rgb: (h, w, 3) uint8 RGB of the whole slide at ``thumbnail_mpp`` (its pixel
            (0, 0) at the slide's level-0 origin, like tissue/thumbnail.png).
        thumbnail_mpp: µm/px of the thumbnail.
        p_pos_map: (H', W') p(positive) per cell, NaN outside tissue.
        cell_mpp: cell edge in µm (stride_px · analysis mpp).
        origin_um: (x, y) µm of cell (0, 0)'s top-left corner on the slide
            (tiles.zarr origin_x0/y0 · level-0 µm/px).
        alpha: 1.0 (default) gives the pure heatmap of the paper: tissue cells coloured, the rest
            black. Below 1 the colour is blended over the thumbnail inside tissue
            (``alpha·colour + (1 − alpha)·thumbnail``); outside tissue stays black.

    Returns:
        (h, w, 3) uint8 RGB. Each thumbnail pixel takes the cell holding its centre.
    """
    height, width = thumbnail_rgb.shape[:2]
    n_rows, n_cols = p_pos_map.shape

    def cell_index(n: int, origin: float, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        centres = (np.arange(n, dtype=np.float64) + 0.5) * thumbnail_mpp
        index = np.floor((centres - origin) / cell_mpp).astype(np.int64)
        valid = (index >= 0) & (index < n_cells)
        return np.clip(index, 0, max(n_cells - 1, 0)), valid

    cols, valid_x = cell_index(width, origin_um[0], n_cols)
    rows, valid_y = cell_index(height, origin_um[1], n_rows)
    if n_rows == 0 or n_cols == 0:
        return np.zeros((height, width, 3), dtype=np.uint8)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, COLORIZE_BLOCK_ROWS):  # blocks of rows: no thumbnail-sized float copies
        block = slice(top, top + COLORIZE_BLOCK_ROWS)
        sampled = p_pos_map[rows[block, None], cols[None, :]].astype(np.float32)
        sampled[~(valid_y[block, None] & valid_x[None, :])] = np.nan
        colour = _colorize_rows(sampled)
        if alpha < 1.0:
            tissue = ~np.isnan(sampled)
            blended = alpha * colour.astype(np.float32) + (1.0 - alpha) * thumbnail_rgb[block, :, :3].astype(np.float32)
            colour[tissue] = np.round(blended[tissue]).astype(np.uint8)
        rgb[block] = colour
    return rgb


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG, atomically."""
    import cv2

    from bcpath.io import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write PNG {path}")


def heatmap_geojson_features(
    p_map: np.ndarray,
    threshold: float,
    class_name: str,
    cell_level0_px: float,
    origin_level0: tuple[float, float],
    color: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Regions where p ≥ threshold as QuPath annotations in level-0 px.

    Each 4-connected region of selected cells (``cv2.connectedComponents``) becomes one
    Polygon, holes kept. Edges follow the cell borders exactly: a region's polygon is the
    union of its cells' squares (shapely union of row runs; integer vertices, so exact). ``cv2.findContours``
    is not used because it traces pixel centres, shrinking every region by half a cell (a
    single cell would have no area at all).

    Args:
        p_map: (H', W') probabilities of one class per cell, NaN outside tissue (never selected).
        threshold: cells with p ≥ threshold are selected.
        class_name: QuPath classification name (e.g. the registry class name).
        cell_level0_px: cell edge in level-0 px (stride_px · level0_px_per_px).
        origin_level0: (x0, y0) level-0 px of cell (0, 0)'s top-left corner.
        color: QuPath class colour [r, g, b]; default from :data:`bcpath.geojson.CLASS_COLORS`.

    Returns:
        Features with properties objectType "annotation", classification {name, color},
        name "{class_name} {n}", measurements {"mean probability", "cells", "area (level-0 px²)"}.
    """
    import cv2
    import shapely

    from bcpath import geojson

    selected = np.nan_to_num(p_map, nan=-np.inf) >= threshold
    if not selected.any():
        return []
    n_labels, labels = cv2.connectedComponents(selected.astype(np.uint8), connectivity=4)
    ox, oy = origin_level0

    def ring(coords: Any) -> list[list[float]]:
        return [[round(ox + x * cell_level0_px, 2), round(oy + y * cell_level0_px, 2)] for x, y in coords]

    features: list[dict[str, Any]] = []
    for label in range(1, n_labels):
        region = labels == label
        rows, cols = np.nonzero(region)
        # One rectangle per horizontal run of cells, then an exact union of the runs.
        boxes: list[Any] = []
        for row in np.unique(rows):
            run_cols = cols[rows == row]
            breaks = np.flatnonzero(np.diff(run_cols) > 1)
            starts = np.concatenate(([run_cols[0]], run_cols[breaks + 1]))
            ends = np.concatenate((run_cols[breaks], [run_cols[-1]])) + 1
            boxes.extend(shapely.box(s, row, e, row + 1) for s, e in zip(starts, ends, strict=True))
        merged = shapely.union_all(boxes).simplify(0)
        polygons = list(merged.geoms) if hasattr(merged, "geoms") else [merged]
        mean_p = float(np.nanmean(p_map[region]))
        for polygon in polygons:  # one per 4-connected region
            oriented = shapely.geometry.polygon.orient(polygon, sign=1.0)
            rings = [ring(oriented.exterior.coords)] + [ring(hole.coords) for hole in oriented.interiors]
            features.append(
                geojson.feature(
                    {"type": "Polygon", "coordinates": rings},
                    object_type="annotation",
                    classification=class_name,
                    color=color,
                    name=f"{class_name} {len(features) + 1}",
                    measurements={
                        "mean probability": mean_p,
                        "cells": float(round(polygon.area)),
                        "area (level-0 px²)": float(polygon.area * cell_level0_px**2),
                    },
                )
            )
    return features
