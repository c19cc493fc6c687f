"""A learned IHC nucleus detector trained on annotated H&E re-rendered as DAB + hematoxylin.

No annotated IHC nuclei set is reachable for training (the 4 DeepLIIF tiles are kept for
validation only), so the net learns from the annotated H&E sets (MoNuSeg non-breast, CPM-15,
CoNSeP training split) re-stained as IHC on the fly
(:func:`bcpath.stain.ihc_render.render_ihc_from_amounts`): hematoxylin from colour
deconvolution scaled log-uniformly from barely visible (nuclear 90th percentile 0.04 OD) to dark
(1.2 OD), a random share of nuclei DAB-positive from faint (0.08 OD) to saturated (2.5 OD),
jittered stain vectors, white level, haze, blur and noise. Sets are sampled equally (a third of
the crops each), images uniformly within a set.

Input, contrast-normalised per image (:func:`normalise_input`): RGB optical density with the
white from the image, divided by the image's median stained OD sum and log-compressed, so a pale
counterstain and a dark one look alike to the net.

Net (:class:`NucleusNet`): a small U-Net (3 levels, ``width`` 12-24-48 channels, ~60 k
parameters at width 12) at 0.5 µm/px with two outputs: nucleus pixels and a nucleus-centre map
(Gaussian of 1 µm around each annotated centroid). Decoding (:func:`decode`): centres are the
local maxima of the centre map above ``center_threshold`` at least ``min_distance_um`` apart;
each seeds a watershed over the nucleus pixels (probability above ``mask_threshold``). The two
thresholds are chosen on rendered validation images (held-out H&E images re-rendered), never on
DeepLIIF.

Training (:func:`train_detector`) goes through :func:`bcpath.engine.fit` (early stopping on the
rendered validation loss, best.pt with sha256, log.csv); the model folder holds best.pt,
train.json (``best_sha256``, architecture arguments, normalisation, thresholds, data) and log.csv,
and loads with :func:`load_detector` (sha256-checked).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)

#: The shipped detector (source checkout): models/ihc_nuclei.
SHIPPED_DETECTOR = Path(__file__).resolve().parents[3] / "models" / "ihc_nuclei"
#: Resolution the net works at.
NET_MPP = 0.5
#: Sigma of the centre target, µm.
CENTER_SIGMA_UM = 1.0


# --------------------------------------------------------------------------- input


def normalise_input(rgb: NDArray[np.uint8], white: NDArray[np.float64] | float | None = None) -> NDArray[np.float32]:
    """(3, H, W) float32 net input: per-image contrast-normalised optical density.

    OD per channel (white from the image unless given), divided by ``s`` = the median OD sum of
    the stained pixels (OD sum > 0.05; 0.2 when fewer than 1 % of pixels are stained), then
    ``log1p`` (dark DAB nuclei compressed, pale ones kept apart from glass).
    """
    from bcpath.stain.deconvolution import estimate_white, rgb_to_od

    x = np.asarray(rgb)[..., :3]
    i0 = estimate_white(x) if white is None else white
    od = rgb_to_od(x, i0).astype(np.float32)
    total = od.sum(axis=-1)
    stained = total[total > 0.05]
    scale = float(np.median(stained)) if stained.size > 0.01 * total.size else 0.2
    scale = max(scale, 0.05)
    return np.log1p(od / scale).transpose(2, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- net


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class NucleusNet(nn.Module):
    """Small U-Net: 3 input channels, 2 logits (nucleus pixel, nucleus centre); input sides a
    multiple of 4."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        w = int(width)
        self.enc1 = _block(3, w)
        self.enc2 = _block(w, 2 * w)
        self.mid = _block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodeParams:
    """Thresholds of :func:`decode` (chosen on rendered validation images)."""

    center_threshold: float = 0.3
    mask_threshold: float = 0.5
    min_distance_um: float = 2.5
    min_area_um2: float = 6.0


def decode(prob: NDArray[np.float32], mpp: float, params: DecodeParams) -> NDArray[np.int32]:
    """(H, W) int32 nucleus labels from (2, H, W) probabilities (nucleus, centre) at ``mpp``."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask_p, center_p = prob[0], prob[1]
    peaks = peak_local_max(
        center_p, min_distance=max(1, int(round(params.min_distance_um / mpp))), threshold_abs=params.center_threshold, exclude_border=False
    )  # fmt: skip
    if len(peaks) == 0:
        return np.zeros(mask_p.shape, np.int32)
    markers = np.zeros(mask_p.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # A centre without nucleus pixels around it still gets a small disc (pale nuclei).
    seeds = cv2.dilate((markers > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))).astype(bool)
    mask = (mask_p > params.mask_threshold) | seeds
    labels = watershed(-center_p, markers, mask=mask).astype(np.int32)
    n = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n + 1) * mpp * mpp
    keep = area >= params.min_area_um2
    keep[0] = False
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[labels]


# --------------------------------------------------------------------------- inference


@dataclass
class IhcNucleusDetector:
    """A loaded detector: net, its µm/px and decoding thresholds."""

    net: NucleusNet
    mpp: float
    decode: DecodeParams
    folder: str = ""

    @torch.inference_mode()
    def probabilities(self, rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.float32]:
        """(2, h, w) float32 probabilities at the net's µm/px for an image at ``mpp``."""
        x = np.asarray(rgb)[..., :3]
        h, w = x.shape[:2]
        scale = mpp / self.mpp
        size = (max(4, int(round(w * scale))), max(4, int(round(h * scale))))
        small = np.asarray(cv2.resize(x, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR) if size != (w, h) else x, np.uint8)
        inp = normalise_input(small)
        ph, pw = (-inp.shape[1]) % 4, (-inp.shape[2]) % 4
        inp = np.pad(inp, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        self.net.eval()
        logits = self.net(torch.from_numpy(inp)[None])
        return torch.sigmoid(logits)[0, :, : small.shape[0], : small.shape[1]].numpy()

    def __call__(self, rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.int32]:
        """(H, W) int32 nucleus labels of ``rgb`` (µm/px ``mpp``), 0 = background."""
        prob = self.probabilities(rgb, mpp)
        labels = decode(prob, self.mpp, self.decode)
        h, w = np.asarray(rgb).shape[:2]
        if labels.shape != (h, w):
            labels = cv2.resize(labels.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)
        return labels


def load_detector(folder: str | Path) -> IhcNucleusDetector:
    """Load a detector folder (best.pt + train.json, sha256-checked; cached per folder)."""
    return _load_detector(str(Path(folder).resolve()))


@functools.lru_cache(maxsize=4)
def _load_detector(folder_name: str) -> IhcNucleusDetector:
    from bcpath.models.registry import load_checked_state_dict

    folder = Path(folder_name)
    meta_path = folder / "train.json"
    if not meta_path.is_file():
        raise BcpathError(f"IHC nucleus detector {folder}: no train.json (expected a `bcpath ihc train-detector` output folder)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as error:
        raise BcpathError(f"IHC nucleus detector {meta_path}: not valid JSON ({error})") from None
    state = load_checked_state_dict(
        folder / "best.pt", meta.get("best_sha256"), f"IHC nucleus detector {folder}",
        fix="copy best.pt and train.json together, or retrain", expected_from="train.json best_sha256",
    )  # fmt: skip
    net = NucleusNet(**meta["arguments"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BcpathError(f"IHC nucleus detector {folder}: best.pt does not fit NucleusNet{meta['arguments']} ({str(error).splitlines()[0]})") from None
    net.eval()
    return IhcNucleusDetector(net, float(meta["mpp"]), DecodeParams(**meta["decode"]), str(folder))


# --------------------------------------------------------------------------- training data


@dataclass
class _Image:
    set_name: str
    name: str
    hema: NDArray[np.float32]
    eosin: NDArray[np.float32]
    labels: NDArray[np.int32]


def _load_set(folder: Path) -> list[tuple[str, NDArray[np.uint8], NDArray[np.int32], float]]:
    from bcpath.nuclei.datasets import list_cpm15, list_monuseg, load_sample

    samples = list_monuseg(folder) if (folder / "annotations").is_dir() else list_cpm15(folder)
    out = []
    for s in samples:
        rgb, lab = load_sample(s)
        out.append((s.name, rgb, lab, float(s.mpp)))
    return out


def prepare_images(folders: Sequence[str | Path], mpp: float = NET_MPP) -> list[_Image]:
    """Every annotated image of ``folders`` at ``mpp``: hematoxylin, eosin amounts and labels."""
    from bcpath.stain.ihc_render import hematoxylin_from_he

    images = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise BcpathError(f"nuclei training set {folder} not found (expected MoNuSeg or CPM-15 layout)")
        for name, rgb, lab, src_mpp in _load_set(folder):
            scale = src_mpp / mpp
            size = (max(8, int(round(rgb.shape[1] * scale))), max(8, int(round(rgb.shape[0] * scale))))
            small = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), np.uint8)
            small_lab = cv2.resize(lab.astype(np.float32), size, interpolation=cv2.INTER_NEAREST).astype(np.int32)
            hema, eosin = hematoxylin_from_he(small)
            images.append(_Image(folder.name, name, hema.astype(np.float32), eosin.astype(np.float32), small_lab))
    return images


def targets(labels: NDArray[np.int32], mpp: float = NET_MPP) -> NDArray[np.float32]:
    """(2, H, W) float32 targets: nucleus pixels and Gaussian centre map (peak 1 at centroids)."""
    mask = (labels > 0).astype(np.float32)
    center = np.zeros(labels.shape, np.float32)
    n = int(labels.max())
    if n:
        idx = np.unique(labels[labels > 0])
        cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, idx)).reshape(-1, 2).T
        rows = np.clip(np.rint(cy).astype(int), 0, labels.shape[0] - 1)
        cols = np.clip(np.rint(cx).astype(int), 0, labels.shape[1] - 1)
        center[rows, cols] = 1.0
        sigma = CENTER_SIGMA_UM / mpp
        center = cv2.GaussianBlur(center, (0, 0), sigma) * (2 * np.pi * sigma**2)
        center = np.clip(center, 0, 1)
    return np.stack([mask, center])


@dataclass(frozen=True)
class RenderRanges:
    """Ranges of the IHC re-rendering in training (wide: barely visible to dark, faint to saturated DAB)."""

    nuclear_hematoxylin_od: tuple[float, float] = (0.04, 1.2)
    dab_od: tuple[float, float] = (0.08, 2.5)
    positive_fraction: tuple[float, float] = (0.0, 0.8)
    haze_od: tuple[float, float] = (0.0, 0.1)
    eosin_counterstain: tuple[float, float] = (0.0, 0.25)
    vector_sd: float = 0.08
    white: tuple[float, float] = (215.0, 252.0)
    noise_sd: float = 3.0
    blur_sigma_px: tuple[float, float] = (0.0, 1.2)
    stroma_dab_od: tuple[float, float] = (0.0, 0.2)
    channel_gain: float = 0.15


def render_crop(image: _Image, rng: np.random.Generator, crop: int, ranges: RenderRanges) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """One random training crop: (3, crop, crop) normalised input, (2, crop, crop) targets."""
    from bcpath.stain.ihc_render import render_ihc_from_amounts

    h, w = image.labels.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    hema, eosin, lab = image.hema, image.eosin, image.labels
    if ph or pw:
        pad = ((0, ph), (0, pw))
        hema, eosin, lab = np.pad(hema, pad, mode="reflect"), np.pad(eosin, pad, mode="reflect"), np.pad(lab, pad)
        h, w = lab.shape
    y0 = int(rng.integers(0, h - crop + 1))
    x0 = int(rng.integers(0, w - crop + 1))
    sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    hh, ee, ll = hema[sl], eosin[sl], lab[sl]
    k = int(rng.integers(0, 4))
    hh, ee, ll = np.rot90(hh, k), np.rot90(ee, k), np.rot90(ll, k)
    if rng.random() < 0.5:
        hh, ee, ll = hh[:, ::-1], ee[:, ::-1], ll[:, ::-1]
    hh, ee, ll = np.ascontiguousarray(hh), np.ascontiguousarray(ee), np.ascontiguousarray(ll)
    rgb = render_ihc_from_amounts(
        hh, ee, ll, rng, positive_fraction=ranges.positive_fraction, dab_od=ranges.dab_od,
        nuclear_hematoxylin_od=ranges.nuclear_hematoxylin_od, haze_od=ranges.haze_od, vector_sd=ranges.vector_sd,
        white=ranges.white, noise_sd=ranges.noise_sd, log_uniform_hematoxylin=True,
        eosin_counterstain=ranges.eosin_counterstain, blur_sigma_px=ranges.blur_sigma_px, stroma_dab_od=ranges.stroma_dab_od,
    )  # fmt: skip
    x = normalise_input(rgb)
    if ranges.channel_gain > 0:  # colour jitter of the normalised OD, per channel
        x = x * rng.uniform(1 - ranges.channel_gain, 1 + ranges.channel_gain, (3, 1, 1)).astype(np.float32)
    return x, targets(ll)


def render_image(image: _Image, rng: np.random.Generator, ranges: RenderRanges) -> NDArray[np.uint8]:
    """A whole image re-rendered as IHC (validation)."""
    from bcpath.stain.ihc_render import render_ihc_from_amounts

    return render_ihc_from_amounts(
        image.hema, image.eosin, image.labels, rng, positive_fraction=ranges.positive_fraction, dab_od=ranges.dab_od,
        nuclear_hematoxylin_od=ranges.nuclear_hematoxylin_od, haze_od=ranges.haze_od, vector_sd=ranges.vector_sd,
        white=ranges.white, noise_sd=ranges.noise_sd, log_uniform_hematoxylin=True,
        eosin_counterstain=ranges.eosin_counterstain, blur_sigma_px=ranges.blur_sigma_px, stroma_dab_od=ranges.stroma_dab_od,
    )  # fmt: skip


def _centroids(labels: NDArray[np.int32]) -> NDArray[np.float64]:
    n = int(labels.max())
    if n == 0:
        return np.zeros((0, 2))
    idx = np.unique(labels[labels > 0])
    cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, idx)).reshape(-1, 2).T
    return np.stack([cx, cy], axis=1)


def detection_f1(pred: NDArray[np.int32], truth: NDArray[np.int32], radius_px: float) -> tuple[int, int, int]:
    """(matched, n_pred, n_truth) of nucleus centroids within ``radius_px``."""
    from bcpath.ihc.evaluate import match_points

    p, t = _centroids(pred), _centroids(truth)
    return len(match_points(p, t, radius_px)), len(p), len(t)


# --------------------------------------------------------------------------- training


def _split(images: list[_Image], seed: int) -> tuple[list[_Image], list[_Image]]:
    """Per set, ~15 % of the source images (CoNSeP: whole source images, not tiles) for validation."""
    rng = np.random.default_rng(seed)
    train: list[_Image] = []
    val: list[_Image] = []
    for set_name in sorted({im.set_name for im in images}):
        members = [im for im in images if im.set_name == set_name]
        groups = sorted({im.name.rsplit("_", 1)[0] if set_name.startswith("consep") else im.name for im in members})
        n_val = max(1, int(round(0.15 * len(groups))))
        chosen = set(rng.choice(groups, n_val, replace=False).tolist())
        for im in members:
            group = im.name.rsplit("_", 1)[0] if set_name.startswith("consep") else im.name
            (val if group in chosen else train).append(im)
    return train, val


def train_detector(
    data: Sequence[str | Path],
    out: str | Path,
    *,
    width: int = 12,
    crop: int = 128,
    batch_size: int = 8,
    steps_per_epoch: int = 60,
    epochs: int = 12,
    patience: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 1,
    max_minutes: float | None = 14.0,
    val_renders: int = 2,
) -> dict[str, Any]:
    """Train :class:`NucleusNet` on ``data`` (H&E nuclei sets) re-rendered as IHC; write ``out``.

    Returns the train.json content (also written), with the chosen decoding thresholds and the
    rendered-validation detection F1 (within 2 µm) for each threshold pair tried.
    """
    from bcpath.engine import fit, seed_everything, torch_threads

    started = time.perf_counter()
    cpu_started = time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    images = prepare_images(data)
    train, val = _split(images, seed)
    ranges = RenderRanges()
    logger.info("IHC detector: %d training, %d validation images from %s", len(train), len(val), [Path(d).name for d in data])
    by_set: dict[str, list[_Image]] = {}
    for im in train:
        by_set.setdefault(im.set_name, []).append(im)
    set_names = sorted(by_set)
    # Fixed validation renders (whole images; CoNSeP tiles are small so all of them count).
    vrng = np.random.default_rng(seed + 1)
    val_items = []
    for im in val:
        for _ in range(val_renders):
            rgb = render_image(im, vrng, ranges)
            val_items.append((normalise_input(rgb), targets(im.labels), im.labels))
    net = NucleusNet(width)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    pos_weight = torch.tensor([1.0, 20.0]).view(1, 2, 1, 1)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weight = 1.0 + (pos_weight - 1.0) * target
        bce = (bce * weight).mean()
        p = torch.sigmoid(logits[:, 0])
        t = target[:, 0]
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        return bce + dice

    def train_epoch(epoch: int) -> dict[str, float]:
        net.train()
        losses = []
        for _ in range(steps_per_epoch):
            xs, ys = [], []
            for _b in range(batch_size):
                members = by_set[set_names[int(rng.integers(len(set_names)))]]
                x, y = render_crop(members[int(rng.integers(len(members)))], rng, crop, ranges)
                xs.append(x)
                ys.append(y)
            xb, yb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            loss = loss_fn(net(xb), yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler.last_epoch < total_steps - 1:
                scheduler.step()
            losses.append(float(loss.detach()))
        return {"train_loss": float(np.mean(losses))}

    @torch.inference_mode()
    def val_probs() -> list[tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]]:
        net.eval()
        res = []
        for x, y, lab in val_items:
            ph, pw = (-x.shape[1]) % 4, (-x.shape[2]) % 4
            xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
            logits = net(torch.from_numpy(xp)[None])[:, :, : x.shape[1], : x.shape[2]]
            res.append((logits[0].numpy(), y, lab))
        return res

    def validate(epoch: int) -> dict[str, float]:
        res = val_probs()
        losses = [float(loss_fn(torch.from_numpy(lg)[None], torch.from_numpy(y)[None])) for lg, y, _ in res]
        return {"val_loss": float(np.mean(losses))}

    with torch_threads(threads):
        result = fit(net, train_epoch, validate, out, epochs, patience, monitor="val_loss", mode="min", name="ihc_nuclei",
                     max_minutes=max_minutes, started=started)  # fmt: skip
        from bcpath.models.registry import load_checked_state_dict

        net.load_state_dict(load_checked_state_dict(result.weights_path, result.sha256, "ihc_nuclei"))
        res = val_probs()
    # Decoding thresholds: best pooled detection F1 (2 µm) on the rendered validation images.
    grid = []
    radius = 2.0 / NET_MPP
    probs = [(1 / (1 + np.exp(-lg)), lab) for lg, _, lab in res]
    for ct, mt, md in ((c, m, d) for c in (0.3, 0.5) for m in (0.3, 0.5) for d in (2.5, 3.5)):
        params = DecodeParams(center_threshold=ct, mask_threshold=mt, min_distance_um=md)
        m = n_p = n_t = 0
        for prob, lab in probs:
            a, b, c = detection_f1(decode(prob.astype(np.float32), NET_MPP, params), lab, radius)
            m, n_p, n_t = m + a, n_p + b, n_t + c
        grid.append({"center_threshold": ct, "mask_threshold": mt, "min_distance_um": md, "f1": 2 * m / max(1, n_p + n_t),
                     "precision": m / max(1, n_p), "recall": m / max(1, n_t)})  # fmt: skip
    best = max(grid, key=lambda r: r["f1"])
    decode_params = DecodeParams(center_threshold=best["center_threshold"], mask_threshold=best["mask_threshold"], min_distance_um=best["min_distance_um"])
    meta = {
        "model": "ihc_nuclei",
        "architecture": "NucleusNet",
        "arguments": {"width": width},
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "mpp": NET_MPP,
        "input": "per-image contrast-normalised OD: log1p(OD / median stained OD sum) (bcpath.ihc.nuclei_net.normalise_input)",
        "decode": asdict(decode_params),
        "best_sha256": result.sha256,
        "fit": result.summary(),
        "stop_reason": result.stop_reason,
        "validation_decode_grid": grid,
        "data": [str(d) for d in data],
        "train_images": {s: len(v) for s, v in by_set.items()},
        "validation_images": sorted(f"{im.set_name}/{im.name}" for im in val),
        "render": asdict(ranges),
        "settings": {"width": width, "crop": crop, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "epochs": epochs,
                     "patience": patience, "lr": lr, "seed": seed, "threads": threads, "max_minutes": max_minutes},  # fmt: skip
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "cpu_minutes": round((time.process_time() - cpu_started) / 60, 2),
    }
    (out / "train.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "last.pt").unlink(missing_ok=True)
    return meta
