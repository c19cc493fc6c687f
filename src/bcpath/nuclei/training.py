"""Training of 3-class nuclei U-Nets (Lagree et al. 2021, Sci Rep 11:8025). Loading a trained
model, prediction and decoding are :mod:`bcpath.nuclei.predict`, which this module imports.

Pipeline (every choice is recorded in ``train.json``):

- **Data.** Folders in MoNuSeg layout (``images/*.tif`` + ``annotations/*.xml``) or CPM-15 layout
  (``images/*.png`` + ``inst_masks/*_inst.tif``), read by :func:`list_nuclei_folder`.
- **Resolution.** Every image is resampled to one model resolution, ``model_mpp`` = 0.5 µm/px
  by default (20×): MoNuSeg (0.25) and CPM-15 40× images are halved, CPM-15 20× images kept.
  RGB: area interpolation down, linear up; labels: nearest neighbour. At 0.5 µm/px a nucleus
  is ~10-20 px across and a 256 px tile covers 128 µm; it also quarters CPU cost.
- **Stain.** Vahadane normalisation (:mod:`bcpath.stain.normalise`) fitted once to one training
  image (``stain_reference``; default: the first training image by (dataset, name), i.e. CPM-15
  image01 with the default data, at model µm/px), saved
  as ``stain.json`` and reused unchanged at inference.
- **Split.** Organ-wise (:func:`split_by_organ`): MoNuSeg organs come from the TCGA tissue
  source site code (the second field of the TCGA barcode, :data:`bcpath.nuclei.datasets.TCGA_TSS_ORGAN`). Default
  validation: the brain and bladder MoNuSeg images (2 + 2 of the 21 here) and CPM-15
  ``image03`` (20×) and ``image12`` (40×). CPM-15 images carry no per-image organ (the set mixes
  brain and head-and-neck), so they are held out by name.
- **Tiles.** 256×256 tiles at ≥ 10 % overlap, evenly spread (:func:`tile_starts`); images
  smaller than a tile are padded with white (label 0).
- **Augmentation** (training only, :func:`augment_tile`): one random map from output tile to
  source image — 90° rotation × flip × small rotation (±15°) × shear (±0.15) plus an elastic
  displacement field (Gaussian-smoothed noise, σ 8 px, amplitude up to 4 px) — applied with
  ``cv2.remap`` to the RGB (linear) and to the instance labels (nearest), sampling the real
  surroundings of the tile (reflected only beyond the image edge). Targets
  (:func:`bcpath.nuclei.targets.encode_targets`) and weights
  (:func:`bcpath.nuclei.targets.unet_weight_map`, w0 = 10, σ = 5 px) are recomputed from the
  augmented labels.
- **Training.** Adam (lr 1e-4), :func:`bcpath.nuclei.losses.combined_loss` (weighted CE + soft
  Dice), early stopping on the validation loss (un-augmented validation tiles) with
  ``patience`` epochs. Deterministic given ``seed`` on one device (seeded torch, per-sample
  numpy generators, no worker processes).
- **Threshold.** The threshold of :func:`bcpath.nuclei.targets.instances_from_probabilities`
  maximising the mean validation AJI over :data:`THRESHOLDS`, scored at each image's own size.
- **Inference** (:func:`bcpath.nuclei.predict.predict_instances`): resample to model µm/px,
  normalise, 256 px tiles at 50 % overlap blended with a Hann (sin²) window, probabilities
  resampled to the input's size and decoded there.

Outputs of :func:`train_nuclei_model` in ``out_dir``: ``best.pt`` / ``last.pt`` (state_dicts),
``train.json``, ``log.csv`` (epoch, train_loss, val_loss), ``stain.json``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bcpath.engine import fit, seed_everything
from bcpath.errors import BcpathError
from bcpath.io import json_ready, write_json
from bcpath.models.registry import load_checked_state_dict, save_weights
from bcpath.nuclei.datasets import NucleiSample, list_nuclei_folder, sample_organ
from bcpath.nuclei.predict import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_AREA_PX,
    MODEL_MPP,
    PREDICT_OVERLAP,
    TILE,
    TRAIN_OVERLAP,
    NucleiModel,
    build_model,
    load_nuclei_model,
    predict_probabilities,
    probabilities_at_size,
    resample_rgb,
    tile_grid,
    to_input,
)
from bcpath.stain.normalise import StainNormaliser

__all__ = [
    "DEFAULT_VAL_NAMES",
    "DEFAULT_VAL_ORGANS",
    "THRESHOLDS",
    "NucleiTrainSettings",
    "NucleiTileDataset",
    "PreparedImage",
    "augment_tile",
    "prepare_samples",
    "resample_labels",
    "split_by_organ",
    "train_nuclei_model",
    "validate_thresholds",
]

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
W0, SIGMA_PX = 10.0, 5.0
#: log.csv of a training run (one row per epoch, written by :func:`bcpath.engine.fit`).
LOG_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "seconds")
LOG_FORMATS: dict[str, str] = {"train_loss": "%.6f", "val_loss": "%.6f", "seconds": "%.1f"}

DEFAULT_VAL_ORGANS: tuple[str, ...] = ("brain", "bladder")
DEFAULT_VAL_NAMES: tuple[str, ...] = ("image03", "image12")


@dataclass(frozen=True)
class NucleiTrainSettings:
    """Config section ``nuclei.training`` (the workflow's train_nuclei_model rule); defaults =
    the config schema's. (:func:`train_nuclei_model`'s own keyword defaults are the shipped
    model's recipe, as ``bcpath nuclei train``.) ``data`` is the rule's input, not a field."""

    encoder: str = "plain"
    pretrained_encoder: str | None = None
    init_from: str | None = None
    target_stain: str = "he"
    epochs: int = 40
    batch_size: int = 4
    lr: float = 1e-3
    patience: int = 8
    max_minutes: float | None = None
    val_organs: tuple[str, ...] = ("bladder", "brain")
    val_names: tuple[str, ...] = DEFAULT_VAL_NAMES
    plain_base: int = 16
    seed: int = 0
    device: str | None = None


# --------------------------------------------------------------------------- data






def split_by_organ(
    samples: Sequence[NucleiSample],
    val_organs: Iterable[str] = DEFAULT_VAL_ORGANS,
    val_names: Iterable[str] = DEFAULT_VAL_NAMES,
) -> tuple[list[NucleiSample], list[NucleiSample]]:
    """(train, val), each sorted by (dataset, name): val = organ in ``val_organs`` or name in
    ``val_names``. Deterministic; raises BcpathError if either side would be empty."""
    organs, names = {o.lower() for o in val_organs}, set(val_names)
    ordered = sorted(samples, key=lambda s: (s.dataset, s.name))
    val = [s for s in ordered if sample_organ(s) in organs or s.name in names]
    train = [s for s in ordered if s not in val]
    if not train or not val:
        raise BcpathError(
            f"organ split: {len(train)} training and {len(val)} validation images with validation "
            f"organs {sorted(organs)} and names {sorted(names)}; choose organs / names that leave both non-empty"
        )
    return train, val


def resample_labels(labels: NDArray[np.integer], shape: tuple[int, int]) -> NDArray[np.int32]:
    """Instance labels resized to ``shape`` (H, W) by centre-aligned nearest neighbour; int32.

    ``INTER_NEAREST_EXACT``, not ``INTER_NEAREST``: the latter samples source pixel
    floor(i · scale), which drifts up to a pixel from the area-resampled RGB at non-integer
    scales; a MoNuSeg mask taken to 0.5 µm/px and back kept only mAP 0.59 against itself
    (0.85 centre-aligned), and models trained on such targets learned the offset.
    """
    lab = np.asarray(labels, dtype=np.int32)
    if lab.shape == tuple(shape):
        return lab
    return np.asarray(
        cv2.resize(lab, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT),
        dtype=np.int32,
    )


@dataclass
class PreparedImage:
    """One image at model resolution: rgb (H, W, 3) uint8 normalised, labels (H, W) int32."""

    name: str
    organ: str
    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]
    source: NucleiSample | None = None
    original_labels: NDArray[np.int32] | None = field(default=None, repr=False)


def prepare_samples(
    samples: Sequence[NucleiSample],
    model_mpp: float = MODEL_MPP,
    normaliser: StainNormaliser | None = None,
    keep_original: bool = False,
) -> list[PreparedImage]:
    """Load, resample to ``model_mpp`` and (optionally) stain-normalise each sample."""
    out = []
    for s in samples:
        rgb, labels = s.load()
        small = resample_rgb(rgb, s.mpp, model_mpp)
        lab = resample_labels(labels, small.shape[:2])
        if normaliser is not None:
            small = normaliser.normalise(small, f"{s.dataset}/{s.name}")
        out.append(
            PreparedImage(s.name, sample_organ(s), small, lab, s, labels if keep_original else None)
        )
    return out


def _pad_to(
    rgb: NDArray[np.uint8], labels: NDArray[np.int32], tile: int
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Pad bottom/right with white RGB and label 0 up to at least tile × tile."""
    ph, pw = max(tile - rgb.shape[0], 0), max(tile - rgb.shape[1], 0)
    if ph == 0 and pw == 0:
        return rgb, labels
    return (
        np.pad(rgb, ((0, ph), (0, pw), (0, 0)), constant_values=255),
        np.pad(labels, ((0, ph), (0, pw)), constant_values=0),
    )


def augment_tile(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.int32],
    origin: tuple[int, int],
    tile: int,
    rng: np.random.Generator,
    max_angle_deg: float = 15.0,
    max_shear: float = 0.15,
    elastic_alpha_px: float = 4.0,
    elastic_sigma_px: float = 8.0,
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """One random augmented tile × tile crop around the tile at ``origin`` (row, col).

    Output pixel p maps to source pixel c + A·(p − c_out) + d(p), with c the tile centre in the
    image, A = R(k·90° + θ)·Shear·Flip and d an elastic displacement; RGB sampled bilinearly,
    labels by nearest neighbour from the same map (reflect beyond the image edge).
    Returns (tile, tile, 3) uint8 and (tile, tile) int32.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    theta = math.radians(k * 90.0 + rng.uniform(-max_angle_deg, max_angle_deg))
    shear = rng.uniform(-max_shear, max_shear)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    a = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([1.0, -1.0 if flip else 1.0])
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float64)
    c_out = (tile - 1) / 2.0
    dy, dx = yy - c_out, xx - c_out  # (row, col) offsets; A acts on (x, y)
    src_x = a[0, 0] * dx + a[0, 1] * dy
    src_y = a[1, 0] * dx + a[1, 1] * dy
    amp = rng.uniform(0.0, elastic_alpha_px)
    if amp > 0:
        for comp in (src_x, src_y):
            noise = ndi.gaussian_filter(rng.standard_normal((tile, tile)), elastic_sigma_px)
            noise /= max(float(np.abs(noise).max()), 1e-12)
            comp += amp * noise
    map_x = (src_x + origin[1] + c_out).astype(np.float32)
    map_y = (src_y + origin[0] + c_out).astype(np.float32)
    out_rgb = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_lab = cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(out_rgb), np.asarray(out_lab, dtype=np.int32)


TARGET_STAINS = ("he", "ihc")


def _check_target_stain(target_stain: str) -> str:
    if target_stain not in TARGET_STAINS:
        raise BcpathError(f"target stain {target_stain!r}: use 'he' (H&E) or 'ihc' (DAB + hematoxylin)")
    return target_stain


def render_images_ihc(images: Sequence[PreparedImage], seed: int) -> list[PreparedImage]:
    """Validation images re-rendered once as DAB + hematoxylin (one fixed draw per image)."""
    from bcpath.stain.ihc_render import render_ihc

    return [
        replace(im, rgb=render_ihc(im.rgb, im.labels, np.random.default_rng((seed, 1_000_003, i))))
        for i, im in enumerate(images)
    ]


class NucleiTileDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Tiles of prepared images → (x (3, T, T) float32, target (T, T) int64, weight (T, T) float32).

    The tile list is the :func:`tile_grid` of each image (overlap ≥ 10 %). With ``augment`` each
    item draws its transform from ``np.random.default_rng((seed, epoch, index))`` (call
    :meth:`set_epoch`), so a run is reproducible; without it, items are cached.
    ``target_stain="ihc"`` re-renders each augmented tile as DAB + hematoxylin
    (:func:`bcpath.stain.ihc_render.render_ihc`); un-augmented images are used as given.
    """

    def __init__(
        self,
        images: Sequence[PreparedImage],
        tile: int = TILE,
        overlap: float = TRAIN_OVERLAP,
        augment: bool = True,
        seed: int = 0,
        target_stain: str = "he",
    ) -> None:
        self.tile, self.augment, self.seed, self.epoch = tile, augment, seed, 0
        self.target_stain = _check_target_stain(target_stain)
        self.images = [_pad_to(im.rgb, im.labels, tile) for im in images]
        self.index = [
            (i, rc)
            for i, (rgb, _) in enumerate(self.images)
            for rc in tile_grid(rgb.shape[:2], tile, overlap)
        ]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def tile_arrays(self, idx: int) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
        """The (augmented) RGB and instance labels of item ``idx``."""
        i, (r, c) = self.index[idx]
        rgb, lab = self.images[i]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            rgb, lab = augment_tile(rgb, lab, (r, c), self.tile, rng)
            if self.target_stain == "ihc":
                from bcpath.stain.ihc_render import render_ihc

                rgb = render_ihc(rgb, lab, rng)
            return rgb, lab
        t = self.tile
        return rgb[r : r + t, c : c + t], lab[r : r + t, c : c + t]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.augment and idx in self._cache:
            return self._cache[idx]
        from bcpath.nuclei.targets import encode_targets, unet_weight_map

        rgb, lab = self.tile_arrays(idx)
        item = (
            to_input(rgb),
            torch.from_numpy(encode_targets(lab)),
            torch.from_numpy(unet_weight_map(lab, w0=W0, sigma=SIGMA_PX)),
        )
        if not self.augment:
            self._cache[idx] = item
        return item


# --------------------------------------------------------------------------- training


def _run_epoch(
    model: nn.Module, loader: DataLoader[Any], device: str, optimiser: torch.optim.Optimizer | None
) -> float:
    from bcpath.nuclei.losses import combined_loss

    model.train(optimiser is not None)
    total, n = 0.0, 0
    with torch.set_grad_enabled(optimiser is not None):
        for x, y, wmap in loader:
            x, y, wmap = x.to(device), y.to(device), wmap.to(device)
            loss = combined_loss(model(x), y, wmap)
            if optimiser is not None:
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            total += float(loss.detach()) * x.shape[0]
            n += x.shape[0]
    return total / max(n, 1)


def _gather(data: Sequence[str | Path | NucleiSample]) -> list[NucleiSample]:
    samples: list[NucleiSample] = []
    for item in data:
        samples.extend([item] if isinstance(item, NucleiSample) else list_nuclei_folder(item))
    names = [s.name for s in samples]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BcpathError(
            f"nuclei training data: image names repeated across folders: {', '.join(dupes)}"
        )
    return samples


def validate_thresholds(
    bundle: NucleiModel, images: Sequence[PreparedImage], thresholds: Sequence[float] = THRESHOLDS
) -> tuple[float, dict[str, float], list[dict[str, Any]]]:
    """Best threshold by mean AJI over ``images`` (scored at original size against the original
    labels), the mean metrics at it and per-image rows."""
    from bcpath.nuclei.metrics import evaluate
    from bcpath.nuclei.targets import instances_from_probabilities

    per_thr: dict[float, list[dict[str, float]]] = {t: [] for t in thresholds}
    for im in images:
        gt = im.original_labels if im.original_labels is not None else im.labels
        # resampled once per image, decoded per threshold (as decode_at_size does)
        probs, min_area = probabilities_at_size(
            predict_probabilities(bundle, im.rgb), gt.shape, bundle.min_area_px
        )
        for t in thresholds:
            per_thr[t].append(evaluate(gt, instances_from_probabilities(probs, t, min_area)))
    best = max(
        thresholds, key=lambda t: (float(np.mean([m["aji"] for m in per_thr[t]])), -abs(t - 0.5))
    )
    keys = ("aji", "map", "pq", "f1_0.5", "f1_0.7", "dice")
    mean = {k: float(np.mean([m[k] for m in per_thr[best]])) for k in keys}
    mean["aji_by_threshold"] = {
        f"{t:g}": float(np.mean([m["aji"] for m in per_thr[t]])) for t in thresholds
    }  # type: ignore[assignment]
    rows = [
        {"image": im.name, "organ": im.organ, **{k: m[k] for k in keys}}
        for im, m in zip(images, per_thr[best], strict=True)
    ]
    return best, mean, rows


def train_nuclei_model(
    data: Sequence[str | Path | NucleiSample],
    out_dir: str | Path,
    *,
    encoder: str = "plain",
    epochs: int = 50,
    batch_size: int = 4,
    lr: float = 1e-4,
    patience: int = 10,
    seed: int = 0,
    pretrained_encoder: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    model_mpp: float = MODEL_MPP,
    val_organs: Iterable[str] = DEFAULT_VAL_ORGANS,
    val_names: Iterable[str] = DEFAULT_VAL_NAMES,
    stain_normalisation: bool = True,
    stain_reference: str | None = None,
    plain_depth: int = 4,
    plain_base: int = 16,
    thresholds: Sequence[float] = THRESHOLDS,
    max_minutes: float | None = None,
    deterministic: bool = True,
    init_from: str | os.PathLike[str] | None = None,
    target_stain: str = "he",
) -> dict[str, Any]:
    """Train a 3-class nuclei U-Net; write best.pt, last.pt, train.json, log.csv, stain.json.

    Args:
        data: dataset folders (MoNuSeg or CPM-15 layout) and/or :class:`NucleiSample` objects.
        out_dir: output folder (created).
        encoder: ``"plain"`` (from-scratch :class:`PlainUNet`, depth ``plain_depth``, base width
            ``plain_base``: the CPU option) or a torchvision encoder name (``"resnet18"``, ...).
        epochs, batch_size, lr, patience: Adam training, early stopping on validation loss.
        seed: seeds torch, numpy and the augmentation; same seed, same device → same weights.
        pretrained_encoder: local state_dict file for a torchvision encoder (never downloaded).
        model_mpp: µm/px all images are resampled to.
        val_organs, val_names: validation split (:func:`split_by_organ`).
        stain_reference: name of the training image to fit the stain normaliser to.
        max_minutes: stop after the epoch that passes this wall time (None: no limit).
        init_from: a training folder (or its ``best.pt``) whose weights start this run — to
            fine-tune on your own annotations or continue a run; its architecture must match.
        target_stain: ``"he"`` (the images as annotated) or ``"ihc"`` (every training tile
            and the validation images re-rendered as DAB + hematoxylin, for IHC scoring; the
            model then takes IHC images as they are, without the H&E stain normaliser).
        deterministic: bitwise-reproducible weights — oneDNN (mkldnn) off and torch's
            deterministic algorithms on while training (oneDNN's CPU convolutions differ in
            the last bits from run to run).

    Returns the content of ``train.json``.
    """
    if not deterministic:
        return _train(data, out_dir, locals())
    previous, previous_mkldnn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.mkldnn.enabled,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        return _train(data, out_dir, locals())
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.mkldnn.enabled = previous_mkldnn  # type: ignore[assignment]


def _train(
    data: Sequence[str | Path | NucleiSample], out_dir: str | Path, kw: dict[str, Any]
) -> dict[str, Any]:
    encoder, epochs, batch_size, lr, patience, seed = (
        kw[k] for k in ("encoder", "epochs", "batch_size", "lr", "patience", "seed")
    )
    pretrained_encoder, device, model_mpp, val_organs, val_names = (
        kw[k] for k in ("pretrained_encoder", "device", "model_mpp", "val_organs", "val_names")
    )
    stain_normalisation, stain_reference, plain_depth, plain_base, thresholds, max_minutes = (
        kw[k]
        for k in (
            "stain_normalisation",
            "stain_reference",
            "plain_depth",
            "plain_base",
            "thresholds",
            "max_minutes",
        )
    )
    val_organs, val_names = tuple(val_organs), tuple(val_names)
    target_stain = _check_target_stain(kw["target_stain"])
    t_start = time.perf_counter()
    if epochs < 1 or batch_size < 1 or patience < 1 or not lr > 0:
        raise BcpathError(
            f"training: epochs, batch_size, patience ≥ 1 and lr > 0 needed; got {epochs}, {batch_size}, {patience}, {lr}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = _gather(data)
    train_s, val_s = split_by_organ(samples, val_organs, val_names)
    seed_everything(seed)

    normaliser = None
    if stain_normalisation:
        ref = (
            train_s[0]
            if stain_reference is None
            else next((s for s in samples if s.name == stain_reference), None)
        )
        if ref is None:
            raise BcpathError(f"stain reference {stain_reference!r}: not among the training images")
        ref_rgb, _ = ref.load()
        normaliser = StainNormaliser.fit(
            resample_rgb(ref_rgb, ref.mpp, model_mpp), f"{ref.dataset}/{ref.name}"
        )
        normaliser.save(out / "stain.json")
    train_im = prepare_samples(train_s, model_mpp, normaliser)
    val_im = prepare_samples(val_s, model_mpp, normaliser, keep_original=True)
    if target_stain == "ihc":
        val_im = render_images_ihc(val_im, seed)
    logger.info(
        "prepared %d training, %d validation images (%.0f s)",
        len(train_im),
        len(val_im),
        time.perf_counter() - t_start,
    )

    architecture: dict[str, Any] = {"encoder": encoder, "n_classes": 3, "in_channels": 3}
    if encoder == "plain":
        architecture.update(depth=plain_depth, base=plain_base, dropout=0.1)
    seed_everything(seed)
    model = build_model(architecture, pretrained_encoder).to(device)
    init_record = _initialise_from(model, kw["init_from"], architecture, device)
    train_ds = NucleiTileDataset(
        train_im, TILE, TRAIN_OVERLAP, augment=True, seed=seed, target_stain=target_stain
    )
    val_ds = NucleiTileDataset(val_im, TILE, TRAIN_OVERLAP, augment=False, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0
    )
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)

    def train_epoch(epoch: int) -> dict[str, float]:
        train_ds.set_epoch(epoch)
        return {"train_loss": _run_epoch(model, train_loader, device, optimiser)}

    def validate(epoch: int) -> dict[str, float]:
        return {"val_loss": _run_epoch(model, val_loader, device, None)}

    fitted = fit(
        model, train_epoch, validate, out, epochs, patience, monitor="val_loss", mode="min",
        name="nuclei U-Net", max_minutes=max_minutes, log_columns=LOG_COLUMNS,
        log_formats=LOG_FORMATS, started=t_start, save=partial(save_weights, cpu_copy=True),
    )  # fmt: skip
    model.load_state_dict(load_checked_state_dict(fitted.weights_path, fitted.sha256, "nuclei U-Net"))
    input_normaliser = normaliser if target_stain == "he" else None
    bundle = NucleiModel(
        model, model_mpp, TILE, 0.5, MIN_AREA_PX, input_normaliser, architecture, device
    )
    threshold, metrics, rows = validate_thresholds(bundle, val_im, thresholds)
    meta: dict[str, Any] = {
        "architecture": architecture,
        "pretrained_encoder": os.fspath(pretrained_encoder) if pretrained_encoder else None,
        "init_from": init_record,
        "mpp": model_mpp,
        "tile": TILE,
        "train_overlap": TRAIN_OVERLAP,
        "predict_overlap": PREDICT_OVERLAP,
        "input_normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "scale": "rgb/255"},
        "stain_normalisation": bool(stain_normalisation),
        "target_stain": target_stain,
        "stain_reference": normaliser.reference if normaliser else None,
        "targets": {
            "classes": ["background", "interior", "boundary"],
            "boundary_px": 2,
            "w0": W0,
            "sigma_px": SIGMA_PX,
        },
        "loss": "weighted cross-entropy + soft Dice",
        "optimiser": {"name": "Adam", "lr": lr, "batch_size": batch_size},
        "seed": seed,
        "deterministic": kw["deterministic"],
        "device": device,
        "split": {
            "val_organs": sorted({o.lower() for o in val_organs}),
            "val_names": sorted(set(val_names)),
            "train": [f"{s.dataset}/{s.name}" for s in train_s],
            "val": [f"{s.dataset}/{s.name}" for s in val_s],
        },
        "n_train_tiles": len(train_ds),
        "n_val_tiles": len(val_ds),
        "epochs_requested": epochs,
        "epochs_run": fitted.epochs_run,
        "stopped": fitted.stop_reason,
        "patience": patience,
        "best_epoch": fitted.best_epoch,
        "best_val_loss": fitted.best_value,
        "best_sha256": fitted.sha256,
        "threshold": threshold,
        "threshold_grid": list(thresholds),
        "min_area_px": MIN_AREA_PX,
        "validation": {"mean": metrics, "per_image": rows},
        "seconds": time.perf_counter() - t_start,
        "torch": torch.__version__,
    }
    write_json(out / "train.json", json_ready(meta))
    return meta


def _initialise_from(
    model: nn.Module, init_from: str | os.PathLike[str] | None, architecture: dict[str, Any], device: str
) -> dict[str, Any] | None:
    """Load an earlier run's weights into ``model``; return {path, sha256, architecture} or None."""
    if init_from is None:
        return None
    earlier = load_nuclei_model(Path(init_from), device=device, fold_bn=False)
    if earlier.architecture != architecture:
        raise BcpathError(
            f"init_from {init_from}: architecture {earlier.architecture} differs from this run's "
            f"{architecture}; give the same encoder (and plain depth/base)"
        )
    model.load_state_dict(earlier.model.state_dict())
    from bcpath.wsi.reader import file_sha256

    path = Path(init_from)
    weights = path / "best.pt" if path.is_dir() else path
    return {"path": os.fspath(path), "sha256": file_sha256(weights)}
