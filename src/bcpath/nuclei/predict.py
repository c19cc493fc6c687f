"""Inference of the 3-class nuclei U-Nets (Lagree et al. 2021): load a trained model, predict
probabilities tile by tile, decode them into instances. Training lives in
:mod:`bcpath.nuclei.training`, which imports this module; slide inference
(:mod:`bcpath.nuclei.slide`) and IHC scoring import this one without the training stack.

- **Model folder** (:func:`load_nuclei_model`): a ``bcpath nuclei train`` output folder
  (``best.pt`` checked against ``train.json``'s ``best_sha256``, ``train.json``, ``stain.json``)
  or its ``best.pt`` / ``last.pt``; the net is rebuilt from ``train.json``'s architecture
  (:func:`build_model`).
- **Resolution.** Images are resampled to the model's µm/px (:func:`resample_rgb`; area down,
  linear up), ``MODEL_MPP`` = 0.5 µm/px by default.
- **Prediction** (:func:`predict_instances`): resample to model µm/px, normalise with the saved
  stain fit, tiles of the model's ``tile`` px at its ``predict_overlap`` (train.json; 256 px at
  50 % unless it says otherwise, models/nuclei_unet_v2: 512 px at 25 %) blended with a Hann (sin²) window
  (:func:`predict_probabilities`, optionally with 8-fold test-time augmentation),
  probabilities resampled to the input's size and decoded there (:func:`decode_at_size`).
- **Tiles** (:func:`tile_starts`, :func:`tile_grid`): the fewest tiles with at least the given
  overlap, spread evenly; training tiles overlap ≥ 10 % (``TRAIN_OVERLAP``), prediction tiles
  50 % (``PREDICT_OVERLAP``) unless the model's train.json says otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from bcpath.engine import choose_device
from bcpath.errors import BcpathError
from bcpath.models.registry import load_checked_state_dict
from bcpath.stain.normalise import StainNormaliser

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_AREA_PX",
    "MODEL_MPP",
    "PREDICT_OVERLAP",
    "TILE",
    "TRAIN_OVERLAP",
    "NucleiModel",
    "build_model",
    "decode_at_size",
    "load_nuclei_model",
    "predict_instances",
    "predict_probabilities",
    "probabilities_at_size",
    "resample_rgb",
    "tile_grid",
    "tile_starts",
    "to_input",
]

#: µm/px every image is resampled to (20×), the tile edge in model px, the least overlap of
#: neighbouring tiles in training and in prediction, the smallest instance in model px²
MODEL_MPP = 0.5
TILE = 256
TRAIN_OVERLAP = 0.1
PREDICT_OVERLAP = 0.5
MIN_AREA_PX = 10
#: input normalisation of every nuclei U-Net (rgb/255, then ImageNet mean/std)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _scaled_size(shape: tuple[int, ...], mpp: float, target_mpp: float) -> tuple[int, int]:
    f = mpp / target_mpp
    return max(1, int(round(shape[0] * f))), max(1, int(round(shape[1] * f)))


def resample_rgb(rgb: NDArray[np.uint8], mpp: float, target_mpp: float) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 at ``mpp`` µm/px → (H', W', 3) at ``target_mpp`` (area down, linear up)."""
    h, w = _scaled_size(rgb.shape, mpp, target_mpp)
    if (h, w) == rgb.shape[:2]:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if h < rgb.shape[0] else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (w, h), interpolation=interp))


def tile_starts(length: int, tile: int = TILE, overlap: float = TRAIN_OVERLAP) -> list[int]:
    """Tile origins along one axis covering [0, length): the fewest tiles with overlap ≥
    ``overlap``·tile between neighbours, spread evenly from 0 to length − tile. [0] if length ≤ tile."""
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    n = int(math.ceil((length - tile) / stride - 1e-9)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def tile_grid(
    shape: tuple[int, int], tile: int = TILE, overlap: float = TRAIN_OVERLAP
) -> list[tuple[int, int]]:
    """(row, col) origins of the tiles covering an (H, W) image, row-major."""
    return [
        (r, c)
        for r in tile_starts(shape[0], tile, overlap)
        for c in tile_starts(shape[1], tile, overlap)
    ]


def to_input(rgb: NDArray[np.uint8]) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32, ImageNet mean/std normalised (the nets' input)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def build_model(
    architecture: dict[str, Any], pretrained_encoder: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Model from ``architecture``: ``{"encoder": "plain", "depth": d, "base": b}`` (a
    from-scratch :class:`PlainUNet`) or ``{"encoder": <torchvision name>}`` (:class:`UNet`)."""
    from bcpath.nuclei.unet import ENCODERS, PlainUNet, UNet

    encoder = architecture["encoder"]
    if encoder == "plain":
        if pretrained_encoder is not None:
            raise BcpathError(
                "encoder 'plain' is trained from scratch; pretrained_encoder does not apply"
            )
        return PlainUNet(
            int(architecture.get("in_channels", 3)),
            int(architecture.get("n_classes", 3)),
            depth=int(architecture.get("depth", 4)),
            base=int(architecture.get("base", 16)),
            dropout=float(architecture.get("dropout", 0.1)),
        )
    if encoder not in ENCODERS:
        raise BcpathError(
            f"unknown encoder {encoder!r}; use 'plain' or one of {', '.join(ENCODERS)}"
        )
    if pretrained_encoder is not None and not Path(pretrained_encoder).is_file():
        raise BcpathError(
            f"pretrained encoder {pretrained_encoder}: no such file (weights are never downloaded)"
        )
    return UNet(
        encoder, int(architecture.get("n_classes", 3)), int(architecture.get("in_channels", 3)),
        encoder_weights=pretrained_encoder,
    )


@dataclass
class NucleiModel:
    """A trained model ready for :func:`predict_instances`."""

    model: nn.Module
    mpp: float
    tile: int
    threshold: float
    min_area_px: int
    normaliser: StainNormaliser | None
    architecture: dict[str, Any]
    device: str = "cpu"
    #: average the probabilities of the 8 rotations/flips of each tile (8x the compute)
    tta: bool = False
    #: "interior_boundary" (3 class maps) or "distance" (+ a distance map; :mod:`bcpath.nuclei.maps`)
    decoding: str = "interior_boundary"
    #: least overlap of neighbouring prediction tiles (fraction of ``tile``; train.json
    #: ``predict_overlap``)
    overlap: float = PREDICT_OVERLAP


def _hann(tile: int) -> NDArray[np.float32]:
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(w, w).astype(np.float32)


@torch.no_grad()
def predict_probabilities(
    bundle: NucleiModel, rgb: NDArray[np.uint8], batch_size: int = 4
) -> NDArray[np.float32]:
    """(3, H, W) class probabilities of an (H, W, 3) image already at model µm/px and normalised.

    Tiles of ``bundle.tile`` px overlapping by ``bundle.overlap`` (50 % unless train.json says
    otherwise), blended with a Hann window; images smaller
    than a tile are reflect-padded and cropped back. With ``bundle.tta`` each tile's
    probabilities are the mean over its 4 rotations × 2 flips (test-time augmentation).
    """
    t = bundle.tile
    h, w = rgb.shape[:2]
    ph, pw = max(t - h, 0), max(t - w, 0)
    padded = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    H, W = padded.shape[:2]
    acc = np.zeros((int(bundle.architecture.get("n_classes", 3)), H, W), dtype=np.float32)
    wsum = np.zeros((H, W), dtype=np.float32)
    win = _hann(t)
    origins = tile_grid((H, W), t, bundle.overlap)
    bundle.model.eval()
    for k in range(0, len(origins), batch_size):
        chunk = origins[k : k + batch_size]
        x = torch.stack([to_input(padded[r : r + t, c : c + t]) for r, c in chunk]).to(
            bundle.device
        ).contiguous(memory_format=torch.channels_last)
        p = _tile_probabilities(bundle, x)
        for (r, c), pk in zip(chunk, p, strict=True):
            acc[:, r : r + t, c : c + t] += pk * win
            wsum[r : r + t, c : c + t] += win
    return (acc / wsum)[:, :h, :w]


@torch.no_grad()
def _tile_probabilities(bundle: NucleiModel, x: torch.Tensor) -> NDArray[np.float32]:
    """(B, 3, T, T) softmax of a (B, 3, T, T) input batch; the dihedral mean with ``bundle.tta``."""
    from bcpath.nuclei.maps import maps_from_logits

    if not bundle.tta:
        return maps_from_logits(bundle.model(x)).cpu().numpy()
    total: torch.Tensor | None = None
    for k, flip in itertools.product(range(4), (False, True)):
        view = torch.rot90(x, k, dims=(2, 3))
        view = torch.flip(view, dims=(3,)) if flip else view
        p = maps_from_logits(bundle.model(view)).cpu()
        p = torch.flip(p, dims=(3,)) if flip else p
        p = torch.rot90(p, -k, dims=(2, 3))
        total = p if total is None else total + p
    assert total is not None
    return (total / 8).numpy()


def predict_instances(
    bundle: NucleiModel, rgb: NDArray[np.uint8], mpp: float, threshold: float | None = None
) -> NDArray[np.int32]:
    """(H, W) int32 instance labels (0 = background) of an (H, W, 3) uint8 RGB image at ``mpp`` µm/px.

    Resampled to the model µm/px, stain-normalised with the saved fit, segmented, and decoded
    at the input's own size (:func:`decode_at_size`; the model's threshold unless
    ``threshold`` is given).
    """
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BcpathError(
            f"predict_instances: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}"
        )
    if not (mpp > 0 and math.isfinite(mpp)):
        raise BcpathError(f"predict_instances: µm/px must be positive, got {mpp}")
    small = resample_rgb(image, mpp, bundle.mpp)
    if bundle.normaliser is not None:
        small = bundle.normaliser.normalise(small)
    probs = predict_probabilities(bundle, small)
    thr = bundle.threshold if threshold is None else threshold
    if bundle.decoding != "interior_boundary":
        from bcpath.nuclei.maps import decode_maps

        return decode_maps(probs, image.shape[:2], bundle.decoding, thr, bundle.min_area_px)
    return decode_at_size(probs, image.shape[:2], thr, bundle.min_area_px)


def decode_at_size(
    probs: NDArray[np.float32], shape: tuple[int, int], threshold: float, min_area_px: int
) -> NDArray[np.int32]:
    """(H, W) int32 instances from (3, h, w) model-resolution probabilities, decoded at ``shape``.

    The probabilities are resampled to (H, W) first (linear up, area down; centre-aligned)
    and :func:`bcpath.nuclei.targets.instances_from_probabilities` runs there, with
    ``min_area_px`` (model px) scaled by the area ratio. Decoding a 0.25 µm/px image at its
    own size rather than upsampling labels decoded at 0.5 µm/px follows nucleus outlines to
    the finer pixel (validation mAP +0.014, AJI +0.006).
    """
    from bcpath.nuclei.targets import instances_from_probabilities

    resized, min_area = probabilities_at_size(probs, shape, min_area_px)
    return instances_from_probabilities(resized, threshold, min_area)


def probabilities_at_size(
    probs: NDArray[np.float32], shape: tuple[int, int], min_area_px: int
) -> tuple[NDArray[np.float32], int]:
    """(3, H, W) probabilities resampled to ``shape`` and ``min_area_px`` scaled to match."""
    h, w = probs.shape[1:]
    H, W = int(shape[0]), int(shape[1])
    if (h, w) == (H, W):
        return probs, min_area_px
    interp = cv2.INTER_LINEAR if H * W > h * w else cv2.INTER_AREA
    resized = np.stack(
        [cv2.resize(np.ascontiguousarray(c), (W, H), interpolation=interp) for c in probs]
    ).astype(np.float32)
    return resized, max(1, int(round(min_area_px * (H * W) / (h * w))))


def load_nuclei_model(
    path: str | Path, device: str | None = None, checkpoint: str = "best.pt", tta: bool = False,
    fold_bn: bool = True,
) -> NucleiModel:
    """Load a training output folder (or its ``best.pt`` / ``last.pt``, next to ``train.json``);
    ``device``: None = CUDA when available, else CPU; ``tta``: predict with test-time
    augmentation (:attr:`NucleiModel.tta`); ``fold_bn``: batch norm folded into the convs
    (:func:`bcpath.nuclei.unet.fold_batchnorm`; False to get the trained state_dict back)."""
    device = str(choose_device(device))
    path = Path(path)
    folder, weights = (path, path / checkpoint) if path.is_dir() else (path.parent, path)
    meta_path = folder / "train.json"
    if not weights.is_file() or not meta_path.is_file():
        raise BcpathError(
            f"nuclei model {path}: expected a training folder with {checkpoint} and train.json "
            "(written by bcpath nuclei train)"
        )
    meta = json.loads(meta_path.read_text())
    # best.pt is checked against train.json's best_sha256 (last.pt has no recorded sha256).
    expected = meta.get("best_sha256") if weights.name == "best.pt" else None
    state = load_checked_state_dict(
        weights, expected or None, f"nuclei model {folder}", expected_from="train.json best_sha256",
        fix="the file is damaged or from another run: copy best.pt and train.json together",
    )  # fmt: skip
    model = build_model(meta["architecture"])
    model.load_state_dict(state)
    # channels_last: 1.4x faster convolutions on one CPU thread (bench/nuclei.py), same outputs
    # to float rounding
    model.to(device).to(memory_format=torch.channels_last).eval()
    if fold_bn:
        from bcpath.nuclei.unet import fold_batchnorm

        fold_batchnorm(model)
    stain_path = folder / "stain.json"
    # An IHC model was trained on re-rendered images and takes IHC as it is.
    normalise_input = meta.get("stain_normalisation") and meta.get("target_stain", "he") == "he"
    normaliser = StainNormaliser.load(stain_path) if normalise_input else None
    decoding = str(meta.get("decoding", meta["architecture"].get("decoding", "interior_boundary")))
    overlap = float(meta.get("predict_overlap", PREDICT_OVERLAP))
    if not 0.0 <= overlap < 1.0:
        raise BcpathError(f"nuclei model {folder}: train.json predict_overlap must be in [0, 1), got {overlap}")
    return NucleiModel(
        model, float(meta["mpp"]), int(meta["tile"]), float(meta["threshold"]),
        int(meta.get("min_area_px", MIN_AREA_PX)), normaliser, meta["architecture"], device, tta,
        decoding, overlap,
    )  # fmt: skip
