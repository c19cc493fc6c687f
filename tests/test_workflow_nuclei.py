"""Nuclei rules outside the demo: train_nuclei_model on a dataset folder, and the tumor region."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bcpath.nuclei.slide import tumor_region_mask
from bcpath.wsi import file_sha256
from tests.test_nuclei_training import _write_cpm_folder
from tests.workflow_helpers import run_snakemake


@pytest.mark.slow
def test_train_nuclei_model_rule_trains_from_a_dataset_folder(tmp_path):
    data = _write_cpm_folder(tmp_path / "data", 4)
    settings = f"{{training: {{data: [{data}], epochs: 1, batch_size: 2, val_organs: [], val_names: [syn04], plain_base: 4}}}}"
    result = run_snakemake(tmp_path, "--cores", "1", "results/models/nuclei/best.pt", "--config", f"nuclei={settings}")
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "results/models/nuclei"
    train = json.loads((folder / "train.json").read_text())
    assert train["best_sha256"] == file_sha256(folder / "best.pt")
    assert train["split"]["val"] == ["cpm15/syn04"] and train["epochs_run"] == 1
    assert {"best.pt", "last.pt", "log.csv", "stain.json"} <= {p.name for p in folder.iterdir()}


def test_train_nuclei_model_without_data_names_the_setting(tmp_path):
    result = run_snakemake(tmp_path, "--cores", "1", "results/models/nuclei/best.pt")
    assert result.returncode != 0
    assert "nuclei.training.data lists no dataset folder" in result.stderr


def test_tumor_region_paints_the_patches_a_model_calls_tumor():
    predictions = pd.DataFrame(
        {"x0": [0, 512, 1024], "y0": [0, 0, 512], "p_0": [0.7, 0.1, 0.2], "p_1": [0.1, 0.1, 0.4], "p_2": [0.2, 0.8, 0.4]}
    )
    predictions.attrs["bcpath"] = {"patch_px": 128, "level0_px_per_px": 4.0}  # 512 level-0 px per patch
    region = tumor_region_mask(predictions, (20, 24), mask_mpp=8.0, slide_mpp=0.5)  # 16 level-0 px per mask px
    expected = np.zeros((20, 24), bool)
    expected[0:32, 0:32] = True  # patch 1: p_0 + p_1 = 0.8
    expected[32:64, 64:96] = True  # patch 3: 0.6 (clipped to the mask)
    np.testing.assert_array_equal(region, expected)
    assert not tumor_region_mask(predictions.iloc[:0], (20, 24), 8.0, 0.5).any()


@pytest.mark.slow
def test_evaluate_nuclei_rule_scores_a_real_dataset_folder(tmp_path, require_shared):
    cpm = require_shared("nuclei/cpm15")
    result = run_snakemake(tmp_path, "--cores", "1", "results/cohort/nuclei/evaluation.csv", "--config", f"nuclei={{model: fiji, evaluation: {{data: [{cpm}]}}}}")
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results/cohort/nuclei/evaluation.csv")
    assert len(table) == 16 and table.image.iloc[-1] == "mean"
    for column in ("aji", "map", "f1_0.5", "precision_0.5", "recall_0.7", "pq"):
        assert table[column].between(0, 1).all(), column
    # the fiji baseline's CPM-15 mean AJI measured with `bcpath nuclei evaluate` (README): 0.499
    assert table.aji.iloc[-1] == pytest.approx(0.499, abs=0.02)
