"""The torch rules ask for the `gpu` resource only when their job will run on CUDA, and trainings
take half of a local run's cores (issue 15 item 4).

Before, predict_patches, detect_mitoses and the training rules always declared gpu=1, and the
local profile's `resources: gpu: 1` then ran them one at a time on CPU-only machines too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from bcpath.workflow import gpu_request, visible_cuda_devices
from tests.workflow_helpers import REPO_ROOT, SNAKEMAKE

TORCH_RULES = ("predict_patches", "train_patch_classifier", "train_mitosis_model", "train_tumor_locnet", "detect_mitoses")


def _fake_dev(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).touch()
    return tmp_path


def test_visible_cuda_devices_counts_numbered_device_files(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_cuda_devices(_fake_dev(tmp_path)) == 0
    # nvidiactl and nvidia-uvm exist on every driver install, with or without a usable GPU
    assert visible_cuda_devices(_fake_dev(tmp_path, "nvidiactl", "nvidia-uvm")) == 0
    assert visible_cuda_devices(_fake_dev(tmp_path, "nvidia0", "nvidia1")) == 2


@pytest.mark.parametrize(("value", "count"), [("", 0), ("-1", 0), ("0", 1), ("0,1", 2), ("1,-1,0", 1), ("GPU-8f3a", 1)])
def test_cuda_visible_devices_wins_over_device_files(tmp_path, monkeypatch, value, count):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_cuda_devices(_fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidia2")) == count


def test_gpu_request_follows_the_configured_device(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    no_gpu, one_gpu = tmp_path / "none", _fake_dev(tmp_path, "nvidia0")
    no_gpu.mkdir()
    assert gpu_request("cuda", no_gpu) == 1  # asked for explicitly: the job fails loudly without one
    assert gpu_request("cuda:1", no_gpu) == 1
    assert gpu_request("cpu", one_gpu) == 0
    assert gpu_request("mps", one_gpu) == 0
    assert gpu_request(None, no_gpu) == 0
    assert gpu_request(None, one_gpu) == 1


def _dry_run_gpu(tmp_path: Path, cuda_visible: str | None) -> dict[str, set[str]]:
    """Rule name -> the gpu values its jobs declare in a dry run of the default demo."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    command = [*SNAKEMAKE, "-s", str(REPO_ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", str(REPO_ROOT / "config.yaml"), "--cores", "2", "-n"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    declared: dict[str, set[str]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif rule and (match := re.search(r"resources:.*\bgpu=(\d+)", line)):
            declared.setdefault(rule, set()).add(match.group(1))
    return declared


def test_demo_torch_rules_run_side_by_side_without_a_gpu_and_ask_for_one_with_it(tmp_path):
    without = _dry_run_gpu(tmp_path, "")
    with_gpu = _dry_run_gpu(tmp_path, "0")
    for rule in TORCH_RULES:
        assert without[rule] == {"0"}, (rule, without)
        assert with_gpu[rule] == {"1"}, (rule, with_gpu)


def test_slurm_profile_asks_for_gpus_for_the_torch_rules():
    import yaml

    profile = yaml.safe_load((REPO_ROOT / "profiles/slurm/config.yaml").read_text())
    for rule in TORCH_RULES:
        assert profile["set-resources"][rule]["gpu"] == 1, rule


def test_trainings_take_half_of_a_local_run_and_two_threads_on_a_cluster():
    from bcpath.workflow import half_the_cores

    assert [half_the_cores(cores, cap=8) for cores in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 8]
    assert [half_the_cores(cores, cap=2) for cores in (2, 4, 64)] == [1, 2, 2]
    # cluster (submission and the job itself): the rules' fixed value, so both agree
    assert half_the_cores(None, cap=8) == 2 and half_the_cores(None, cap=2) == 2
