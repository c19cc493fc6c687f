"""RAM-CNN: H-Score regression from stain-intensity images (Liu et al. 2019, IEEE TMI 38(2)).

Liu et al. predict the H-Score (0-300) of a TMA core directly from two images:

- **SINI** (stain intensity nuclei image) = ``I_la x G``: the stain-intensity image
  (:func:`bcpath.stain.deconvolution.stain_intensity_image`, LAMT-based, in [0, 1]) inside the
  nuclei mask G;
- **SITI** (stain intensity tumour image) = ``I_la x T``: the same inside the tumour mask T.

Masks. The paper takes G and T from two fully convolutional networks (all nuclei; tumour
nuclei). bcpath has neither network: :func:`sini_siti` takes G from the classical nuclei
segmentation of :func:`bcpath.ihc.cells.detect_cells` (hematoxylin + DAB OD, watershed split)
when the caller gives no nuclei mask, and T from the caller (tumour annotations), or the whole
tissue (summed OD > ``TISSUE_OD``) when there is none. Pixels outside a mask are 0.

Network (:class:`RamCnn`). Two columns with independent weights, one per input, each two
conv-ReLU-maxpool blocks; their feature maps are concatenated after the second block and go
through two more conv blocks, an adaptive average pool (so any input of at least 64 px works)
and two fully connected layers (ReLU) to one linear output. The network regresses ``H / 300``;
:func:`predict_h_score` returns H-Score points (0-300, clipped). Channel widths are modest
(16/32 per column, 64 after fusion; ~0.22 M parameters) so that CPU training is practical; the
paper's exact widths are not reproduced.

Input size. The demo trains at 128 px (area-resized cores: a 600 µm core's 1380 px become
128, so one input pixel mixes a nucleus with its cytoplasm before the network sees it). The
paper used 512 × 512 (``ihc.ramcnn.size: 512``; score_tma then writes 512 px SINI/SITI, about
1.35 µm/px, nuclei 5-6 px across). Above 128 px both columns start with a fixed stem
(:func:`bin_intensities`, ``bins="auto"``): each pixel's stain intensity is split between 8
soft bins, and the bins are average-pooled to 64 px maps (:func:`auto_bins`; 512 → pool 8).
The columns then see, per map pixel, how much of it each intensity covers: per-nucleus
intensity classes survive, and a 512 px input trains at about the cost of a 64 px one (raw
512 px through the 128 px network: ~120 ms per sample on one CPU thread, binned: ~2-6 ms).
On the large TMA (config/large_tma.yaml, bench/ramcnn_scale.py; 120 cores, same training)
leave-5-out MAE is 13.5 H-Score points at 512 px against 19.9 with the 128 px network. The stem has no weights and is not the paper's; the rest of the network
is the 128 px one.

Training (:func:`train_ramcnn`). MSE loss on ``H / 300``, Adam (lr 1e-3), images resized to
``size`` x ``size`` (area interpolation; the paper used 512). Augmentation on the fly, applied
identically to SINI and SITI (they travel as the two channels of one tensor):
a random multiple of 90° rotation, on half of the samples a small rotation (uniform in
±``max_angle``, 10°; bilinear), and a whole-pixel shift of up to ``max_shift`` (10%) of the side
along each axis, zeros (= outside the masks) filling in (:func:`augment_batch`).

Distributed label augmentation (DLA). Each training core appears ``n_dla_labels`` times per
epoch, each copy with its own label drawn once, before training, from
``N(reference H-Score, dla_sigma^2)``. **Unit of σ: H-Score points on the 0-300 scale.** The
paper's labels are H-Scores (0-300) and it gives σ = 0.9 without saying that the labels were
rescaled, so bcpath reads it as 0.9 H-Score points (0.003 after the internal /300 scaling). The
other readings do not survive a check: on a 0-3 scale 0.9 would be 90 H-Score points, on a 0-1
scale 270, label noise larger than the inter-observer differences the paper reports and a large
part of the whole range. (This reading rests on the paper's label scale; the paper's text on DLA
was not re-checked when this was written.) With σ = 0.9 (the default, ``PAPER_DLA_SIGMA``) DLA
acts mostly as oversampling: each core n times per epoch with a fresh augmentation. Larger
values (5-15 points, about the rounding of manual H-Scores) are a reasonable choice; the unit
stays H-Score points. Labels are not clipped to [0, 300], so their mean stays the reference (a
core at 0 gets labels on both sides).

Evaluation (:func:`leave_k_out_cv`): leave-5-out cross-validation as the paper's (folds of
``k`` held-out cores, the last possibly smaller, from a seeded permutation), scored with
:func:`h_score_metrics` (MAE, SD of the absolute error, Pearson r), which also compares two
human readers.

Files (:func:`save_ramcnn` / :func:`load_ramcnn`): ``ramcnn.pt`` (state_dict, loads with
``torch.load(weights_only=True)``) and ``ramcnn.json`` (architecture, input size,
normalisation, sha256 of ramcnn.pt, training settings, CV metrics); loading checks the sha256.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from bcpath.engine import choose_device, fit
from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: H-Score range; the network regresses H / H_SCORE_MAX.
H_SCORE_MAX = 300.0
#: The paper's DLA standard deviation, in H-Score points (see the module docstring).
PAPER_DLA_SIGMA = 0.9
#: Smallest input side the network accepts (four halvings leave 4 px).
MIN_SIZE = 64
#: Above this input side, ``bins="auto"`` adds the intensity-bin stem (:func:`auto_bins`).
STEM_BASE = 128
AUTO_BINS = 8
#: Side of the binned maps with ``bins="auto"`` (>= MIN_SIZE).
AUTO_MAP = 64
WEIGHTS_NAME = "ramcnn.pt"
META_NAME = "ramcnn.json"
NORMALISATION = "inputs: I_la x mask in [0, 1] (0 outside the mask), resized to size x size (area); target: H-Score / 300"

#: One training core: (sini, siti, reference H-Score, core id).
Core = tuple[np.ndarray, np.ndarray, float, Any]


@dataclass(frozen=True)
class RamcnnSettings:
    """Config section ``ihc.ramcnn`` (rule train_ramcnn); defaults = the config schema's and
    :func:`train_ramcnn`'s. ``enabled`` is the rule files' switch, not a field.

    Attributes:
        size: network input side (>= 64).
        epochs, batch_size, lr, n_dla_labels, dla_sigma: :func:`train_ramcnn`.
        folds_k: cores held out per cross-validation fold.
        seed: seeds CV folds and training.
        device: None = CUDA when available.
    """

    size: int = 128
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    n_dla_labels: int = 4
    dla_sigma: float = PAPER_DLA_SIGMA
    folds_k: int = 5
    seed: int = 0
    device: str | None = None


# ---------------------------------------------------------------------------------------------
# Inputs


def sini_siti(
    rgb: np.ndarray,
    nuclei_mask: np.ndarray | None,
    tumor_mask: np.ndarray | None,
    stains: str = "liu2019",
    *,
    mpp: float | None = None,
    white: float | np.ndarray | str = "auto",
    i_la: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SINI and SITI of one core: ``I_la x G`` and ``I_la x T``.

    Args:
        rgb: (H, W, 3) uint8 RGB DAB + hematoxylin image (alpha dropped).
        nuclei_mask: (H, W) nuclei mask G (bool, or a label image: > 0 is nucleus). None =
            segment with :func:`bcpath.ihc.cells.detect_cells` (needs ``mpp``): the paper used
            a nuclei FCN, bcpath its classical hematoxylin(+DAB)-OD segmentation.
        tumor_mask: (H, W) bool tumour mask T from the caller (tumour annotations); None = the
            whole tissue (summed OD > ``bcpath.ihc.score.TISSUE_OD``).
        stains: stain vectors for LAMT and the segmentation, "liu2019" or "qupath".
        mpp: µm/px, only needed when ``nuclei_mask`` is None.
        white: I0 for optical density: "auto" (estimated from the image, as
            :func:`bcpath.ihc.score.score_core`), a number or a (3,) per-channel white.
        i_la: the (H, W) stain-intensity image when the caller has it already (computed with
            the same stains and white); None = computed here.

    Returns:
        (sini, siti): two (H, W) float32 arrays in [0, 1], 0 outside their mask.

    Raises:
        BcpathError: not an (H, W, 3) image, masks of another size, no mask and no mpp.
    """
    from bcpath.stain.deconvolution import (
        estimate_white,
        get_stain_vectors,
        rgb_to_od,
        stain_intensity_image,
    )

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BcpathError(f"SINI/SITI: image shape {arr.shape} is not (H, W, 3) RGB; give an RGB image")
    arr = np.ascontiguousarray(arr[..., :3])
    shape = arr.shape[:2]
    try:
        sv = get_stain_vectors(stains)
    except ValueError as exc:
        raise BcpathError(f"SINI/SITI: {exc}") from exc
    if isinstance(white, str):
        if white != "auto":
            raise BcpathError(f"SINI/SITI: white must be 'auto', a number or a (3,) array, got {white!r}")
        i0: float | np.ndarray = estimate_white(arr)
    else:
        i0 = np.asarray(white, dtype=np.float64)
    if nuclei_mask is None:
        if mpp is None or not (math.isfinite(mpp) and mpp > 0):
            raise BcpathError("SINI/SITI: no nuclei mask and no µm/px; give nuclei_mask, or mpp= to segment the nuclei")
        from bcpath.ihc.cells import detect_cells

        g = detect_cells(arr, mpp, stains=sv, white=i0).nuclei > 0
    else:
        g = np.asarray(nuclei_mask) > 0
    if tumor_mask is None:
        from bcpath.ihc.score import TISSUE_OD

        t = rgb_to_od(arr, i0).sum(axis=-1) > TISSUE_OD
    else:
        t = np.asarray(tumor_mask).astype(bool)
    for name, mask in (("nuclei", g), ("tumour", t)):
        if mask.shape != shape:
            raise BcpathError(f"SINI/SITI: {name} mask {mask.shape} differs from the image {shape}; give a mask of the image's size")
    if i_la is not None and np.shape(i_la) != shape:
        raise BcpathError(f"SINI/SITI: I_la {np.shape(i_la)} differs from the image {shape}")
    ila = stain_intensity_image(arr, stains=sv, i0=i0) if i_la is None else np.asarray(i_la, np.float32)
    return (ila * g).astype(np.float32), (ila * t).astype(np.float32)


def resize_input(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float image resized to (size, size) float32 (area interpolation when shrinking)."""
    import cv2

    x = np.asarray(image, dtype=np.float32)
    if x.shape == (size, size):
        return x.copy()
    interp = cv2.INTER_AREA if min(x.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(x, (size, size), interpolation=interp).astype(np.float32)


def _check_pair(sini: np.ndarray, siti: np.ndarray, what: str) -> None:
    s, t = np.asarray(sini), np.asarray(siti)
    if s.ndim != 2 or t.ndim != 2 or s.shape != t.shape:
        raise BcpathError(f"{what}: SINI {s.shape} and SITI {t.shape} must be 2-D arrays of one shape; give the pair from sini_siti")
    if s.shape[0] != s.shape[1]:
        raise BcpathError(f"{what}: SINI/SITI are {s.shape[0]} x {s.shape[1]}, not square; crop or pad the core to a square")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise BcpathError(f"{what}: SINI/SITI hold NaN or inf; recompute them with sini_siti")


def _pair_tensor(cores: Sequence[Core], size: int) -> torch.Tensor:
    """(N, 2, size, size) float32 tensor of the cores' resized SINI/SITI."""
    out = np.zeros((len(cores), 2, size, size), np.float32)
    for i, (sini, siti, _, core_id) in enumerate(cores):
        _check_pair(sini, siti, f"core {core_id}")
        out[i, 0] = resize_input(sini, size)
        out[i, 1] = resize_input(siti, size)
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Network


def _column(width: int, in_channels: int = 1) -> nn.Sequential:
    """One input column: two conv-ReLU-maxpool blocks (÷8 overall: stride-2 first conv)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 5, stride=2, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def auto_bins(size: int) -> tuple[int, int]:
    """(bins, pool) that :func:`train_ramcnn` uses with ``bins="auto"``: none up to
    :data:`STEM_BASE` px; above, :data:`AUTO_BINS` intensity bins pooled to maps of
    :data:`AUTO_MAP` px (512 → pool 8: each map pixel = 8 x 8 input pixels, about two cells).
    On the large TMA this trained 4x faster than pool 4 (128 px maps) at one CPU thread."""
    if size <= STEM_BASE:
        return 0, 1
    return AUTO_BINS, max(1, size // AUTO_MAP)


def bin_intensities(x: torch.Tensor, bins: int, pool: int) -> torch.Tensor:
    """Per-pixel soft histogram of stain intensity, then ``pool`` x ``pool`` average pooling.

    Each pixel's value v in (0, 1] is split linearly between the two nearest of ``bins``
    evenly spaced bin centres ((k + 0.5) / bins); 0 (outside the mask) falls in no bin.
    Pooling the bins keeps, per output pixel, how much of it each intensity covers; resizing
    the image instead would average a nucleus with its surroundings first.

    Args:
        x: (N, C, S, S) float tensor in [0, 1].

    Returns:
        (N, C x bins, S / pool, S / pool): channel c x bins + k = bin k of input channel c.
    """
    n, c, h, w = x.shape
    pos = (x.clamp(0.0, 1.0) * bins - 0.5).clamp(0.0, bins - 1.0)
    lo = pos.floor()
    frac = pos - lo
    inside = (x > 0).to(x.dtype)
    out = torch.zeros(n, c, bins, h, w, dtype=x.dtype, device=x.device)
    lo_idx = lo.long().unsqueeze(2)
    hi_idx = (lo + 1).clamp(max=bins - 1).long().unsqueeze(2)
    out.scatter_add_(2, lo_idx, ((1 - frac) * inside).unsqueeze(2))
    out.scatter_add_(2, hi_idx, (frac * inside).unsqueeze(2))
    out = out.reshape(n, c * bins, h, w)
    return F.avg_pool2d(out, pool) if pool > 1 else out


class RamCnn(nn.Module):
    """Dual-input H-Score regression network (module docstring).

    Args:
        size: input side the model is trained and applied at (>= 64; the paper used 512).
        width: channels of the first conv of each column (second: 2 x width; after fusion:
            4 x width).
        hidden: units of the hidden fully connected layer.
        bins, pool: intensity-bin stem (:func:`bin_intensities`, fixed, no weights) in front of
            both columns: each column then sees ``bins`` channels at ``size / pool`` px. 0 =
            none (the demo's 128 px network).

    Input: ``forward(sini, siti)`` with two (N, 1, S, S) tensors, or ``forward(x)`` with one
    (N, 2, S, S) tensor (channel 0 SINI, channel 1 SITI); any S >= 64 runs (adaptive pooling),
    but predictions are meant at ``size``. Output: (N,) H-Score / 300 (linear, unclipped).
    """

    def __init__(self, size: int = 256, width: int = 16, hidden: int = 128, bins: int = 0, pool: int = 1) -> None:
        super().__init__()
        if size < MIN_SIZE:
            raise BcpathError(f"RAM-CNN input size {size} is below {MIN_SIZE}; use size >= {MIN_SIZE} (the paper used 512)")
        if bins < 0 or bins == 1 or pool < 1 or (bins and size // pool < MIN_SIZE):
            raise BcpathError(f"RAM-CNN bins {bins} / pool {pool} do not fit input size {size}; use bins 0 or >= 2 and a pool leaving >= {MIN_SIZE} px")
        self.size = int(size)
        self.width = int(width)
        self.hidden = int(hidden)
        self.bins = int(bins)
        self.pool = int(pool) if bins else 1
        self.sini_column = _column(width, max(1, self.bins))
        self.siti_column = _column(width, max(1, self.bins))
        fused = 4 * width
        self.trunk = nn.Sequential(
            nn.Conv2d(4 * width, fused, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(fused, fused, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(fused * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def config(self) -> dict[str, int]:
        """Constructor arguments (saved in ramcnn.json; ``bins``/``pool`` only with the bin stem)."""
        config = {"size": self.size, "width": self.width, "hidden": self.hidden}
        if self.bins:
            config.update(bins=self.bins, pool=self.pool)
        return config

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, size, size) SINI/SITI → the columns' input: the intensity bins (N, 2 x bins,
        size / pool, size / pool) when the model has them, else ``x`` itself."""
        return bin_intensities(x, self.bins, self.pool) if self.bins else x

    def forward(self, sini: torch.Tensor, siti: torch.Tensor | None = None) -> torch.Tensor:
        x = sini if siti is None else torch.cat([sini, siti], dim=1)
        if self.bins and x.shape[1] == 2:  # raw SINI/SITI: bin them here
            x = self.prepare(x)
        half = x.shape[1] // 2
        x = torch.cat([self.sini_column(x[:, :half]), self.siti_column(x[:, half:])], dim=1)
        out: torch.Tensor = self.head(self.trunk(x)).squeeze(1)
        return out


# ---------------------------------------------------------------------------------------------
# Augmentation and DLA


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    max_angle: float = 10.0,
    max_shift: float = 0.1,
    p_small_angle: float = 0.5,
) -> torch.Tensor:
    """Random rotation and shift of each sample; all channels of a sample get the same
    transform, so SINI and SITI stay aligned.

    Rotation: a random multiple of 90° (exact), plus, with probability ``p_small_angle``, a
    small angle uniform in ±``max_angle``. Shift: a whole number of pixels, up to ``max_shift``
    of the side along each axis. Only the small angle resamples between pixels (bilinear, which
    blurs fine structure such as nuclei masks); keeping it to a share of the samples leaves the
    others pixel-exact, so the network also sees images as sharp as at prediction time.

    Args:
        x: (N, C, S, S) float tensor (C = 2: SINI, SITI).
        generator: CPU torch generator (the draws, hence the result, follow its seed).
        max_angle: largest small-angle rotation, degrees.
        max_shift: largest shift, fraction of the side.
        p_small_angle: probability of the small-angle rotation.

    Returns:
        (N, C, S, S) tensor on x's device; uncovered pixels are 0 (outside the masks).
    """
    n, side = x.shape[0], x.shape[-1]
    k = torch.randint(0, 4, (n,), generator=generator)
    small = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_angle)
    small = torch.where(torch.rand(n, generator=generator) < p_small_angle, small, torch.zeros_like(small))
    angle = small + k.to(torch.float32) * (math.pi / 2)
    max_px = int(math.floor(max_shift * side))
    shift_px = torch.randint(-max_px, max_px + 1, (n, 2), generator=generator).to(torch.float32)
    shift = shift_px * (2.0 / side)  # affine_grid works in [-1, 1]: one pixel is 2 / side
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Exact quarter turns (cos/sin of k·π/2 carry ~1e-8 rounding that would resample).
    exact = small == 0
    cos = torch.where(exact, torch.round(cos), cos)
    sin = torch.where(exact, torch.round(sin), sin)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dla_labels(reference: float, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Distributed label augmentation: ``n`` labels from N(reference, sigma²).

    Args:
        reference: the core's reference H-Score (0-300).
        n: labels per core (>= 1).
        sigma: standard deviation in H-Score points (0-300 scale; the paper's 0.9 is
            :data:`PAPER_DLA_SIGMA`); 0 repeats the reference.
        rng: numpy generator.

    Returns:
        (n,) float64 labels in H-Score points (not clipped, so their mean is the reference).
    """
    if n < 1:
        raise BcpathError(f"n_dla_labels must be >= 1, got {n}")
    if sigma < 0:
        raise BcpathError(f"dla_sigma must be >= 0 H-Score points, got {sigma}")
    return float(reference) + float(sigma) * rng.standard_normal(int(n))


# ---------------------------------------------------------------------------------------------
# Training and prediction


def resolve_bins(bins: int | str, size: int, pool: int | None = None) -> tuple[int, int]:
    """(bins, pool) of a ``bins`` setting ("auto": :func:`auto_bins`; a count: pooled to
    :data:`AUTO_MAP` px); ``pool`` replaces the pooling factor when given."""
    if bins == "auto":
        n_bins, auto_pool = auto_bins(size)
        return n_bins, (pool or auto_pool) if n_bins else 1
    if isinstance(bins, int) and not isinstance(bins, bool) and bins >= 0:
        return bins, (pool or max(1, size // AUTO_MAP)) if bins else 1
    raise BcpathError(f"RAM-CNN: bins must be 'auto' or a count >= 0, got {bins!r}")


def prepare_inputs(cores: Sequence[Core], size: int, bins: int | str = "auto", chunk: int = 16, pool: int | None = None) -> torch.Tensor:
    """The network inputs of ``cores``: SINI/SITI resized to ``size``, then intensity-binned
    (:func:`bin_intensities`) when ``bins`` asks for it; CPU float32."""
    n_bins, pool = resolve_bins(bins, size, pool)
    parts = []
    for start in range(0, len(cores), chunk):
        x = _pair_tensor(cores[start : start + chunk], size)
        parts.append(bin_intensities(x, n_bins, pool) if n_bins else x)
    return torch.cat(parts) if parts else torch.zeros(0)


def train_ramcnn(
    cores: Sequence[Core],
    *,
    epochs: int = RamcnnSettings.epochs,
    batch_size: int = RamcnnSettings.batch_size,
    lr: float = RamcnnSettings.lr,
    n_dla_labels: int = RamcnnSettings.n_dla_labels,
    dla_sigma: float = RamcnnSettings.dla_sigma,
    size: int = RamcnnSettings.size,
    seed: int = 0,
    device: str | None = None,
    width: int = 16,
    hidden: int = 128,
    bins: int | str = "auto",
    pool: int | None = None,
    augment: bool = True,
    max_angle: float = 10.0,
    max_shift: float = 0.1,
    p_small_angle: float = 0.5,
    inputs: torch.Tensor | None = None,
) -> tuple[RamCnn, list[dict[str, float]]]:
    """Train a :class:`RamCnn` on cores with reference H-Scores.

    Every epoch visits each core ``n_dla_labels`` times, each copy with its own DLA label
    (drawn once, before training, from N(reference, ``dla_sigma``²), σ in H-Score points) and a
    fresh augmentation, in a seeded random order. Loss: MSE on H / 300; optimiser: Adam. The
    epochs run through :func:`bcpath.engine.fit` (every epoch, no validation split, as the
    paper; its checkpoints go to a scratch folder) and the last epoch's model is returned.

    Args:
        cores: (sini, siti, reference H-Score, core id) per core; sini/siti square 2-D
            float arrays of one shape (any side; resized to ``size``).
        epochs: passes over the DLA-augmented set.
        batch_size: samples per optimiser step.
        lr: Adam learning rate.
        n_dla_labels: labels (copies) per core per epoch.
        dla_sigma: DLA standard deviation in H-Score points (0-300 scale).
        size: network input side (>= 64).
        seed: seeds initialisation, DLA labels, batch order and augmentation. Same seed, data
            and thread count give the same model on CPU.
        device: "cpu", "cuda", ...; None = CUDA when available.
        width, hidden: network widths (:class:`RamCnn`).
        bins: intensity bins of the stem (pooled to 64 px maps; :class:`RamCnn`), 0 =
            none, or "auto" (:func:`auto_bins`: none up to 128 px, 8 bins above).
        pool: pooling factor of the bins (None: to 64 px maps, pool 8 at 512 px; 4 gives
            128 px maps, 4 x the compute).
        augment: rotate/shift training samples.
        max_angle, max_shift, p_small_angle: augmentation (:func:`augment_batch`).
        inputs: the cores' network inputs when computed already (:func:`prepare_inputs` with
            the same size and bins; :func:`leave_k_out_cv` bins every core once).

    Returns:
        (model in eval mode, history): one dict per epoch with epoch, loss (mean MSE on H/300
        over the epoch's samples, augmented, in train mode), rmse_h (sqrt of it x 300, H-Score
        points), n_samples, seconds.

    Raises:
        BcpathError: no cores, a reference H-Score that is missing or outside [0, 300], bad
            SINI/SITI, bad settings.
    """
    if len(cores) == 0:
        raise BcpathError("RAM-CNN training: no cores; give cores with a reference H-Score")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise BcpathError(f"RAM-CNN training: epochs ({epochs}), batch_size ({batch_size}) and lr ({lr}) must be positive")
    refs = np.array([float(c[2]) for c in cores], np.float64)
    bad = [str(c[3]) for c, r in zip(cores, refs, strict=True) if not (math.isfinite(r) and 0 <= r <= H_SCORE_MAX)]
    if bad:
        raise BcpathError(f"RAM-CNN training: reference H-Score missing or outside 0-300 for core(s) {', '.join(bad[:5])}; fix or drop them")
    dev = choose_device(device)
    torch.manual_seed(seed)
    n_bins, pool = resolve_bins(bins, size, pool)
    model = RamCnn(size=size, width=width, hidden=hidden, bins=n_bins, pool=pool).to(dev)
    # The fixed bin stem runs once per core; augmentation then works on the binned maps
    # (quarter turns and whole-pixel shifts exact, small angles interpolate the bin fractions).
    x_all = prepare_inputs(cores, size, bins, pool=pool) if inputs is None else inputs
    if x_all.shape[0] != len(cores):
        raise BcpathError(f"RAM-CNN training: {x_all.shape[0]} prepared inputs for {len(cores)} cores")
    x_all = x_all.to(dev)
    rng = np.random.default_rng(seed)
    labels = np.concatenate([dla_labels(r, n_dla_labels, dla_sigma, rng) for r in refs])
    index = np.repeat(np.arange(len(cores)), n_dla_labels)
    y_all = torch.from_numpy((labels / H_SCORE_MAX).astype(np.float32)).to(dev)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    n = len(index)

    def train_epoch(epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).numpy()
        total = 0.0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            xb = x_all[torch.from_numpy(index[batch])]
            if augment:
                xb = augment_batch(xb, generator, max_angle, max_shift, p_small_angle)
            yb = y_all[torch.from_numpy(batch)]
            loss = F.mse_loss(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        mse = total / n
        history.append(
            {"epoch": epoch, "loss": mse, "rmse_h": math.sqrt(mse) * H_SCORE_MAX, "n_samples": n, "seconds": round(time.perf_counter() - started, 3)}
        )
        if not math.isfinite(mse):
            raise BcpathError(f"RAM-CNN training diverged at epoch {epoch} (loss {mse}); lower lr (now {lr})")
        return {"loss": mse, "rmse_h": history[-1]["rmse_h"]}

    # The paper's protocol has no validation split: every epoch runs (patience = epochs) and the
    # model after the last epoch is returned; fit keeps the log and checkpoints (in a scratch
    # folder: the rule saves the final model itself, CV folds keep none).
    with tempfile.TemporaryDirectory(prefix="ramcnn-") as scratch:
        fit(model, train_epoch, lambda epoch: {"train_loss": history[-1]["loss"]}, scratch, epochs=epochs, patience=epochs,
            monitor="train_loss", name="RAM-CNN")
    return model.eval(), history


@torch.inference_mode()
def predict_h_scores(model: RamCnn, pairs: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int = 16) -> np.ndarray:
    """H-Scores (0-300, clipped) of several (sini, siti) pairs, resized to ``model.size``."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = [(s, t, 0.0, start + i) for i, (s, t) in enumerate(pairs[start : start + batch_size])]
        out.append(model(model.prepare(_pair_tensor(chunk, model.size).to(dev))).float().cpu().numpy())
    values = np.concatenate(out) if out else np.zeros(0, np.float32)
    return np.clip(values.astype(np.float64) * H_SCORE_MAX, 0.0, H_SCORE_MAX)


def predict_h_score(model: RamCnn, sini: np.ndarray, siti: np.ndarray) -> float:
    """H-Score (0-300, clipped) of one core from its SINI and SITI (resized to ``model.size``)."""
    return float(predict_h_scores(model, [(sini, siti)])[0])


# ---------------------------------------------------------------------------------------------
# Metrics and cross-validation


def h_score_metrics(reference: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Agreement of two sets of H-Scores, the paper's metrics (model vs reader, or reader vs reader).

    Returns:
        dict: ``mae`` mean |predicted − reference|; ``sd_error`` sample SD (ddof 1) of those
        absolute errors (the ± of "MAE ± SD"); ``pearson_r``; ``bias`` mean signed error
        (predicted − reference); ``sd_signed_error`` its sample SD; ``n`` pairs. NaN where
        undefined (SDs with n < 2, r when either side is constant). Pairs with a NaN are dropped.

    Raises:
        BcpathError: the two sequences differ in length.
    """
    r = np.asarray(reference, np.float64).ravel()
    p = np.asarray(predicted, np.float64).ravel()
    if r.shape != p.shape:
        raise BcpathError(f"H-Score metrics: {r.size} reference and {p.size} predicted values; give one prediction per core")
    ok = np.isfinite(r) & np.isfinite(p)
    r, p = r[ok], p[ok]
    n = int(r.size)
    err = p - r
    nan = float("nan")
    pearson = nan
    if n >= 2 and np.std(r) > 0 and np.std(p) > 0:
        pearson = float(np.corrcoef(r, p)[0, 1])
    return {
        "mae": float(np.mean(np.abs(err))) if n else nan,
        "sd_error": float(np.std(np.abs(err), ddof=1)) if n >= 2 else nan,
        "pearson_r": pearson,
        "bias": float(np.mean(err)) if n else nan,
        "sd_signed_error": float(np.std(err, ddof=1)) if n >= 2 else nan,
        "n": n,
    }


def leave_k_out_folds(n: int, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Folds of ``k`` held-out indices each (the last may be smaller) from a seeded permutation
    of ``range(n)``; together they partition it."""
    if k < 1:
        raise BcpathError(f"leave-k-out: k must be >= 1, got {k}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i : i + k]) for i in range(0, n, k)]


def leave_k_out_cv(
    cores: Sequence[Core],
    k: int = 5,
    *,
    seed: int = 0,
    **train_kwargs: Any,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Leave-k-out cross-validation (the paper's leave-5-out).

    Each fold of :func:`leave_k_out_folds` (seeded by ``seed``) is held out in turn; a model is
    trained on the other cores (:func:`train_ramcnn` with ``train_kwargs``, seed ``seed + fold``)
    and predicts the held-out ones.

    Returns:
        (table, metrics): table with columns core_id, fold (0-based), reference, predicted
        (H-Score points), in the cores' order; metrics = :func:`h_score_metrics` over all
        held-out predictions plus ``k`` and ``n_folds``.

    Raises:
        BcpathError: fewer than 2k cores (each model must see at least k cores).
    """
    import pandas as pd

    if len(cores) < 2 * k:
        raise BcpathError(
            f"leave-{k}-out cross-validation needs at least {2 * k} cores with a reference H-Score, got {len(cores)}; "
            f"add cores or lower k"
        )
    folds = leave_k_out_folds(len(cores), k, seed)
    fold_of = np.empty(len(cores), np.int64)
    predicted = np.empty(len(cores), np.float64)
    size = int(train_kwargs.get("size", RamcnnSettings.size))
    inputs = prepare_inputs(cores, size, train_kwargs.get("bins", "auto"), pool=train_kwargs.get("pool"))  # once, not per fold
    for f, held in enumerate(folds):
        held_set = set(held.tolist())
        keep = [i for i in range(len(cores)) if i not in held_set]
        train = [cores[i] for i in keep]
        started = time.perf_counter()
        model, _ = train_ramcnn(train, seed=seed + f, inputs=inputs[keep], **train_kwargs)
        with torch.inference_mode():
            dev = next(model.parameters()).device
            out = model(inputs[torch.from_numpy(held)].to(dev)).float().cpu().numpy()
        predicted[held] = np.clip(out.astype(np.float64) * H_SCORE_MAX, 0.0, H_SCORE_MAX)
        fold_of[held] = f
        logger.info("RAM-CNN leave-%d-out fold %d/%d: %d training cores, %.1fs", k, f + 1, len(folds), len(train), time.perf_counter() - started)
    table = pd.DataFrame(
        {
            "core_id": [c[3] for c in cores],
            "fold": fold_of,
            "reference": [float(c[2]) for c in cores],
            "predicted": predicted,
        }
    )
    metrics: dict[str, float] = {**h_score_metrics(table["reference"], table["predicted"]), "k": k, "n_folds": len(folds)}
    return table, metrics


# ---------------------------------------------------------------------------------------------
# Files


def save_ramcnn(model: RamCnn, directory: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> str:
    """Write ``ramcnn.pt`` (state_dict) and ``ramcnn.json`` into ``directory`` (created).

    ramcnn.json holds ``architecture`` (:attr:`RamCnn.config`), ``size``, ``normalisation``,
    ``output`` ("H-Score 0-300 = 300 x network output, clipped"), ``weights``, ``sha256`` and
    ``torch`` plus everything in ``meta`` (training settings, CV metrics, ...; JSON-ready).

    Returns:
        sha256 of ramcnn.pt.
    """
    from bcpath.io import json_ready, write_json
    from bcpath.models.registry import save_weights

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    was = next(model.parameters()).device
    sha = save_weights(model.cpu(), out / WEIGHTS_NAME)
    model.to(was)
    record = {
        **json_ready(dict(meta or {})),
        "architecture": model.config,
        "size": model.size,
        "normalisation": NORMALISATION,
        "output": "H-Score (0-300) = 300 x network output, clipped to [0, 300]",
        "weights": WEIGHTS_NAME,
        "sha256": sha,
        "torch": torch.__version__,
    }
    write_json(out / META_NAME, record)
    return sha


def load_ramcnn(directory: str | os.PathLike[str], device: str | None = "cpu") -> tuple[RamCnn, dict[str, Any]]:
    """Load a model written by :func:`save_ramcnn`, after checking ramcnn.pt's sha256.

    Returns:
        (model in eval mode on ``device``, the ramcnn.json record).

    Raises:
        BcpathError: a file missing or unreadable, sha256 mismatch, or weights that do not fit.
    """
    from bcpath.models.registry import load_checked_state_dict

    folder = Path(directory)
    meta_path, weights_path = folder / META_NAME, folder / WEIGHTS_NAME
    fix = "re-run the train_ramcnn rule (or save_ramcnn) to rewrite the model directory"
    if not meta_path.is_file():
        raise BcpathError(f"RAM-CNN model {folder}: {META_NAME} not found; {fix}")
    try:
        meta = json.loads(meta_path.read_text())
        config = {key: int(meta["architecture"][key]) for key in ("size", "width", "hidden")}
        config.update({key: int(meta["architecture"][key]) for key in ("bins", "pool") if key in meta["architecture"]})
        expected = str(meta["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BcpathError(f"RAM-CNN model {folder}: {META_NAME} is not a RAM-CNN record ({type(exc).__name__}: {exc}); {fix}") from exc
    state = load_checked_state_dict(weights_path, expected, f"RAM-CNN model {folder}", fix, expected_from=f"{META_NAME} sha256")
    model = RamCnn(**config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BcpathError(f"RAM-CNN model {folder}: weights do not fit the architecture {config} ({str(exc).splitlines()[0]}); {fix}") from exc
    return model.to(choose_device(device)).eval(), meta


# ---------------------------------------------------------------------------------------------
# Training cores table

#: Columns of the cores table that may hold the per-core .npz path (first present wins).
NPZ_COLUMNS = ("npz", "npz_path", "path", "sid_npz")


def _read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise BcpathError(f"RAM-CNN cores table not found: {p}; give the table of cores (parquet or CSV)")
    table = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    missing = [c for c in ("slide_id", "core_id", "reference_h_score") if c not in table.columns]
    if missing:
        raise BcpathError(f"RAM-CNN cores table {p}: no column(s) {', '.join(missing)}; it needs slide_id, core_id, reference_h_score and an npz path column ({' or '.join(NPZ_COLUMNS)})")
    return table


def load_training_cores(table_path: str | os.PathLike[str]) -> tuple[list[Core], dict[str, tuple[str, str]], int]:
    """Cores with a reference H-Score from a cores table and their .npz files.

    The table (parquet by suffix, else CSV) has slide_id, core_id, reference_h_score and the
    path of a per-core .npz holding float32 arrays ``sini`` and ``siti`` (column ``npz``,
    ``npz_path``, ``path`` or ``sid_npz``; relative paths are tried as given, then relative to
    the table's folder). Rows without a reference H-Score are skipped.

    Returns:
        (cores, ids, n_skipped): cores as :data:`Core` with core id ``"slide_id/core_id"``;
        ids maps that id to (slide_id, core_id).
    """
    table = _read_table(table_path)
    column = next((c for c in NPZ_COLUMNS if c in table.columns), None)
    if column is None:
        raise BcpathError(f"RAM-CNN cores table {table_path}: no npz path column; name it one of {', '.join(NPZ_COLUMNS)}")
    base = Path(table_path).parent
    cores: list[Core] = []
    ids: dict[str, tuple[str, str]] = {}
    skipped = 0
    for _, row in table.iterrows():
        ref = row["reference_h_score"]
        if ref is None or (isinstance(ref, float) and math.isnan(ref)) or ref == "":
            skipped += 1
            continue
        slide, core = str(row["slide_id"]), str(row["core_id"])
        key = f"{slide}/{core}"
        if key in ids:
            raise BcpathError(f"RAM-CNN cores table {table_path}: core {core} of slide {slide} is listed twice; keep one row per core")
        npz = Path(str(row[column]))
        if not npz.is_absolute() and not npz.exists() and (base / npz).exists():
            npz = base / npz
        if not npz.is_file():
            raise BcpathError(f"RAM-CNN core {key}: SINI/SITI file not found: {npz}; re-run the rule that writes it")
        with np.load(npz) as data:
            if "sini" not in data or "siti" not in data:
                raise BcpathError(f"RAM-CNN core {key}: {npz} holds {sorted(data.files)}, not 'sini' and 'siti'; write both arrays")
            sini, siti = data["sini"].astype(np.float32), data["siti"].astype(np.float32)
        _check_pair(sini, siti, f"RAM-CNN core {key} ({npz})")
        cores.append((sini, siti, float(ref), key))
        ids[key] = (slide, core)
    return cores, ids, skipped


