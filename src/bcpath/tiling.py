"""Re-tile a slide's tissue region at the analysis resolution into an OME-NGFF Zarr image.

The tissue bounding box is cut into a grid of ``tile_px`` tiles at ``mpp`` µm/px; tiles
whose tissue fraction (from the tissue mask) reaches ``min_tissue_fraction`` are read and
written as whole Zarr chunks, so only tissue chunks exist on disk (the rest read as the
fill value, white). Work is streamed: a few runs of at most ``max_run_tiles`` tiles are in
flight at once, so peak memory does not depend on slide size.

Outputs:
    tiles.zarr: OME-NGFF 0.5 image (Zarr v3, axes c, y, x; uint8 RGB), one chunk per tile,
        lossless Blosc-zstd by default or per-channel JPEG (:class:`JpegChunkCodec`). Every
        bcpath Zarr store (tiles, heatmaps, tumour maps, nuclei labels) uses this one
        ``NGFF_VERSION`` through :func:`ngff_attrs`.
    grid.parquet: one row per written tile (see ``GRID_COLUMNS``).
    patches.h5: CLAM/TRIDENT-style ``coords`` dataset (N, 2) int64 level-0 top-left corners.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bcpath.wsi import Slide

logger = logging.getLogger(__name__)

NGFF_VERSION = "0.5"
"""OME-NGFF version of every Zarr store bcpath writes (Zarr v3: metadata under attrs["ome"])."""
ZARR_FORMAT: Literal[3] = 3
GRID_COLUMNS = ("tile_id", "row", "col", "x", "y", "x0", "y0", "tissue_fraction")
"""grid.parquet columns: x, y = top-left in tiles.zarr pixels (analysis µm/px); x0, y0 =
top-left in level-0 slide pixels; tissue_fraction in [0, 1]."""


@dataclass(frozen=True)
class TilingParams:
    """Tiling parameters.

    Attributes:
        mpp: analysis resolution in µm/px (seed 1: 2.0 µm/px, ~5×).
        tile_px: tile (and Zarr chunk) edge in pixels (seed 1: 512).
        min_tissue_fraction: tiles with less tissue (per the mask) are not written.
        compression: "lossless" (Blosc zstd) or "jpeg" (per-channel JPEG in Zarr).
        jpeg_quality: 1–100, used with compression="jpeg".
        max_run_tiles: longest horizontal run of tiles read in one request.
    """

    mpp: float = 2.0
    tile_px: int = 512
    min_tissue_fraction: float = 0.1
    compression: str = "lossless"
    jpeg_quality: int = 90
    max_run_tiles: int = 8


@dataclass(frozen=True)
class TileGrid:
    """Tile positions for one slide.

    Attributes:
        origin_x0, origin_y0: level-0 px of the tiles.zarr image's top-left corner.
        scale: level-0 px per analysis px.
        n_rows, n_cols: grid size (the Zarr image is n_rows·tile_px × n_cols·tile_px).
        rows, cols: (N,) int arrays of the selected tiles.
        tissue_fraction: (N,) float32.
    """

    origin_x0: int
    origin_y0: int
    scale: float
    tile_px: int
    n_rows: int
    n_cols: int
    rows: np.ndarray
    cols: np.ndarray
    tissue_fraction: np.ndarray

    @property
    def n_tiles(self) -> int:
        return int(len(self.rows))

    def level0_xy(self, row: int, col: int) -> tuple[int, int]:
        """Level-0 top-left corner of tile (row, col)."""
        return (
            int(round(self.origin_x0 + col * self.tile_px * self.scale)),
            int(round(self.origin_y0 + row * self.tile_px * self.scale)),
        )


def plan_grid(mask: np.ndarray, mask_mpp: float, slide: Slide, params: TilingParams) -> TileGrid:
    """Lay a tile grid over the mask's tissue bounding box and measure tissue per tile.

    Args:
        mask: (H, W) bool tissue mask covering the whole slide at ``mask_mpp``.
        mask_mpp: µm/px of the mask.
        slide: the slide (for level-0 µm/px and dimensions).
        params: tiling parameters.
    """
    import cv2

    scale = params.mpp / slide.mpp
    tile0 = params.tile_px * scale  # tile edge in level-0 px
    mask_per_level0 = slide.mpp / mask_mpp
    empty = np.zeros(0, dtype=np.int64)
    tissue_cols = np.flatnonzero(mask.any(axis=0))
    tissue_rows = np.flatnonzero(mask.any(axis=1))
    if len(tissue_cols) == 0:
        return TileGrid(0, 0, scale, params.tile_px, 0, 0, empty, empty, np.zeros(0, np.float32))
    # Tissue bounding box in level-0 px, snapped to analysis pixels.
    x0_min = math.floor(tissue_cols[0] / mask_per_level0 / scale) * scale
    y0_min = math.floor(tissue_rows[0] / mask_per_level0 / scale) * scale
    x0_max = (tissue_cols[-1] + 1) / mask_per_level0
    y0_max = (tissue_rows[-1] + 1) / mask_per_level0
    n_cols = max(1, math.ceil((x0_max - x0_min) / tile0))
    n_rows = max(1, math.ceil((y0_max - y0_min) / tile0))

    # Tissue fraction per tile from an integral image of the mask (int32 is exact up to
    # 2^31 tissue pixels: a 46,000² px mask); corners are summed in int64.
    integral = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_32S)
    col_edges = (x0_min + np.arange(n_cols + 1) * tile0) * mask_per_level0
    row_edges = (y0_min + np.arange(n_rows + 1) * tile0) * mask_per_level0
    cx = np.clip(np.round(col_edges).astype(np.int64), 0, mask.shape[1])
    cy = np.clip(np.round(row_edges).astype(np.int64), 0, mask.shape[0])

    def corner(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return integral[ys[:, None], xs[None, :]].astype(np.int64)

    sums = corner(cy[1:], cx[1:]) - corner(cy[:-1], cx[1:]) - corner(cy[1:], cx[:-1]) + corner(cy[:-1], cx[:-1])
    tile_area_mask_px = (tile0 * mask_per_level0) ** 2
    fraction = np.clip(sums / tile_area_mask_px, 0.0, 1.0).astype(np.float32)
    rows, cols = np.nonzero(fraction >= max(params.min_tissue_fraction, 1e-9))
    return TileGrid(
        origin_x0=int(round(x0_min)),
        origin_y0=int(round(y0_min)),
        scale=scale,
        tile_px=params.tile_px,
        n_rows=n_rows,
        n_cols=n_cols,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        tissue_fraction=fraction[rows, cols],
    )


def tile_runs(grid: TileGrid, max_run_tiles: int) -> Iterator[tuple[int, int, int]]:
    """(row, first_col, n_tiles) runs of horizontally adjacent selected tiles."""
    order = np.lexsort((grid.cols, grid.rows))
    rows, cols = grid.rows[order], grid.cols[order]
    start = 0
    for index in range(1, len(rows) + 1):
        end_of_run = (
            index == len(rows)
            or rows[index] != rows[start]
            or cols[index] != cols[index - 1] + 1
            or index - start >= max_run_tiles
        )
        if end_of_run:
            yield int(rows[start]), int(cols[start]), index - start
            start = index


def ngff_multiscales(name: str, pixel_um: float, translation_um: list[float], kind: str, description: str) -> list[dict[str, Any]]:
    """OME-NGFF ``multiscales`` for one (c, y, x) level: ``pixel_um`` µm per px, offset in µm.

    In OME-NGFF 0.5 the version is not repeated here: :func:`ngff_attrs` puts it in the
    ``ome`` block that holds this list."""
    return [
        {
            "name": name,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, pixel_um, pixel_um]},
                        {"type": "translation", "translation": translation_um},
                    ],
                }
            ],
            "type": kind,
            "metadata": {"description": description},
        }
    ]


def ngff_attrs(multiscales: list[dict[str, Any]], bcpath: Mapping[str, Any], **ome: Any) -> dict[str, Any]:
    """Group attributes of an OME-NGFF ``NGFF_VERSION`` (Zarr v3) store: the ``ome`` block
    (version, multiscales, and any other OME key given, e.g. ``omero`` or ``image-label``)
    beside bcpath's own ``bcpath`` block."""
    return {"ome": {"version": NGFF_VERSION, "multiscales": multiscales, **ome}, "bcpath": dict(bcpath)}


def ngff_version(path: str | os.PathLike[str]) -> str | None:
    """The OME-NGFF version of a Zarr group (0.5+: attrs["ome"]["version"]; 0.4: the
    ``multiscales`` entry's version); None when it has no OME-NGFF metadata."""
    import zarr

    attrs: Any = zarr.open_group(str(path), mode="r").attrs.asdict()
    if isinstance(attrs.get("ome"), Mapping) and "version" in attrs["ome"]:
        return str(attrs["ome"]["version"])
    multiscales = attrs.get("multiscales")
    if isinstance(multiscales, list) and multiscales and "version" in multiscales[0]:
        return str(multiscales[0]["version"])
    return None


def ngff_attributes(slide: Slide, grid: TileGrid, params: TilingParams) -> dict[str, Any]:
    """OME-NGFF ``multiscales`` + ``omero`` metadata, plus bcpath's own block."""
    translation_um = [0.0, grid.origin_y0 * slide.mpp, grid.origin_x0 * slide.mpp]
    channels = [
        {"label": name, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
        for name, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
    ]
    multiscales = ngff_multiscales(
        slide.slide_id,
        params.mpp,
        translation_um,
        kind="area",
        description="tissue region re-tiled at the analysis resolution; unwritten chunks are background",
    )
    return ngff_attrs(
        multiscales,
        {
            "slide_id": slide.slide_id,
            "mpp": params.mpp,
            "level0_mpp": slide.mpp,
            "origin_x0": grid.origin_x0,
            "origin_y0": grid.origin_y0,
            "level0_px_per_px": grid.scale,
            "tile_px": params.tile_px,
            "n_tiles": grid.n_tiles,
            "compression": params.compression,
        },
        omero={"name": slide.slide_id, "channels": channels, "rdefs": {"model": "color"}},
    )


JPEG_CODEC_NAME = "bcpath.jpeg"


@dataclass(frozen=True)
class JpegChunkCodec:
    """Zarr v3 array → bytes codec: each (1, H, W) uint8 chunk as one greyscale JPEG.

    NGFF puts channels first, so an RGB tile is three greyscale JPEG chunks. Registered
    with Zarr under ``JPEG_CODEC_NAME`` by :func:`register_jpeg_codec`; other Zarr readers
    need the same codec to decode these chunks (lossless stores need nothing extra)."""

    level: int = 90

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JpegChunkCodec:
        return cls(**dict(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC_NAME, "configuration": {"level": self.level}}


def register_jpeg_codec() -> type:
    """Register the JPEG chunk codec with Zarr (idempotent); returns the codec class."""
    import asyncio

    import imagecodecs
    import zarr.registry
    from zarr.abc.codec import ArrayBytesCodec

    cached = globals().get("_JPEG_CODEC")
    if cached is not None:
        return cached

    @dataclass(frozen=True)
    class _Jpeg(JpegChunkCodec, ArrayBytesCodec):  # type: ignore[misc]
        is_fixed_size = False

        def evolve_from_array_spec(self, array_spec: Any) -> Any:
            return self

        def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
            raise NotImplementedError

        async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
            pixels = await asyncio.to_thread(imagecodecs.jpeg8_decode, chunk_bytes.to_bytes())
            return chunk_spec.prototype.nd_buffer.from_ndarray_like(np.asarray(pixels).reshape(chunk_spec.shape))

        async def _encode_single(self, chunk_array: Any, chunk_spec: Any) -> Any:
            pixels = np.ascontiguousarray(chunk_array.as_ndarray_like()).reshape(chunk_spec.shape[-2:])
            data = await asyncio.to_thread(imagecodecs.jpeg8_encode, pixels, level=self.level)
            return chunk_spec.prototype.buffer.from_bytes(bytes(data))

    _Jpeg.__name__ = _Jpeg.__qualname__ = "JpegChunkCodec"
    zarr.registry.register_codec(JPEG_CODEC_NAME, _Jpeg)
    globals()["_JPEG_CODEC"] = _Jpeg
    return _Jpeg


def _codecs(params: TilingParams) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """(create_array codec keywords, chunk shape) for the chosen compression."""
    from zarr.codecs import BloscCodec

    if params.compression == "lossless":
        return {"compressors": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")}, (3, params.tile_px, params.tile_px)
    if params.compression == "jpeg":
        # JPEG codes 2-D chunks; NGFF puts channels first, so each channel is its own
        # greyscale JPEG chunk.
        return {"serializer": register_jpeg_codec()(level=params.jpeg_quality), "compressors": None}, (1, params.tile_px, params.tile_px)
    raise ValueError(f"tiling compression must be 'lossless' or 'jpeg', not {params.compression!r}")


def create_tile_store(path: Path, slide: Slide, grid: TileGrid, params: TilingParams) -> Any:
    """Create the OME-NGFF group and its empty level-0 array; returns the array."""
    import zarr

    codecs, chunks = _codecs(params)
    group = zarr.open_group(str(path), mode="w", zarr_format=ZARR_FORMAT)
    group.attrs.update(ngff_attributes(slide, grid, params))
    return group.create_array(
        "0",
        shape=(3, grid.n_rows * params.tile_px, grid.n_cols * params.tile_px),
        chunks=chunks,
        dtype="uint8",
        fill_value=255,
        dimension_names=["c", "y", "x"],
        **codecs,
    )


def open_tiles(path: str | os.PathLike[str]) -> Any:
    """Open a tiles.zarr level-0 array read-only, (3, H, W) uint8, whatever its compression
    (stores written before OME-NGFF 0.5, Zarr v2, still open)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    meta = group.attrs.get("bcpath", {})
    if isinstance(meta, Mapping) and meta.get("compression") == "jpeg":
        if group.metadata.zarr_format == 2:
            from imagecodecs.numcodecs import register_codecs

            register_codecs(codecs=["imagecodecs_jpeg"], verbose=False)
        else:
            register_jpeg_codec()
    return group["0"]


def _write_run(slide: Slide, array: Any, grid: TileGrid, params: TilingParams, row: int, col: int, count: int) -> None:
    """Read ``count`` adjacent tiles of ``row`` from ``col`` on in one request; one Zarr write."""
    x0, y0 = grid.level0_xy(row, col)
    strip = slide.read_region(x0, y0, count * params.tile_px, params.tile_px, params.mpp)
    top, left = row * params.tile_px, col * params.tile_px
    array[:, top : top + params.tile_px, left : left + count * params.tile_px] = strip.transpose(2, 0, 1)


def max_run_for_slide(slide: Slide, params: TilingParams, max_source_px: int = 16_000_000) -> int:
    """Longest run of tiles read at once: ``params.max_run_tiles``, fewer when the source
    level is much finer than the target (a slide without a pyramid), so that one request
    stays under ``max_source_px`` source pixels."""
    source_per_out = params.mpp / slide.level_mpp(slide.best_level_for_mpp(params.mpp))
    return max(1, min(params.max_run_tiles, int(max_source_px // (params.tile_px * source_per_out) ** 2)))


def write_tiles(slide: Slide, grid: TileGrid, params: TilingParams, zarr_path: Path, threads: int = 1, progress: bool = False) -> None:
    """Read every selected tile at ``params.mpp`` and write it into ``zarr_path``.

    Runs of adjacent tiles are read with one request and resampled together. ``threads``
    runs are in flight at once (OpenSlide and OpenCV release the GIL), with at most
    2·threads queued, and the reader caches at most ``TILING_TILE_CACHE_BYTES`` of decoded
    tiles, so memory stays bounded.
    """
    from tqdm import tqdm

    array = create_tile_store(zarr_path, slide, grid, params)
    runs = list(tile_runs(grid, max_run_for_slide(slide, params)))
    bar = tqdm(total=grid.n_tiles, desc=f"tiling {slide.slide_id}", unit="tile", disable=not progress, mininterval=5)
    lock = threading.Lock()

    def job(run: tuple[int, int, int]) -> int:
        _write_run(slide, array, grid, params, *run)
        return run[2]

    with slide.tile_cache(TILING_TILE_CACHE_BYTES):
        if threads <= 1:
            for run in runs:
                bar.update(job(run))
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                pending: set[Future[int]] = set()
                for run in runs:
                    if len(pending) >= 2 * threads:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            with lock:
                                bar.update(future.result())
                    pending.add(pool.submit(job, run))
                for future in pending:
                    bar.update(future.result())
    bar.close()


#: Decoded-tile cache while tiling (:meth:`bcpath.wsi.Slide.tile_cache`), bytes. Runs read the
#: slide in row order, so a source tile is read by one run, or by two neighbours (a run's edge
#: column, a grid row's edge row); the readers' default caches (OpenSlide 32 MiB, direct TIFF
#: reads 64 MiB) only filled up with tiles never read again: scale_01's tile_slide peaked 80 MB
#: higher with them, for the same CPU time.
TILING_TILE_CACHE_BYTES = 8 << 20


def grid_table(grid: TileGrid) -> Any:
    """grid.parquet content as a pandas DataFrame (columns ``GRID_COLUMNS``), row-major order."""
    import pandas as pd

    order = np.lexsort((grid.cols, grid.rows))
    rows, cols = grid.rows[order], grid.cols[order]
    x0 = np.round(grid.origin_x0 + cols * grid.tile_px * grid.scale).astype(np.int64)
    y0 = np.round(grid.origin_y0 + rows * grid.tile_px * grid.scale).astype(np.int64)
    return pd.DataFrame(
        {
            "tile_id": np.arange(len(rows), dtype=np.int64),
            "row": rows.astype(np.int32),
            "col": cols.astype(np.int32),
            "x": (cols * grid.tile_px).astype(np.int64),
            "y": (rows * grid.tile_px).astype(np.int64),
            "x0": x0,
            "y0": y0,
            "tissue_fraction": grid.tissue_fraction[order].astype(np.float32),
        },
        columns=list(GRID_COLUMNS),
    )


def write_patch_coords_h5(path: Path, slide: Slide, grid: TileGrid, params: TilingParams) -> None:
    """CLAM/TRIDENT-compatible coordinates: dataset ``coords`` (N, 2) int64 level-0 (x, y).

    Attributes follow CLAM (patch_size, patch_level, downsample, level_dim,
    downsampled_level_dim, name) and TRIDENT (patch_size_level0, target_mpp,
    level0_mpp, overlap). ``patch_size`` is in pixels at ``patch_level``, the level the
    tiles are read from; patch_size_level0 is the same extent in level-0 pixels.
    """
    import h5py

    from bcpath.io import atomic_path

    table = grid_table(grid)
    coords = table[["x0", "y0"]].to_numpy(dtype=np.int64).reshape(-1, 2)
    level = slide.best_level_for_mpp(params.mpp)
    level_ds = slide.level_downsamples[level]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        dataset = handle.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=True)
        patch_size_level0 = int(round(params.tile_px * grid.scale))
        dataset.attrs.update(
            {
                "patch_size": int(round(patch_size_level0 / level_ds)),
                "patch_level": int(level),
                "downsample": np.array([level_ds, level_ds]),
                "level_dim": np.array(slide.level_dimensions[level]),
                "downsampled_level_dim": np.array(slide.level_dimensions[level]),
                "name": slide.slide_id,
                "patch_size_level0": patch_size_level0,
                "target_patch_size": int(params.tile_px),
                "target_mpp": float(params.mpp),
                "level0_mpp": float(slide.mpp),
                "overlap": 0,
            }
        )


def tile_slide(
    slide: Slide,
    mask: np.ndarray,
    mask_mpp: float,
    zarr_path: str | os.PathLike[str],
    grid_path: str | os.PathLike[str],
    h5_path: str | os.PathLike[str] | None = None,
    params: TilingParams = TilingParams(),
    threads: int = 1,
    progress: bool = False,
) -> TileGrid:
    """Tile one slide: tiles.zarr, grid.parquet and (optionally) patches.h5, all atomically.

    A slide without tissue gives an empty grid (0 rows) and a Zarr image of shape (3, 0, 0).
    """
    from bcpath.io import atomic_dir, atomic_path

    grid = plan_grid(mask, mask_mpp, slide, params)
    logger.info(
        "slide %s: %d tissue tiles of %d px at %.3f µm/px (grid %d×%d, %s)",
        slide.slide_id, grid.n_tiles, params.tile_px, params.mpp, grid.n_rows, grid.n_cols, params.compression,
    )
    with atomic_dir(zarr_path) as tmp:
        write_tiles(slide, grid, params, tmp, threads=threads, progress=progress)
    with atomic_path(grid_path) as tmp:
        grid_table(grid).to_parquet(tmp, index=False)
    if h5_path is not None:
        write_patch_coords_h5(Path(h5_path), slide, grid, params)
    return grid


def params_dict(params: TilingParams) -> dict[str, Any]:
    return asdict(params)
