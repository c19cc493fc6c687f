"""Mitosis detection: a small CNN ("MitosNet") classifies nucleus-centred crops.

Shah et al.: candidates from the nuclei (:mod:`bcpath.proliferation.candidates`), each crop
(63×63 px at 40×, about 16 µm; here the registry entry's ``patch_px`` at its ``mpp``) classified
by a small CNN trained in two stages: stage 1 annotated mitoses against random other nuclei,
stage 2 adds the stage-1 false positives as hard negatives. Non-maximum suppression makes one
figure one detection. A second head gives the probability that a figure is atypical (AMi-Br).

Training data are :class:`CropSet` s: uint8 crops (N, S, S, 3) at the model's µm/px with
S ≥ ``patch_px`` (the margin allows scale and shift augmentation), labels 1 = mitosis, 0 = not,
``atypical`` 1 / 0 / -1 (unknown), and a ``group`` per crop (slide or dataset) for splits.

Augmentation (training only): 90° rotations and flips, scale ×[0.85, 1.15], shift ±2 px, H&E
stain jitter in optical density (each stain's amount ×[0.75, 1.3] and a small change of its
colour vector), brightness / contrast / gamma, Gaussian blur and JPEG at random, so that a model
cannot tell images apart by scanner, stain batch or dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.proliferation.candidates import (
    CandidateParams,
    find_candidates,
    measure_objects,
    non_maximum_suppression,
)

if TYPE_CHECKING:
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

DETECTION_COLUMNS: tuple[str, ...] = (
    "x", "y", "probability", "atypical_probability", "area_um2", "eccentricity", "solidity", "mean_od",
)


@dataclass
class CropSet:
    """Crops for training or validation.

    Attributes:
        images: (N, S, S, 3) uint8 at the model's µm/px, centred on the object.
        labels: (N,) int64, 1 = mitotic figure, 0 = other nucleus.
        atypical: (N,) int64, 1 = atypical figure, 0 = normal figure, -1 = unknown / not a mitosis.
        groups: (N,) str, the slide or dataset each crop comes from.
    """

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    atypical: NDArray[np.int64]
    groups: NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(sets: list[CropSet]) -> CropSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            raise BcpathError("no crops to train on")
        size = max(s.images.shape[1] for s in sets)
        images = [s.images if s.images.shape[1] == size else _centre_pad(s.images, size) for s in sets]
        return CropSet(
            np.concatenate(images), np.concatenate([s.labels for s in sets]),
            np.concatenate([s.atypical for s in sets]), np.concatenate([s.groups for s in sets]),
        )

    def subset(self, keep: NDArray[np.bool_] | NDArray[np.int64]) -> CropSet:
        return CropSet(self.images[keep], self.labels[keep], self.atypical[keep], self.groups[keep])


def _centre_pad(images: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Pad (N, s, s, 3) crops to (N, size, size, 3) with edge replication."""
    pad = size - images.shape[1]
    before, after = pad // 2, pad - pad // 2
    return np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)), mode="edge")


def centre_crop(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """The central (size, size) of an (S, S, 3) crop (S ≥ size)."""
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def augment_crop(image: NDArray[np.uint8], rng: np.random.Generator, size: int) -> NDArray[np.uint8]:
    """One random training view (size, size, 3) uint8 of an (S, S, 3) crop (see module doc)."""
    import cv2

    from bcpath.stain.ihc_render import HE_EOSIN, HE_HEMATOXYLIN

    s = image.shape[0]
    scale = float(rng.uniform(0.85, 1.15))
    shift = rng.uniform(-2.0, 2.0, 2)
    # Source window of the output around the (shifted) centre, then resample to size.
    half = size / 2.0 / scale
    cx, cy = s / 2.0 + shift[0], s / 2.0 + shift[1]
    matrix = np.array([[1 / scale, 0, cx - half], [0, 1 / scale, cy - half]], np.float64)
    view = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    view = np.rot90(view, int(rng.integers(4)))
    if rng.random() < 0.5:
        view = view[:, ::-1]
    # Stain jitter in OD space (Ruifrok-Johnston H&E, eosin in the second slot, residual third).
    stains = np.stack([HE_HEMATOXYLIN, HE_EOSIN]) / np.linalg.norm(np.stack([HE_HEMATOXYLIN, HE_EOSIN]), axis=1, keepdims=True)
    residual = np.cross(stains[0], stains[1])
    matrix3 = np.stack([stains[0], stains[1], residual / np.linalg.norm(residual)])
    od = -np.log10(np.maximum(view.astype(np.float32), 1.0) / 255.0).reshape(-1, 3)
    conc = od @ np.linalg.inv(matrix3)
    conc[:, 0] *= rng.uniform(0.75, 1.3)
    conc[:, 1] *= rng.uniform(0.7, 1.3)
    moved = matrix3.copy()
    for k in (0, 1):
        v = np.clip(moved[k] + rng.normal(0.0, 0.04, 3), 0.02, None)
        moved[k] = v / np.linalg.norm(v)
    rgb = 255.0 * np.power(10.0, -(conc @ moved)).reshape(view.shape)
    # Brightness, contrast, gamma.
    rgb = (rgb - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-15, 15)
    rgb = 255.0 * np.power(np.clip(rgb, 0, 255) / 255.0, rng.uniform(0.8, 1.25))
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 95))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out)


def to_tensor(crops: NDArray[np.uint8], spec: ModelSpec) -> torch.Tensor:
    """(N, P, P, 3) uint8 → (N, 3, P, P) float32 normalised with the entry's mean/std."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


class _CropDataset:
    """torch Dataset over a CropSet: (input (3, P, P), label, atypical) with per-epoch seeds."""

    def __init__(self, crops: CropSet, spec: ModelSpec, augment: bool, seed: int) -> None:
        self.crops, self.spec, self.augment, self.seed, self.epoch = crops, spec, augment, seed, 0

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image = self.crops.images[index]
        size = self.spec.patch_px
        if self.augment:
            view = augment_crop(image, np.random.default_rng((self.seed, self.epoch, index)), size)
        else:
            view = centre_crop(image, size)
        return to_tensor(view[None], self.spec)[0], int(self.crops.labels[index]), int(self.crops.atypical[index])


@dataclass(frozen=True)
class MitosisTrainConfig:
    """Training settings of the mitosis classifier (both stages).

    Attributes:
        epochs, patience: per stage; early stopping on the validation loss.
        batch_size, lr, weight_decay: AdamW.
        positive_weight: sampling weight of mitoses relative to other nuclei per epoch
            (mitoses are rare: each epoch draws about as many of each class).
        atypical_weight: weight of the atypical head's loss (on mitoses with a known label).
        hard_negative_epochs: epochs of stage 2 (0 = one stage only).
        seed, threads, device: repeatability and resources (device None = CUDA when available).
        max_minutes: stop a stage after the epoch that passes this wall time.
    """

    epochs: int = 12
    patience: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    positive_weight: float = 1.0
    atypical_weight: float = 0.5
    hard_negative_epochs: int = 4
    seed: int = 0
    threads: int | None = None
    device: str | None = None
    max_minutes: float | None = None


def _balanced_indices(labels: NDArray[np.int64], rng: np.random.Generator, positive_weight: float) -> NDArray[np.int64]:
    """One epoch's indices: every negative once, positives resampled to ~ as many × weight."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = max(len(pos), int(round(len(neg) * positive_weight))) if len(pos) else 0
    drawn = rng.choice(pos, size=n_pos, replace=n_pos > len(pos)) if n_pos else np.zeros(0, np.int64)
    return rng.permutation(np.concatenate([neg, drawn]))


def train_mitosis_classifier(
    spec: ModelSpec,
    train: CropSet,
    val: CropSet,
    out_dir: str | os.PathLike[str],
    config: MitosisTrainConfig = MitosisTrainConfig(),
    init_from: str | os.PathLike[str] | None = None,
    stage: str = "stage1",
) -> dict[str, Any]:
    """Train (or continue) the mitosis classifier on crops; writes best.pt, last.pt, log.csv.

    Args:
        spec: the registry entry (kind mitosis_classifier: architecture, arguments, mpp,
            patch_px, mean/std).
        train, val: crops; ``val`` selects the best epoch (lowest mitosis loss).
        out_dir: folder for the stage's outputs (created).
        config: :class:`MitosisTrainConfig`.
        init_from: weights file to start from (stage 2 continues stage 1).
        stage: name used in log lines.

    Returns:
        JSON-ready summary: the engine's FitResult summary plus validation metrics of the best
        epoch (loss, recall and precision of mitoses at p ≥ 0.5, atypical balanced accuracy).
    """
    import torch
    from torch.utils.data import DataLoader

    from bcpath.engine import choose_device, fit, seed_everything, torch_threads
    from bcpath.models.registry import build_model

    if int((train.labels == 1).sum()) == 0 or int((train.labels == 0).sum()) == 0:
        raise BcpathError(
            f"model {spec.model_id}: training needs both mitoses and other nuclei "
            f"(got {int((train.labels == 1).sum())} mitoses, {int((train.labels == 0).sum())} others)"
        )
    if len(val) == 0:
        raise BcpathError(f"model {spec.model_id}: no validation crops; give tune slides or a validation split")
    seed_everything(config.seed)
    device = choose_device(config.device)
    out = Path(out_dir)
    model = build_model(spec, init_from).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_set = _CropDataset(train, spec, augment=True, seed=config.seed)
    val_set = _CropDataset(val, spec, augment=False, seed=config.seed)
    val_loader: Any = DataLoader(val_set, batch_size=256, shuffle=False)  # type: ignore[arg-type]
    ce = torch.nn.CrossEntropyLoss()
    # Atypical figures are the minority (AMi-Br: 1 in 4.7): weight them by normal / atypical so
    # that p ≥ 0.5 balances the two errors (the task is scored by balanced accuracy).
    known_train = train.atypical[train.labels == 1]
    n_atypical, n_normal = int((known_train == 1).sum()), int((known_train == 0).sum())
    atypical_balance = n_normal / n_atypical if n_atypical and n_normal else 1.0
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(atypical_balance, device=device))

    def loss_of(model_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], y: torch.Tensor, atyp: torch.Tensor) -> torch.Tensor:
        logits, atyp_logit, _ = model_out
        loss = ce(logits, y)
        known = atyp >= 0
        if config.atypical_weight > 0 and bool(known.any()):
            loss = loss + config.atypical_weight * bce(atyp_logit[known], atyp[known].float())
        return loss

    def train_epoch(epoch: int) -> dict[str, float]:
        train_set.epoch = epoch
        indices = _balanced_indices(train.labels, np.random.default_rng((config.seed, epoch)), config.positive_weight)
        loader: Any = DataLoader(train_set, batch_size=config.batch_size, sampler=indices.tolist(), drop_last=len(indices) % config.batch_size == 1)  # type: ignore[arg-type]
        model.train()
        total, seen = 0.0, 0
        for x, y, atyp in loader:
            x, y, atyp = x.to(device), y.to(device), atyp.to(device)
            loss = loss_of(model.forward_all(x), y, atyp)  # type: ignore[operator]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
        return {"train_loss": total / max(1, seen), "n_train": float(seen)}

    def validate(epoch: int) -> dict[str, float]:
        p, a = predict_crops(model, val.images, spec, device=device)
        return validation_metrics(val, p, a)

    with torch_threads(config.threads, device):
        result = fit(
            model, train_epoch, validate, out, config.epochs, config.patience,
            monitor="val_loss", mode="min", name=f"{spec.model_id} {stage}", max_minutes=config.max_minutes,
        )
    del val_loader
    best = next(row for row in result.rows if row["epoch"] == result.best_epoch)
    return {**result.summary(), "validation": {k: best[k] for k in best if k.startswith("val_")}, "n_train": len(train), "n_val": len(val)}


def validation_metrics(val: CropSet, p: NDArray[np.float32], atypical_p: NDArray[np.float32]) -> dict[str, float]:
    """Loss and rates of mitosis probabilities ``p`` on ``val`` (threshold 0.5)."""
    y = val.labels
    eps = 1e-6
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    hit = p >= 0.5
    recall = float(hit[y == 1].mean()) if (y == 1).any() else float("nan")
    precision = float((y[hit] == 1).mean()) if hit.any() else float("nan")
    specificity = float((~hit[y == 0]).mean()) if (y == 0).any() else float("nan")
    known = val.atypical >= 0
    bacc = float("nan")
    if known.any() and len(np.unique(val.atypical[known])) == 2:
        t = val.atypical[known] == 1
        q = atypical_p[known] >= 0.5
        bacc = float((q[t].mean() + (~q[~t]).mean()) / 2)
    return {"val_loss": loss, "val_recall": recall, "val_precision": precision, "val_specificity": specificity, "val_atypical_bacc": bacc}


def predict_crops(
    model: torch.nn.Module,
    crops: NDArray[np.uint8],
    spec: ModelSpec,
    device: Any = None,
    batch_size: int = 256,
    embeddings: bool = False,
) -> Any:
    """Mitosis and atypical probabilities of (N, S, S, 3) crops (centre ``patch_px`` used).

    Returns:
        (p_mitosis (N,), p_atypical (N,)) float32, plus (N, D) float32 embeddings when
        ``embeddings`` is True.
    """
    import torch

    from bcpath.engine import autocast

    device = device or next(model.parameters()).device
    p_out, a_out, e_out = [], [], []
    model.eval()
    size = spec.patch_px
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            batch = crops[start : start + batch_size]
            if batch.shape[1] != size:
                batch = np.stack([centre_crop(c, size) for c in batch]) if batch.shape[1] > size else _centre_pad(batch, size)
            x = to_tensor(batch, spec).to(device)
            with autocast(device):
                logits, atyp, emb = model.forward_all(x)  # type: ignore[operator]
            p_out.append(torch.softmax(logits.float(), 1)[:, 1].cpu().numpy())
            a_out.append(torch.sigmoid(atyp.float()).cpu().numpy())
            e_out.append(emb.float().cpu().numpy())
    dim = getattr(model, "embed_dim", 0)
    p = np.concatenate(p_out).astype(np.float32) if p_out else np.zeros(0, np.float32)
    a = np.concatenate(a_out).astype(np.float32) if a_out else np.zeros(0, np.float32)
    if embeddings:
        e = np.concatenate(e_out).astype(np.float32) if e_out else np.zeros((0, dim), np.float32)
        return p, a, e
    return p, a


def extract_crops(rgb: NDArray[np.uint8], x: NDArray[np.floating], y: NDArray[np.floating], size: int) -> NDArray[np.uint8]:
    """(N, size, size, 3) crops of ``rgb`` centred on (x, y) px; reflected at the borders."""
    half = size // 2
    padded = np.pad(rgb, ((half, half), (half, half), (0, 0)), mode="reflect")
    out = np.empty((len(x), size, size, 3), np.uint8)
    for i, (cx, cy) in enumerate(zip(np.round(x).astype(int), np.round(y).astype(int), strict=True)):
        out[i] = padded[cy : cy + size, cx : cx + size]
    return out


@dataclass(frozen=True)
class DetectionParams:
    """Detection settings.

    Attributes:
        threshold: a candidate with p(mitosis) ≥ threshold is a detection.
        nms_um: detections closer than this (µm) are one figure (the higher p is kept).
        candidates: :class:`CandidateParams`.
        embeddings: also return each detection's embedding (bag-of-words features).
    """

    threshold: float = 0.5
    nms_um: float = 10.0
    candidates: CandidateParams = CandidateParams()
    embeddings: bool = False


def detect_in_image(
    rgb: NDArray[np.uint8],
    model: torch.nn.Module,
    spec: ModelSpec,
    params: DetectionParams = DetectionParams(),
    mask: NDArray[np.bool_] | None = None,
) -> tuple[pd.DataFrame, NDArray[np.float32]]:
    """Mitotic figures in an image already at the model's µm/px.

    Args:
        rgb: (H, W, 3) uint8 at ``spec.mpp``.
        model: the loaded classifier; spec: its registry entry.
        params: :class:`DetectionParams`.
        mask: optional (H, W) bool region to search (e.g. tumor).

    Returns:
        (detections with :data:`DETECTION_COLUMNS` in px of ``rgb``, sorted by decreasing
        probability; embeddings (n, D) float32, empty unless ``params.embeddings``).
    """
    candidates = find_candidates(rgb, spec.mpp, params.candidates, mask)
    dim = int(getattr(model, "embed_dim", 0))
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in DETECTION_COLUMNS})
    if candidates.empty:
        return empty, np.zeros((0, dim), np.float32)
    x, y = candidates["x"].to_numpy(), candidates["y"].to_numpy()
    p, a, e = predict_crops(model, extract_crops(rgb, x, y, spec.patch_px), spec, embeddings=True)
    hit = np.flatnonzero(p >= params.threshold)
    kept = hit[non_maximum_suppression(x[hit], y[hit], p[hit], params.nms_um / spec.mpp)]
    od, smooth = candidates.attrs["od"]
    objects = measure_objects(od, smooth, x[kept], y[kept], spec.mpp, params.candidates)
    keep = objects["size_ok"].to_numpy()
    detections = objects[keep].assign(probability=p[kept][keep], atypical_probability=a[kept][keep])
    detections = detections[list(DETECTION_COLUMNS)].reset_index(drop=True)
    return detections, (e[kept][keep] if params.embeddings else np.zeros((0, dim), np.float32))


def match_detections(
    pred_xy: NDArray[np.floating], true_xy: NDArray[np.floating], radius: float
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) with one-to-one matching within ``radius``.

    As MIDOG: a detection matches a true figure within ``radius`` (same units; 7.5 µm there);
    pairs are assigned by the Hungarian algorithm on distance, so each figure counts once.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return 0, len(pred_xy), len(true_xy)
    d = cdist(pred_xy, true_xy)
    cost = np.where(d <= radius, d, 1e9)
    rows, cols = linear_sum_assignment(cost)
    tp = int((d[rows, cols] <= radius).sum())
    return tp, len(pred_xy) - tp, len(true_xy) - tp


def f1_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 (NaN where undefined) from counts."""
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


THRESHOLD_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)


def choose_threshold(p_mitoses: NDArray[np.floating], p_others: NDArray[np.floating]) -> tuple[float, float]:
    """The detection threshold with the best F1 when every annotated figure (``p_mitoses``) and
    every other candidate of the same slides (``p_others``) is classified: (threshold, F1).

    Ties go to the lower threshold (recall). Used on the tune slides only.
    """
    best = (0.5, -1.0)
    for t in THRESHOLD_GRID:
        tp = int((np.asarray(p_mitoses) >= t).sum())
        fp = int((np.asarray(p_others) >= t).sum())
        f1 = f1_scores(tp, fp, len(p_mitoses) - tp)["f1"]
        if f1 == f1 and f1 > best[1] + 1e-12:
            best = (t, float(f1))
    return best


def config_from(params: Any) -> MitosisTrainConfig:
    """A :class:`MitosisTrainConfig` from a mapping (rule params / config.yaml section)."""
    fields = {f.name for f in dataclasses.fields(MitosisTrainConfig)}
    return MitosisTrainConfig(**{k: v for k, v in dict(params).items() if k in fields})
