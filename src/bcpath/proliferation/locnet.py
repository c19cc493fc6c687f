"""Tumour localisation with a fully convolutional "LocNet" (Shah et al.'s first step).

The net (:class:`bcpath.models.nets.LocNet`) reads tiles.zarr at the analysis µm/px (2 µm/px by
default; the paper fed 1k×1k patches at 10× and stitched) and gives one tumour logit per
``2**depth`` px cell (16 µm with depth 3). It is trained on annotated regions, densely: every
output cell's target is the fraction of its area inside a tumour annotation.

Two stages, as the paper:

- stage 1: patches centred in annotated tumour (positives) and at random elsewhere in the
  tissue (negatives); unannotated tissue counts as not tumour.
- stage 2: the stage-1 net is run over the training slides; cells it calls tumour with
  ≥ ``confidence`` (0.95) in tissue that no annotation covers become tumour targets (the
  paper's confident additions), patches centred on them and on the cells stage 1 got most
  wrong (hard examples) are added, and training continues from the stage-1 weights.

Tumour annotation classes: any class in ``tumor_classes`` or whose name ends in "tumor",
"tumour" or "carcinoma" (but not "non-tumor"), e.g. the demo's "ER-positive tumor".
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

NON_TUMOR_NAMES = {"non-tumor", "non-tumour", "nontumor", "normal", "stroma", "other"}


def is_tumor_class(name: str | None, tumor_classes: Sequence[str] = ("Tumor", "Tumour")) -> bool:
    """True for a tumour annotation class (listed, or ending in tumor/tumour/carcinoma)."""
    if not name:
        return False
    lower = name.strip().lower()
    if lower in NON_TUMOR_NAMES or lower.startswith("non-") or lower.startswith("non "):
        return False
    return name in tumor_classes or lower.endswith(("tumor", "tumour", "carcinoma"))


def annotation_masks(
    annotations: str | os.PathLike[str], shape: tuple[int, int], px_per_level0: float, origin_level0: tuple[float, float],
    tumor_classes: Sequence[str] = ("Tumor", "Tumour"),
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(tumour, annotated) masks of ``shape`` from QuPath GeoJSON polygons in level-0 px.

    ``px_per_level0`` scales level-0 px to the mask's px; ``origin_level0`` is the level-0
    position of mask pixel (0, 0). ``annotated`` covers every region of any class.
    """
    import cv2

    from bcpath import geojson

    tumor = np.zeros(shape, bool)
    annotated = np.zeros(shape, bool)
    ox, oy = origin_level0
    for feat in geojson.read_geojson(annotations):
        is_tumor = is_tumor_class(geojson.classification_name(feat), tumor_classes)
        for rings in geojson.polygon_rings(feat):
            polygons = [np.round((np.asarray(r, dtype=np.float64) - (ox, oy)) * px_per_level0).astype(np.int32) for r in rings]
            if not polygons or len(polygons[0]) < 3:
                continue
            # Each polygon on its own box: a hole cuts its own polygon, never another feature.
            x0, y0 = np.maximum(polygons[0].min(0), 0)
            x1, y1 = np.minimum(polygons[0].max(0) + 1, (shape[1], shape[0]))
            if x1 <= x0 or y1 <= y0:
                continue
            local = np.zeros((y1 - y0, x1 - x0), np.uint8)
            for index, points in enumerate(polygons):
                cv2.fillPoly(local, [points - (x0, y0)], 1 if index == 0 else 0)
            annotated[y0:y1, x0:x1] |= local.astype(bool)
            if is_tumor:
                tumor[y0:y1, x0:x1] |= local.astype(bool)
    return tumor, annotated


def written_tiles_mask(grid_parquet: str | os.PathLike[str], shape: tuple[int, int], tile_px: int) -> NDArray[np.bool_]:
    """(H, W) bool over a tiles.zarr image: True inside the tiles grid.parquet lists (tissue)."""
    import pandas as pd

    grid = pd.read_parquet(grid_parquet, columns=["row", "col"])
    tissue = np.zeros(shape, bool)
    for row, col in zip(grid["row"], grid["col"], strict=True):
        tissue[row * tile_px : (row + 1) * tile_px, col * tile_px : (col + 1) * tile_px] = True
    return tissue


@dataclass
class LocSlide:
    """One slide's tiles and masks for LocNet training, all at the tiles.zarr µm/px.

    Attributes:
        slide_id: id; split: train or tune.
        tiles: the tiles.zarr level-0 array (3, H, W) uint8 (read lazily).
        tissue: (H, W) bool, written tiles (tissue) of the grid.
        tumor: (H, W) float32 target: 1 in tumour annotations, 0 elsewhere.
        annotated: (H, W) bool, covered by some annotation.
    """

    slide_id: str
    split: str
    tiles: Any
    tissue: NDArray[np.bool_]
    tumor: NDArray[np.float32]
    annotated: NDArray[np.bool_]


def load_loc_slide(
    slide_id: str, split: str, tiles_zarr: str | os.PathLike[str], grid_parquet: str | os.PathLike[str],
    annotations: str | os.PathLike[str], tumor_classes: Sequence[str],
) -> LocSlide:
    """Read one slide's tiles.zarr, tissue grid and annotations into a :class:`LocSlide`."""
    import zarr

    from bcpath.tiling import open_tiles

    array = open_tiles(tiles_zarr)
    attrs: Any = zarr.open_group(str(tiles_zarr), mode="r").attrs["bcpath"]
    meta = dict(attrs)
    height, width = int(array.shape[1]), int(array.shape[2])
    tissue = written_tiles_mask(grid_parquet, (height, width), int(meta["tile_px"]))
    tumor, annotated = annotation_masks(
        annotations, (height, width), 1.0 / float(meta["level0_px_per_px"]),
        (float(meta["origin_x0"]), float(meta["origin_y0"])), tumor_classes,
    )
    return LocSlide(slide_id, split, array, tissue, (tumor & tissue).astype(np.float32), annotated)


@dataclass(frozen=True)
class LocNetTrainConfig:
    """LocNet training settings.

    Attributes:
        patch_px: training patch edge at the tiles' µm/px (multiple of 2**depth).
        patches_per_slide: patches drawn per slide per class side (tumour-centred, random tissue).
        epochs, patience, stage2_epochs: per stage (stage2_epochs 0 = stage 1 only).
        confidence: stage 2 takes unannotated cells with p ≥ this as tumour.
        batch_size, lr, weight_decay: AdamW.
        seed, threads, device: repeatability and resources.
    """

    patch_px: int = 128
    patches_per_slide: int = 32
    epochs: int = 6
    patience: int = 2
    stage2_epochs: int = 2
    confidence: float = 0.95
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int | None = None
    device: str | None = None


def _read_window(tiles: Any, y: int, x: int, size: int) -> NDArray[np.uint8]:
    """(3, size, size) uint8 from a (3, H, W) array; outside is white."""
    height, width = int(tiles.shape[1]), int(tiles.shape[2])
    out = np.full((3, size, size), 255, np.uint8)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, height), min(x + size, width)
    if y1 > y0 and x1 > x0:
        out[:, y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(tiles[:, y0:y1, x0:x1])
    return out


def _cell_targets(mask: NDArray[np.float32], y: int, x: int, size: int, down: int) -> NDArray[np.float32]:
    """Area fraction of ``mask`` in each down×down cell of the window (size // down)²."""
    window = np.zeros((size, size), np.float32)
    height, width = mask.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, height), min(x + size, width)
    if y1 > y0 and x1 > x0:
        window[y0 - y : y1 - y, x0 - x : x1 - x] = mask[y0:y1, x0:x1]
    n = size // down
    return window.reshape(n, down, n, down).mean(axis=(1, 3))


def _sample_centres(slide: LocSlide, rng: np.random.Generator, n: int, where: NDArray[np.bool_]) -> NDArray[np.int64]:
    """(k, 2) random (y, x) positions in ``where`` (k ≤ n; thinned to a coarse grid first)."""
    step = 8
    ys, xs = np.nonzero(where[::step, ::step])
    if len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    pick = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
    return np.stack([ys[pick] * step, xs[pick] * step], axis=1).astype(np.int64)


def build_patches(
    slides: Sequence[LocSlide], config: LocNetTrainConfig, down: int, seed: int, extra: dict[str, NDArray[np.int64]] | None = None,
    targets: dict[str, NDArray[np.float32]] | None = None,
) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]]:
    """Patches (N, 3, P, P) uint8, targets (N, P/d, P/d) float32 and weights (N, P/d, P/d).

    Per slide: ``patches_per_slide`` centred in tumour and as many at random in tissue, plus
    ``extra[slide_id]`` centres; targets from ``targets[slide_id]`` when given (stage 2) else
    the slide's tumour mask; weight 0 outside tissue.
    """
    size = config.patch_px
    images, target_list, weight_list = [], [], []
    for index, slide in enumerate(slides):
        rng = np.random.default_rng((seed, index))
        centres = [
            _sample_centres(slide, rng, config.patches_per_slide, slide.tumor > 0.5),
            _sample_centres(slide, rng, config.patches_per_slide, slide.tissue),
        ]
        if extra and slide.slide_id in extra:
            centres.append(extra[slide.slide_id])
        mask = targets[slide.slide_id] if targets and slide.slide_id in targets else slide.tumor
        tissue = slide.tissue.astype(np.float32)
        for cy, cx in np.concatenate(centres):
            y = int(cy) - size // 2 + int(rng.integers(-8, 9))
            x = int(cx) - size // 2 + int(rng.integers(-8, 9))
            images.append(_read_window(slide.tiles, y, x, size))
            target_list.append(_cell_targets(mask, y, x, size, down))
            weight_list.append((_cell_targets(tissue, y, x, size, down) > 0).astype(np.float32))
    if not images:
        raise BcpathError("LocNet: no training patches (no tissue in the training slides)")
    return np.stack(images), np.stack(target_list), np.stack(weight_list)


def _augment_batch(images: NDArray[np.uint8], targets: NDArray[np.float32], weights: NDArray[np.float32], rng: np.random.Generator) -> tuple[Any, Any, Any]:
    """Random 90° rotation / flip per batch (same for image and targets) and colour jitter."""
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    imgs = np.rot90(images, k, axes=(2, 3))
    tgts, wts = np.rot90(targets, k, axes=(1, 2)), np.rot90(weights, k, axes=(1, 2))
    if flip:
        imgs, tgts, wts = imgs[..., ::-1], tgts[..., ::-1], wts[..., ::-1]
    jittered = imgs.astype(np.float32) * rng.uniform(0.9, 1.1, (len(imgs), 3, 1, 1)) + rng.uniform(-12, 12, (len(imgs), 3, 1, 1))
    return np.clip(jittered, 0, 255), np.ascontiguousarray(tgts), np.ascontiguousarray(wts)


def _normalise(images: Any, spec: ModelSpec, device: Any) -> torch.Tensor:
    import torch

    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=device).div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _fit_stage(
    model: torch.nn.Module, spec: ModelSpec, train: tuple[Any, Any, Any], val: tuple[Any, Any, Any],
    out_dir: Path, epochs: int, config: LocNetTrainConfig, device: Any, name: str,
) -> dict[str, Any]:
    """One training stage through the engine; returns the FitResult summary + val metrics."""
    import torch

    from bcpath.engine import fit

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images, targets, weights = train

    def weighted_bce(logits: torch.Tensor, target: Any, weight: Any) -> torch.Tensor:
        t = torch.as_tensor(target, device=device)
        w = torch.as_tensor(weight, device=device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none")
        return (loss * w).sum() / w.sum().clamp_min(1.0)

    def train_epoch(epoch: int) -> dict[str, float]:
        rng = np.random.default_rng((config.seed, epoch, len(name)))
        order = rng.permutation(len(images))
        model.train()
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = np.sort(order[start : start + config.batch_size])
            if len(idx) < 2:
                continue
            imgs, tgts, wts = _augment_batch(images[idx], targets[idx], weights[idx], rng)
            loss = weighted_bce(model(_normalise(imgs, spec, device)), tgts, wts)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        return {"train_loss": total / max(1, batches)}

    def validate(epoch: int) -> dict[str, float]:
        v_images, v_targets, v_weights = val
        model.eval()
        losses, hits, counts = [], 0.0, 0.0
        with torch.inference_mode():
            for start in range(0, len(v_images), 32):
                logits = model(_normalise(v_images[start : start + 32], spec, device))
                losses.append(float(weighted_bce(logits, v_targets[start : start + 32], v_weights[start : start + 32])))
                p = torch.sigmoid(logits[:, 0]).cpu().numpy()
                w = v_weights[start : start + 32] > 0
                hits += float(((p >= 0.5) == (v_targets[start : start + 32] >= 0.5))[w].sum())
                counts += float(w.sum())
        return {"val_loss": float(np.mean(losses)), "val_cell_accuracy": hits / max(counts, 1.0)}

    result = fit(model, train_epoch, validate, out_dir, epochs, config.patience, name=name)
    best = next(row for row in result.rows if row["epoch"] == result.best_epoch)
    model.load_state_dict(torch.load(result.weights_path, map_location=device, weights_only=True))
    return {**result.summary(), "val_loss": best["val_loss"], "val_cell_accuracy": best["val_cell_accuracy"]}


def predict_tumor_map(model: torch.nn.Module, spec: ModelSpec, tiles: Any, tissue: NDArray[np.bool_] | None = None, window_px: int = 512, margin_px: int = 32) -> NDArray[np.float32]:
    """p(tumour) per LocNet cell over a whole tiles.zarr image, streamed in windows.

    Args:
        model: a LocNet (``downsample`` attribute); spec: its registry entry (mean/std).
        tiles: (3, H, W) uint8 array (zarr or numpy).
        tissue: optional (H, W) bool; cells with no tissue are NaN and windows without tissue skipped.
        window_px, margin_px: core window and context margin (multiples of the downsample).

    Returns:
        (ceil(H / d), ceil(W / d)) float32, NaN off tissue.
    """
    import torch

    from bcpath.engine import autocast

    down = int(getattr(model, "downsample", 8))
    height, width = int(tiles.shape[1]), int(tiles.shape[2])
    n_rows, n_cols = math.ceil(height / down), math.ceil(width / down)
    out = np.full((n_rows, n_cols), np.nan, np.float32)
    device = next(model.parameters()).device
    model.eval()
    size = window_px + 2 * margin_px
    with torch.inference_mode():
        for y in range(0, height, window_px):
            for x in range(0, width, window_px):
                if tissue is not None and not tissue[y : y + window_px, x : x + window_px].any():
                    continue
                patch = _read_window(tiles, y - margin_px, x - margin_px, size)
                with autocast(device):
                    logits = model(_normalise(patch[None], spec, device))
                p = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
                m = margin_px // down
                core = p[m : m + window_px // down, m : m + window_px // down]
                r0, c0 = y // down, x // down
                h, w = min(core.shape[0], n_rows - r0), min(core.shape[1], n_cols - c0)
                out[r0 : r0 + h, c0 : c0 + w] = core[:h, :w]
    if tissue is not None:
        cells = _cell_targets(tissue.astype(np.float32), 0, 0, max(n_rows, n_cols) * down, down)[:n_rows, :n_cols] > 0
        out[~cells] = np.nan
    return out


def train_locnet(
    spec: ModelSpec, slides: Sequence[LocSlide], out_dir: str | os.PathLike[str], config: LocNetTrainConfig = LocNetTrainConfig()
) -> dict[str, Any]:
    """Train the LocNet in two stages (module doc); writes best.pt, train.json, logs per stage.

    Args:
        spec: registry entry of kind tumor_locnet.
        slides: :class:`LocSlide` s with split "train" or "tune" (tune selects the epoch).

    Returns:
        The train.json content (sha256 of best.pt, per-stage summaries, counts).
    """
    import shutil

    import torch

    from bcpath.engine import choose_device, seed_everything, torch_threads
    from bcpath.io import atomic_path, write_json
    from bcpath.models.registry import build_model
    from bcpath.wsi.reader import file_sha256

    train = [s for s in slides if s.split == "train"]
    tune = [s for s in slides if s.split == "tune"]
    if not train or not any(s.tumor.any() for s in train):
        raise BcpathError(
            f"model {spec.model_id}: no train slide with tumour annotations; give `annotations` (QuPath GeoJSON with "
            "tumour regions) and split=train in the sample sheet"
        )
    if not tune:
        raise BcpathError(f"model {spec.model_id}: no tune slide to choose the epoch on; mark slides split=tune")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = choose_device(config.device)
    model = build_model(spec).to(device)
    down = int(getattr(model, "downsample", 8))
    if config.patch_px % down:
        raise BcpathError(f"model {spec.model_id}: patch_px {config.patch_px} must be a multiple of {down}")
    record: dict[str, Any] = {"model_id": spec.model_id, "config": config.__dict__, "train_slides": [s.slide_id for s in train], "tune_slides": [s.slide_id for s in tune]}
    with torch_threads(config.threads, device):
        train_data = build_patches(train, config, down, config.seed)
        val_data = build_patches(tune, config, down, config.seed + 1)
        record["stage1"] = _fit_stage(model, spec, train_data, val_data, out / "stage1", config.epochs, config, device, f"{spec.model_id} stage 1")
        final = out / "stage1" / "best.pt"
        if config.stage2_epochs > 0:
            extra: dict[str, NDArray[np.int64]] = {}
            targets: dict[str, NDArray[np.float32]] = {}
            added_cells, hard = 0, 0
            for slide in train:
                p = predict_tumor_map(model, spec, slide.tiles, slide.tissue)
                cells = np.nan_to_num(p, nan=0.0)
                unannotated = _cell_targets((~slide.annotated & slide.tissue).astype(np.float32), 0, 0, max(cells.shape) * down, down)[: cells.shape[0], : cells.shape[1]] > 0.5
                confident = (cells >= config.confidence) & unannotated
                target = slide.tumor.copy()
                if confident.any():
                    up = np.kron(confident, np.ones((down, down), bool))[: target.shape[0], : target.shape[1]]
                    target[up] = 1.0
                    targets[slide.slide_id] = target
                truth = _cell_targets(target, 0, 0, max(cells.shape) * down, down)[: cells.shape[0], : cells.shape[1]]
                wrong = (np.abs(cells - truth) > 0.5) & ~np.isnan(p)
                rng = np.random.default_rng((config.seed, 2, zlib.crc32(slide.slide_id.encode())))
                picks = [np.argwhere(confident), np.argwhere(wrong)]
                chosen = [q[rng.choice(len(q), size=min(len(q), config.patches_per_slide // 2), replace=False)] for q in picks if len(q)]
                if chosen:
                    extra[slide.slide_id] = (np.concatenate(chosen) * down + down // 2).astype(np.int64)
                added_cells += int(confident.sum())
                hard += int(wrong.sum())
            logger.info("%s stage 2: %d confident unannotated tumour cells, %d cells wrong after stage 1", spec.model_id, added_cells, hard)
            train_data = build_patches(train, config, down, config.seed + 2, extra, targets)
            record["stage2"] = {
                **_fit_stage(model, spec, train_data, val_data, out / "stage2", config.stage2_epochs, config, device, f"{spec.model_id} stage 2"),
                "confident_cells_added": added_cells, "hard_cells": hard,
            }
            if record["stage2"]["val_loss"] <= record["stage1"]["val_loss"]:
                final = out / "stage2" / "best.pt"
            else:
                logger.info("%s: stage 2 did not lower the tune loss; keeping stage 1's weights", spec.model_id)
    with atomic_path(out / "best.pt") as tmp:
        shutil.copyfile(final, tmp)
    record["weights"] = "best.pt"
    record["from_stage"] = final.parent.name
    record["sha256"] = file_sha256(out / "best.pt")
    record["torch"] = torch.__version__
    write_json(out / "train.json", record)
    return record
