"""Slide-level proliferation models: 3-class grade and continuous proliferation score.

Shah et al. regress TUPAC16's two targets from the slide features: the mitotic-score grade
(1–3; here the sheet's ``grade``) and the RNA proliferation score (``proliferation``). Both are
scikit-learn linear models on standardised features, saved as JSON (coefficients, intercepts,
scaler, feature names; never a pickle):

- grade: multinomial logistic regression (L2), C chosen by 5-fold stratified CV on train + tune
  (folds drop to the smallest class count; with < 2 slides per grade the default C is used and
  the JSON says so);
- score: ridge regression, alpha chosen by 5-fold CV (mean squared error).

The candidate feature sets are ``counts`` (mitoses per mm², hotspot count, mitosis count: the
clinical measures), ``handcrafted`` (all of :mod:`bcpath.proliferation.features`) and
``handcrafted + bag of words``; CV picks one (its name is in the model JSON).

Evaluation on the test slides: accuracy, quadratic-weighted Cohen's kappa (TUPAC16's ranking
metric), micro-averaged one-vs-all AUC, macro F1; Spearman, Pearson and MSE for the score; each
with a percentile CI from ``n_bootstrap`` resamples of the test slides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

GRADES = (1, 2, 3)
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
ALPHA_GRID = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_C = 1.0
DEFAULT_ALPHA = 1.0


def _standardise(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-9] = 1.0
    return mean, scale


def _cv_splits(y: NDArray[Any], folds: int, stratify: bool, seed: int) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if stratify:
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def fit_grade_model(
    x: NDArray[np.float64], y: NDArray[np.int64], feature_names: Sequence[str], folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Multinomial logistic regression of grade on standardised features; JSON-ready model."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(int(c) for c in np.unique(y))
    counts = np.bincount(y)[classes]
    k = min(folds, int(counts.min())) if len(classes) > 1 else 0
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    note = ""
    scores: dict[float, float] = {}
    if len(classes) < 2:
        raise ValueError(f"grade model: the training slides hold one grade only ({classes}); give slides of at least two grades")
    if k >= 2:
        for c in C_GRID:
            losses = []
            for train, val in _cv_splits(y, k, True, seed):
                model = LogisticRegression(C=c, max_iter=2000).fit(z[train], y[train])
                proba = np.clip(model.predict_proba(z[val]), 1e-6, 1)
                index = {int(cl): i for i, cl in enumerate(model.classes_)}
                losses.append(-np.mean([math.log(proba[i, index[int(t)]]) if int(t) in index else math.log(1e-6) for i, t in enumerate(y[val])]))
            scores[c] = float(np.mean(losses))
        best_c = min(scores, key=lambda c: (scores[c], -c))
    else:
        best_c, k = DEFAULT_C, 0
        note = f"C = {DEFAULT_C} (default): fewer than 2 training slides in some grade, no cross-validation"
    model = LogisticRegression(C=best_c, max_iter=2000).fit(z, y)
    return {
        "kind": "logistic_regression", "classes": [int(c) for c in model.classes_], "features": list(feature_names),
        "mean": mean.tolist(), "scale": scale.tolist(), "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
        "C": best_c, "cv_folds": k, "cv_log_loss": {str(c): v for c, v in scores.items()}, "note": note,
    }


def fit_score_model(
    x: NDArray[np.float64], y: NDArray[np.float64], feature_names: Sequence[str], folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Ridge regression of the proliferation score on standardised features; JSON-ready model."""
    from sklearn.linear_model import Ridge

    mean, scale = _standardise(x)
    z = (x - mean) / scale
    k = min(folds, len(y))
    scores: dict[float, float] = {}
    note = ""
    if k >= 2:
        for a in ALPHA_GRID:
            errors = []
            for train, val in _cv_splits(y, k, False, seed):
                model = Ridge(alpha=a).fit(z[train], y[train])
                errors.append(float(np.mean((model.predict(z[val]) - y[val]) ** 2)))
            scores[a] = float(np.mean(errors))
        best = min(scores, key=lambda a: (scores[a], -a))
    else:
        best, k = DEFAULT_ALPHA, 0
        note = f"alpha = {DEFAULT_ALPHA} (default): fewer than 2 training slides"
    model = Ridge(alpha=best).fit(z, y)
    return {
        "kind": "ridge", "features": list(feature_names), "mean": mean.tolist(), "scale": scale.tolist(),
        "coef": np.asarray(model.coef_).tolist(), "intercept": float(model.intercept_), "alpha": best, "cv_folds": k,
        "cv_mse": {str(a): v for a, v in scores.items()}, "note": note,
    }


def _design(model: dict[str, Any], table: pd.DataFrame) -> NDArray[np.float64]:
    missing = [f for f in model["features"] if f not in table.columns]
    if missing:
        raise ValueError(f"proliferation model needs features {missing[:5]} that the feature table lacks; rerun the features step")
    x = table[model["features"]].to_numpy(dtype=np.float64)
    return (x - np.asarray(model["mean"])) / np.asarray(model["scale"])


def predict_grade(model: dict[str, Any], table: pd.DataFrame) -> NDArray[np.float64]:
    """(n, 3) probabilities of grades 1, 2, 3 (columns for grades absent in training are 0)."""
    z = _design(model, table)
    logits = z @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    if logits.shape[1] == 1:  # binary: sklearn stores one row for the second class
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    out = np.zeros((len(table), len(GRADES)))
    for i, c in enumerate(model["classes"]):
        out[:, GRADES.index(int(c))] = p[:, i]
    return out


def predict_score(model: dict[str, Any], table: pd.DataFrame) -> NDArray[np.float64]:
    """(n,) predicted proliferation score."""
    return _design(model, table) @ np.asarray(model["coef"]) + float(model["intercept"])


def choose_feature_set(
    candidates: dict[str, list[str]], table: pd.DataFrame, y: NDArray[Any], fit: Callable[..., dict[str, Any]], cv_key: str, seed: int
) -> tuple[str, dict[str, Any]]:
    """Fit on each candidate feature set; keep the lowest best CV error. Returns (name, model)."""
    best: tuple[float, str, dict[str, Any]] | None = None
    for name, columns in candidates.items():
        model = fit(table[columns].to_numpy(dtype=np.float64), y, columns, seed=seed)
        cv = min(model[cv_key].values()) if model[cv_key] else math.inf
        if best is None or cv < best[0] - 1e-9:
            best = (cv, name, model)
    assert best is not None
    best[2]["feature_set"] = best[1]
    return best[1], best[2]


def _bootstrap(metric: Callable[[NDArray[np.int64]], float], n: int, n_boot: int, seed: int, confidence: float) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        value = metric(rng.integers(0, n, n))
        if math.isfinite(value):
            values.append(value)
    if not values:
        return [math.nan, math.nan]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def evaluate(
    grade_true: NDArray[np.int64] | None,
    grade_proba: NDArray[np.float64] | None,
    score_true: NDArray[np.float64] | None,
    score_pred: NDArray[np.float64] | None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Test-slide metrics with bootstrap CIs (module doc). Either target may be None."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score
    from sklearn.preprocessing import label_binarize

    out: dict[str, Any] = {}

    def safe(f: Callable[[], float]) -> float:
        try:
            with np.errstate(all="ignore"):
                v = float(f())
            return v if math.isfinite(v) else math.nan
        except ValueError:
            return math.nan

    if grade_true is not None and grade_proba is not None and len(grade_true):
        pred = np.asarray(GRADES)[grade_proba.argmax(1)]
        onehot = label_binarize(grade_true, classes=list(GRADES))
        metrics: dict[str, Callable[[NDArray[np.int64]], float]] = {
            "accuracy": lambda i: float((pred[i] == grade_true[i]).mean()),
            "kappa_quadratic": lambda i: safe(lambda: cohen_kappa_score(grade_true[i], pred[i], weights="quadratic", labels=list(GRADES))),
            "auc_micro": lambda i: safe(lambda: roc_auc_score(onehot[i].ravel(), grade_proba[i].ravel())),
            "f1_macro": lambda i: safe(lambda: f1_score(grade_true[i], pred[i], average="macro", labels=sorted(set(grade_true[i].tolist())), zero_division=0)),
        }
        all_idx = np.arange(len(grade_true))
        out["grade"] = {
            name: {"value": fn(all_idx), "ci": _bootstrap(fn, len(all_idx), n_bootstrap, seed, confidence)} for name, fn in metrics.items()
        }
        out["grade"]["n"] = int(len(grade_true))
    if score_true is not None and score_pred is not None and len(score_true):
        reg: dict[str, Callable[[NDArray[np.int64]], float]] = {
            "spearman": lambda i: safe(lambda: spearmanr(score_true[i], score_pred[i])[0]),
            "pearson": lambda i: safe(lambda: pearsonr(score_true[i], score_pred[i])[0]) if len(set(score_true[i].tolist())) > 1 else math.nan,
            "mse": lambda i: float(np.mean((score_true[i] - score_pred[i]) ** 2)),
        }
        all_idx = np.arange(len(score_true))
        out["score"] = {name: {"value": fn(all_idx), "ci": _bootstrap(fn, len(all_idx), n_bootstrap, seed, confidence)} for name, fn in reg.items()}
        out["score"]["n"] = int(len(score_true))
    out["n_bootstrap"] = n_bootstrap
    out["confidence"] = confidence
    return out
