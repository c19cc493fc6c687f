"""The training engine shared by bcpath's models: device, threads, AMP, epochs, checkpoints.

What every training loop repeats lives here once; a model's own code supplies only what is
specific to it: how one epoch trains and how one epoch is validated.

- :func:`choose_device` (``None`` = CUDA when available), :func:`granted_threads` (the cores
  Snakemake / SLURM gave the process), :func:`torch_threads` (set and restore torch's CPU
  threads), :func:`autocast_dtype` / :func:`autocast` (bf16 where the GPU has it, else fp16;
  off on CPU).
- :func:`fit`: the epoch loop with early stopping on a monitored validation value, ``last.pt``
  after every epoch, ``best.pt`` at each improvement (sha256 returned), one ``log.csv`` row per
  epoch (the caller's metrics + ``epoch, is_best, seconds``), rewritten atomically after each
  epoch so a killed run leaves a readable log.
- :func:`supervised_epoch`: one epoch of (inputs, targets) batches through a model, loss,
  optimiser and optional GradScaler, returning mean loss and accuracy.
- :func:`recalibrate_batchnorm`: "precise BatchNorm" (Wu & Johnson 2021): after an epoch,
  replace the BatchNorm running statistics by their exact average over recent training batches,
  so that eval-mode outputs match the weights the epoch ended with.

torch is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def granted_threads() -> int:
    """CPU cores this process may use (affinity mask, as set by Snakemake/SLURM), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``torch.device(device)``, or CUDA when available and ``device`` is None, else CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype() -> Any:
    """The mixed-precision dtype of the current CUDA device: bf16 where supported, else fp16."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """CUDA autocast (:func:`autocast_dtype`) on a GPU; nothing on CPU (fp32 there)."""
    import torch

    if device.type == "cuda":
        with torch.autocast("cuda", dtype=autocast_dtype()):
            yield
    else:
        yield


@contextlib.contextmanager
def torch_threads(threads: int | None, device: torch.device | None = None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` on CPU, restoring the old value.

    ``threads`` None = :func:`granted_threads`. On CUDA the thread count is left alone (the CPU
    only feeds the GPU). Yields the thread count in force.
    """
    import torch

    n = max(1, int(threads) if threads is not None else granted_threads())
    previous = torch.get_num_threads()
    on_cpu = device is None or device.type != "cuda"
    if on_cpu:
        torch.set_num_threads(n)
    try:
        yield n if on_cpu else previous
    finally:
        if on_cpu:
            torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CPU and CUDA)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        best_epoch: 1-based epoch whose weights are in ``best.pt`` (0 if none was finite).
        best_value: the monitored value at that epoch.
        weights_path: ``out_dir / "best.pt"``.
        sha256: sha256 of best.pt ("" when no epoch was finite).
        last_path: ``out_dir / "last.pt"``.
        log_path: ``out_dir / "log.csv"``.
        epochs_run: epochs actually run.
        stopped_early: True when early stopping ended the run before ``epochs``.
        rows: the log rows, one dict per epoch.
        stop_reason: why the run ended: ``"early_stopping"`` or ``"time_limit"`` when that
            condition held after the last epoch run (also when it was the final epoch),
            else ``"epochs"``.
    """

    best_epoch: int
    best_value: float
    weights_path: Path
    sha256: str
    last_path: Path
    log_path: Path
    epochs_run: int
    stopped_early: bool
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    stop_reason: str = "epochs"

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields (no rows) for a train.json."""
        return {
            "best_epoch": self.best_epoch,
            "best_value": self.best_value if math.isfinite(self.best_value) else None,
            "weights_path": str(self.weights_path),
            "sha256": self.sha256,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
        }


def write_log(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    columns: Iterable[str] | None = None,
    formats: Mapping[str, str] | None = None,
) -> None:
    """Write epoch rows as CSV atomically.

    Args:
        rows: one mapping per epoch.
        path: the CSV file.
        columns: the columns in order (others are left out); None = first-seen order.
        formats: printf formats per column (e.g. ``{"val_loss": "%.6f"}``); other float
            columns are written with ``%.6g``.
    """
    import pandas as pd

    from bcpath.io import atomic_path

    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    frame = pd.DataFrame(list(rows), columns=list(columns))
    for column, fmt in (formats or {}).items():
        if column in frame.columns:
            frame[column] = [fmt % v for v in frame[column]]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def fit(
    model: torch.nn.Module,
    train_epoch: Callable[[int], Mapping[str, Any]],
    validate: Callable[[int], Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    epochs: int,
    patience: int,
    monitor: str = "val_loss",
    mode: str = "min",
    name: str = "model",
    max_minutes: float | None = None,
    log_columns: Iterable[str] | None = None,
    *,
    log_formats: Mapping[str, str] | None = None,
    patience_exceeded: bool = False,
    started: float | None = None,
    diverged_hint: str = "lower the learning rate or check the data",
    save: Callable[[torch.nn.Module, Path], str] | None = None,
) -> FitResult:
    """Run up to ``epochs`` epochs with checkpoints, a log and early stopping.

    Args:
        model: the module whose ``state_dict`` is saved (last.pt each epoch, best.pt when the
            monitored value improves).
        train_epoch: ``epoch -> metrics`` (e.g. ``{"train_loss": ..}``); trains one epoch.
        validate: ``epoch -> metrics``; must include ``monitor``.
        out_dir: folder for last.pt, best.pt, log.csv (created).
        epochs: the most epochs to run (≥ 1).
        patience: stop once this many epochs in a row did not improve ``monitor`` (at least
            one; see ``patience_exceeded``).
        monitor: key of ``validate``'s metrics to select the best epoch by.
        mode: "min" (loss) or "max" (accuracy, AUC).
        name: used in log lines and messages.
        max_minutes: stop after the epoch that passes this wall time (None = no limit).
        log_columns: column order of log.csv (default: first-seen order); columns not listed
            (e.g. ``is_best``) are left out of the file but kept in ``FitResult.rows``.
        log_formats: printf formats per log.csv column (:func:`write_log`).
        patience_exceeded: stop only once the epochs without improvement exceed ``patience``
            (``since_best > patience``: ``patience`` 3 runs 4 such epochs) instead of
            reaching it (``since_best >= max(1, patience)``); the ER/PR/HER2 classifier's rule.
        started: ``time.perf_counter()`` value ``max_minutes`` counts from (default: the
            start of this call), e.g. to include data preparation.
        diverged_hint: the advice in the error raised when no epoch was finite.
        save: ``(model, path) -> sha256`` writing a checkpoint (default
            :func:`bcpath.models.registry.save_weights`).

    Returns:
        :class:`FitResult`.

    Raises:
        BcpathError: bad arguments, a monitored key missing, or no epoch with a finite value.
    """
    from bcpath.models.registry import save_weights

    save = save or save_weights
    if epochs < 1 or patience < 0 or mode not in ("min", "max"):
        raise BcpathError(f"{name}: epochs must be >= 1, patience >= 0, mode min|max (got {epochs}, {patience}, {mode!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sign = 1.0 if mode == "min" else -1.0
    best_score, best_value, best_epoch, best_sha = math.inf, math.nan, 0, ""
    since_best = 0
    rows: list[dict[str, Any]] = []
    stopped_early = False
    started_run = time.perf_counter() if started is None else started
    stop_reason = "epochs"
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch}
        row.update(train_epoch(epoch))
        metrics = dict(validate(epoch))
        if monitor not in metrics:
            raise BcpathError(f"{name}: validation returned no {monitor!r} (got {sorted(metrics)})")
        row.update(metrics)
        value = float(metrics[monitor])
        improved = math.isfinite(value) and sign * value < best_score
        save(model, out / "last.pt")
        if improved:
            best_score, best_value, best_epoch = sign * value, value, epoch
            best_sha = save(model, out / "best.pt")
            since_best = 0
        else:
            since_best += 1
            if not math.isfinite(value):
                logger.warning("%s epoch %d: %s is %s (diverged?); lower the learning rate", name, epoch, monitor, value)
        row["is_best"] = int(improved)
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
        write_log(rows, out / "log.csv", log_columns, log_formats)
        logger.info(
            "%s epoch %d: %s%s",
            name, epoch, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"),
            " (best)" if improved else "",
        )
        out_of_patience = since_best > patience if patience_exceeded else since_best >= max(1, patience)
        if out_of_patience:
            stop_reason = "early_stopping"
        elif max_minutes is not None and (time.perf_counter() - started_run) / 60.0 > max_minutes:
            stop_reason = "time_limit"
        else:
            stop_reason = "epochs"
        if stop_reason != "epochs" and epoch < epochs:
            stopped_early = True
            if out_of_patience:
                logger.info("%s: early stop after epoch %d (best epoch %d)", name, epoch, best_epoch)
            else:
                logger.info("%s: stopped after epoch %d (max_minutes %.1f reached; best epoch %d)", name, epoch, max_minutes, best_epoch)
            break
    if not best_sha:
        raise BcpathError(f"{name}: no epoch gave a finite {monitor} (training diverged); {diverged_hint}")
    return FitResult(
        best_epoch=best_epoch,
        best_value=best_value,
        weights_path=out / "best.pt",
        sha256=best_sha,
        last_path=out / "last.pt",
        log_path=out / "log.csv",
        epochs_run=len(rows),
        stopped_early=stopped_early,
        rows=rows,
        stop_reason=stop_reason,
    )


def supervised_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
) -> dict[str, float]:
    """One pass over (inputs, integer targets) batches; trains when ``optimizer`` is given.

    The model's output may be a tensor of logits (N, C) or an object with ``.logits``. Without
    an optimiser the pass runs in eval mode under ``torch.inference_mode``.

    Returns:
        ``{"loss": mean loss per sample, "acc": fraction with argmax == target, "n": samples}``.
    """
    import torch

    training = optimizer is not None
    model.train(training)
    total, correct, seen = 0.0, 0, 0
    context = contextlib.nullcontext() if training else torch.inference_mode()
    with context:
        for inputs, targets in batches:
            inputs = inputs.to(device, non_blocking=device.type == "cuda")
            targets = targets.to(device, non_blocking=device.type == "cuda")
            with autocast(device):
                output = model(inputs)
            logits = getattr(output, "logits", output).float()
            loss = loss_fn(logits, targets)
            if training:
                assert optimizer is not None
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            total += float(loss.detach()) * len(targets)
            if logits.ndim == 2:
                correct += int((logits.detach().argmax(1) == targets).sum())
            seen += len(targets)
    return {"loss": total / max(1, seen), "acc": correct / max(1, seen), "n": float(seen)}


def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]) -> int:
    """Set every BatchNorm layer's running mean/var to the average over ``batches`` (precise BN).

    Running statistics are an exponential average over the epoch's steps, taken while the
    weights changed; with few steps per epoch (a small training set) or a small momentum
    (torchvision's MobileNetV3 uses 0.01) they lag the final weights, and eval-mode predictions
    swing from epoch to epoch. Here they are reset and recomputed with the weights as they are:
    each batch goes through ``forward`` in train mode without gradients, with momentum ``None``
    (cumulative average over the batches); the momenta are restored afterwards. Weights and the
    optimiser are untouched.

    Args:
        model: the network (its train/eval mode is left in train mode).
        batches: the inputs ``forward`` takes, e.g. the last training batches of the epoch.
        forward: runs one batch through ``model``.

    Returns:
        The number of batches used (0, statistics unchanged, when the model has no BatchNorm
        layer or ``batches`` is empty).
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    batches = list(batches)
    if not norms or not batches:
        return 0
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return len(batches)
