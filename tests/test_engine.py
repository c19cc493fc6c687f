"""bcpath.engine.fit: early-stopping rules, stop reasons, log columns/formats, checkpoints."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import pytest
import torch

from bcpath.engine import fit, recalibrate_batchnorm, torch_threads
from bcpath.errors import BcpathError
from bcpath.models.registry import load_checked_state_dict, save_weights


def _run(tmp_path: Path, losses: list[float], patience: int, **kwargs):
    model = torch.nn.Linear(2, 1)

    def train_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.bias.fill_(float(epoch))
        return {"train_loss": 1.0 / epoch}

    return fit(model, train_epoch, lambda e: {"val_loss": losses[e - 1]}, tmp_path, len(losses), patience, **kwargs)


def test_patience_reached_or_exceeded(tmp_path: Path) -> None:
    losses = [1.0, 2.0, 3.0, 4.0, 5.0]
    reached = _run(tmp_path / "a", losses, 2)
    assert reached.epochs_run == 3 and reached.stopped_early and reached.stop_reason == "early_stopping"
    exceeded = _run(tmp_path / "b", losses, 2, patience_exceeded=True)
    assert exceeded.epochs_run == 4 and exceeded.stopped_early
    # patience 0 stops at the first epoch without improvement under both rules
    assert _run(tmp_path / "c", losses, 0).epochs_run == 2 == _run(tmp_path / "d", losses, 0, patience_exceeded=True).epochs_run
    assert reached.best_epoch == 1 and [r["is_best"] for r in reached.rows] == [1, 0, 0]


def test_stop_reason_at_the_last_epoch(tmp_path: Path) -> None:
    # The patience runs out exactly at the final epoch: not "stopped early", but the reason holds.
    result = _run(tmp_path, [1.0, 2.0], 1)
    assert result.epochs_run == 2 and not result.stopped_early and result.stop_reason == "early_stopping"
    assert _run(tmp_path / "b", [2.0, 1.0], 1).stop_reason == "epochs"


def test_time_limit_counts_from_started(tmp_path: Path) -> None:
    import time

    result = _run(tmp_path, [3.0, 2.0, 1.0], 5, max_minutes=1.0, started=time.perf_counter() - 120)
    assert result.epochs_run == 1 and result.stopped_early and result.stop_reason == "time_limit"


def test_log_columns_formats_and_checkpoints(tmp_path: Path) -> None:
    result = _run(
        tmp_path, [2.0, 1.0], 3, log_columns=("epoch", "train_loss", "val_loss", "seconds"),
        log_formats={"train_loss": "%.6f", "val_loss": "%.6f", "seconds": "%.1f"},
        save=partial(save_weights, cpu_copy=True),
    )  # fmt: skip
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,seconds"
    assert lines[1].startswith("1,1.000000,2.000000,") and lines[2].startswith("2,0.500000,1.000000,")
    assert result.sha256 == hashlib.sha256((tmp_path / "best.pt").read_bytes()).hexdigest()
    state = load_checked_state_dict(result.weights_path, result.sha256, "test model")
    assert float(state["bias"]) == 2.0  # best = epoch 2
    with open(tmp_path / "best.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BcpathError, match=r"test model: weights file .* has sha256 .*expected .*\(log\)"):
        load_checked_state_dict(result.weights_path, result.sha256, "test model", expected_from="log")
    with pytest.raises(BcpathError, match="test model: weights file not found"):
        load_checked_state_dict(tmp_path / "none.pt", None, "test model")


def test_diverged_run_names_the_hint(tmp_path: Path) -> None:
    with pytest.raises(BcpathError, match="no epoch gave a finite val_loss.*lower lr"):
        _run(tmp_path, [float("nan")] * 2, 5, diverged_hint="lower lr")


def test_torch_threads_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1, torch.device("cpu")) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def _bn_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.ReLU(), torch.nn.Flatten())


def test_recalibrate_batchnorm_sets_exact_statistics() -> None:
    torch.manual_seed(0)
    model = _bn_net()
    batches = [torch.randn(8, 3, 6, 6) * 2 + 3 for _ in range(4)]
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    norm = model[1]
    conv_out = [model[0](b).detach() for b in batches]
    exact_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in conv_out]).mean(0)
    exact_var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in conv_out]).mean(0)
    # momentum 0.01 over 4 steps: the running mean has barely left 0
    assert not torch.allclose(norm.running_mean, exact_mean, atol=0.1)
    weights = [p.detach().clone() for p in model.parameters()]
    used = recalibrate_batchnorm(model, batches, model)
    assert used == 4
    torch.testing.assert_close(norm.running_mean, exact_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var, exact_var, rtol=1e-5, atol=1e-5)
    assert norm.momentum == 0.01  # restored
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_recalibrate_batchnorm_without_batches_or_norms_changes_nothing() -> None:
    model = _bn_net()
    model[1].running_mean.fill_(0.5)
    assert recalibrate_batchnorm(model, [], model) == 0
    assert torch.all(model[1].running_mean == 0.5)
    linear = torch.nn.Linear(3, 2)
    assert recalibrate_batchnorm(linear, [torch.zeros(2, 3)], linear) == 0
