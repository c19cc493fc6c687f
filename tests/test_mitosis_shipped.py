"""The shipped mitosis model (models/mitosis_amibr): registry entry, checked weights, the model
card's validation numbers re-measured on a fixed subset of the held-out data, and the
``bcpath mitosis detect`` / ``evaluate`` commands on AMi-Br crops."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcpath.cli import main
from bcpath.models.registry import load_model, load_registry
from bcpath.proliferation.datasets import list_nuclei_samples, load_nuclei_images, read_amibr
from bcpath.proliferation.mitosis import DetectionParams, detect_in_image, predict_crops
from bcpath.proliferation.mitosis_training import balanced_accuracy, crop_detection_hits
from bcpath.wsi.reader import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
FOLDER = MODELS / "mitosis_amibr"


@pytest.fixture(scope="module")
def shipped():
    spec = load_registry(MODELS / "registry.yaml")["mitosis_amibr"]
    record = json.loads((FOLDER / "train.json").read_text())
    return spec, load_model(spec, MODELS, device="cpu"), record


def test_registry_entry_weights_and_card(shipped):
    spec, model, record = shipped
    assert spec.kind == "mitosis_classifier" and spec.architecture == "mitosnet"
    assert (spec.mpp, spec.patch_px) == (record["spec"]["mpp"], record["spec"]["patch_px"])
    assert spec.arguments == record["spec"]["arguments"]
    weights = MODELS / str(spec.weights)
    assert weights.stat().st_size <= 25 * 2**20
    assert file_sha256(weights) == spec.sha256 == record["best_sha256"]
    assert spec.card is not None and (MODELS / spec.card).is_file()
    assert "no licence" in spec.licence.lower() or "research" in spec.licence.lower()
    card = (MODELS / spec.card).read_text()
    validation = record["validation"]
    for value in (validation["mitoses"]["detection_recall"], validation["atypical"]["balanced_accuracy"]):
        assert f"{value:.3f}" in card
    assert f"{validation['nuclei_images']['fp_per_mm2']:.1f}" in card


def test_card_numbers_on_held_out_subset(shipped, require_shared, torch_one_thread):
    spec, model, record = shipped
    validation = record["validation"]
    figures = read_amibr(require_shared("mitosis/amibr"), spec.mpp, record["data"]["crop_px"]).crops
    held_out = figures.subset(np.flatnonzero(np.isin(figures.groups, record["split"]["val_slides"])))
    assert len(held_out) == validation["mitoses"]["n"]
    subset = held_out.subset(np.arange(0, len(held_out), 3))  # fixed: every third held-out figure
    p, a = predict_crops(model, subset.images, spec)
    threshold = validation["threshold"]
    assert abs(float((p >= threshold).mean()) - validation["mitoses"]["crop_recall"]) < 0.08
    assert abs(balanced_accuracy(subset.atypical, a >= 0.5) - validation["atypical"]["balanced_accuracy"]) < 0.1
    few = subset.subset(np.arange(0, len(subset), 3))
    hits = crop_detection_hits(few.images, model, spec, threshold)
    assert abs(float(hits.mean()) - validation["mitoses"]["detection_recall"]) < 0.12

    # False positives per mm² on two held-out MoNuSeg images, as recorded per image group.
    root = require_shared("nuclei/monuseg_nonbreast")
    held_groups = [g for g in record["split"]["val_nuclei_groups"] if g.startswith("monuseg_nonbreast:")][:2]
    samples = [s for s in list_nuclei_samples([root], spec.mpp) if f"monuseg_nonbreast:{s.name}" in held_groups]
    recorded = validation["nuclei_images"]["per_group_fp_per_mm2"]
    for image in load_nuclei_images(samples, spec.mpp):
        found, _ = detect_in_image(image.rgb, model, spec, DetectionParams(threshold=threshold))
        fp_per_mm2 = len(found) / (image.rgb.shape[0] * image.rgb.shape[1] * (spec.mpp / 1000) ** 2)
        assert fp_per_mm2 == pytest.approx(recorded[image.group], rel=0.1, abs=3.0)


def _held_out_patches(record, amibr: Path, n_each: int) -> list[Path]:
    slides = set(record["split"]["val_slides"])
    table = pd.read_csv(amibr / "AMI-BR.csv")
    names = set((table["dataset"] + "_" + table["uid"].astype(str) + ".png")[(table["dataset"] + ":" + table["slide"]).isin(slides)])
    picked: list[Path] = []
    for folder in ("normal", "atypical"):
        picked += [p for p in sorted((amibr / "patches" / folder).glob("*.png")) if p.name in names][:n_each]
    return picked


def test_cli_detect_and_evaluate_on_amibr_crops(shipped, require_shared, tmp_path, capsys):
    _, _, record = shipped
    images = tmp_path / "images"
    images.mkdir()
    for path in _held_out_patches(record, require_shared("mitosis/amibr"), 3):
        shutil.copy(path, images / path.name)
    files = sorted(images.iterdir())
    assert main(["mitosis", "detect", "--model", "mitosis_amibr", "--mpp", "0.25", *map(str, files), "--out", str(tmp_path / "pred")]) == 0
    for path in files:
        table = pd.read_csv(tmp_path / "pred" / f"{path.stem}.mitoses.csv")
        assert list(table.columns) == ["x", "y", "probability", "atypical_probability"]
        assert ((table["probability"] >= 0.5) & (table["probability"] <= 1)).all()
        assert table["x"].between(0, 127).all() and table["y"].between(0, 127).all()
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["mitosis", "evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(images), "--out", str(out_json)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out_json.read_text())
    assert result["n_images"] == len(files) and result["radius_um"] == 7.5
    pooled = result["pooled"]
    assert pooled["tp"] + pooled["fn"] == len(files)
    assert pooled["recall"] >= 0.5  # the card's detection recall is well above this


def test_cli_refuses_an_image_coarser_than_the_model(shipped, require_shared, tmp_path, capsys):
    _, _, record = shipped
    patch = _held_out_patches(record, require_shared("mitosis/amibr"), 1)[0]
    assert main(["mitosis", "detect", "--mpp", "0.5", str(patch), "--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert str(patch) in message and re.search(r"coarser than model mitosis_amibr", message)
