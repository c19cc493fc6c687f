"""Interpretability steps (bcpath.erpr.interpret_reports) on two small demo slides, untrained model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from bcpath.erpr.inference import predict_slide, write_predictions
from bcpath.erpr.interpret_reports import (
    cluster_report,
    cohort_predictions,
    read_patches,
    smoothgrad_report,
    tcav_report,
)
from bcpath.models.registry import build_model
from tests.model_specs import test_spec

SPEC = test_spec(64, classes=("ER-positive invasive carcinoma", "ER-negative invasive carcinoma", "non-tumor"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    import torch

    from bcpath.demo.cohort import make_demo_slide
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    root = tmp_path_factory.mktemp("interpret")
    torch.manual_seed(0)
    model = build_model(SPEC)
    paths = []
    for index in range(2):
        record = make_demo_slide(root / "demo", seed=0, index=index, size=(2400, 2000))
        folder = root / "results/slides" / record["slide_id"]
        with open_slide(root / "demo" / record["path"]) as slide:
            mask = detect_tissue(slide.thumbnail(8.0), 8.0, TissueParams())
            tile_slide(slide, mask, 8.0, folder / "tiles.zarr", folder / "grid.parquet", None, TilingParams(mpp=2.0, tile_px=128))
        table = predict_slide(model, SPEC, folder / "tiles.zarr", folder / "grid.parquet", device="cpu", progress=False, threads=1)
        path = folder / "predictions" / "tiny.parquet"
        path.parent.mkdir(parents=True)
        write_predictions(table, path)
        paths.append(str(path))
    return root, model, paths


def test_read_patches_match_the_tiles(cohort):
    from bcpath.tiling import open_tiles

    root, _, paths = cohort
    table = cohort_predictions(paths)
    assert set(table.slide_id) == {"demo_01", "demo_02"}
    rows = table.groupby("slide_id").head(2)
    patches = read_patches(rows, 64)
    for patch, row in zip(patches, rows.itertuples(index=False), strict=True):
        image = open_tiles(root / "results/slides" / row.slide_id / "tiles.zarr")
        np.testing.assert_array_equal(patch, np.asarray(image[:, row.y : row.y + 64, row.x : row.x + 64]))


def test_smoothgrad_report_picks_the_top_patches_of_each_class(cohort, tmp_path):
    _, model, paths = cohort
    chosen = smoothgrad_report(model, SPEC, paths, tmp_path / "sg.png", tmp_path / "sg.csv", top_k=3, n_samples=2)
    table = cohort_predictions(paths)
    for k, name in enumerate(SPEC.classes):
        picked = chosen[chosen["class"] == name]
        assert list(picked["rank"]) == [1, 2, 3]
        np.testing.assert_allclose(picked["p"], np.sort(table[f"p_{k}"].to_numpy())[::-1][:3], rtol=1e-5)
    image = cv2.imread(str(tmp_path / "sg.png"))
    assert image.shape[0] == 3 * 64 and image.shape[1] == 3 * 128 + 2 * 8  # 3 classes × (patch | map)
    assert pd.read_csv(tmp_path / "sg.csv").shape[0] == 9


def test_cluster_report_writes_clusters_hierarchy_and_montages(cohort, tmp_path):
    _, model, paths = cohort
    hierarchy = cluster_report(model, SPEC, {"ER": paths, "PR": paths}, "ER", tmp_path, n_clusters=4, max_patches_per_slide=30)
    clusters = pd.read_csv(tmp_path / "clusters.csv")
    assert len(clusters) == 60 and set(clusters.cluster) == set(range(4))
    assert sorted(hierarchy["sizes"]) == sorted(clusters.cluster.value_counts().tolist())
    # Same model for both "biomarkers": identical p(positive) columns, distances are 2× one EMD.
    np.testing.assert_allclose(clusters.p_positive_ER, clusters.p_positive_PR)
    saved = json.loads((tmp_path / "hierarchy.json").read_text())
    assert saved["biomarkers"] == ["ER", "PR"] and len(saved["linkage"]) == 3
    assert len(list((tmp_path / "montages").glob("cluster_*.png"))) == 4
    assert (tmp_path / "dendrogram.png").stat().st_size > 1000


def test_tcav_report_scores_each_concept_folder(cohort, tmp_path):
    root, model, paths = cohort
    table = cohort_predictions(paths)
    folder = tmp_path / "concept"
    folder.mkdir()
    for i, patch in enumerate(read_patches(table.head(6), 64)):
        cv2.imwrite(str(folder / f"p{i}.png"), cv2.cvtColor(patch.transpose(1, 2, 0), cv2.COLOR_RGB2BGR))
    report = tcav_report(model, SPEC, paths, {"first patches": str(folder)}, tmp_path / "tcav.json", n_runs=3, n_random=20, n_class=10)
    scores = report["concepts"]["first patches"]["scores"]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert json.loads((tmp_path / "tcav.json").read_text())["class"] == SPEC.classes[0]
