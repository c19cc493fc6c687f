"""bench/gpu_train_nuclei.py cannot rot: its --dry-run (tiny pack, one fold, 3 steps per
variant, CPU) runs end to end with only what the GPU machine has (no zarr, openslide, pyvips,
staintools, snakemake, spams), and writes a model folder that loads and segments."""

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
SHARED = ROOT.parent / "shared" / "data" / "nuclei"
BLOCKED = ["zarr", "openslide", "pyvips", "staintools", "snakemake", "spams"]

pytestmark = pytest.mark.skipif(not (SHARED / "consep_train").is_dir(), reason="needs ../shared/data/nuclei")


def test_pack_and_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    pack = tmp_path / "pack.npz"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_nuclei_pack.py"), "--limit", "2", "--out", str(pack)],
                   check=True, env=env, cwd=ROOT, timeout=120)
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
                   check=True, env=env, cwd=ROOT, timeout=180)
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
