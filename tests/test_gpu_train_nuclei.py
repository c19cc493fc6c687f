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


def _script(name: str, *args: str | Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / name), *map(str, args)], check=True, env=ENV, cwd=ROOT, timeout=240)


def test_paper_comparison_dry_run_gives_every_row(tmp_path: Path, small_pack: Path) -> None:
    """bench/nuclei_paper_comparison.py (issue 13 item 8): plain U-Nets (3 seeds), ResNet-34
    U-Net, ensemble, GB U-Net and Mask R-CNN trained and scored on one fold, the Fiji-like
    baseline beside them, then one table."""
    out = tmp_path / "cmp"
    _script("nuclei_paper_comparison.py", "--out", out, "--pack", small_pack, "--dry-run", "--held-out", "cpm15")
    _script("nuclei_paper_comparison.py", "--out", out, "--table")
    record = json.loads((out / "comparison.json").read_text())
    table = record["models"]
    assert record["held_out"] == "cpm15" and record["train"] == ["monuseg", "consep"]
    assert set(table) == {"plain", "plain_seed1", "plain_seed2", "resnet34", "ensemble", "gb_unet", "mask_rcnn", "fiji"}
    for name, row in table.items():
        assert row["at_fixed"]["n_images"] == 2, name
        assert 0.0 <= row["at_fixed"]["mean_aji"] <= row["at_best"]["mean_aji"] <= 1.0, name
        assert [r[0] for r in row["per_image_at_fixed"]] == [r[0] for r in table["plain"]["per_image_at_fixed"]], name
    assert table["mask_rcnn"]["fixed_threshold"] == 0.5 and table["plain"]["fixed_threshold"] == 0.4
    assert table["fiji"]["fixed_threshold"] is None and table["fiji"]["steps"] == 0
    cost = {name: row["gflop_per_mp"] for name, row in table.items()}  # inference GFLOP per MP at 0.5 µm/px
    assert cost["fiji"] is None and cost["ensemble"] == pytest.approx(3 * cost["plain"])
    assert 20 < cost["plain"] < 35 and cost["plain"] < cost["ensemble"] < cost["gb_unet"] < cost["resnet34"]
    assert sorted(p.name for p in (out / "members").iterdir()) == ["seed0.pt", "seed1.pt", "seed2.pt"]
    assert (out / "comparison.md").read_text().count("\n") == 2 + len(table)


def test_organ_lodo_dry_run(tmp_path: Path, small_pack: Path) -> None:
    """bench/nuclei_organ_lodo.py: one organ held out (3 steps), the Fiji-like baseline beside it."""
    out = tmp_path / "org"
    _script("nuclei_organ_lodo.py", "--out", out, "--pack", small_pack, "--dry-run")
    # the Fiji-like baseline on two lung images and one kidney image (a set folder of links)
    shared = ROOT.parent / "shared" / "data" / "nuclei" / "monuseg_nonbreast"
    folder = tmp_path / "nuclei" / "monuseg_nonbreast"
    for sub, ext in (("images", "tif"), ("annotations", "xml")):
        (folder / sub).mkdir(parents=True)
        for name in ("TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1", "TCGA-2Z-A9J9-01A-01-TS1"):
            (folder / sub / f"{name}.{ext}").symlink_to(shared / sub / f"{name}.{ext}")
    _script("nuclei_organ_lodo.py", "--out", out, "--fiji", "--shared", folder.parent)
    _script("nuclei_organ_lodo.py", "--out", out, "--table")
    _script("nuclei_organ_lodo.py", "--out", out, "--table")  # again: its own organ_lodo.json is not an organ
    record = json.loads((out / "organ_lodo.json").read_text())
    assert list(record["organs"]) == ["lung"]  # the small pack's two MoNuSeg images are TCGA-21 (lung)
    assert len(record["per_image"]) == 2 and record["organs"]["lung"]["steps"] == 3
    assert [r["organ"] for r in record["fiji_per_image"]] == ["lung", "lung", "kidney"]
    lung_fiji = record["organs"]["lung"]["fiji"]
    assert lung_fiji["n_images"] == 2 and 0.3 < lung_fiji["mean_aji"] < 0.7  # Fiji on MoNuSeg: 0.485 mean (v2 card)
    assert "| lung | 2 |" in record["table_markdown"] and f"| {lung_fiji['mean_aji']:.3f} |" in record["table_markdown"]


def test_mask_rcnn_instance_targets_and_painting() -> None:
    """Two touching nuclei split by a boundary line become two instances that keep their
    boundary pixels; detections paint highest score first and drop those under the threshold."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("nuclei_paper_comparison", ROOT / "bench" / "nuclei_paper_comparison.py")
    assert spec and spec.loader
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    cls = np.zeros((1, 20, 30), np.int64)
    cls[0, 4:16, 2:22] = 2
    cls[0, 5:15, 3:11] = 1
    cls[0, 5:15, 13:21] = 1  # columns 11-12: the boundary between the two nuclei
    (target,) = cmp.instance_targets(torch.from_numpy(cls))
    assert target["boxes"].shape == (2, 4) and target["labels"].tolist() == [1, 1]
    masks = target["masks"].numpy().astype(bool)
    assert masks.sum(axis=(1, 2)).tolist() == [12 * 10, 12 * 10]  # 10 x 8 interiors grown by one pixel
    assert not (masks[0] & masks[1]).any() and (masks[0] | masks[1]).sum() == (cls > 0).sum()
    assert sorted(target["boxes"].tolist()) == [[2.0, 4.0, 12.0, 16.0], [12.0, 4.0, 22.0, 16.0]]  # x0, y0, x1, y1
    # painting: the 0.9 detection takes the overlap, the 0.35 one counts only below 0.4
    gt = np.zeros((20, 30), np.int32)
    gt[2:10, 2:10], gt[2:10, 14:24] = 1, 2
    scores = np.array([0.35, 0.9, 0.6], np.float32)
    probs = np.zeros((3, 20, 30), np.float16)
    probs[0, 12:18, 2:10] = 0.9  # a false positive, low score
    probs[1, 2:10, 2:12] = 0.8  # nucleus 1, two columns too wide
    probs[2, 2:10, 10:24] = 0.7  # nucleus 2 plus the columns nucleus 1 already took
    cmp.g.IMAGES["unit"] = [cmp.g.Img("unit", "u", "u", 0.5, np.zeros((20, 30, 3), np.uint8), None, gt, gt)]
    try:
        _, rows = cmp._score_instances(("unit", 0, scores, probs))
    finally:
        del cmp.g.IMAGES["unit"]
    by_t = dict(zip(cmp.SCORE_THRESHOLDS, rows, strict=True))
    assert by_t[0.5]["n_pred"] == 2 and by_t[0.3]["n_pred"] == 3 and by_t[0.7]["n_pred"] == 1
    # t 0.5: nucleus 1 (64 px) in an 80 px mask, nucleus 2 (80 px) in a 96 px mask (cols 12-23)
    assert by_t[0.5]["aji"] == pytest.approx((64 + 80) / (80 + 96))
