"""AUC with bootstrap CIs, patch labelling from annotations, and the stage-2 train/evaluate steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bcpath import geojson
from bcpath.erpr.cohort import evaluate_stage2, train_stage2
from bcpath.erpr.evaluation import UNLABELLED, auc, auc_with_ci, label_patches, roc_png
from bcpath.erpr.inference import write_predictions
from bcpath.errors import BcpathError


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 → ½) (0.5>0.1)
    assert auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.3 * y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_bootstrap_ci_brackets_the_auc_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60), np.zeros(60)].astype(int)
    s = rng.normal(size=120) + 1.0 * y
    first = auc_with_ci(y, s, n_resamples=300, seed=3)
    again = auc_with_ci(y, s, n_resamples=300, seed=3)
    assert first == again
    assert first["ci_low"] < first["auc"] < first["ci_high"]
    assert first["n_resamples"] == 300 and (first["n_positive"], first["n_negative"]) == (60, 60)
    # Normal-theory width for AUC ≈ 0.76 with 60 + 60 items is about ±0.085.
    assert 0.1 < first["ci_high"] - first["ci_low"] < 0.25


def test_bootstrap_with_few_items_redraws_single_class_resamples():
    result = auc_with_ci([1, 0, 0], [0.9, 0.2, 0.1], n_resamples=200, seed=0)
    assert result["auc"] == 1.0 and result["n_redrawn"] > 0
    assert result["n_resamples"] == 200 and result["ci_low"] == 1.0
    undefined = auc_with_ci([0, 0], [0.1, 0.2])
    assert math.isnan(undefined["auc"]) and undefined["n_resamples"] == 0


def _square(x, y, side, name):
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return geojson.feature({"type": "Polygon", "coordinates": [ring]}, object_type="annotation", classification=name)


def test_label_patches_uses_the_patch_centre():
    features = [
        _square(0, 0, 100, "ER-positive tumor"),
        _square(100, 0, 100, "ER-negative tumor"),
        _square(0, 100, 200, "non-tumor"),
        _square(300, 300, 50, "PR-positive tumor"),  # another biomarker: ignored for ER
    ]
    x0 = np.array([0, 60, 100, 0, 300, 500])
    y0 = np.array([0, 0, 0, 100, 300, 500])
    labels = label_patches(features, "ER", x0, y0, patch_level0_px=40)
    # centres (20,20) (80,20) (120,20) (20,120) (320,320) (520,520)
    assert labels.tolist() == [0, 0, 1, 2, UNLABELLED, UNLABELLED]


def test_roc_png_writes_an_image(tmp_path):
    import cv2

    path = tmp_path / "roc.png"
    roc_png(path, "ER", [("slides", [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]), ("one class", [1, 1], [0.2, 0.4])])
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 300


# --- stage-2 steps on a small synthetic cohort ------------------------------------------------


def _predictions(path, probs, origin=(0, 0)):
    n = len(probs)
    table = pd.DataFrame(
        {
            "patch_id": np.arange(n, dtype=np.int64),
            "x": np.arange(n, dtype=np.int64) * 64,
            "y": np.zeros(n, dtype=np.int64),
            "x0": np.arange(n, dtype=np.int64) * 256 + origin[0],
            "y0": np.zeros(n, dtype=np.int64) + origin[1],
            **{f"p_{k}": np.asarray(probs, dtype=np.float32).reshape(n, 3)[:, k] for k in range(3)},
        }
    )
    table.attrs["bcpath"] = {"patch_px": 64, "level0_px_per_px": 4.0, "stride_px": 64, "mpp": 2.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(table, path)


def _cohort(tmp_path):
    """12 slides: positives have mostly p_pos-high patches, negatives p_neg-high; one test
    slide with no patches at all."""
    rng = np.random.default_rng(0)
    rows, paths = [], []
    splits = ["train"] * 6 + ["tune"] * 2 + ["test"] * 4
    statuses = ["positive", "negative"] * 6
    for i, (split, status) in enumerate(zip(splits, statuses, strict=True)):
        slide = f"s{i:02d}"
        n = 0 if slide == "s11" else 40
        pos = status == "positive"
        main = rng.uniform(0.75, 0.98, n)
        probs = np.stack([main, (1 - main) * 0.8, (1 - main) * 0.2], axis=1) if pos else np.stack([(1 - main) * 0.8, main, (1 - main) * 0.2], axis=1)
        path = tmp_path / "results" / "slides" / slide / "predictions" / "er_demo.parquet"
        _predictions(path, probs)
        paths.append(str(path))
        annotations = tmp_path / f"{slide}.geojson"
        geojson.write_geojson(annotations, [_square(0, 0, 40 * 256, f"ER-{status} tumor")])
        rows.append({"slide_id": slide, "path": f"{slide}.svs", "ER": status, "split": split, "annotations": annotations.name})
    sheet = tmp_path / "samples.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet, paths


def test_train_and_evaluate_stage2_on_a_separable_cohort(tmp_path):
    sheet, paths = _cohort(tmp_path)
    out = tmp_path / "stage2"
    model = train_stage2(paths, sheet, "ER", out / "model.json", out / "tuning.csv", tune=True, folds=10)
    doc = json.loads((out / "model.json").read_text())
    assert doc["training"]["slides"] == [f"s{i:02d}" for i in range(8)]  # train + tune only
    assert doc["training"]["tuning"]["tuned"] and doc["training"]["tuning"]["folds"] == 4
    assert len(pd.read_csv(out / "tuning.csv")) > 100
    assert model.spec.biomarker == "ER"

    report = evaluate_stage2(
        out / "model.json", paths, sheet, "ER", out / "predictions.csv", out / "evaluation.json", out / "roc.png",
        n_bootstrap=200,
    )
    slides = pd.read_csv(out / "predictions.csv").set_index("slide_id")
    assert len(slides) == 12  # every slide gets a row
    assert slides.at["s11", "flag"] == "no_tissue_patches" and slides.at["s11", "n_patches"] == 0
    assert math.isfinite(slides.at["s11", "score"])
    assert report["slides"] == ["s08", "s09", "s10"]  # test slides with patches
    assert report["flagged_slides"] == ["s11"]
    assert report["slide_level"]["auc"] == 1.0
    assert report["patch_level"]["n"] == 120 and report["patch_level"]["auc"] > 0.99
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["evaluated_on"] == "test" and saved["slide_level"]["n_positive"] == 2
    assert (out / "roc.png").stat().st_size > 1000


def test_stage2_with_a_single_class_is_a_clear_error(tmp_path):
    sheet, paths = _cohort(tmp_path)
    table = pd.read_csv(sheet, sep="\t")
    table["ER"] = "positive"
    table.to_csv(sheet, sep="\t", index=False)
    with pytest.raises(BcpathError, match=r"stage 2 ER: needs train/tune slides of both statuses, found 8 positive and 0 negative"):
        train_stage2(paths, sheet, "ER", tmp_path / "m.json", tmp_path / "t.csv")


def test_stage2_too_few_slides_to_tune_falls_back_to_paper_values(tmp_path, caplog):
    sheet, paths = _cohort(tmp_path)
    table = pd.read_csv(sheet, sep="\t")
    table.loc[table["slide_id"].isin(["s01", "s03", "s05"]), "split"] = "test"  # one negative left
    table.to_csv(sheet, sep="\t", index=False)
    model = train_stage2(paths, sheet, "ER", tmp_path / "m.json", tmp_path / "t.csv", tune=True)
    assert (model.spec.threshold, model.spec.n_bins, model.spec.penalty, model.spec.C) == (0.7, 5, "l1", 0.077)
    tuning = json.loads((tmp_path / "m.json").read_text())["training"]["tuning"]
    assert not tuning["tuned"] and "paper defaults" in tuning["reason"]
