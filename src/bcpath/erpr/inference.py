"""Stage 1 of ER/PR/HER2 (Gamble et al. 2021): batched patch inference over a slide's tiles.zarr.

The engine never knows which architecture it runs: it takes any ``torch.nn.Module`` that maps
(N, 3, P, P) normalised float inputs to (N, n_classes) logits, plus the registry entry
(:class:`bcpath.models.registry.ModelSpec`) that says P, the µm/px and the normalisation.

Patch positions (analysis pixels of tiles.zarr, ``s`` = stride, ``P`` = patch side): patch ``j``
along an axis has its top-left corner at ``j·s + (s − P) // 2``, so its centre is the centre of
the heatmap cell ``[j·s, (j+1)·s)``. A position is used when its patch centre falls in a tile
listed in grid.parquet. With ``s == P == tile_px`` this is exactly one patch per grid tile, at
the tile's own corner; with ``s < P`` patches overlap (and may reach past the image edge by up
to ``(P − s) / 2`` px, read as white background, like the unwritten chunks of tiles.zarr).

Output (``predictions/{model}.parquet``), one row per patch, sorted by (y, x):

    patch_id   int64   0..N-1 in row order
    x, y       int64   top-left corner in tiles.zarr (analysis) px; may be slightly negative
                       at the image edge when stride < patch
    x0, y0     int64   top-left corner in level-0 slide px (OpenSlide coordinates):
                       round(origin + x · level0_px_per_px)
    p_0..p_K-1 float32 softmax probabilities, one column per class in registry order (for the
                       demo ER/PR/HER2 models: p_0 = biomarker-positive invasive carcinoma,
                       p_1 = biomarker-negative invasive carcinoma, p_2 = non-tumor)

Class columns are named by index rather than by a slug of the class name so that stage 2 reads
the same columns for every biomarker; the class names, model id, µm/px, patch and stride travel
with the file as parquet schema metadata (key ``bcpath``, JSON), restored into ``df.attrs`` by
:func:`read_predictions`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcpath.engine import autocast, choose_device, granted_threads, torch_threads
from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

PROBABILITY_PREFIX = "p_"
CHUNK_CACHE = 64
"""Decoded tiles.zarr chunks kept per dataset (per DataLoader worker)."""
COORDINATE_COLUMNS = ("patch_id", "x", "y", "x0", "y0")
METADATA_KEY = b"bcpath"


def probability_columns(n_classes: int) -> list[str]:
    """Names of the class-probability columns: ``["p_0", ..., "p_{n-1}"]`` (registry order)."""
    return [f"{PROBABILITY_PREFIX}{index}" for index in range(n_classes)]


def _probability_columns_of(columns: Any) -> list[str]:
    """The ``p_<int>`` columns of a table, in class order."""
    found = [c for c in columns if isinstance(c, str) and c.startswith(PROBABILITY_PREFIX) and c[2:].isdigit()]
    return sorted(found, key=lambda c: int(c[2:]))


def patch_origins(
    grid_rows: np.ndarray,
    grid_cols: np.ndarray,
    tile_px: int,
    image_shape: tuple[int, int],
    patch_px: int,
    stride_px: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (x, y) in analysis px of the patches covering the selected tiles.

    Args:
        grid_rows, grid_cols: (N,) tile indices of the selected (tissue) tiles.
        tile_px: tile edge in px.
        image_shape: (H, W) of the tiles.zarr image in px.
        patch_px: patch side P in px.
        stride_px: stride s in px (0 < s).

    Returns:
        (x, y), each (M,) int64, sorted by (y, x). Patch j along an axis starts at
        ``j·s + (s − P) // 2``; kept when its centre lies in a selected tile.
    """
    if stride_px <= 0 or patch_px <= 0:
        raise ValueError(f"patch_px and stride_px must be positive, got {patch_px} and {stride_px}")
    height, width = image_shape
    offset = (stride_px - patch_px) // 2
    selected = np.zeros((max(1, math.ceil(height / tile_px)), max(1, math.ceil(width / tile_px))), dtype=bool)
    if len(grid_rows):
        selected[np.asarray(grid_rows, dtype=np.int64), np.asarray(grid_cols, dtype=np.int64)] = True
    n_y, n_x = math.ceil(height / stride_px), math.ceil(width / stride_px)
    xs = np.arange(n_x, dtype=np.int64) * stride_px + offset
    ys = np.arange(n_y, dtype=np.int64) * stride_px + offset
    # Patch centre (floor) → tile index; centres stay inside the image (j·s + s/2 < ceil(W/s)·s).
    col_of = np.clip((xs + patch_px // 2) // tile_px, 0, selected.shape[1] - 1)
    row_of = np.clip((ys + patch_px // 2) // tile_px, 0, selected.shape[0] - 1)
    inside_x = (xs + patch_px // 2) < width
    inside_y = (ys + patch_px // 2) < height
    keep = selected[row_of[:, None], col_of[None, :]] & inside_y[:, None] & inside_x[None, :]
    iy, ix = np.nonzero(keep)  # row-major: sorted by y, then x
    return xs[ix], ys[iy]


class PatchDataset:
    """Patches of a tiles.zarr image as a torch map-style dataset of uint8 tensors.

    ``dataset[i]`` is ``(patch, i)``: patch a (3, P, P) uint8 RGB tensor at the analysis µm/px
    (normalisation happens on the device, so DataLoader workers ship uint8), i the row index.
    Positions are :func:`patch_origins` of the grid tiles, sorted by (y, x); parts of a patch
    outside the image read as white (255), the background value of tiles.zarr.

    The dataset pickles without the Zarr array: each DataLoader worker opens tiles.zarr on its
    first ``__getitem__``.

    Chunks are decoded once, not once per patch: a small LRU cache (``CHUNK_CACHE`` chunks,
    about 0.8 MB each at 512 px) holds the decoded tiles, enough for a full row of tiles, so
    the (y, x) patch order reads each chunk once even when 16 patches share a tile.

    Attributes:
        x, y: (N,) int64 top-left corners in analysis px.
        attrs: the ``bcpath`` block of tiles.zarr's attributes (origin_x0, origin_y0,
            level0_px_per_px, mpp, tile_px, ...).
        image_shape: (H, W) of the tiles.zarr image.
    """

    def __init__(
        self,
        tiles_zarr: str | os.PathLike[str],
        grid_parquet: str | os.PathLike[str],
        patch_px: int,
        stride_px: int | None = None,
        tissue_mask: np.ndarray | None = None,
        mask_mpp: float | None = None,
    ) -> None:
        import pandas as pd
        import zarr

        from bcpath.tiling import open_tiles

        self.tiles_zarr = str(tiles_zarr)
        self.patch_px = int(patch_px)
        self.stride_px = int(stride_px if stride_px is not None else patch_px)
        group = zarr.open_group(self.tiles_zarr, mode="r")
        meta: Any = group.attrs.get("bcpath", {})
        self.attrs: dict[str, Any] = dict(meta) if isinstance(meta, dict) else {}
        if not self.attrs:
            raise BcpathError(f"{tiles_zarr}: no 'bcpath' attributes; make it with bcpath.tiling.tile_slide")
        array = open_tiles(self.tiles_zarr)
        self.image_shape: tuple[int, int] = (int(array.shape[1]), int(array.shape[2]))
        grid = pd.read_parquet(grid_parquet, columns=["row", "col"])
        self.x, self.y = patch_origins(
            grid["row"].to_numpy(), grid["col"].to_numpy(), int(self.attrs["tile_px"]),
            self.image_shape, self.patch_px, self.stride_px,
        )
        if tissue_mask is not None:
            if mask_mpp is None:
                raise ValueError("tissue_mask needs mask_mpp (µm/px of the mask)")
            keep = self._centres_on(tissue_mask, float(mask_mpp))
            self.x, self.y = self.x[keep], self.y[keep]
        self._array: Any = None
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] | None = None
        self._tile_px = int(self.attrs["tile_px"])

    def _centres_on(self, mask: np.ndarray, mask_mpp: float) -> np.ndarray:
        """(N,) bool: patch centre lies on the tissue mask (outside the mask's extent = False)."""
        scale = float(self.attrs["level0_px_per_px"])
        to_mask = float(self.attrs["level0_mpp"]) / mask_mpp
        cx = (float(self.attrs["origin_x0"]) + (self.x + self.patch_px / 2) * scale) * to_mask
        cy = (float(self.attrs["origin_y0"]) + (self.y + self.patch_px / 2) * scale) * to_mask
        col, row = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
        inside = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
        keep = np.zeros(len(self.x), dtype=bool)
        keep[inside] = mask[row[inside], col[inside]]
        return keep

    def __len__(self) -> int:
        return int(len(self.x))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # reopened lazily in each worker
        state["_chunks"] = None
        return state

    def _chunk(self, row: int, col: int) -> np.ndarray:
        """Decoded tile (row, col) of tiles.zarr, (3, h, w) uint8 (edge tiles are smaller)."""
        if self._array is None:
            from bcpath.tiling import open_tiles

            self._array = open_tiles(self.tiles_zarr)
        if self._chunks is None:
            self._chunks = OrderedDict()
        key = (row, col)
        chunk = self._chunks.get(key)
        if chunk is None:
            tile = self._tile_px
            chunk = np.asarray(self._array[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile])
            self._chunks[key] = chunk
            if len(self._chunks) > CHUNK_CACHE:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return chunk

    def read_patch(self, x: int, y: int) -> np.ndarray:
        """(3, P, P) uint8 patch with top-left (x, y); outside the image is white."""
        size, tile = self.patch_px, self._tile_px
        height, width = self.image_shape
        top, left = max(y, 0), max(x, 0)
        bottom, right = min(y + size, height), min(x + size, width)
        if bottom <= top or right <= left:
            return np.full((3, size, size), 255, dtype=np.uint8)
        rows = range(top // tile, (bottom - 1) // tile + 1)
        cols = range(left // tile, (right - 1) // tile + 1)
        if len(rows) == 1 and len(cols) == 1 and (top, left, bottom, right) == (y, x, y + size, x + size):
            r0, c0 = rows[0] * tile, cols[0] * tile
            return self._chunk(rows[0], cols[0])[:, top - r0 : bottom - r0, left - c0 : right - c0].copy()
        patch = np.full((3, size, size), 255, dtype=np.uint8)
        for row in rows:
            for col in cols:
                r0, c0 = row * tile, col * tile
                y_a, y_b = max(top, r0), min(bottom, r0 + tile)
                x_a, x_b = max(left, c0), min(right, c0 + tile)
                patch[:, y_a - y : y_b - y, x_a - x : x_b - x] = self._chunk(row, col)[:, y_a - r0 : y_b - r0, x_a - c0 : x_b - c0]
        return patch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torch

        patch = self.read_patch(int(self.x[index]), int(self.y[index]))
        return torch.from_numpy(np.ascontiguousarray(patch)), int(index)

    def level0(self) -> tuple[np.ndarray, np.ndarray]:
        """(x0, y0) level-0 px of every patch's top-left corner, (N,) int64 each."""
        scale = float(self.attrs["level0_px_per_px"])
        x0 = np.round(float(self.attrs["origin_x0"]) + self.x * scale).astype(np.int64)
        y0 = np.round(float(self.attrs["origin_y0"]) + self.y * scale).astype(np.int64)
        return x0, y0


def predict_slide(
    model: torch.nn.Module,
    spec: ModelSpec,
    tiles_zarr: str | os.PathLike[str],
    grid_parquet: str | os.PathLike[str],
    stride_px: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = None,
    tissue_mask: np.ndarray | None = None,
    mask_mpp: float | None = None,
) -> pd.DataFrame:
    """Class probabilities for every patch of a slide's tissue tiles.

    Args:
        model: (N, 3, P, P) normalised float → (N, n_classes) logits, e.g.
            :func:`bcpath.models.registry.build_model` + ``load_weights``.
        spec: the model's registry entry (patch_px P, mpp, mean/std, classes).
        tiles_zarr: the slide's tiles.zarr (must be at ``spec.mpp`` µm/px).
        grid_parquet: the slide's grid.parquet.
        stride_px: patch stride in analysis px; None = ``spec.patch_px`` (no overlap).
        batch_size: patches per forward pass.
        num_workers: DataLoader worker processes; None = 0 on CPU (the cores go to the model)
            and ``min(8, threads − 1)`` on CUDA.
        device: "cpu", "cuda", a torch.device; None = CUDA when available, else CPU.
        progress: show a tqdm bar (to stderr, i.e. the rule's log; updates at most every 30 s).
        threads: cores granted to the job; None = the process's CPU affinity. On CPU,
            ``torch.set_num_threads(threads)`` for the duration of the call.
        tissue_mask, mask_mpp: the slide's tissue mask (H, W) bool and its µm/px
            (tissue/mask.png); when given, only patches whose centre lies on tissue are
            predicted, so glass inside a tissue tile stays NaN (black) in the heatmaps.

    Returns:
        One row per patch, sorted by (y, x): patch_id, x, y, x0, y0 (int64) and ``p_0..``
        (float32 softmax, registry class order); see the module docstring. ``df.attrs["bcpath"]``
        holds model_id, classes, mpp, patch_px, stride_px and the slide's origin.

    Raises:
        BcpathError: tiles.zarr is at another µm/px than the model expects, or the model's
            output width is not the number of classes.
    """
    return predict_slide_models(
        [(model, spec)], tiles_zarr, grid_parquet, stride_px, batch_size, num_workers, device,
        progress, threads, tissue_mask, mask_mpp,
    )[0]


def predict_slide_models(
    models: Sequence[tuple[torch.nn.Module, ModelSpec]],
    tiles_zarr: str | os.PathLike[str],
    grid_parquet: str | os.PathLike[str],
    stride_px: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = None,
    tissue_mask: np.ndarray | None = None,
    mask_mpp: float | None = None,
) -> list[pd.DataFrame]:
    """:func:`predict_slide` for several models on one read of the tiles (rule predict_patches).

    Models that read the same patches (same ``patch_px`` and ``mpp``, hence the same stride
    when ``stride_px`` is None) share one :class:`PatchDataset` and one DataLoader: each
    batch of uint8 patches is decoded once and given to every model of the group, each with
    its own normalisation. Every model's table equals what :func:`predict_slide` returns
    for it alone (same patches, batches and order). Arguments as :func:`predict_slide`.

    Returns:
        One predictions table per model, in the order of ``models``.
    """
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    dev = choose_device(device)
    on_cuda = dev.type == "cuda"
    n_threads = threads if threads is not None else granted_threads()
    workers = num_workers if num_workers is not None else (min(8, max(0, n_threads - 1)) if on_cuda else 0)
    groups: dict[tuple[int, int, float], list[int]] = {}
    for k, (_, spec) in enumerate(models):
        stride = int(stride_px if stride_px is not None else spec.patch_px)
        groups.setdefault((int(spec.patch_px), stride, float(spec.mpp)), []).append(k)
    tables: list[pd.DataFrame | None] = [None] * len(models)
    for (patch_px, stride, _), members in groups.items():
        dataset = PatchDataset(tiles_zarr, grid_parquet, patch_px, stride, tissue_mask, mask_mpp)
        tiles_mpp = float(dataset.attrs["mpp"])
        for k in members:
            spec = models[k][1]
            if not math.isclose(tiles_mpp, spec.mpp, rel_tol=1e-3):
                raise BcpathError(
                    f"model {spec.model_id} expects {spec.mpp} µm/px but {tiles_zarr} is at {tiles_mpp} µm/px; "
                    f"tile the slide at the model's resolution (tiling mpp: {spec.mpp})"
                )
        probabilities = [np.zeros((len(dataset), models[k][1].num_classes), dtype=np.float32) for k in members]
        names = ", ".join(models[k][1].model_id for k in members)
        logger.info(
            "model(s) %s: %d patches of %d px (stride %d) from %s on %s, batch %d, %d workers",
            names, len(dataset), patch_px, stride, tiles_zarr, dev, batch_size, workers,
        )
        if len(dataset):
            with torch_threads(n_threads, dev):
                nets, means, stds = [], [], []
                for k in members:
                    model, spec = models[k]
                    # channels_last on CPU too (1.2-1.5x faster convolutions here, same outputs up to rounding)
                    model = model.eval().to(dev).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                    nets.append(model)
                    means.append(torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1))
                    stds.append(torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1))
                loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
                    dataset,  # type: ignore[arg-type]
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=workers,
                    pin_memory=on_cuda,
                    persistent_workers=False,
                    prefetch_factor=4 if workers > 0 else None,
                )
                bar = tqdm(total=len(dataset) * len(members), desc=names, unit="patch", disable=not progress, mininterval=30)
                with torch.inference_mode():
                    for batch, index in loader:
                        on_device = batch.to(dev, non_blocking=on_cuda)
                        rows = index.numpy()
                        for j, k in enumerate(members):
                            spec = models[k][1]
                            inputs = on_device.float().div_(255.0).sub_(means[j]).div_(stds[j])
                            inputs = inputs.contiguous(memory_format=torch.channels_last)
                            with autocast(dev):
                                output = nets[j](inputs)
                            logits = getattr(output, "logits", output)  # InceptionOutputs in train mode
                            if logits.shape[1] != spec.num_classes:
                                raise BcpathError(
                                    f"model {spec.model_id}: {logits.shape[1]} outputs but the registry lists "
                                    f"{spec.num_classes} classes; build the model with build_model(spec)"
                                )
                            probabilities[j][rows] = torch.softmax(logits.float(), dim=1).cpu().numpy()
                            bar.update(len(rows))
                bar.close()
        x0, y0 = dataset.level0()
        for j, k in enumerate(members):
            spec = models[k][1]
            columns = probability_columns(spec.num_classes)
            table = pd.DataFrame(
                {
                    "patch_id": np.arange(len(dataset), dtype=np.int64),
                    "x": dataset.x.astype(np.int64),
                    "y": dataset.y.astype(np.int64),
                    "x0": x0,
                    "y0": y0,
                    **{name: probabilities[j][:, c] for c, name in enumerate(columns)},
                },
                columns=[*COORDINATE_COLUMNS, *columns],
            )
            table.attrs["bcpath"] = {
                "model_id": spec.model_id,
                "classes": list(spec.classes),
                "mpp": spec.mpp,
                "patch_px": spec.patch_px,
                "stride_px": stride,
                "origin_x0": dataset.attrs["origin_x0"],
                "origin_y0": dataset.attrs["origin_y0"],
                "level0_px_per_px": dataset.attrs["level0_px_per_px"],
                "image_shape": list(dataset.image_shape),
            }
            tables[k] = table
    return [t for t in tables if t is not None]


def write_predictions(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a predictions table as parquet, atomically; ``df.attrs["bcpath"]`` goes to the
    schema metadata (key ``bcpath``, JSON) so class names travel with the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bcpath.io import atomic_path, json_ready

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(json_ready(df.attrs.get("bcpath", {}))).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``predictions/{model}.parquet``; ``df.attrs["bcpath"]`` gets the stored metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path))
    df = table.to_pandas()
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    df.attrs["bcpath"] = json.loads(raw) if raw else {}
    return df
