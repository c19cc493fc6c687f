"""bench/gpu_train_nuclei.py cannot rot: its --dry-run (tiny pack, one fold, 3 steps per
variant, CPU) runs end to end with only what the GPU machine has (no zarr, openslide, pyvips,
staintools, snakemake, spams), and writes a model folder that loads and segments; the CPU way
(folds split over processes, a final-only run, --merge) gives one table and a model with the
threshold chosen on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ["zarr", "openslide", "pyvips", "staintools", "snakemake", "spams"]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import _require_shared

    _require_shared("nuclei/consep_train")  # fails under CI when ../shared is missing
    pack = tmp_path_factory.mktemp("pack") / "pack.npz"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_nuclei_pack.py"), "--limit", "2", "--out", str(pack)],
                   check=True, env=ENV, cwd=ROOT, timeout=120)
    return pack


def _bench(*args: str | Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train_nuclei.py"), *map(str, args)], check=True, env=ENV, cwd=ROOT, timeout=180)


def test_pack_and_dry_run(tmp_path: Path, small_pack: Path) -> None:
    pack = small_pack
    z = np.load(pack)
    assert {f"{s}_names" for s in ("monuseg", "cpm15", "consep")} <= set(z.files)
    assert len(set(z["consep_groups"].tolist())) == 2  # one tile each of two source images
    out = tmp_path / "out"
    runner = (
        "import sys, runpy\n"
        f"for m in {BLOCKED!r}: sys.modules[m] = None\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", runner, str(ROOT / "bench" / "gpu_train_nuclei.py"), "--out", str(out), "--pack", str(pack),
                    "--dry-run", "--variants", "plain16_vahadane_ib,plain16_stainaug_dist"],
                   check=True, env=ENV, cwd=ROOT, timeout=180)
    result = json.loads((out / "lodo.json").read_text())
    assert set(result["table"]) == {"plain16_vahadane_ib", "plain16_stainaug_dist"}
    row = result["table"]["plain16_stainaug_dist"]["monuseg"]
    assert 0.0 <= row["mean_aji"] <= 1.0 and row["worst_image"].startswith("TCGA-")
    assert result["table_markdown"].startswith("| variant |")
    assert {r["variant"] for r in result["per_image_at_chosen"]} == set(result["table"])
    assert sorted(p.name for p in out.iterdir()) == ["final_model.tar", "lodo.json"]
    with tarfile.open(out / "final_model.tar") as tar:
        tar.extractall(tmp_path, filter="data")
    meta = json.loads((tmp_path / "final_model" / "train.json").read_text())
    assert meta["decoding"] in ("interior_boundary", "distance")
    from bcpath.nuclei.predict import load_nuclei_model, predict_instances

    bundle = load_nuclei_model(tmp_path / "final_model", device="cpu")
    rgb = np.full((64, 80, 3), 200, np.uint8)
    labels = predict_instances(bundle, rgb, 0.5)
    assert labels.shape == (64, 80)


def test_folds_in_two_processes_then_merge(tmp_path: Path, small_pack: Path) -> None:
    common = ["--pack", small_pack, "--dry-run", "--variants", "plain8_stainaug_dist"]
    _bench("--out", tmp_path / "a", *common, "--held-out", "cpm15", "--final", "skip")
    _bench("--out", tmp_path / "f", *common, "--final", "only")
    assert not (tmp_path / "a" / "final_model.tar").exists()
    final_only = json.loads((tmp_path / "f" / "lodo.json").read_text())
    assert final_only["folds"] == {} and final_only["final"]["variant"] == "plain8_stainaug_dist"
    _bench("--out", tmp_path / "m", "--merge", tmp_path / "a", "--merge-final", tmp_path / "f")
    merged = json.loads((tmp_path / "m" / "lodo.json").read_text())
    assert list(merged["table"]["plain8_stainaug_dist"]) == ["cpm15"]
    chosen = merged["chosen_thresholds"]["plain8_stainaug_dist"]["threshold"]
    meta = json.loads((tmp_path / "m" / "final_model" / "train.json").read_text())
    assert meta["threshold"] == chosen and meta["decoding"] == "distance"
    assert meta["lodo"]["table"]["cpm15"]["n_images"] == 2 and len(meta["lodo"]["per_image"]) == 2
    assert meta["training"]["steps"] == 3
    from bcpath.nuclei.predict import load_nuclei_model

    assert load_nuclei_model(tmp_path / "m" / "final_model", device="cpu").threshold == chosen
