"""Whole-slide nuclei segmentation, streamed tile by tile (memory independent of slide size).

A *segmenter* is any callable ``segmenter(rgb, mpp) -> labels``: ``rgb`` (H, W, 3) uint8 at
``mpp`` µm/px in, (H, W) integer instance labels out (0 = background). The classical baselines
of :mod:`bcpath.nuclei.classical` are available by name (:func:`get_segmenter`); a trained
model plugs in as e.g. ``functools.partial(predict_instances, bundle)``.

Tiling and stitching (:func:`segment_slide`):

* The slide is covered, at the model resolution ``model_mpp``, by a grid of *cores* of
  ``stride = tile_px · (1 - overlap)`` px (128 px for 256 px tiles at 50 % overlap). Cores
  partition the slide. Each core is segmented inside a *window*: the core plus a margin of
  ``(tile_px - stride) / 2`` px on every side (64 px), i.e. a ``tile_px`` tile, so
  neighbouring windows overlap by ``overlap``. Only cores that touch tissue (the tissue mask,
  intersected with an optional region mask) are segmented.
* A nucleus found in a window is kept only by the window whose core contains its centroid,
  and only if it does not touch the window's outer edge (unless that edge is the slide edge):
  a nucleus cut by the window would have its centroid near that edge, hence outside the core,
  so whole nuclei are kept once and cut halves never. A nucleus whose centroid lies outside
  the tissue/region mask is dropped.
* Two windows segment the overlap independently, so the same nucleus can (rarely) be kept
  twice when its centroid moves across a core border between the two segmentations.
  Tiles are processed in row-major order and earlier pixels win: a nucleus more than half of
  whose pixels are already labelled is dropped as a duplicate; otherwise only its unlabelled
  pixels are written. The result is deterministic.
* Ids are 1, 2, ... in processing order (row-major tiles, then the segmenter's label order).

Outputs (all written to temporary names and moved into place):

* ``labels.zarr``: Zarr v3 group (OME-NGFF 0.5 metadata, axes y, x in µm) with array ``0``,
  (H, W) uint32 at ``model_mpp``, origin at the slide's level-0 corner, chunked
  ``chunk_px``²; 0 = background, else the nucleus id. Only chunks holding a nucleus are
  stored. Labels are kept in memory only for the chunks the current tile reaches (a band of
  the slide's width that the next tile row reaches is kept zlib-packed), then flushed.
* ``features.parquet``: one row per nucleus (``FEATURE_COLUMNS``), written per tile row.
* ``nuclei.geojson``: QuPath detections (classification "Nucleus"), polygon outlines in
  level-0 px, measurements in ``properties.measurements`` (a dict, as QuPath ≥ 0.4 writes);
  written feature by feature.

Coordinates: ``*_model_px`` centroids use the pixel-index convention of labels.zarr (pixel
centres at integers: ``labels[round(y), round(x)]``); ``*_level0_px`` centroids and GeoJSON
outlines are continuous level-0 coordinates (pixel (i, j) covers [i, i + 1) × [j, j + 1)), as
QuPath uses.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.io import release_free_memory
from bcpath.wsi import Slide, open_slide

logger = logging.getLogger(__name__)

#: The workflow refuses slides coarser than this many times the segmentation µm/px: nuclei
#: 6-10 µm wide are a few pixels there, and upsampling cannot restore their outlines.
MAX_UPSAMPLING = 2.0


@dataclass(frozen=True)
class SegmentationSettings:
    """Config section ``nuclei`` as slide segmentation uses it; defaults = the config schema's.

    Attributes:
        model: segmenter name or model folder (:func:`get_segmenter`; default the shipped U-Net).
        mpp: µm/px the segmenter works at.
        tile_px: window edge in model px.
        overlap: fraction shared by neighbouring windows.
        tta: a U-Net predicts with test-time augmentation.
    """

    model: str = "models/nuclei_unet_v2"
    mpp: float = 0.5
    tile_px: int = 512
    overlap: float = 0.25
    tta: bool = False

__all__ = [
    "FEATURE_COLUMNS",
    "NUCLEUS_COLOR",
    "SegmentationSettings",
    "Segmenter",
    "SlideTiling",
    "get_segmenter",
    "plan_tiles",
    "segment_slide",
]

Segmenter = Callable[[NDArray[np.uint8], float], NDArray[np.integer]]

NUCLEUS_COLOR = [0, 0, 180]
DUPLICATE_FRACTION = 0.5
"""A kept nucleus whose pixels are more than this fraction already labelled is a duplicate."""

FEATURE_COLUMNS: dict[str, str] = {
    "nucleus_id": "int64",
    "centroid_x_level0_px": "float64",
    "centroid_y_level0_px": "float64",
    "centroid_x_model_px": "float64",
    "centroid_y_model_px": "float64",
    "area_um2": "float64",
    "perimeter_um": "float64",
    "major_axis_um": "float64",
    "minor_axis_um": "float64",
    "eccentricity": "float64",
    "solidity": "float64",
    "hematoxylin_od_mean": "float64",
    "red_mean": "float64",
    "green_mean": "float64",
    "blue_mean": "float64",
    "tile_row": "int32",
    "tile_col": "int32",
}
"""features.parquet columns and dtypes. Areas and lengths at the model resolution; OD is the
mean hematoxylin optical density of skimage's ``rgb2hed`` (Ruifrok-Johnston), unsmoothed;
colour means on 0–255."""

# GeoJSON measurement names (QuPath's own naming for cell detections) → feature column.
GEOJSON_MEASUREMENTS: dict[str, str] = {
    "Nucleus: Area µm^2": "area_um2",
    "Nucleus: Perimeter µm": "perimeter_um",
    "Nucleus: Length µm": "major_axis_um",
    "Nucleus: Min axis µm": "minor_axis_um",
    "Nucleus: Eccentricity": "eccentricity",
    "Nucleus: Solidity": "solidity",
    "Nucleus: Hematoxylin OD mean": "hematoxylin_od_mean",
    "Nucleus ID": "nucleus_id",
}


# --------------------------------------------------------------------------- segmenters

#: The source checkout: relative ``models/...`` paths (the default ``models/nuclei_unet_v2``)
#: not found in the working folder are looked up here.
CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


def resolve_model_path(name: str) -> str:
    """``name`` unchanged, unless it is a relative ``models/...`` path missing from the working
    folder but present in the source checkout: then that checkout path (logged)."""
    if os.path.isabs(name) or os.path.exists(name) or not name.replace("\\", "/").startswith("models/"):
        return name
    in_checkout = CHECKOUT_ROOT / name
    if not in_checkout.exists():
        return name
    logger.info("model %s: not in the working folder; using the source checkout's %s", name, in_checkout)
    return str(in_checkout)


def get_segmenter(name_or_callable: str | Segmenter, tta: bool = False) -> Segmenter:
    """A segmenter ``(rgb, mpp) -> int labels`` from a name or a callable.

    Args:
        name_or_callable: a callable (returned as is); a classical baseline name ("fiji",
            "watershed", "otsu"; :data:`bcpath.nuclei.classical.BASELINES`); a trained U-Net
            folder or its best.pt (``bcpath nuclei train``, e.g. models/nuclei_unet_v2; a relative
            ``models/...`` path missing from the working folder is read from the source
            checkout, :func:`resolve_model_path`); or
            ``"package.module:function"`` naming such a callable.
        tta: a trained U-Net predicts with test-time augmentation (8 rotations/flips).

    Raises:
        BcpathError: an unknown name, or a model folder that does not load.
    """
    from bcpath.nuclei.classical import BASELINES, classical_baseline

    if callable(name_or_callable):
        return name_or_callable
    name = str(name_or_callable).strip()
    if name in BASELINES:
        segmenter = functools.partial(classical_baseline, name)
        segmenter.__name__ = name  # type: ignore[attr-defined]
        return segmenter
    name = resolve_model_path(name)
    if ":" in name and not os.path.exists(name):
        module_name, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise BcpathError(f"nuclei segmenter {name!r} cannot be imported ({error}); give 'package.module:function' of an importable callable") from error
        if not callable(target):
            raise BcpathError(f"nuclei segmenter {name!r} is not callable")
        return target
    if os.path.exists(name):
        # A trained U-Net: a `bcpath nuclei train` folder (best.pt, train.json, stain.json) or its best.pt.
        from bcpath.nuclei.predict import load_nuclei_model, predict_instances

        segmenter = functools.partial(predict_instances, load_nuclei_model(name, tta=tta))
        segmenter.__name__ = f"unet:{name}"  # type: ignore[attr-defined]
        return segmenter
    raise BcpathError(f"unknown nuclei segmenter {name!r}; use one of {', '.join(BASELINES)}, 'package.module:function' or a callable")


def _segmenter_name(segmenter: Any) -> str:
    if isinstance(segmenter, functools.partial):
        inner = getattr(segmenter.func, "__name__", "partial")
        if inner == "classical_baseline" and segmenter.args:
            return str(segmenter.args[0])
        return inner
    return str(getattr(segmenter, "__name__", type(segmenter).__name__))


# --------------------------------------------------------------------------- tiling plan


@dataclass(frozen=True)
class SlideTiling:
    """Cores and windows at the model resolution.

    Attributes:
        scale: level-0 px per model px.
        width, height: slide size in model px (the labels.zarr shape is (height, width)).
        stride: core edge in model px.
        margin: context around a core on each side, in model px.
        n_rows, n_cols: core grid size.
        rows, cols: (N,) cores that touch the tissue/region mask, row-major.
    """

    scale: float
    width: int
    height: int
    tile_px: int
    stride: int
    margin: int
    n_rows: int
    n_cols: int
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]

    @property
    def n_tiles(self) -> int:
        return int(len(self.rows))

    def window(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the window of core (row, col), clipped to the slide."""
        s, m = self.stride, self.margin
        return (
            max(0, row * s - m),
            min(self.height, (row + 1) * s + m),
            max(0, col * s - m),
            min(self.width, (col + 1) * s + m),
        )


def _check_params(model_mpp: float, tile_px: int, overlap: float) -> tuple[int, int]:
    if not (math.isfinite(model_mpp) and model_mpp > 0):
        raise BcpathError(f"nuclei mpp must be a positive number of µm per pixel, got {model_mpp}")
    if int(tile_px) != tile_px or tile_px < 16:
        raise BcpathError(f"nuclei tile_px must be an integer of at least 16, got {tile_px}")
    if not (0.0 <= overlap < 1.0):
        raise BcpathError(f"nuclei overlap must be in [0, 1) (0.5 = 50 %), got {overlap}")
    stride = max(1, int(round(tile_px * (1.0 - overlap))))
    margin = (int(tile_px) - stride) // 2
    return stride, margin


def _combined_mask(tissue_mask: NDArray[np.bool_], region_mask: NDArray[np.bool_] | None) -> NDArray[np.bool_]:
    mask = np.asarray(tissue_mask, dtype=bool)
    if mask.ndim != 2:
        raise BcpathError(f"tissue mask must be a 2-D bool image, got shape {mask.shape}")
    if region_mask is None:
        return mask
    import cv2

    region: NDArray[Any] = np.asarray(region_mask)
    if region.ndim != 2:
        raise BcpathError(f"region mask must be a 2-D bool image, got shape {region.shape}")
    if region.shape != mask.shape:
        # Both cover the whole slide: resample the region onto the tissue mask's grid.
        region = cv2.resize(region.astype(np.uint8), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.asarray(mask & (region > 0), dtype=bool)


def plan_tiles(mask: NDArray[np.bool_], mask_mpp: float, slide_mpp: float, slide_dims: tuple[int, int], model_mpp: float = 0.5, tile_px: int = 256, overlap: float = 0.5) -> SlideTiling:
    """Cores touching ``mask`` (covering the whole slide at ``mask_mpp``).

    Args:
        mask: (H, W) bool at ``mask_mpp``, True where nuclei are wanted.
        slide_mpp: level-0 µm/px; slide_dims: level-0 (width, height).
    """
    import cv2

    stride, margin = _check_params(model_mpp, tile_px, overlap)
    scale = model_mpp / slide_mpp
    width = max(1, int(math.ceil(slide_dims[0] / scale - 1e-9)))
    height = max(1, int(math.ceil(slide_dims[1] / scale - 1e-9)))
    n_rows, n_cols = -(-height // stride), -(-width // stride)
    empty = np.zeros(0, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return SlideTiling(scale, width, height, int(tile_px), stride, margin, n_rows, n_cols, empty, empty)
    k = model_mpp / mask_mpp  # mask px per model px
    pixels = np.ascontiguousarray(mask, dtype=np.uint8)
    # int32 sums are exact below 2**31 mask pixels (an int64 copy was 44 MB on a 352 mm² slide)
    integral = cv2.integral(pixels, sdepth=cv2.CV_32S) if mask.size < 2**31 - 1 else cv2.integral(pixels, sdepth=cv2.CV_64F).astype(np.int64)
    # Any mask pixel overlapping the core counts (floor of the start, ceil of the end).
    ys = np.arange(n_rows + 1) * stride * k
    xs = np.arange(n_cols + 1) * stride * k
    y_lo = np.clip(np.floor(ys[:-1]).astype(np.int64), 0, mask.shape[0])
    y_hi = np.clip(np.ceil(ys[1:] - 1e-9).astype(np.int64), 0, mask.shape[0])
    x_lo = np.clip(np.floor(xs[:-1]).astype(np.int64), 0, mask.shape[1])
    x_hi = np.clip(np.ceil(xs[1:] - 1e-9).astype(np.int64), 0, mask.shape[1])
    sums = (
        integral[y_hi[:, None], x_hi[None, :]]
        - integral[y_lo[:, None], x_hi[None, :]]
        - integral[y_hi[:, None], x_lo[None, :]]
        + integral[y_lo[:, None], x_lo[None, :]]
    )
    rows, cols = np.nonzero(sums > 0)  # row-major
    return SlideTiling(scale, width, height, int(tile_px), stride, margin, n_rows, n_cols, rows.astype(np.int64), cols.astype(np.int64))


# --------------------------------------------------------------------------- label buffer


class _ChunkBuffer:
    """Labels of the chunks that tiles still write to; each chunk is flushed to Zarr once.

    Only chunks a nucleus was written to exist. A chunk is held as an array while the tiles
    of the current tile row reach it; :meth:`retire` then stores a chunk that no later tile
    reaches and packs (zlib) one that only the next tile rows reach, so memory holds a few
    chunks around the current tile plus one compressed band of the slide's width, not a band
    of arrays (1 MiB per 512² chunk). ``flush_above(y)`` stores and drops the chunks that
    lie entirely above model row ``y``.
    """

    def __init__(self, array: Any, chunk_px: int) -> None:
        self.array = array
        self.chunk = int(chunk_px)
        self.height, self.width = (int(v) for v in array.shape)
        self.chunks: dict[tuple[int, int], NDArray[np.uint32]] = {}
        self.packed: dict[tuple[int, int], bytes] = {}
        self.n_written = 0

    def _blocks(self, y0: int, y1: int, x0: int, x1: int) -> Iterator[tuple[int, int, slice, slice, slice, slice]]:
        c = self.chunk
        for cy in range(y0 // c, (y1 - 1) // c + 1):
            ys, ye = max(y0, cy * c), min(y1, (cy + 1) * c)
            for cx in range(x0 // c, (x1 - 1) // c + 1):
                xs, xe = max(x0, cx * c), min(x1, (cx + 1) * c)
                yield cy, cx, slice(ys - y0, ye - y0), slice(xs - x0, xe - x0), slice(ys - cy * c, ye - cy * c), slice(xs - cx * c, xe - cx * c)

    def _block(self, key: tuple[int, int]) -> NDArray[np.uint32] | None:
        packed = self.packed.pop(key, None)
        if packed is not None:
            self.chunks[key] = np.frombuffer(zlib.decompress(packed), dtype=np.uint32).reshape(self.chunk, self.chunk).copy()
        return self.chunks.get(key)

    def get(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.uint32]:
        out = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
        for cy, cx, oy, ox, cy_s, cx_s in self._blocks(y0, y1, x0, x1):
            block = self._block((cy, cx))
            if block is not None:
                out[oy, ox] = block[cy_s, cx_s]
        return out

    def put(self, y0: int, x0: int, values: NDArray[np.uint32]) -> None:
        """Write the non-zero ``values`` with top-left (y0, x0)."""
        y1, x1 = y0 + values.shape[0], x0 + values.shape[1]
        for cy, cx, oy, ox, cy_s, cx_s in self._blocks(y0, y1, x0, x1):
            part = values[oy, ox]
            nonzero = part > 0
            if not nonzero.any():
                continue
            block = self._block((cy, cx))
            if block is None:
                block = self.chunks[(cy, cx)] = np.zeros((self.chunk, self.chunk), dtype=np.uint32)
            target = block[cy_s, cx_s]
            target[nonzero] = part[nonzero]

    def _store(self, key: tuple[int, int], block: NDArray[np.uint32]) -> None:
        c = self.chunk
        cy, cx = key
        ye, xe = min(self.height, (cy + 1) * c), min(self.width, (cx + 1) * c)
        self.array[cy * c : ye, cx * c : xe] = block[: ye - cy * c, : xe - cx * c]
        self.n_written += 1

    def retire(self, x: int, y: int) -> None:
        """Chunks left of model column ``x`` (no later tile of this row reaches them): stored
        when they lie above model row ``y`` (where the next row's windows start), else packed."""
        c = self.chunk
        for key in [key for key in self.chunks if (key[1] + 1) * c <= x]:
            block = self.chunks.pop(key)
            if (key[0] + 1) * c <= y:
                self._store(key, block)
            else:
                self.packed[key] = zlib.compress(block.tobytes(), 1)

    def flush_above(self, y: int | None = None) -> None:
        c = self.chunk
        for key in sorted({*self.chunks, *self.packed}):
            if y is not None and (key[0] + 1) * c > y:
                continue
            self._block(key)  # unpacks a packed chunk
            self._store(key, self.chunks.pop(key))


# --------------------------------------------------------------------------- outputs


def _ngff_label_attrs(slide: Slide, tiling: SlideTiling, model_mpp: float, extra: Mapping[str, Any]) -> dict[str, Any]:
    """OME-NGFF (``bcpath.tiling.NGFF_VERSION``, Zarr v3) attributes for a (y, x) label image,
    from tiling's (c, y, x) helper with the channel axis dropped."""
    from bcpath.tiling import NGFF_VERSION, ngff_attrs, ngff_multiscales

    multiscales = ngff_multiscales(
        slide.slide_id,
        model_mpp,
        [0.0, 0.0, 0.0],
        kind="nearest",
        description="nuclei instance labels (0 = background, else the nucleus_id of features.parquet)",
    )
    for entry in multiscales:
        entry["axes"] = [axis for axis in entry["axes"] if axis["name"] != "c"]
        for dataset in entry["datasets"]:
            for transform in dataset["coordinateTransformations"]:
                key = "scale" if transform["type"] == "scale" else "translation"
                transform[key] = list(transform[key][1:])
    bcpath = {
        "slide_id": slide.slide_id,
        "mpp": model_mpp,
        "level0_mpp": slide.mpp,
        "level0_px_per_px": tiling.scale,
        "origin_x0": 0,
        "origin_y0": 0,
        "tile_px": tiling.tile_px,
        "stride_px": tiling.stride,
        "margin_px": tiling.margin,
        **dict(extra),
    }
    return ngff_attrs(multiscales, bcpath, **{"image-label": {"version": NGFF_VERSION}})


class _GeoJsonWriter:
    """A FeatureCollection written one feature at a time."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.count = 0
        handle.write('{"type": "FeatureCollection", "features": [')

    def write(self, feature: dict[str, Any]) -> None:
        self.handle.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature, separators=(",", ":"), ensure_ascii=False))
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n]}\n")


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.from_numpy_dtype(np.dtype(dtype))) for name, dtype in FEATURE_COLUMNS.items()])


def _outline(image: NDArray[np.bool_], top: int, left: int, scale: float) -> list[list[float]]:
    """Closed ring (level-0 px) around the pixels of ``image`` placed at model (top, left).

    Marching squares at level 0.5 puts the outline on the pixel edges (area ≈ pixel count),
    simplified to 0.25 px; the largest piece is used for a nucleus trimmed into pieces.
    """
    import cv2
    from skimage.measure import find_contours

    padded = np.pad(image.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    if contours:
        ring = max(contours, key=len)
        # Douglas-Peucker in C (skimage's approximate_polygon took 3.5 ms per nucleus)
        ring = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), 0.25, True).reshape(-1, 2).astype(np.float64)
    if not contours or len(ring) < 4:
        ys, xs = np.nonzero(image)
        y0, y1, x0, x1 = ys.min() - 0.5, ys.max() + 0.5, xs.min() - 0.5, xs.max() + 0.5
        ring = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0], [y0, x0]]) + 1.0
    # find_contours gives (row, col) of pixel centres in the padded image; +0.5 → continuous.
    ys = (ring[:, 0] - 1.0 + top + 0.5) * scale
    xs = (ring[:, 1] - 1.0 + left + 0.5) * scale
    coords = [[round(float(x), 2), round(float(y), 2)] for x, y in zip(xs, ys, strict=True)]
    if coords[0] != coords[-1]:
        coords.append(coords[0])
    return coords


def _solidity(image: NDArray[np.bool_]) -> float:
    """Pixel count / area of the convex hull of the pixels' corners (0-1].

    skimage's ``solidity`` rasterises the hull per nucleus (2 ms each); this polygon hull is
    the same up to the hull's boundary pixels.
    """
    import cv2

    ys, xs = np.nonzero(image)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float32)
    hull_area = float(cv2.contourArea(cv2.convexHull(corners)))
    return min(1.0, len(xs) / hull_area) if hull_area > 0 else 1.0


# --------------------------------------------------------------------------- per tile


@dataclass
class _TileResult:
    row: int
    col: int
    window: tuple[int, int, int, int]
    rgb: NDArray[np.uint8]
    labels: NDArray[np.integer]


def _segment_tile(slide: Slide, tiling: SlideTiling, segmenter: Segmenter, model_mpp: float, row: int, col: int) -> _TileResult:
    y0, y1, x0, x1 = tiling.window(row, col)
    rgb = slide.read_region(x0 * tiling.scale, y0 * tiling.scale, x1 - x0, y1 - y0, model_mpp)
    labels = np.asarray(segmenter(rgb, model_mpp))
    if labels.shape != rgb.shape[:2] or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise BcpathError(
            f"slide {slide.slide_id}: the nuclei segmenter returned {labels.dtype} of shape {labels.shape} for an "
            f"RGB tile of shape {rgb.shape}; it must return integer instance labels of the tile's height and width"
        )
    return _TileResult(row, col, (y0, y1, x0, x1), rgb, labels)


def _stitch_tile(
    result: _TileResult,
    tiling: SlideTiling,
    mask: NDArray[np.bool_],
    mask_per_model_px: float,
    buffer: _ChunkBuffer,
    next_id: int,
    model_mpp: float,
    stats: dict[str, int],
) -> tuple[dict[str, NDArray[Any]], list[tuple[int, NDArray[np.bool_], int, int]]]:
    """Keep this core's nuclei, write them into ``buffer`` and measure them.

    Returns (feature columns, [(id, pixel mask crop, top, left) in model px] for outlines).
    """
    from skimage.color import rgb2hed
    from skimage.measure import regionprops

    y0, y1, x0, x1 = result.window
    row, col = result.row, result.col
    labels = result.labels
    empty = {name: np.zeros(0, dtype=dtype) for name, dtype in FEATURE_COLUMNS.items()}
    if not labels.any():
        return empty, []
    top_label = int(labels.max())
    if labels.min() >= 0 and top_label <= labels.size:
        # Labels are already small non-negative ids (0 = background): use them as they are
        # (np.unique's sort was a quarter of the slide path); ids without pixels are dropped below.
        inverse = labels.astype(np.int64, copy=False)
    else:
        ids, inverse = np.unique(labels.astype(np.int64, copy=False), return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        if ids[0] != 0:  # no background in the tile: shift so index 0 means background
            inverse = inverse + 1
    n = int(inverse.max())
    counts = np.bincount(inverse.ravel(), minlength=n + 1).astype(np.float64)
    yy, xx = np.indices(labels.shape)
    cy = np.bincount(inverse.ravel(), weights=yy.ravel(), minlength=n + 1) / np.maximum(counts, 1) + y0
    cx = np.bincount(inverse.ravel(), weights=xx.ravel(), minlength=n + 1) / np.maximum(counts, 1) + x0

    keep = counts > 0
    keep[0] = False
    # Nuclei touching a window edge that is not the slide edge are cut: not this tile's.
    edge = np.zeros(n + 1, dtype=bool)
    if y0 > 0:
        edge[inverse[0]] = True
    if y1 < tiling.height:
        edge[inverse[-1]] = True
    if x0 > 0:
        edge[inverse[:, 0]] = True
    if x1 < tiling.width:
        edge[inverse[:, -1]] = True
    edge[0] = False
    s = tiling.stride
    in_core = (cy >= row * s) & (cy < (row + 1) * s) & (cx >= col * s) & (cx < (col + 1) * s)
    # Edge nuclei with their centroid in this core are larger than the margin allows.
    stats["dropped_edge"] += int((edge & in_core & keep).sum())
    keep &= in_core & ~edge
    # Centroid inside the tissue/region mask.
    my = np.clip(np.floor((cy + 0.5) * mask_per_model_px).astype(np.int64), 0, mask.shape[0] - 1)
    mx = np.clip(np.floor((cx + 0.5) * mask_per_model_px).astype(np.int64), 0, mask.shape[1] - 1)
    outside = keep & ~mask[my, mx]
    stats["dropped_outside_mask"] += int(outside.sum())
    keep &= ~outside
    if not keep.any():
        return empty, []
    # Earlier tiles' pixels win; mostly-covered nuclei are duplicates.
    taken = buffer.get(y0, y1, x0, x1) > 0
    overlap = np.bincount(inverse[taken].ravel(), minlength=n + 1).astype(np.float64)
    duplicate = keep & (overlap > DUPLICATE_FRACTION * counts)
    stats["dropped_duplicate"] += int(duplicate.sum())
    keep &= ~duplicate
    free = counts - overlap
    keep &= free > 0
    if not keep.any():
        return empty, []
    local = np.zeros(n + 1, dtype=np.int32)
    local[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    local_labels = np.where(taken, 0, local[inverse]).astype(np.int32)
    global_ids = np.arange(next_id, next_id + int(keep.sum()), dtype=np.int64)
    lut = np.zeros(int(keep.sum()) + 1, dtype=np.uint32)
    lut[1:] = global_ids.astype(np.uint32)
    buffer.put(y0, x0, lut[local_labels])

    rgb = result.rgb
    hed_h = rgb2hed(rgb)[..., 0]
    intensity = np.dstack([hed_h, rgb.astype(np.float64)])
    props = regionprops(local_labels, intensity_image=intensity)
    props.sort(key=lambda p: p.label)
    k = len(props)
    columns: dict[str, NDArray[Any]] = {name: np.zeros(k, dtype=dtype) for name, dtype in FEATURE_COLUMNS.items()}
    outlines = []
    for index, prop in enumerate(props):
        py, px = prop.centroid
        gy, gx = py + y0, px + x0
        mean = prop.intensity_mean
        columns["nucleus_id"][index] = global_ids[prop.label - 1]
        columns["centroid_x_model_px"][index] = gx
        columns["centroid_y_model_px"][index] = gy
        columns["centroid_x_level0_px"][index] = (gx + 0.5) * tiling.scale
        columns["centroid_y_level0_px"][index] = (gy + 0.5) * tiling.scale
        columns["area_um2"][index] = prop.area * model_mpp**2
        columns["perimeter_um"][index] = prop.perimeter * model_mpp
        columns["major_axis_um"][index] = prop.axis_major_length * model_mpp
        columns["minor_axis_um"][index] = prop.axis_minor_length * model_mpp
        columns["eccentricity"][index] = prop.eccentricity
        columns["solidity"][index] = _solidity(prop.image)
        columns["hematoxylin_od_mean"][index] = mean[0]
        columns["red_mean"][index] = mean[1]
        columns["green_mean"][index] = mean[2]
        columns["blue_mean"][index] = mean[3]
        columns["tile_row"][index] = row
        columns["tile_col"][index] = col
        top, left = prop.bbox[0] + y0, prop.bbox[1] + x0
        outlines.append((int(global_ids[prop.label - 1]), prop.image, top, left))
    return columns, outlines


def _feature_for(columns: dict[str, NDArray[Any]], index: int, ring: list[list[float]]) -> dict[str, Any]:
    from bcpath import geojson

    values = {name: float(columns[column][index]) for name, column in GEOJSON_MEASUREMENTS.items()}
    return geojson.feature(
        {"type": "Polygon", "coordinates": [ring]},
        object_type="detection",
        classification="Nucleus",
        color=NUCLEUS_COLOR,
        measurements={name: round(value, 4) for name, value in values.items() if math.isfinite(value)},
    )


def _ordered_results(slide: Slide, tiling: SlideTiling, segmenter: Segmenter, model_mpp: float, tiles: list[tuple[int, int]], threads: int) -> Iterator[_TileResult]:
    """Segment ``tiles`` in order, at most 2·threads in flight (bounded memory)."""
    if threads <= 1:
        for row, col in tiles:
            yield _segment_tile(slide, tiling, segmenter, model_mpp, row, col)
        return
    from collections import deque

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Any] = deque()
        for row, col in tiles:
            pending.append(pool.submit(_segment_tile, slide, tiling, segmenter, model_mpp, row, col))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- public entry


def segment_slide(
    slide: Slide | str | os.PathLike[str],
    tissue_mask: NDArray[np.bool_] | str | os.PathLike[str],
    mask_mpp: float,
    out_dir: str | os.PathLike[str] | None = None,
    segmenter: str | Segmenter = SegmentationSettings.model,
    *,
    tta: bool = SegmentationSettings.tta,
    model_mpp: float = SegmentationSettings.mpp,
    tile_px: int = SegmentationSettings.tile_px,
    overlap: float = SegmentationSettings.overlap,
    region_mask: NDArray[np.bool_] | None = None,
    labels_path: str | os.PathLike[str] | None = None,
    geojson_path: str | os.PathLike[str] | None = None,
    features_path: str | os.PathLike[str] | None = None,
    chunk_px: int = 512,
    threads: int = 1,
) -> dict[str, Any]:
    """Segment every nucleus of a slide's tissue; write labels.zarr, features.parquet, nuclei.geojson.

    Args:
        slide: an open :class:`~bcpath.wsi.Slide` or a slide path (opened with its file µm/px).
        tissue_mask: (H, W) bool covering the whole slide at ``mask_mpp`` (tissue/mask.png
            as read by :func:`bcpath.tissue.read_mask`), or the path of that PNG.
        mask_mpp: µm/px of the tissue mask (qc.json ``mask_mpp``).
        out_dir: folder for labels.zarr, features.parquet and nuclei.geojson (each may be
            given explicitly instead with ``labels_path`` / ``features_path`` / ``geojson_path``).
        segmenter: a callable ``(rgb uint8 (H, W, 3), mpp) -> int labels (H, W)`` or a name for
            :func:`get_segmenter` ("fiji", "watershed", "otsu").
        tta: a U-Net named by ``segmenter`` predicts with test-time augmentation.
        model_mpp: µm/px the segmenter works at (labels.zarr is at this resolution).
        tile_px: window edge in model px; overlap: fraction shared by neighbouring windows
            (the core stride is ``tile_px · (1 - overlap)``, the margin half the rest).
        region_mask: optional bool mask covering the whole slide (any resolution; resampled
            onto the tissue mask's grid) intersected with the tissue mask, e.g. tumour regions.
        chunk_px: labels.zarr chunk edge.
        threads: tiles read and segmented in parallel (stitching stays sequential and ordered).

    Returns:
        Summary dict: n_nuclei, n_tiles, n_chunks, seconds, the drop counts, shape and paths.
    """
    from bcpath.io import atomic_dir, atomic_path

    started = time.perf_counter()
    segment = get_segmenter(segmenter, tta=tta)
    if out_dir is None and None in (labels_path, geojson_path, features_path):
        raise BcpathError("segment_slide needs out_dir or all of labels_path, geojson_path and features_path")
    base = Path(out_dir) if out_dir is not None else Path(".")
    labels_path = Path(labels_path) if labels_path is not None else base / "labels.zarr"
    geojson_path = Path(geojson_path) if geojson_path is not None else base / "nuclei.geojson"
    features_path = Path(features_path) if features_path is not None else base / "features.parquet"
    owns_slide = not isinstance(slide, Slide)
    slide_obj = slide if isinstance(slide, Slide) else open_slide(slide)
    try:
        if not isinstance(tissue_mask, np.ndarray):
            from bcpath.tissue import read_mask

            tissue_mask = read_mask(Path(tissue_mask))
        if not (math.isfinite(float(mask_mpp)) and float(mask_mpp) > 0):
            raise BcpathError(f"mask_mpp must be a positive number of µm per pixel, got {mask_mpp}")
        mask = _combined_mask(tissue_mask, region_mask)
        tiling = plan_tiles(mask, float(mask_mpp), slide_obj.mpp, slide_obj.dimensions, model_mpp, tile_px, overlap)
        chunk_px = int(chunk_px)
        if chunk_px < 16:
            raise BcpathError(f"chunk_px must be at least 16, got {chunk_px}")
        logger.info(
            "slide %s: segmenting nuclei with %s at %.3f µm/px in %d of %d tiles (%d px, stride %d, margin %d)",
            slide_obj.slide_id, _segmenter_name(segment), model_mpp, tiling.n_tiles, tiling.n_rows * tiling.n_cols,
            tile_px, tiling.stride, tiling.margin,
        )
        stats = {"dropped_edge": 0, "dropped_outside_mask": 0, "dropped_duplicate": 0}
        n_nuclei = 0
        with (
            atomic_dir(labels_path) as zarr_tmp,
            atomic_path(features_path) as parquet_tmp,
            atomic_path(geojson_path) as geojson_tmp,
        ):
            import pyarrow as pa
            import pyarrow.parquet as pq
            import zarr

            group = zarr.open_group(str(zarr_tmp), mode="w", zarr_format=3)
            array = group.create_array(
                "0",
                shape=(tiling.height, tiling.width),
                chunks=(chunk_px, chunk_px),
                dtype="uint32",
                fill_value=0,
                dimension_names=["y", "x"],
            )
            buffer = _ChunkBuffer(array, chunk_px)
            schema = _arrow_schema()
            with pq.ParquetWriter(str(parquet_tmp), schema) as parquet, open(geojson_tmp, "w", encoding="utf-8") as handle:
                geo = _GeoJsonWriter(handle)
                order = np.lexsort((tiling.cols, tiling.rows))
                tiles = [(int(r), int(c)) for r, c in zip(tiling.rows[order], tiling.cols[order], strict=True)]
                by_row: dict[int, list[tuple[int, int]]] = {}
                for r, c in tiles:
                    by_row.setdefault(r, []).append((r, c))
                mask_per_model_px = model_mpp / float(mask_mpp)
                done = 0
                for tile_row, row_tiles in by_row.items():
                    batch: list[dict[str, NDArray[Any]]] = []
                    for result in _ordered_results(slide_obj, tiling, segment, model_mpp, row_tiles, threads):
                        columns, outlines = _stitch_tile(result, tiling, mask, mask_per_model_px, buffer, n_nuclei + 1, model_mpp, stats)
                        for index, (_, image, top, left) in enumerate(outlines):
                            geo.write(_feature_for(columns, index, _outline(image, top, left, tiling.scale)))
                        n_nuclei += len(outlines)
                        if len(outlines):
                            batch.append(columns)
                        next_window_top = (tile_row + 1) * tiling.stride - tiling.margin
                        buffer.retire((result.col + 1) * tiling.stride - tiling.margin, next_window_top)
                        del result
                        release_free_memory()
                    if batch:
                        merged = {name: np.concatenate([b[name] for b in batch]) for name in FEATURE_COLUMNS}
                        parquet.write_table(pa.table(merged, schema=schema))
                    # Later rows' windows start at this model row; chunks above it are final.
                    buffer.flush_above((tile_row + 1) * tiling.stride - tiling.margin)
                    done += len(row_tiles)
                    logger.debug("slide %s: %d/%d tiles, %d nuclei", slide_obj.slide_id, done, tiling.n_tiles, n_nuclei)
                buffer.flush_above(None)
                geo.close()
                if n_nuclei == 0:
                    parquet.write_table(schema.empty_table())
            seconds = time.perf_counter() - started
            summary = {
                "slide_id": slide_obj.slide_id,
                "segmenter": _segmenter_name(segment),
                "n_nuclei": n_nuclei,
                "n_tiles": tiling.n_tiles,
                "n_chunks": buffer.n_written,
                "seconds": round(seconds, 3),
                "model_mpp": model_mpp,
                "shape": [tiling.height, tiling.width],
                **stats,
            }
            group.attrs.update(_ngff_label_attrs(slide_obj, tiling, model_mpp, {k: v for k, v in summary.items() if k != "slide_id"}))
    finally:
        if owns_slide:
            slide_obj.close()
    summary.update({"labels": str(labels_path), "features": str(features_path), "geojson": str(geojson_path)})
    logger.info(
        "slide %s: %d nuclei from %d tiles in %.1f s (%d label chunks; dropped: %d cut/oversized, %d outside mask, %d duplicates)",
        slide_obj.slide_id, n_nuclei, tiling.n_tiles, summary["seconds"], summary["n_chunks"],
        stats["dropped_edge"], stats["dropped_outside_mask"], stats["dropped_duplicate"],
    )
    return summary


def open_labels(path: str | os.PathLike[str]) -> Any:
    """Open a labels.zarr label array read-only, (H, W) uint32 at the model µm/px."""
    import zarr

    return zarr.open_group(str(path), mode="r")["0"]


# --------------------------------------------------------------------------- tumor regions


def tumor_region_mask(
    predictions: pd.DataFrame,
    mask_shape: tuple[int, int],
    mask_mpp: float,
    slide_mpp: float,
    threshold: float = 0.5,
) -> np.ndarray:
    """Tumor region of a slide from an ER/PR/HER2 stage-1 model's patch predictions.

    A patch is tumor when p(positive tumor) + p(negative tumor) (``p_0 + p_1``, the registry's
    class order) is at least ``threshold``; its square is painted onto the tissue-mask grid.

    Args:
        predictions: predictions/{model}.parquet as read by
            :func:`bcpath.erpr.inference.read_predictions` (x0, y0 level-0 top-left; attrs
            ``bcpath`` with patch_px and level0_px_per_px).
        mask_shape: (H, W) of the tissue mask.
        mask_mpp: µm/px of the tissue mask; slide_mpp: level-0 µm/px.

    Returns:
        (H, W) bool.
    """
    meta = predictions.attrs.get("bcpath", {})
    region = np.zeros(mask_shape, np.uint8)
    if len(predictions) == 0:
        return region.astype(bool)
    try:
        side_level0 = float(meta["patch_px"]) * float(meta["level0_px_per_px"])
    except KeyError as error:
        raise BcpathError(f"predictions lack the {error} metadata; re-run rule predict_patches") from None
    tumor = (predictions["p_0"] + predictions["p_1"]).to_numpy() >= threshold
    scale = slide_mpp / mask_mpp
    for x0, y0 in zip(predictions["x0"].to_numpy()[tumor], predictions["y0"].to_numpy()[tumor], strict=True):
        c0, r0 = int(np.floor(x0 * scale)), int(np.floor(y0 * scale))
        c1, r1 = int(np.ceil((x0 + side_level0) * scale)), int(np.ceil((y0 + side_level0) * scale))
        region[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 1
    return region.astype(bool)


