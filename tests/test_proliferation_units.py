"""Proliferation building blocks on hand-made inputs: hotspot, score cut-offs, slide features,
bag of words, slide models, candidates, NMS and detection matching, LocNet tumour maps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bcpath.proliferation.candidates import find_candidates, non_maximum_suppression
from bcpath.proliferation.features import BagOfWords, slide_features
from bcpath.proliferation.hotspot import elston_ellis_cutoffs, find_hotspot, mitotic_score
from bcpath.proliferation.mitosis import f1_scores, match_detections
from bcpath.proliferation.slide_models import (
    evaluate,
    fit_grade_model,
    fit_score_model,
    predict_grade,
    predict_score,
)


def test_mitotic_score_uses_tupac_cutoffs():
    assert [mitotic_score(c) for c in (0, 5, 6, 10, 11, 40)] == [1, 1, 2, 2, 3, 3]


def test_elston_ellis_table_scales_with_field_area():
    # 0.59 mm is Elston & Ellis's own field: 9 / 19 per 10 fields of 0.274 mm²
    low, high, area = elston_ellis_cutoffs(0.59)
    assert (low, high) == (9, 19) and area == pytest.approx(2.734, abs=0.01)
    small, large = elston_ellis_cutoffs(0.44), elston_ellis_cutoffs(0.69)
    assert small[:2] == (5, 11) and large[0] > 9 and large[1] > 19  # cut-offs grow with the field
    with pytest.raises(ValueError, match="field diameter"):
        elston_ellis_cutoffs(2.0)


def test_hotspot_finds_the_dense_cluster_inside_tumor():
    level0_mpp, tumor_mpp = 0.5, 8.0
    tumor = np.zeros((500, 500), bool)  # 4 x 4 mm
    tumor[50:450, 50:450] = True
    rng = np.random.default_rng(0)
    # 12 mitoses in a 0.5 mm cluster centred at (1.5 mm, 2 mm), 6 scattered elsewhere
    cluster = rng.normal([1500, 2000], 150, (12, 2))
    scattered = rng.uniform(600, 3400, (6, 2))
    xy_um = np.concatenate([cluster, scattered])
    hotspot = find_hotspot(xy_um[:, 0] / level0_mpp, xy_um[:, 1] / level0_mpp, tumor, tumor_mpp, level0_mpp)
    assert hotspot is not None
    assert hotspot.area_mm2 == pytest.approx(2.0, rel=0.05)
    inside = (xy_um[:, 0] / level0_mpp >= hotspot.x0) & (xy_um[:, 0] / level0_mpp < hotspot.x1)
    inside &= (xy_um[:, 1] / level0_mpp >= hotspot.y0) & (xy_um[:, 1] / level0_mpp < hotspot.y1)
    assert hotspot.count == int(inside.sum()) >= 12
    assert hotspot.score == 3
    assert find_hotspot(np.zeros(0), np.zeros(0), np.zeros((10, 10), bool), tumor_mpp, level0_mpp) is None


def _detections(xy_level0: np.ndarray) -> pd.DataFrame:
    n = len(xy_level0)
    return pd.DataFrame(
        {"x0": xy_level0[:, 0], "y0": xy_level0[:, 1], "probability": 0.9, "atypical_probability": np.linspace(0, 1, n),
         "area_um2": 50.0, "eccentricity": 0.5, "solidity": 0.9, "mean_od": 0.8}
    )


def test_slide_features_are_finite_and_measure_density_and_clustering():
    tumor = np.zeros((250, 250), bool)
    tumor[:125, :] = True  # 2 x 1 mm at 8 µm/px
    grid = np.stack(np.meshgrid(np.arange(5), np.arange(2)), -1).reshape(-1, 2) * 400 + 200  # regular, µm
    feats, flags = slide_features(_detections(grid / 0.5), tumor, 8.0, 0.5, hotspot_count=10, mitotic_score=2)
    assert flags == []
    assert feats["tumor_area_mm2"] == pytest.approx(2.0, rel=1e-6)
    assert feats["mitoses_per_mm2"] == pytest.approx(5.0)
    assert feats["nn_mean_um"] == pytest.approx(400.0)
    assert feats["clark_evans"] > 1.5  # regular spacing
    assert feats["atypical_fraction"] == pytest.approx(0.5)
    assert all(math.isfinite(v) for v in feats.values())
    empty, flags = slide_features(_detections(np.zeros((0, 2))), np.zeros((10, 10), bool), 8.0, 0.5, 0, 1)
    assert set(flags) == {"no_tumor", "few_mitoses"} and all(v == 0 for k, v in empty.items() if k != "mitotic_score")


def test_bag_of_words_shrinks_k_and_says_why():
    rng = np.random.default_rng(1)
    emb = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))])
    bow = BagOfWords.fit(emb, requested_k=200)
    assert bow.k == 20 and "40 detected mitoses" in bow.note
    hist = bow.histogram(emb[:20])
    assert hist.sum() == pytest.approx(1.0)
    again = BagOfWords.from_json(bow.to_json())
    np.testing.assert_allclose(again.histogram(emb[:20]), hist, atol=1e-9)
    assert BagOfWords.fit(np.zeros((0, 4))).k == 0


def test_slide_models_learn_grade_and_score_from_mitotic_density():
    rng = np.random.default_rng(2)
    density = np.concatenate([rng.uniform(1, 3, 8), rng.uniform(5, 7, 8), rng.uniform(12, 16, 8)])
    grade = np.repeat([1, 2, 3], 8)
    noise = rng.normal(0, 1, 24)
    table = pd.DataFrame({"density": density, "noise": noise})
    gm = fit_grade_model(table.to_numpy(), grade, ["density", "noise"])
    sm = fit_score_model(table.to_numpy(), density, ["density", "noise"])
    assert gm["cv_folds"] == 5 and sm["cv_folds"] == 5
    proba = predict_grade(gm, table)
    assert (proba.argmax(1) + 1 == grade).mean() >= 0.9
    assert np.corrcoef(predict_score(sm, table), density)[0, 1] > 0.95
    ev = evaluate(grade, proba, density, predict_score(sm, table), n_bootstrap=50)
    assert ev["grade"]["kappa_quadratic"]["value"] > 0.8
    assert ev["score"]["spearman"]["value"] > 0.9
    lo, hi = ev["score"]["spearman"]["ci"]
    assert lo <= ev["score"]["spearman"]["value"] <= hi


def test_candidates_find_dark_blobs_and_nms_keeps_one_per_figure():
    rgb = np.full((200, 200, 3), 235, np.uint8)
    centres = [(50, 50), (150, 60), (100, 150)]
    import cv2

    for x, y in centres:
        cv2.circle(rgb, (x, y), 8, (60, 40, 120), -1)  # hematoxylin-dark disc, 4 µm radius at 0.5 µm/px
    found = find_candidates(rgb, 0.5)
    assert len(found) == 3
    tp, fp, fn = match_detections(found[["x", "y"]].to_numpy(), np.array(centres, float), 3.0)
    assert (tp, fp, fn) == (3, 0, 0)
    kept = non_maximum_suppression(np.array([0.0, 5.0, 50.0]), np.array([0.0, 0.0, 0.0]), np.array([0.5, 0.9, 0.7]), 10.0)
    assert kept.tolist() == [1, 2]


def test_matching_counts_each_figure_once():
    pred = np.array([[0, 0], [1, 0], [30, 30]], float)
    true = np.array([[0.5, 0], [100, 100]], float)
    assert match_detections(pred, true, 7.5) == (1, 2, 1)
    scores = f1_scores(1, 2, 1)
    assert scores["f1"] == pytest.approx(2 / 5)
    assert match_detections(np.zeros((0, 2)), true, 7.5) == (0, 0, 2)


def test_locnet_map_streams_windows_and_blanks_non_tissue():
    import torch

    from bcpath.models.registry import ModelSpec, build_model
    from bcpath.proliferation.locnet import is_tumor_class, predict_tumor_map

    spec = ModelSpec("t", "locnet", ("non-tumor", "tumor"), 2.0, 64, (0.5,) * 3, (0.25,) * 3, None, None, "MIT", "x", kind="tumor_locnet", arguments={"width": 4, "depth": 3})
    torch.manual_seed(0)
    model = build_model(spec)
    tiles = np.full((3, 700, 900), 240, np.uint8)
    tissue = np.zeros((700, 900), bool)
    tissue[:300, :400] = True
    p = predict_tumor_map(model, spec, tiles, tissue, window_px=256, margin_px=16)
    assert p.shape == (88, 113)
    assert np.isfinite(p[:37, :50]).all() and np.isnan(p[40:, :]).all()
    assert is_tumor_class("ER-positive tumor") and is_tumor_class("Tumour") and not is_tumor_class("non-tumor")
    assert not is_tumor_class(None) and is_tumor_class("invasive carcinoma")


def test_a_slide_coarser_than_the_mitosis_model_is_refused_with_its_name():
    from bcpath.errors import BcpathError
    from bcpath.models.registry import ModelSpec
    from bcpath.proliferation.slide import check_resolution

    spec = ModelSpec("m", "mitosnet", ("non-mitosis", "mitosis"), 0.25, 64, (0.5,) * 3, (0.25,) * 3, None, None, "MIT", "x", kind="mitosis_classifier")
    check_resolution("S1", 0.26, spec)  # within tolerance
    with pytest.raises(BcpathError, match=r"slide S2: scanned at 0\.500 µm/px, coarser than mitosis model m"):
        check_resolution("S2", 0.5, spec)


def test_grade_model_without_enough_slides_per_grade_says_so():
    x = np.array([[1.0], [2.0], [10.0]])
    model = fit_grade_model(x, np.array([1, 1, 3]), ["density"])
    assert model["cv_folds"] == 0 and "default" in model["note"]
    with pytest.raises(ValueError, match="one grade only"):
        fit_grade_model(x, np.array([2, 2, 2]), ["density"])


def test_detection_threshold_is_chosen_by_f1_on_tune_candidates(tmp_path):
    from bcpath.proliferation.cohort import detection_threshold
    from bcpath.proliferation.mitosis import choose_threshold

    p_mitoses = np.array([0.99, 0.97, 0.96, 0.92, 0.6])
    p_others = np.concatenate([np.full(500, 0.1), [0.9, 0.85, 0.8, 0.75, 0.7, 0.65]])
    threshold, f1 = choose_threshold(p_mitoses, p_others)
    assert threshold == 0.9 and f1 == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    record = tmp_path / "train.json"
    record.write_text('{"threshold": 0.95}')
    assert detection_threshold("auto", str(tmp_path / "best.pt"), None) == 0.95
    assert detection_threshold("auto", "elsewhere/best.pt", str(record)) == 0.95
    assert detection_threshold(0.7, "x", None) == 0.7
    assert detection_threshold("auto", str(tmp_path / "none" / "best.pt"), None) == 0.5


def test_annotation_masks_keep_a_tumor_that_lies_in_another_region_s_hole(tmp_path):
    import json

    from bcpath.proliferation.locnet import annotation_masks

    square = [[10, 10], [50, 10], [50, 50], [10, 50], [10, 10]]
    stroma = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]], square]},
              "properties": {"classification": {"name": "non-tumor"}}}
    tumor = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}, "properties": {"classification": {"name": "ER-positive tumor"}}}
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [tumor, stroma]}))
    t, annotated = annotation_masks(path, (60, 60), 0.5, (0.0, 0.0))
    assert annotated[:50, :50].all() and not annotated[52:, :].any()  # the stroma's hole is the tumor, annotated too
    assert t[5:25, 5:25].all() and not t[30:, 30:].any()
