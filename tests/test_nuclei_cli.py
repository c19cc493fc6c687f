"""``bcpath nuclei predict / evaluate`` end to end: real CPM-15 images, synthetic RGBA and 16-bit."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile

from bcpath.cli import main
from bcpath.nuclei.classical import segment_fiji
from bcpath.nuclei.cli import EVALUATE_COLUMNS, image_mpp, read_rgb_for_segmentation
from bcpath.nuclei.datasets import list_cpm15
from bcpath.nuclei.metrics import evaluate

HEMATOXYLIN_RGB = (70, 50, 140)


def _discs(mpp: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: two touching 4 µm-radius nuclei and one apart, on pink-white."""
    size = int(round(40 / mpp))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * mpp
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[:] = (235, 210, 225)
    for cy, cx in ((12.0, 12.0), (12.0, 18.5), (30.0, 28.0)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4.0**2] = HEMATOXYLIN_RGB
    return rgb


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_and_evaluate_on_real_cpm15(require_shared, tmp_path, capsys):
    samples = {s.name: s for s in list_cpm15(require_shared("nuclei/cpm15"))}
    chosen = [samples["image01"], samples["image02"]]  # both 20x, 0.5 µm/px
    truth = tmp_path / "truth"
    truth.mkdir()
    expected = {}
    for sample in chosen:
        rgb, gt = sample.load()
        tifffile.imwrite(truth / f"{sample.name}.tif", gt.astype(np.uint16))
        expected[sample.name] = evaluate(gt, segment_fiji(rgb, 0.5))
    pred = tmp_path / "pred"
    argv = ["nuclei", "predict", "--model", "fiji", "--mpp", "0.5", "--out", str(pred)]
    assert main(argv + [str(s.image) for s in chosen]) == 0
    for sample in chosen:
        labels = tifffile.imread(pred / f"{sample.name}.tif")
        height, width = cv2.imread(str(sample.image)).shape[:2]
        assert labels.dtype == np.uint16 and labels.shape == (height, width)
        assert labels.max() > 50
    capsys.readouterr()

    table = tmp_path / "out" / "table.csv"
    assert main(["nuclei", "evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    rows = _read_csv(table)
    assert list(rows[0]) == ["image", *EVALUATE_COLUMNS]
    assert [r["image"] for r in rows] == ["image01", "image02", "mean"]
    for row in rows[:2]:
        for column in EVALUATE_COLUMNS:
            assert float(row[column]) == pytest.approx(expected[row["image"]][column], abs=6e-5)
    for column in EVALUATE_COLUMNS:
        mean = np.mean([expected[name][column] for name in expected])
        assert float(rows[2][column]) == pytest.approx(mean, abs=6e-5)
    assert 0.3 < float(rows[2]["aji"]) < 0.9 and 0.2 < float(rows[2]["pq"]) < 0.9
    assert printed.splitlines()[0].split() == ["image", *EVALUATE_COLUMNS]
    assert printed.splitlines()[-1].split()[0] == "mean"

    # A missing counterpart and a size mismatch are errors naming the file.
    shutil.copy(truth / "image01.tif", truth / "image99.tif")
    assert main(["nuclei", "evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    assert "image99.tif" in capsys.readouterr().err
    (truth / "image99.tif").unlink()
    tifffile.imwrite(truth / "image02.tif", np.zeros((10, 10), dtype=np.uint16))
    assert main(["nuclei", "evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert "image02.tif" in err and "size" in err


def test_predict_rgba_and_16_bit(tmp_path):
    rgb = _discs(0.5)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    rgba[:5, :, 3] = 0  # a transparent band: composited on white
    cv2.imwrite(str(tmp_path / "glass.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    # 16-bit TIFF carrying its µm/px: 20,000 px/cm = 0.5 µm/px.
    deep = rgb.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "deep.tif", deep, resolution=(20_000, 20_000), resolutionunit="CENTIMETER")
    assert image_mpp(tmp_path / "deep.tif") == pytest.approx(0.5)
    assert image_mpp(tmp_path / "glass.png") is None

    converted = read_rgb_for_segmentation(tmp_path / "glass.png")
    assert converted.dtype == np.uint8 and (converted[:5] == 255).all()
    np.testing.assert_array_equal(converted[5:], rgb[5:])
    np.testing.assert_array_equal(read_rgb_for_segmentation(tmp_path / "deep.tif"), rgb)

    out = tmp_path / "out"
    assert main(["nuclei", "predict", "--model", "watershed", str(tmp_path / "deep.tif"), "--out", str(out)]) == 0
    labels = tifffile.imread(out / "deep.tif")
    assert labels.dtype == np.uint16 and labels.shape == rgb.shape[:2] and labels.max() == 3
    argv = ["nuclei", "predict", "--model", "otsu", "--mpp", "0.5", str(tmp_path / "glass.png")]
    assert main(argv + ["--out", str(out)]) == 0
    labels = tifffile.imread(out / "glass.tif")
    assert labels.shape == rgb.shape[:2] and labels.max() == 2  # no split without watershed


def test_predict_errors(tmp_path, capsys):
    rgb = _discs(0.5)
    tifffile.imwrite(tmp_path / "plain.tif", rgb)  # no resolution tags
    tifffile.imwrite(tmp_path / "dpi.tif", rgb, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "gray.tif", rgb[..., 0])
    out = str(tmp_path / "out")

    assert main(["nuclei", "predict", "--model", "fiji", str(tmp_path / "plain.tif"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "plain.tif" in err and "--mpp" in err
    # 72 dpi (353 µm/px) is a placeholder, not a scan.
    assert image_mpp(tmp_path / "dpi.tif") is None

    assert main(["nuclei", "predict", "--model", "fiji", "--mpp", "0.5", str(tmp_path / "gray.tif"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "gray.tif" in err and "RGB" in err

    assert main(["nuclei", "predict", "--model", "hovernet", "--mpp", "0.5", str(tmp_path / "plain.tif"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "neither a classical baseline (otsu, watershed, fiji) nor a trained model folder" in err
    assert "models/nuclei_unet_v2 (the shipped U-Net)" in err


def test_entry_point_subprocess(tmp_path):
    """The registrar is found by ``python -m bcpath.cli``; errors exit 2 with ``bcpath:``."""
    result = subprocess.run(
        [sys.executable, "-m", "bcpath.cli", "nuclei", "predict", "--model", "unet", "x.tif", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bcpath: nuclei model 'unet'")


def test_lodo_command_scores_each_set(tmp_path, capsys):
    """`bcpath nuclei lodo --model otsu`: one row per set (mean / pooled AJI, worst image);
    JPEG and TIFF images in CPM-15 layout; a bad --set names the problem."""
    import json

    yy, xx = np.mgrid[0:96, 0:96]
    for name, suffix in (("a", ".jpg"), ("b", ".tif")):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "inst_masks").mkdir()
        labels = np.zeros((96, 96), np.uint16)
        for k, (cy, cx) in enumerate([(30, 30), (60, 64), (25, 70)], start=1):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = k
        rgb = np.full((96, 96, 3), 235, np.uint8)
        rgb[labels > 0] = (70, 40, 130)
        for i in range(2):
            stem = f"train_1_{i:03d}"
            if suffix == ".jpg":
                cv2.imwrite(str(root / "images" / f"{stem}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            else:
                tifffile.imwrite(root / "images" / f"{stem}.tif", rgb)
            tifffile.imwrite(root / "inst_masks" / f"{stem}_inst.tif", labels)
        (root / "mpp.json").write_text('{"*": 0.5}')
    out = tmp_path / "out"
    assert main(["nuclei", "lodo", "--model", "otsu", "--set", f"a={tmp_path / 'a'}", "--set", f"b={tmp_path / 'b'}", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| variant |") and "| otsu |" in text
    result = json.loads((out / "lodo.json").read_text())
    assert set(result["summary"]) == {"a", "b"}
    for row in result["summary"].values():
        assert row["mean_aji"] > 0.6 and row["n_images"] == 2 and row["worst_source"] == "train_1"
    assert main(["nuclei", "lodo", "--model", "otsu", "--set", "nofolder"]) != 0
    assert "expected NAME=DIR" in capsys.readouterr().err
