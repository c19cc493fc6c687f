"""Stage 2 of Gamble et al. 2021 (bcpath.erpr.stage2): features, fit, JSON, tuning, validation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from bcpath.erpr.stage2 import (
    Stage2Error,
    Stage2Grid,
    Stage2Model,
    Stage2Spec,
    _auc,
    _standardisation,
    bin_edges,
    feature_matrix,
    feature_names,
    fit_stage2,
    paper_defaults,
    slide_features,
    tune_stage2,
)


def _rows(*pairs: tuple[float, float]) -> np.ndarray:
    """(N, 3) probabilities from (p_pos, p_neg) pairs; non-tumor takes the rest."""
    a = np.array(pairs, dtype=np.float64)
    return np.column_stack([a, np.clip(1.0 - a.sum(axis=1), 0.0, 1.0)])


def _synthetic_cohort(n_pos: int, n_neg: int, seed: int, n_patches: int = 60) -> tuple[list[np.ndarray], np.ndarray]:
    """Positive slides: more patches with high p_pos; negative slides: more with high p_neg."""
    rng = np.random.default_rng(seed)
    slides, labels = [], []
    for label in [1] * n_pos + [0] * n_neg:
        alpha = [4.0, 1.0, 1.5] if label else [1.0, 4.0, 1.5]
        slides.append(rng.dirichlet(alpha, size=n_patches))
        labels.append(label)
    return slides, np.array(labels)


# ----------------------------------------------------------------------------------------------
# Features, checked against numbers worked out by hand


def test_feature_names_and_edges():
    assert feature_names(2) == ["ratio", "pos_hist_0", "pos_hist_1", "neg_hist_0", "neg_hist_1"]
    assert len(feature_names(7)) == 15
    edges = bin_edges(3)
    np.testing.assert_allclose(edges, [0.1, 0.4, 0.7, 1.0])
    assert edges[0] == 0.1 and edges[-1] == 1.0


def test_slide_features_by_hand():
    probs = _rows(
        (0.9, 0.05),  # positive (>= 0.7); p_pos in bin 2; p_neg discarded (< 0.1)
        (1.0, 0.0),  # positive; 1.0 goes in the last bin
        (0.05, 0.8),  # negative; p_neg in bin 2; p_pos discarded
        (0.2, 0.5),  # neither; p_pos bin 0, p_neg bin 1
        (0.0999, 0.1),  # p_pos discarded (just below 0.1); p_neg = 0.1 kept, bin 0
        (0.0, 0.0),  # non-tumor: nothing
    )
    f = slide_features(probs, threshold=0.7, n_bins=3)
    # n_pos = 2, n_neg = 1 -> ratio 2, histograms / 3
    np.testing.assert_allclose(f, [2.0, 1 / 3, 0.0, 2 / 3, 1 / 3, 1 / 3, 1 / 3], rtol=0, atol=1e-15)
    assert f.dtype == np.float64 and f.shape == (7,)


def test_threshold_is_inclusive():
    probs = _rows((0.5, 0.2), (0.2, 0.5), (0.2, 0.5), (0.4999, 0.3))
    f = slide_features(probs, threshold=0.5, n_bins=1)
    # n_pos = 1 (0.5 counts), n_neg = 2 -> ratio 0.5; one bin [0.1, 1]: 4 p_pos and 4 p_neg, / 3
    np.testing.assert_allclose(f, [0.5, 4 / 3, 4 / 3])


def test_bin_edges_belong_to_the_bin_they_open_and_one_to_the_last():
    edges = bin_edges(5)
    p_pos = list(edges[:-1]) + [1.0]  # 0.1, 0.28, 0.46, 0.64, 0.82, 1.0
    probs = _rows(*[(p, 0.0) for p in p_pos])
    f = slide_features(probs, threshold=1.0, n_bins=5)
    # only 1.0 reaches t = 1.0: n_pos = 1, n_neg = 0 -> ratio 1 / max(0, 1) = 1, norm 1
    np.testing.assert_array_equal(f, [1.0, 1, 1, 1, 1, 2, 0, 0, 0, 0, 0])
    # just below each edge: previous bin, and below 0.1 discarded
    below = [np.nextafter(e, 0.0) for e in edges[:-1]]
    f = slide_features(_rows(*[(p, 0.0) for p in below]), threshold=1.0, n_bins=5)
    np.testing.assert_array_equal(f, [0.0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_zero_denominators():
    # no confidently negative patch: ratio = n_pos / 1
    f = slide_features(_rows((0.9, 0.0), (0.8, 0.0), (0.75, 0.1)), threshold=0.7, n_bins=1)
    np.testing.assert_allclose(f, [3.0, 1.0, 1 / 3])
    # nothing at or above t: ratio 0, histograms are raw counts (divided by max(0, 1) = 1)
    f = slide_features(_rows((0.3, 0.3), (0.5, 0.2), (0.05, 0.05)), threshold=0.7, n_bins=2)
    # edges 0.1, 0.55, 1.0: p_pos 0.3, 0.5 -> bin 0; p_neg 0.3, 0.2 -> bin 0
    np.testing.assert_array_equal(f, [0.0, 2.0, 0.0, 2.0, 0.0])
    # a slide without patches: all zeros
    np.testing.assert_array_equal(slide_features(np.zeros((0, 3)), 0.7, 5), np.zeros(11))


def test_float32_and_rounding_just_above_one_are_accepted():
    probs = np.array([[1.0000001, 0.0, 0.0], [0.2, 0.8, 0.0]], dtype=np.float32)
    f = slide_features(probs, threshold=0.7, n_bins=3)
    np.testing.assert_allclose(f, [1.0, 1 / 2, 0, 1 / 2, 0, 0, 1 / 2])


def test_feature_matrix_stacks_slides():
    a, b = _rows((0.9, 0.0)), _rows((0.0, 0.9), (0.0, 0.8))
    m = feature_matrix([a, b], 0.7, 2)
    assert m.shape == (2, 5)
    np.testing.assert_array_equal(m[1], slide_features(b, 0.7, 2))


# ----------------------------------------------------------------------------------------------
# Hyperparameters


def test_paper_defaults():
    assert paper_defaults("ER") == Stage2Spec(threshold=0.7, n_bins=5, penalty="l1", C=0.077, biomarker="ER")
    assert paper_defaults("PR") == Stage2Spec(threshold=0.7, n_bins=5, penalty="l1", C=0.045, biomarker="PR")
    assert paper_defaults("HER2") == Stage2Spec(threshold=0.7, n_bins=7, penalty="l1", C=0.024, biomarker="HER2")
    with pytest.raises(Stage2Error, match="ER, PR, HER2"):
        paper_defaults("Ki67")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"penalty": "elasticnet"}, "'l1' or 'l2'"),
        ({"C": 0.0}, "positive finite"),
        ({"C": float("inf")}, "positive finite"),
        ({"threshold": 0.0}, r"\(0, 1\]"),
        ({"threshold": 1.5}, r"\(0, 1\]"),
        ({"n_bins": 0}, ">= 1"),
        ({"n_bins": 2.5}, ">= 1"),
        ({"biomarker": "er"}, "ER, PR, HER2"),
    ],
)
def test_spec_validation(kwargs, message):
    base = {"threshold": 0.7, "n_bins": 5, "penalty": "l1", "C": 0.1, "biomarker": "ER"}
    with pytest.raises(Stage2Error, match=message):
        Stage2Spec(**{**base, **kwargs})


# ----------------------------------------------------------------------------------------------
# Fit, predict, JSON


def test_fit_separates_synthetic_slides_with_positive_ratio_coefficient():
    from sklearn.linear_model import LogisticRegression

    slides, labels = _synthetic_cohort(10, 10, seed=1)
    spec = Stage2Spec(threshold=0.7, n_bins=5, penalty="l2", C=1.0, biomarker="ER")
    model = fit_stage2(slides, labels, spec)
    p = model.predict_proba(slides)
    assert p.shape == (20,) and np.all((p > 0) & (p < 1))
    assert _auc(labels, p) == 1.0
    assert model.feature_names[0] == "ratio" and model.coef[0] > 0
    assert model.coef[model.feature_names.index("neg_hist_4")] < 0  # many confident negatives
    assert model.training == {"n_slides": 20, "n_positive": 10, "n_negative": 10}
    # our own predict equals scikit-learn's on the same standardised features
    x = (feature_matrix(slides, 0.7, 5) - model.scaler_mean) / model.scaler_scale
    clf = LogisticRegression(C=1.0, solver="liblinear", tol=1e-6, max_iter=10_000, intercept_scaling=100.0, random_state=0)
    clf.fit(x, labels)
    np.testing.assert_allclose(model.coef, clf.coef_[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, clf.predict_proba(x)[:, 1], rtol=0, atol=1e-12)


def test_fit_with_paper_defaults_is_deterministic():
    slides, labels = _synthetic_cohort(8, 6, seed=2)
    a = fit_stage2(slides, labels, paper_defaults("HER2"))
    b = fit_stage2(slides, labels, paper_defaults("HER2"))
    assert a.coef.shape == (15,)
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.predict_proba(slides), b.predict_proba(slides))


def test_json_round_trip(tmp_path):
    slides, labels = _synthetic_cohort(6, 6, seed=3)
    model = fit_stage2(slides, labels, Stage2Spec(0.6, 4, "l1", 0.5, "PR"))
    path = tmp_path / "results" / "cohort" / "stage2" / "PR" / "model.json"
    model.save_json(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "bcpath.erpr.stage2" and doc["biomarker"] == "PR"
    assert doc["feature_spec"]["threshold"] == 0.6 and doc["feature_spec"]["n_bins"] == 4
    assert doc["feature_spec"]["feature_names"] == feature_names(4)
    assert doc["hyperparameters"] == {"penalty": "l1", "C": 0.5}
    assert len(doc["coefficients"]) == len(doc["scaler"]["mean"]) == len(doc["scaler"]["scale"]) == 9
    assert {"numpy", "scikit-learn", "bcpath", "python"} <= set(doc["versions"])
    assert doc["solver"]["solver"] == "liblinear" and doc["solver"]["class_weight"] is None
    assert list(path.parent.iterdir()) == [path]  # atomic write left no temporary file

    loaded = Stage2Model.load_json(path)
    assert loaded.spec == model.spec
    new = [_rows((0.95, 0.01), (0.3, 0.6)), _rows((0.1, 0.85))]
    np.testing.assert_allclose(loaded.predict_proba(slides + new), model.predict_proba(slides + new), rtol=0, atol=1e-12)


def test_load_json_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(Stage2Error, match="not a stage-2 model"):
        Stage2Model.load_json(path)
    slides, labels = _synthetic_cohort(3, 3, seed=4)
    doc = fit_stage2(slides, labels, paper_defaults("ER")).to_dict()
    doc["coefficients"] = doc["coefficients"][:-1]
    with pytest.raises(Stage2Error, match="coefficients has shape"):
        Stage2Model.from_dict(doc)


# ----------------------------------------------------------------------------------------------
# Tuning

SMALL_GRID = Stage2Grid(thresholds=(0.5, 0.7), n_bins=(3, 5), penalties=("l1", "l2"), Cs=(0.1, 1.0))


def test_tune_on_eight_slides_picks_from_grid_and_is_deterministic(caplog):
    slides, labels = _synthetic_cohort(4, 4, seed=5, n_patches=30)
    with caplog.at_level(logging.WARNING, logger="bcpath.erpr.stage2"):
        spec, table = tune_stage2(slides, labels, "ER", grid=SMALL_GRID, folds=10, seed=0)
    assert "using 4-fold instead of 10-fold" in caplog.text
    assert isinstance(table, pd.DataFrame) and len(table) == 16
    assert list(table.columns) == ["threshold", "n_bins", "penalty", "C", "mean_auc", "std_auc", "n_folds", "rank", "selected"]
    assert (table["n_folds"] == 4).all() and table["selected"].sum() == 1
    assert sorted(table["rank"]) == list(range(1, 17))
    chosen = table[table["selected"]].iloc[0]
    assert spec == Stage2Spec(float(chosen["threshold"]), int(chosen["n_bins"]), chosen["penalty"], float(chosen["C"]), "ER")
    assert spec.threshold in SMALL_GRID.thresholds and spec.n_bins in SMALL_GRID.n_bins
    assert spec.penalty in SMALL_GRID.penalties and spec.C in SMALL_GRID.Cs
    assert chosen["mean_auc"] == table["mean_auc"].max()
    # ties go to the strongest regularisation
    assert spec.C == table.loc[table["mean_auc"] == table["mean_auc"].max(), "C"].min()

    spec2, table2 = tune_stage2(slides, labels, "ER", grid=SMALL_GRID, folds=10, seed=0)
    assert spec2 == spec
    pd.testing.assert_frame_equal(table2, table)


def test_tune_with_two_minority_slides_uses_two_folds():
    slides, labels = _synthetic_cohort(6, 2, seed=6, n_patches=30)
    grid = Stage2Grid(thresholds=(0.7,), n_bins=(5,), penalties=("l2",), Cs=(0.1, 1.0))
    spec, table = tune_stage2(slides, labels, "HER2", grid=grid)
    assert (table["n_folds"] == 2).all() and spec.biomarker == "HER2"


def test_tune_needs_two_slides_per_class():
    slides, labels = _synthetic_cohort(5, 1, seed=7, n_patches=10)
    with pytest.raises(Stage2Error, match="at least 2 slides of each class.*paper's hyperparameters"):
        tune_stage2(slides, labels, "ER", grid=SMALL_GRID)
    with pytest.raises(Stage2Error, match="folds >= 2"):
        tune_stage2(*_synthetic_cohort(3, 3, seed=7, n_patches=10), "ER", grid=SMALL_GRID, folds=1)
    with pytest.raises(Stage2Error, match="Cs is empty"):
        tune_stage2(*_synthetic_cohort(3, 3, seed=7, n_patches=10), "ER", grid=Stage2Grid(Cs=()))


# ----------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.zeros((4, 2)), r"expected shape \(N, 3\).*found shape \(4, 2\)"),
        (np.zeros(3), r"expected shape \(N, 3\)"),
        (np.full((2, 3), 1.5), r"must lie in \[0, 1\].*not logits"),
        (np.array([[-0.2, 0.6, 0.6]]), r"must lie in \[0, 1\]"),
        (np.array([[np.nan, 0.5, 0.5]]), "NaN or infinite"),
        ([["a", "b", "c"]], "not a numeric array"),
    ],
)
def test_bad_patch_predictions(probs, message):
    with pytest.raises(Stage2Error, match=message):
        slide_features(probs, 0.7, 5)


def test_bad_slides_and_labels():
    slides, labels = _synthetic_cohort(3, 3, seed=8, n_patches=10)
    spec = paper_defaults("ER")
    with pytest.raises(Stage2Error, match="slide 2: patch predictions: expected shape"):
        fit_stage2(slides[:2] + [np.zeros((5, 4))] + slides[3:], labels, spec)
    with pytest.raises(Stage2Error, match="one .* array per slide"):
        fit_stage2(slides[0], labels, spec)  # one slide's array instead of a list
    with pytest.raises(Stage2Error, match="no slides"):
        fit_stage2([], [], spec)
    with pytest.raises(Stage2Error, match="all 6 slides are positive; stage 2 needs both"):
        fit_stage2(slides, np.ones(6), spec)
    with pytest.raises(Stage2Error, match=r"expected shape \(6,\)"):
        fit_stage2(slides, labels[:5], spec)
    with pytest.raises(Stage2Error, match="0 \\(negative\\) or 1 \\(positive\\), found \\[2.0\\]"):
        fit_stage2(slides, np.array([0, 1, 2, 0, 1, 0]), spec)
    with pytest.raises(Stage2Error, match="missing"):
        fit_stage2(slides, np.array([0, 1, np.nan, 0, 1, 0]), spec)
    # booleans are fine, and Stage2Error is a ValueError for callers that catch those
    fit_stage2(slides, labels.astype(bool), spec)
    assert issubclass(Stage2Error, ValueError)


# ----------------------------------------------------------------------------------------------
# Helpers that replace scikit-learn calls in the tuning loop


def test_auc_and_standardisation_match_scikit_learn():
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(9)
    y = np.array([0, 1] * 10)
    score = np.round(rng.normal(size=20), 1)  # with ties
    assert _auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    x = np.column_stack([rng.normal(size=20) * 50, np.full(20, 0.1), rng.uniform(size=20)])
    mean, scale = _standardisation(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(scale, ref.scale_, rtol=1e-12)
    assert scale[1] == 1.0
