"""Stage 1 of ER/PR/HER2 (Gamble et al. 2021): train the 3-class patch classifier.

Data: slides of the sample sheet with ``split == "train"`` give the training patches, those
with ``split == "tune"`` the validation patches; ``test`` slides are never read. Each slide
needs an ``annotations`` GeoJSON (QuPath regions, classes as in :mod:`bcpath.labels`).
Patches are drawn once, before the first epoch, with
:func:`bcpath.erpr.sampling.sample_patch_positions`: ``patches_per_class_per_slide`` per class
per slide (fewer where a class's regions are small), from ``numpy.random.default_rng((seed,
slide position in the sheet))``, and read at the model's µm/px and patch size.

Class balance: every epoch visits every training patch at least once and oversamples the
smaller classes (whole repeats, then a random remainder without replacement) up to the size
of the largest class, so each epoch holds the same number of patches of each class. This
keeps every patch in play each epoch (unlike a WeightedRandomSampler, which with replacement
skips about a third of them) and leaves the loss unweighted. Tune patches are used as drawn.

Optimisation: DESIGN.md fixes the architecture and patch geometry of Gamble et al. but not
the optimiser; bcpath uses AdamW (``lr``, ``weight_decay``) with a constant learning rate,
cross-entropy loss, and training-time augmentation (flips, 90° rotations, colour jitter; see
:class:`bcpath.erpr.sampling.PatchSampleDataset`). After each epoch the BatchNorm running
statistics are recomputed over the epoch's last ``BN_RECALIBRATION_PATCHES`` training patches
with the final weights (:func:`bcpath.engine.recalibrate_batchnorm`, "precise BN"): with a few
dozen steps per epoch the running averages otherwise lag the weights and the tune loss jumped
between epochs (the demo ResNet-18's from 0.7 to 6.2 and back to 0.003). Early stopping
watches the tune loss.

Outputs in ``out_dir``:

    log.csv      one row per epoch (LOG_COLUMNS):
                 epoch        1-based epoch number
                 train_loss   mean cross-entropy over the epoch's (balanced, augmented) patches
                 train_acc    fraction of those classified correctly (in train mode)
                 tune_loss    mean cross-entropy over the tune patches (eval mode, no augment)
                 tune_acc     accuracy on the tune patches
                 tune_auc     patch-level ROC AUC of class 0 (biomarker-positive tumor) vs the
                              rest, from p_0 (sklearn roc_auc_score); empty when the tune
                              patches hold only one side
                 lr           learning rate of the epoch
                 n_train      patches seen in the epoch (after balancing)
                 n_tune       tune patches
                 is_best      1 when this epoch set a new lowest tune loss (best.pt written)
                 seconds      wall time of the epoch (train + tune); the only column that
                              differs between two runs with the same seed on CPU
    last.pt      state_dict after the latest epoch (bcpath.models.save_weights)
    best.pt      state_dict of the epoch with the lowest tune loss
    patches.csv  the sampled patches: slide_id, split, x0, y0 (level-0 px, top-left), label
    train.json   the configuration, the model entry fields used and the result

Repeatability: the same seed, data and thread count give the same log (but ``seconds``) on
CPU: torch, numpy and the DataLoader generator are seeded, and the augmentation of training
patch i in epoch e is a function of (seed, e, i), whatever the number of workers. On CUDA, cuDNN kernels make runs close but not
bitwise equal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcpath.erpr.sampling import LABEL_ORDER
from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

BN_RECALIBRATION_PATCHES = 512
"""Training patches (the epoch's last batches, as augmented) that set BatchNorm statistics after each epoch."""

LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "train_acc", "tune_loss", "tune_acc", "tune_auc",
    "lr", "n_train", "n_tune", "is_best", "seconds",
)


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters of :func:`train_patch_classifier`: config section ``erpr.training``
    (its ``pretrained`` is the step's ``pretrained_path``) plus the job's resources; defaults =
    the config schema's.

    Attributes:
        epochs: most epochs to run.
        batch_size: patches per optimiser step.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW decoupled weight decay.
        patience: early stopping: stop once more than this many epochs in a row brought no
            new lowest tune loss (2: the 3rd such epoch is the last; 0 = stop at the first
            epoch that does not improve); ``bcpath.engine.fit(patience_exceeded=True)``.
        patches_per_class_per_slide: patches drawn per class per slide, train and tune.
        seed: seeds patch sampling, model initialisation, augmentation and batch order.
        num_workers: DataLoader worker processes; None = 0 on CPU (the cores go to the model)
            and ``min(8, threads − 1)`` on CUDA.
        device: "cpu", "cuda", ...; None = CUDA when available, else CPU.
        threads: cores granted to the job; None = the process's CPU affinity. On CPU,
            ``torch.set_num_threads(threads)`` for the duration of the call.
        augment: augment training patches (flips, 90° rotations, colour jitter).
    """

    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 2
    patches_per_class_per_slide: int = 16
    seed: int = 0
    num_workers: int | None = None
    device: str | None = None
    threads: int | None = None
    augment: bool = True


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_patch_classifier` produced.

    Attributes:
        best_epoch: 1-based epoch with the lowest tune loss.
        best_tune_loss: that loss.
        best_tune_auc: tune patch AUC of class 0 at that epoch (NaN when undefined).
        weights_path: ``out_dir/best.pt``.
        sha256: sha256 of best.pt (record it in the registry).
        last_path: ``out_dir/last.pt``.
        log_path: ``out_dir/log.csv``.
        epochs_run: epochs completed.
        stopped_early: True when early stopping ended the run before ``config.epochs``.
    """

    best_epoch: int
    best_tune_loss: float
    best_tune_auc: float
    weights_path: Path
    sha256: str
    last_path: Path
    log_path: Path
    epochs_run: int
    stopped_early: bool


def _sample_table(samples_table: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    if isinstance(samples_table, (str, os.PathLike)):
        from bcpath.cohort import read_sample_sheet

        table: pd.DataFrame = read_sample_sheet(samples_table)
        return table
    return samples_table


def _value(row: Any, column: str) -> Any:
    value = row.get(column) if hasattr(row, "get") else None
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value


def sample_training_patches(
    spec: ModelSpec,
    samples_table: pd.DataFrame | str | os.PathLike[str],
    biomarker: str,
    patches_per_class_per_slide: int,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, str], dict[str, float | None]]:
    """Patch positions of the train and tune slides of a sample sheet.

    Returns:
        (patches, slide_paths, slide_mpp): patches has columns slide_id, split, x0, y0
        (level-0 px, top-left), label (class index, ``LABEL_ORDER``); slide_paths and
        slide_mpp (sheet µm/px or None) map slide_id → value for the slides used.

    Raises:
        BcpathError: a train/tune slide has no annotations, or no train or no tune slide.
    """
    import pandas as pd

    from bcpath.erpr.sampling import sample_patch_positions
    from bcpath.geojson import read_geojson
    from bcpath.wsi.reader import open_slide

    table = _sample_table(samples_table)
    if "split" not in table.columns:
        raise BcpathError("sample sheet has no split column; mark training slides train and validation slides tune")
    frames = []
    paths: dict[str, str] = {}
    mpps: dict[str, float | None] = {}
    for position, (_, row) in enumerate(table.iterrows()):
        split = _value(row, "split")
        if split not in ("train", "tune") or (_value(row, "stain") or "HE") != "HE":
            continue
        slide_id = str(_value(row, "slide_id") or row.name)
        annotations = _value(row, "annotations")
        if annotations is None:
            raise BcpathError(
                f"slide {slide_id} (split {split}) has no annotations; add a QuPath GeoJSON path "
                "in the annotations column, or set its split to test"
            )
        sheet_mpp = _value(row, "mpp")
        mpps[slide_id] = float(sheet_mpp) if sheet_mpp is not None else None
        paths[slide_id] = str(row["path"])
        with open_slide(paths[slide_id], slide_id, mpp=mpps[slide_id]) as slide:
            level0_mpp = slide.mpp
        positions = sample_patch_positions(
            read_geojson(annotations), biomarker, LABEL_ORDER, patches_per_class_per_slide,
            spec.patch_px * spec.mpp / level0_mpp, np.random.default_rng((seed, position)),
        )
        positions.insert(0, "split", split)
        positions.insert(0, "slide_id", slide_id)
        frames.append(positions)
    patches = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["slide_id", "split", "x0", "y0", "label"])
    for split in ("train", "tune"):
        if not (patches["split"] == split).any():
            raise BcpathError(
                f"{biomarker} training: no {split} patches (no slide with split {split} and labelled "
                f"regions); mark at least one annotated slide {split} in the sample sheet"
            )
    return patches, paths, mpps


def balanced_epoch_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one class-balanced epoch (module docstring), shuffled.

    Every index appears at least once; each present class appears ``max class count`` times.
    """
    present = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    target = max((len(p) for p in present), default=0)
    chosen = []
    for members in present:
        repeats, remainder = divmod(target, len(members))
        chosen.append(np.tile(members, repeats))
        chosen.append(rng.choice(members, size=remainder, replace=False))
    indices = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return rng.permutation(indices).astype(np.int64)


def train_patch_classifier(
    spec: ModelSpec,
    samples_table: pd.DataFrame | str | os.PathLike[str],
    biomarker: str,
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    pretrained_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a registry entry's 3-class patch classifier for one biomarker.

    Args:
        spec: the registry entry (architecture, classes, mpp, patch_px, mean/std); its
            classes must be the three of ``LABEL_ORDER`` in that order (positive tumor,
            negative tumor, non-tumor).
        samples_table: the sample sheet (DataFrame of ``bcpath.cohort.read_sample_sheet``, or
            its path); uses slide_id, path, mpp, split, annotations.
        biomarker: "ER", "PR" or "HER2".
        out_dir: folder for log.csv, last.pt, best.pt, patches.csv, train.json (created).
        config: training parameters; None = ``TrainConfig()``.
        pretrained_path: optional local state_dict to start from (see ``build_model``).
        progress: log a line per epoch at INFO (always) and show a tqdm bar per epoch.

    Returns:
        :class:`TrainResult` (best epoch, its tune loss and AUC, best.pt and its sha256).

    Raises:
        BcpathError: the entry does not have 3 classes, or the sheet has no train or no tune
            slide with labelled regions.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from bcpath.engine import (
        autocast,
        autocast_dtype,
        choose_device,
        fit,
        granted_threads,
        recalibrate_batchnorm,
        torch_threads,
    )
    from bcpath.erpr.sampling import PatchSampleDataset
    from bcpath.io import atomic_path, json_ready, write_json
    from bcpath.models.registry import build_model

    config = config or TrainConfig()
    if spec.num_classes != len(LABEL_ORDER):
        raise BcpathError(
            f"model {spec.model_id}: {spec.num_classes} classes, but ER/PR/HER2 training needs 3 "
            "(biomarker-positive tumor, biomarker-negative tumor, non-tumor) in that order"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    patches, paths, mpps = sample_training_patches(spec, samples_table, biomarker, config.patches_per_class_per_slide, config.seed)
    with atomic_path(out / "patches.csv") as tmp:
        patches.to_csv(tmp, index=False)
    train_rows = patches[patches["split"] == "train"].reset_index(drop=True)
    tune_rows = patches[patches["split"] == "tune"].reset_index(drop=True)
    train_set = PatchSampleDataset(paths, train_rows, spec.mpp, spec.patch_px, augment=config.augment, slide_mpp=mpps, seed=config.seed)
    tune_set = PatchSampleDataset(paths, tune_rows, spec.mpp, spec.patch_px, augment=False, slide_mpp=mpps)
    train_labels = train_rows["label"].to_numpy(dtype=np.int64)
    tune_labels = tune_rows["label"].to_numpy(dtype=np.int64)
    logger.info(
        "%s %s: %d train patches %s, %d tune patches %s",
        spec.model_id, biomarker, len(train_rows), np.bincount(train_labels, minlength=3).tolist(),
        len(tune_rows), np.bincount(tune_labels, minlength=3).tolist(),
    )

    dev = choose_device(config.device)
    on_cuda = dev.type == "cuda"
    n_threads = config.threads if config.threads is not None else granted_threads()
    workers = config.num_workers if config.num_workers is not None else (min(8, max(0, n_threads - 1)) if on_cuda else 0)
    try:
        with torch_threads(n_threads, dev):
            # channels_last on CPU too: ResNet-18 trains 1.2x and MobileNetV3 1.6x faster here
            model = build_model(spec, pretrained_path).to(dev).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and autocast_dtype() == torch.float16)
            mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
            std = torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
            loss_fn = torch.nn.CrossEntropyLoss()

            def forward(batch: torch.Tensor) -> torch.Tensor:
                inputs = batch.to(dev, non_blocking=on_cuda).float().div_(255.0).sub_(mean).div_(std)
                inputs = inputs.contiguous(memory_format=torch.channels_last)
                with autocast(dev):
                    output = model(inputs)
                logits: torch.Tensor = getattr(output, "logits", output)
                return logits.float()

            loader_args: dict[str, Any] = {
                "batch_size": config.batch_size,
                "num_workers": workers,
                "pin_memory": on_cuda,
                "prefetch_factor": 4 if workers > 0 else None,
            }
            tune_loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(tune_set, shuffle=False, **loader_args)  # type: ignore[arg-type]

            def train_epoch(epoch: int) -> dict[str, Any]:
                indices = balanced_epoch_indices(train_labels, np.random.default_rng((config.seed, epoch)))
                train_set.set_epoch(epoch)  # augmentation of patch i: a function of (seed, epoch, i)
                generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
                train_loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
                    train_set,  # type: ignore[arg-type]
                    sampler=indices.tolist(),
                    generator=generator,
                    drop_last=len(indices) % config.batch_size == 1,  # BatchNorm needs 2+ per batch
                    **loader_args,
                )
                model.train()
                total_loss, correct, seen = 0.0, 0, 0
                recent: deque[torch.Tensor] = deque(maxlen=max(1, BN_RECALIBRATION_PATCHES // config.batch_size))
                bar = tqdm(total=len(indices), desc=f"{spec.model_id} epoch {epoch}", unit="patch", disable=not progress, mininterval=30)
                for batch, labels in train_loader:
                    recent.append(batch)
                    target = labels.to(dev, non_blocking=on_cuda)
                    logits = forward(batch)
                    loss = loss_fn(logits, target)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    total_loss += float(loss.detach()) * len(labels)
                    correct += int((logits.detach().argmax(1) == target).sum())
                    seen += len(labels)
                    bar.update(len(labels))
                bar.close()
                recalibrate_batchnorm(model, recent, forward)
                return {
                    "train_loss": total_loss / max(1, seen),
                    "train_acc": correct / max(1, seen),
                    "lr": optimizer.param_groups[0]["lr"],
                    "n_train": seen,
                }

            def validate(epoch: int) -> dict[str, Any]:
                model.eval()
                probabilities = np.zeros((len(tune_set), len(LABEL_ORDER)), dtype=np.float32)
                tune_loss_sum, offset = 0.0, 0
                with torch.inference_mode():
                    for batch, labels in tune_loader:
                        logits = forward(batch)
                        target = labels.to(dev)
                        tune_loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                        probabilities[offset : offset + len(labels)] = torch.softmax(logits, 1).cpu().numpy()
                        offset += len(labels)
                return {
                    "tune_loss": tune_loss_sum / max(1, len(tune_set)),
                    "tune_acc": float((probabilities.argmax(1) == tune_labels).mean()) if len(tune_set) else math.nan,
                    "tune_auc": _positive_auc(tune_labels, probabilities[:, 0]),
                    "n_tune": len(tune_set),
                }

            fitted = fit(
                model, train_epoch, validate, out, config.epochs, config.patience,
                monitor="tune_loss", mode="min", name=f"{spec.model_id} {biomarker}",
                log_columns=LOG_COLUMNS, patience_exceeded=True,
                diverged_hint=f"lower lr (now {config.lr}) or check the annotations",
            )  # fmt: skip
    finally:
        train_set.close()
        tune_set.close()

    result = TrainResult(
        best_epoch=fitted.best_epoch,
        best_tune_loss=fitted.best_value,
        best_tune_auc=float(fitted.rows[fitted.best_epoch - 1]["tune_auc"]),
        weights_path=fitted.weights_path,
        sha256=fitted.sha256,
        last_path=fitted.last_path,
        log_path=fitted.log_path,
        epochs_run=fitted.epochs_run,
        stopped_early=fitted.stopped_early,
    )
    write_json(
        out / "train.json",
        {
            "biomarker": biomarker,
            "model": {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("weights", "sha256")},
            "config": dataclasses.asdict(config),
            "pretrained_path": str(pretrained_path) if pretrained_path is not None else None,
            "device": str(dev),
            "n_train_patches": len(train_rows),
            "n_tune_patches": len(tune_rows),
            "result": json_ready(dataclasses.asdict(result)),
            "torch": torch.__version__,
        },
    )
    return result


def _positive_auc(labels: np.ndarray, p_positive: np.ndarray) -> float:
    """ROC AUC of class 0 vs the rest from p_0; NaN when only one side is present."""
    from bcpath.erpr.evaluation import auc

    return auc(labels == 0, p_positive)
