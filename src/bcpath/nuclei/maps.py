"""Model output maps of the nuclei U-Nets and their decoding into instances, for both decodings.

Two decodings (``architecture["decoding"]`` in ``train.json``):

- ``"interior_boundary"`` (the default, Lagree et al. 2021): 3 output channels, softmax over
  background / interior / boundary; instances from the interior components
  (:func:`bcpath.nuclei.targets.instances_from_probabilities`); its threshold is the interior
  probability.
- ``"distance"``: 4 output channels: the same 3 classes (softmax) plus a distance-to-edge map
  (sigmoid, 1 at each nucleus centre, :func:`bcpath.nuclei.targets.distance_target`);
  instances from the watershed of the distance inside the foreground
  (:func:`bcpath.nuclei.targets.instances_from_distance`); its threshold is the marker level.

:func:`predict_maps` runs a model over many images at once (tiles of all images batched
together, Hann-blended at 50 % overlap, bf16 autocast on CUDA), which is what the GPU
training script evaluates with; :func:`decode_maps` takes maps at model resolution to
instances at any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from bcpath.errors import BcpathError

__all__ = [
    "DECODINGS",
    "decode_maps",
    "maps_from_logits",
    "n_outputs",
    "predict_maps",
    "resize_maps",
]

DECODINGS: tuple[str, ...] = ("interior_boundary", "distance")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_decoding(decoding: str) -> str:
    if decoding not in DECODINGS:
        raise BcpathError(f"nuclei decoding {decoding!r}: use one of {', '.join(DECODINGS)}")
    return decoding


def n_outputs(decoding: str) -> int:
    """Output channels of a model with this decoding (3 classes, + 1 distance map)."""
    return 4 if _check_decoding(decoding) == "distance" else 3


def maps_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, 3 or 4, H, W) logits → softmax over the first 3 channels (+ sigmoid of the 4th)."""
    probs = torch.softmax(logits[:, :3].float(), dim=1)
    if logits.shape[1] == 3:
        return probs
    return torch.cat([probs, torch.sigmoid(logits[:, 3:4].float())], dim=1)


def _hann(tile: int) -> NDArray[np.float32]:
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(w, w).astype(np.float32)


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    n = int(np.ceil((length - tile) / stride - 1e-9)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


@torch.inference_mode()
def predict_maps(
    model: torch.nn.Module,
    images: Sequence[NDArray[np.uint8]],
    device: str | torch.device = "cpu",
    tile: int = 256,
    overlap: float = 0.5,
    batch_size: int = 32,
    amp: bool | None = None,
    channels_last: bool = False,
) -> list[NDArray[np.float32]]:
    """Output maps (C, H, W) float32 of each (H, W, 3) uint8 image (already at model µm/px and
    normalised as the model expects): tiles of ``tile`` px at ``overlap``, Hann-blended; images
    smaller than a tile are reflect-padded and cropped back (as
    :func:`bcpath.nuclei.predict.predict_probabilities`). ``amp``: bf16 autocast (default: on
    CUDA only)."""
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    win = _hann(tile)
    padded, jobs = [], []
    for k, rgb in enumerate(images):
        h, w = rgb.shape[:2]
        ph, pw = max(tile - h, 0), max(tile - w, 0)
        p = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        padded.append(p)
        jobs += [(k, r, c) for r in _starts(p.shape[0], tile, overlap) for c in _starts(p.shape[1], tile, overlap)]
    acc: list[NDArray[np.float32] | None] = [None] * len(images)
    wsum = [np.zeros(p.shape[:2], np.float32) for p in padded]
    model.eval()
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        x = torch.from_numpy(np.stack([padded[k][r : r + tile, c : c + tile] for k, r, c in chunk])).to(device)
        x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        maps = maps_from_logits(logits).cpu().numpy()
        for (k, r, c), m in zip(chunk, maps, strict=True):
            if acc[k] is None:
                acc[k] = np.zeros((m.shape[0], *padded[k].shape[:2]), np.float32)
            acc[k][:, r : r + tile, c : c + tile] += m * win  # type: ignore[index]
            wsum[k][r : r + tile, c : c + tile] += win
    out = []
    for k, rgb in enumerate(images):
        h, w = rgb.shape[:2]
        out.append((acc[k] / wsum[k])[:, :h, :w])  # type: ignore[operator]
    return out


def resize_maps(maps: NDArray[np.floating], shape: tuple[int, int]) -> NDArray[np.float32]:
    """(C, h, w) maps resampled to (C, H, W): linear up, area down (centre-aligned)."""
    m = np.asarray(maps, dtype=np.float32)
    H, W = int(shape[0]), int(shape[1])
    if m.shape[1:] == (H, W):
        return m
    interp = cv2.INTER_LINEAR if H * W > m.shape[1] * m.shape[2] else cv2.INTER_AREA
    return np.stack([cv2.resize(np.ascontiguousarray(c), (W, H), interpolation=interp) for c in m]).astype(np.float32)


def decode_maps(
    maps: NDArray[np.floating],
    shape: tuple[int, int],
    decoding: str,
    threshold: float,
    min_area_px: int = 10,
    **kw: Any,
) -> NDArray[np.int32]:
    """(H, W) int32 instances from model-resolution maps, decoded at ``shape`` (``min_area_px``
    in model px, scaled by the area ratio)."""
    from bcpath.nuclei.targets import instances_from_distance, instances_from_probabilities

    m = np.asarray(maps)
    resized = resize_maps(m, shape)
    min_area = max(1, int(round(min_area_px * (shape[0] * shape[1]) / (m.shape[1] * m.shape[2]))))
    if _check_decoding(decoding) == "distance":
        if resized.shape[0] != 4:
            raise BcpathError(f"distance decoding needs 4 maps, got {resized.shape[0]}")
        return instances_from_distance(resized[:3], resized[3], threshold, min_area_px=min_area, **kw)
    return instances_from_probabilities(resized[:3], threshold, min_area)
