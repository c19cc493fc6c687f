"""Stage 2 of Gamble et al. 2021: slide-level ER/PR/HER2 status from patch predictions.

Stage 1 gives every patch of a slide three class probabilities, in the order
``(positive invasive carcinoma, negative invasive carcinoma, non-tumor)``: an ``(N, 3)`` array,
``p_pos = probs[:, 0]`` and ``p_neg = probs[:, 1]``. Stage 2 turns that array into ``2b + 1``
features and a logistic regression turns the features into P(slide is biomarker-positive).

Features for threshold ``t`` and ``b`` bins (:func:`slide_features`, names in
:func:`feature_names`):

1. ``ratio`` = ``n_pos / max(n_neg, 1)``, where ``n_pos`` = #patches with ``p_pos >= t`` and
   ``n_neg`` = #patches with ``p_neg >= t``. This *is* the paper's ``n_pos / n_neg`` wherever
   the paper's ratio is defined (``n_neg >= 1``); when no patch is confidently negative the
   denominator is floored at one patch, so the feature stays finite (at most N) and keeps its
   order: more positive patches never give a smaller ratio. Both counts 0 gives 0. We keep the
   paper's scale rather than a log-ratio so that a coefficient means what it meant in the paper.
2. ``pos_hist_0 .. pos_hist_{b-1}``: counts of ``p_pos`` in ``b`` evenly spaced bins on
   ``[0.1, 1]`` (:func:`bin_edges`); predictions below 0.1 are discarded. Bins are half-open
   ``[e_k, e_{k+1})`` except the last, which is closed, so ``p = 1.0`` falls in the last bin and
   ``p = 0.1`` in the first (as :func:`numpy.histogram`).
3. ``neg_hist_0 .. neg_hist_{b-1}``: the same for ``p_neg``.

Both histograms are divided by ``max(n_pos + n_neg, 1)``, the paper's ``n_pos + n_neg`` with
the same floor as the ratio: a slide without any patch at or above ``t`` gets its raw counts
(exactly what a slide with one such patch would get), so the feature moves continuously from
"one confident patch" to "none" instead of jumping to zero. The normalised histograms are
therefore not densities and can exceed 1. A slide with no patches at all (``(0, 3)``) gets all
zeros.

Model (:func:`fit_stage2`): features are standardised (z-scores; the scaler's mean and scale
are saved with the model) because one C penalises all coefficients alike, and the ratio lives on
a scale of tens to hundreds while the histograms live near 0-1; unscaled, L1 would keep or drop
features by their units rather than by their use. Then
:class:`sklearn.linear_model.LogisticRegression` with the ``liblinear`` solver: it fits both L1
and L2 to a tight tolerance in milliseconds, also on the small, often perfectly separable
cohorts where ``saga`` ran out of iterations, and it is deterministic (``random_state`` fixed).
liblinear penalises the intercept like a coefficient; ``intercept_scaling=100`` makes that
penalty at least 100x weaker, so in practice the intercept is free. ``class_weight=None``: the paper does
not mention class weights, so we keep plain maximum likelihood, which leaves the probabilities
calibrated to the training prevalence; the paper's metric (AUC) is a ranking metric.

Hyperparameters: :func:`paper_defaults` (t = 0.7; b = 5 for ER and PR, 7 for HER2; L1;
C = 0.077 / 0.045 / 0.024), or :func:`tune_stage2`: stratified k-fold cross-validation, mean
fold AUC, over a grid of t, b, penalty and C.

Models are saved as JSON (:meth:`Stage2Model.save_json`), never pickles; the results layout is
``results/cohort/stage2/{biomarker}/model.json``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from bcpath.errors import BcpathError
from bcpath.io import write_json
from bcpath.labels import BIOMARKERS

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

CLASS_ORDER: tuple[str, str, str] = (
    "positive invasive carcinoma",
    "negative invasive carcinoma",
    "non-tumor",
)
HIST_LOW = 0.1
"""Patch probabilities below this are discarded from the histograms (paper)."""
HIST_HIGH = 1.0
PROB_TOLERANCE = 1e-6
"""Probabilities this far outside [0, 1] (float32 softmax rounding) are clipped, not rejected."""

PAPER_THRESHOLD = 0.7
PAPER_N_BINS: dict[str, int] = {"ER": 5, "PR": 5, "HER2": 7}
PAPER_C: dict[str, float] = {"ER": 0.077, "PR": 0.045, "HER2": 0.024}

SOLVER = "liblinear"
SOLVER_TOL = 1e-6
INTERCEPT_SCALING = 100.0
SOLVER_MAX_ITER = 10_000
CLASS_WEIGHT = None

MODEL_FORMAT = "bcpath.erpr.stage2"
MODEL_FORMAT_VERSION = 1

Penalty = Literal["l1", "l2"]


class Stage2Error(BcpathError, ValueError):
    """Bad input to stage 2: patch predictions, labels, hyperparameters or a model file."""


# --------------------------------------------------------------------------------------------
# Features


def bin_edges(n_bins: int) -> FloatArray:
    """The ``n_bins + 1`` evenly spaced histogram edges on ``[0.1, 1]`` (first 0.1, last 1.0)."""
    _check_n_bins(n_bins)
    return np.linspace(HIST_LOW, HIST_HIGH, n_bins + 1)


def feature_names(n_bins: int) -> list[str]:
    """Names of the ``2 * n_bins + 1`` features, in :func:`slide_features` order."""
    _check_n_bins(n_bins)
    return (
        ["ratio"]
        + [f"pos_hist_{k}" for k in range(n_bins)]
        + [f"neg_hist_{k}" for k in range(n_bins)]
    )


def slide_features(probs: npt.ArrayLike, threshold: float, n_bins: int) -> FloatArray:
    """Stage-2 features of one slide (definitions and zero cases in the module docstring).

    Args:
        probs: (N, 3) patch class probabilities in [0, 1], columns (positive invasive carcinoma,
            negative invasive carcinoma, non-tumor). N may be 0.
        threshold: t in (0, 1]; a patch counts as positive when ``p_pos >= t``, as negative
            when ``p_neg >= t``.
        n_bins: b >= 1, histogram bins on [0.1, 1].

    Returns:
        (2b + 1,) float64: ratio, b positive-histogram values, b negative-histogram values.
    """
    _check_threshold(threshold)
    _check_n_bins(n_bins)
    p = _validate_probs(probs)
    return _features(p, threshold, n_bins)


def feature_matrix(slide_probs: Sequence[npt.ArrayLike], threshold: float, n_bins: int) -> FloatArray:
    """(n_slides, 2b + 1) float64: :func:`slide_features` of every slide, one row each."""
    _check_threshold(threshold)
    _check_n_bins(n_bins)
    probs = _validate_slides(slide_probs)
    return _feature_matrix(probs, threshold, n_bins)


def _features(p: FloatArray, threshold: float, n_bins: int) -> FloatArray:
    p_pos, p_neg = p[:, 0], p[:, 1]
    n_pos = int(np.count_nonzero(p_pos >= threshold))
    n_neg = int(np.count_nonzero(p_neg >= threshold))
    ratio = n_pos / max(n_neg, 1)
    norm = max(n_pos + n_neg, 1)
    edges = bin_edges(n_bins)
    pos_hist = _bin_counts(p_pos, edges) / norm
    neg_hist = _bin_counts(p_neg, edges) / norm
    return np.concatenate([[ratio], pos_hist, neg_hist]).astype(np.float64)


def _bin_counts(values: FloatArray, edges: FloatArray) -> FloatArray:
    n_bins = len(edges) - 1
    kept = values[values >= edges[0]]  # below 0.1: discarded
    # Half-open bins [e_k, e_k+1); the last bin also takes its right edge (1.0).
    index = np.minimum(np.searchsorted(edges, kept, side="right") - 1, n_bins - 1)
    return np.bincount(index, minlength=n_bins).astype(np.float64)


def _feature_matrix(probs: list[FloatArray], threshold: float, n_bins: int) -> FloatArray:
    return np.stack([_features(p, threshold, n_bins) for p in probs])


# --------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class Stage2Spec:
    """Stage-2 hyperparameters for one biomarker.

    Attributes:
        threshold: t in (0, 1] for counting positive / negative patches.
        n_bins: b >= 1 histogram bins on [0.1, 1].
        penalty: "l1" or "l2".
        C: inverse regularisation strength (scikit-learn's C), > 0.
        biomarker: "ER", "PR" or "HER2".
    """

    threshold: float
    n_bins: int
    penalty: Penalty
    C: float
    biomarker: str

    def __post_init__(self) -> None:
        _check_biomarker(self.biomarker)
        _check_threshold(self.threshold)
        _check_n_bins(self.n_bins)
        if self.penalty not in ("l1", "l2"):
            raise Stage2Error(f"stage 2 penalty must be 'l1' or 'l2', found {self.penalty!r}")
        if isinstance(self.C, bool) or not isinstance(self.C, int | float) or not (math.isfinite(self.C) and self.C > 0):
            raise Stage2Error(f"stage 2 C must be a positive finite number, found {self.C!r}")


def paper_defaults(biomarker: str) -> Stage2Spec:
    """The paper's hyperparameters: t = 0.7; b = 5 (ER, PR) or 7 (HER2); L1; C = 0.077 (ER),
    0.045 (PR), 0.024 (HER2)."""
    _check_biomarker(biomarker)
    return Stage2Spec(
        threshold=PAPER_THRESHOLD,
        n_bins=PAPER_N_BINS[biomarker],
        penalty="l1",
        C=PAPER_C[biomarker],
        biomarker=biomarker,
    )


@dataclass(frozen=True)
class Stage2Grid:
    """The candidates :func:`tune_stage2` tries: every combination of the four tuples."""

    thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    n_bins: tuple[int, ...] = (3, 5, 7, 10)
    penalties: tuple[Penalty, ...] = ("l1", "l2")
    Cs: tuple[float, ...] = (0.01, 0.024, 0.045, 0.077, 0.1, 0.3, 1.0, 3.0, 10.0)

    def specs(self, biomarker: str) -> list[Stage2Spec]:
        """All candidate specs, in grid order (thresholds, then bins, penalties, Cs)."""
        for name in ("thresholds", "n_bins", "penalties", "Cs"):
            if len(getattr(self, name)) == 0:
                raise Stage2Error(f"stage 2 tuning grid: {name} is empty; give at least one value")
        return [
            Stage2Spec(threshold=float(t), n_bins=int(b), penalty=pen, C=float(c), biomarker=biomarker)
            for t in self.thresholds
            for b in self.n_bins
            for pen in self.penalties
            for c in self.Cs
        ]


DEFAULT_GRID = Stage2Grid()


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class Stage2Model:
    """A fitted stage-2 model: features -> standardisation -> logistic regression.

    Attributes:
        spec: the hyperparameters.
        coef: (2b + 1,) coefficients on the standardised features, :func:`feature_names` order.
        intercept: the logistic regression intercept.
        scaler_mean: (2b + 1,) feature means on the training slides.
        scaler_scale: (2b + 1,) feature standard deviations (1 where a feature was constant).
        solver: the scikit-learn settings used to fit (solver, tol, max_iter, class_weight, ...).
        training: counts of training slides (``n_slides``, ``n_positive``, ``n_negative``).
        versions: library versions of the fit.
    """

    spec: Stage2Spec
    coef: FloatArray
    intercept: float
    scaler_mean: FloatArray
    scaler_scale: FloatArray
    solver: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.spec.n_bins)

    def features(self, slide_probs: Sequence[npt.ArrayLike]) -> FloatArray:
        """(n_slides, 2b + 1) unscaled features of ``slide_probs`` under this model's spec."""
        return feature_matrix(slide_probs, self.spec.threshold, self.spec.n_bins)

    def decision_function(self, slide_probs: Sequence[npt.ArrayLike]) -> FloatArray:
        """(n_slides,) log-odds of being biomarker-positive."""
        return self._decision(self.features(slide_probs))

    def predict_proba(self, slide_probs: Sequence[npt.ArrayLike]) -> FloatArray:
        """(n_slides,) float64 P(biomarker-positive) for each slide's (N, 3) patch predictions."""
        return _expit(self.decision_function(slide_probs))

    def _decision(self, x: FloatArray) -> FloatArray:
        z: FloatArray = ((x - self.scaler_mean) / self.scaler_scale) @ self.coef + self.intercept
        return z

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`save_json` writes."""
        names = self.feature_names
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "biomarker": self.spec.biomarker,
            "feature_spec": {
                "class_order": list(CLASS_ORDER),
                "threshold": self.spec.threshold,
                "n_bins": self.spec.n_bins,
                "bin_edges": [float(e) for e in bin_edges(self.spec.n_bins)],
                "discard_below": HIST_LOW,
                "ratio": "n_pos / max(n_neg, 1); n_pos = #(p_pos >= threshold), n_neg = #(p_neg >= threshold)",
                "histograms": "counts of p_pos (then p_neg) per bin, p < 0.1 discarded, last bin closed, divided by max(n_pos + n_neg, 1)",
                "feature_names": names,
            },
            "hyperparameters": {"penalty": self.spec.penalty, "C": self.spec.C},
            "solver": self.solver,
            "scaler": {
                "mean": [float(v) for v in self.scaler_mean],
                "scale": [float(v) for v in self.scaler_scale],
            },
            "coefficients": [float(v) for v in self.coef],
            "intercept": float(self.intercept),
            "training": self.training,
            "versions": self.versions,
        }

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the model as JSON, atomically (e.g. ``results/cohort/stage2/ER/model.json``)."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "model") -> Stage2Model:
        """Rebuild a model from :meth:`to_dict` output; ``source`` names it in errors."""
        if doc.get("format") != MODEL_FORMAT:
            raise Stage2Error(
                f"{source}: not a stage-2 model (format {doc.get('format')!r}, expected {MODEL_FORMAT!r}); "
                "pass a model.json written by bcpath.erpr.stage2"
            )
        if doc.get("format_version") != MODEL_FORMAT_VERSION:
            raise Stage2Error(
                f"{source}: stage-2 model format version {doc.get('format_version')!r}, this bcpath reads "
                f"{MODEL_FORMAT_VERSION}; refit the model with this bcpath"
            )
        try:
            fs = doc["feature_spec"]
            hp = doc["hyperparameters"]
            spec = Stage2Spec(
                threshold=float(fs["threshold"]),
                n_bins=int(fs["n_bins"]),
                penalty=hp["penalty"],
                C=float(hp["C"]),
                biomarker=doc["biomarker"],
            )
            coef = np.asarray(doc["coefficients"], dtype=np.float64)
            mean = np.asarray(doc["scaler"]["mean"], dtype=np.float64)
            scale = np.asarray(doc["scaler"]["scale"], dtype=np.float64)
            intercept = float(doc["intercept"])
        except (KeyError, TypeError) as exc:
            raise Stage2Error(f"{source}: stage-2 model is missing or mangles {exc}; refit the model") from exc
        n_features = 2 * spec.n_bins + 1
        for name, arr in (("coefficients", coef), ("scaler mean", mean), ("scaler scale", scale)):
            if arr.shape != (n_features,):
                raise Stage2Error(
                    f"{source}: {name} has shape {arr.shape}, expected ({n_features},) for n_bins={spec.n_bins}; "
                    "the file is inconsistent, refit the model"
                )
        if fs.get("feature_names", feature_names(spec.n_bins)) != feature_names(spec.n_bins):
            raise Stage2Error(f"{source}: feature names differ from this bcpath's stage-2 features; refit the model")
        return cls(
            spec=spec,
            coef=coef,
            intercept=intercept,
            scaler_mean=mean,
            scaler_scale=scale,
            solver=dict(doc.get("solver", {})),
            training=dict(doc.get("training", {})),
            versions=dict(doc.get("versions", {})),
        )

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> Stage2Model:
        """Read a model written by :meth:`save_json`."""
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return cls.from_dict(doc, source=str(path))


def fit_stage2(
    slide_probs: Sequence[npt.ArrayLike],
    labels: npt.ArrayLike,
    spec: Stage2Spec,
    random_state: int = 0,
) -> Stage2Model:
    """Fit the stage-2 logistic regression on training slides.

    Args:
        slide_probs: one (N_i, 3) patch-probability array per slide (class order in the module
            docstring).
        labels: (n_slides,) 0/1 (or bool) biomarker status; both classes must be present.
        spec: hyperparameters (:func:`paper_defaults` or :func:`tune_stage2`).
        random_state: seed of liblinear's coordinate order.

    Returns:
        The fitted :class:`Stage2Model`.
    """
    probs = _validate_slides(slide_probs)
    y = _validate_labels(labels, len(probs))
    x = _feature_matrix(probs, spec.threshold, spec.n_bins)
    mean, scale, coef, intercept = _fit_arrays(x, y, spec, random_state)
    return Stage2Model(
        spec=spec,
        coef=coef,
        intercept=intercept,
        scaler_mean=mean,
        scaler_scale=scale,
        solver=_solver_settings(random_state),
        training={
            "n_slides": int(len(y)),
            "n_positive": int(y.sum()),
            "n_negative": int(len(y) - y.sum()),
        },
        versions=_versions(),
    )


def _fit_arrays(
    x: FloatArray, y: npt.NDArray[np.int64], spec: Stage2Spec, random_state: int
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    from sklearn.exceptions import ConvergenceWarning

    mean, scale = _standardisation(x)
    clf = _logistic_regression(spec, random_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit((x - mean) / scale, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning(
            "stage 2 %s (t=%s, b=%s, %s, C=%s): liblinear did not converge in %d iterations; "
            "coefficients may be approximate",
            spec.biomarker, spec.threshold, spec.n_bins, spec.penalty, spec.C, SOLVER_MAX_ITER,
        )
    return mean, scale, np.asarray(clf.coef_[0], dtype=np.float64), float(clf.intercept_[0])


def _standardisation(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Column means and standard deviations (ddof 0), scale 1 for constant columns.

    Same numbers as :class:`sklearn.preprocessing.StandardScaler`, including its test for
    "constant up to rounding", without its per-call validation cost (tuning fits thousands).
    """
    n = x.shape[0]
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    return mean.astype(np.float64), scale.astype(np.float64)


def _auc(y: npt.NDArray[np.int64], score: FloatArray) -> float:
    """ROC AUC (Mann-Whitney, ties count one half); equals sklearn's roc_auc_score."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@functools.cache
def _uses_l1_ratio() -> bool:
    # scikit-learn 1.8 deprecated ``penalty`` for ``l1_ratio`` (removed in 1.10); older
    # releases only read l1_ratio for elastic net.
    from sklearn.linear_model import LogisticRegression

    params = inspect.signature(LogisticRegression).parameters
    return "penalty" not in params or params["penalty"].default == "deprecated"


def _solver_kwargs(random_state: int) -> dict[str, Any]:
    """The fixed LogisticRegression settings (also recorded in the model JSON)."""
    return {
        "solver": SOLVER,
        "tol": SOLVER_TOL,
        "max_iter": SOLVER_MAX_ITER,
        "class_weight": CLASS_WEIGHT,
        "intercept_scaling": INTERCEPT_SCALING,
        "random_state": random_state,
    }


def _logistic_regression(spec: Stage2Spec, random_state: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    kwargs: dict[str, Any] = {"C": spec.C, **_solver_kwargs(random_state)}
    if _uses_l1_ratio():
        kwargs["l1_ratio"] = 1.0 if spec.penalty == "l1" else 0.0
    else:
        kwargs["penalty"] = spec.penalty
    return LogisticRegression(**kwargs)


def _solver_settings(random_state: int) -> dict[str, Any]:
    return {"library": "scikit-learn LogisticRegression", **_solver_kwargs(random_state), "standardised": True}


def _versions() -> dict[str, str]:
    import sklearn

    import bcpath

    return {
        "bcpath": bcpath.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _expit(z: FloatArray) -> FloatArray:
    from scipy.special import expit

    out: FloatArray = np.asarray(expit(z), dtype=np.float64)
    return out


# --------------------------------------------------------------------------------------------
# Tuning


def tune_stage2(
    slide_probs: Sequence[npt.ArrayLike],
    labels: npt.ArrayLike,
    biomarker: str,
    grid: Stage2Grid = DEFAULT_GRID,
    folds: int = 10,
    seed: int = 0,
) -> tuple[Stage2Spec, pd.DataFrame]:
    """Choose t, b, penalty and C by stratified k-fold cross-validation (mean fold AUC).

    Use the train + tune slides. Every candidate sees the same folds; the scaler is fit on each
    training fold only. With fewer than ``folds`` slides in the minority class, the number of
    folds drops to that count (logged as a warning) so every held-out fold holds both classes.
    Ties in mean AUC (within 1e-12) go to the smaller C (stronger regularisation), then L1, then
    the threshold and bin count closest to the paper's. Deterministic for a given ``seed``.

    Args:
        slide_probs: one (N_i, 3) patch-probability array per slide.
        labels: (n_slides,) 0/1 biomarker status; at least 2 slides of each class.
        biomarker: "ER", "PR" or "HER2".
        grid: the candidates (:class:`Stage2Grid`).
        folds: requested folds (the paper: 10), >= 2.
        seed: seed of the fold split and the solver.

    Returns:
        The chosen :class:`Stage2Spec` and a table with one row per candidate, in grid order:
        threshold, n_bins, penalty, C, mean_auc, std_auc, n_folds, rank (1 = chosen), selected.
    """
    from sklearn.model_selection import StratifiedKFold

    _check_biomarker(biomarker)
    probs = _validate_slides(slide_probs)
    y = _validate_labels(labels, len(probs))
    specs = grid.specs(biomarker)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise Stage2Error(f"stage 2 tuning needs folds >= 2, found {folds!r}")
    n_minority = int(min(y.sum(), len(y) - y.sum()))
    if n_minority < 2:
        raise Stage2Error(
            f"stage 2 {biomarker}: cross-validation needs at least 2 slides of each class, found "
            f"{int(y.sum())} positive and {int(len(y) - y.sum())} negative; add labelled slides or "
            "turn tuning off to use the paper's hyperparameters"
        )
    n_splits = min(folds, n_minority)
    if n_splits < folds:
        log.warning(
            "stage 2 %s: only %d slides in the minority class; using %d-fold instead of %d-fold "
            "cross-validation",
            biomarker, n_minority, n_splits, folds,
        )
    splits = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))

    rows: list[dict[str, Any]] = []
    features: dict[tuple[float, int], FloatArray] = {}
    for spec in specs:
        key = (spec.threshold, spec.n_bins)
        if key not in features:
            features[key] = _feature_matrix(probs, spec.threshold, spec.n_bins)
        x = features[key]
        aucs = []
        for train, test in splits:
            mean, scale, coef, intercept = _fit_arrays(x[train], y[train], spec, seed)
            score = ((x[test] - mean) / scale) @ coef + intercept
            aucs.append(_auc(y[test], score))
        rows.append(
            {
                "threshold": spec.threshold,
                "n_bins": spec.n_bins,
                "penalty": spec.penalty,
                "C": spec.C,
                "mean_auc": float(np.mean(aucs)),
                "std_auc": float(np.std(aucs)),
                "n_folds": n_splits,
            }
        )

    paper = paper_defaults(biomarker)

    def order(i: int) -> tuple[float, float, int, float, int, int]:
        r = rows[i]
        return (
            -round(r["mean_auc"], 12),
            r["C"],
            0 if r["penalty"] == "l1" else 1,
            abs(r["threshold"] - paper.threshold),
            abs(r["n_bins"] - paper.n_bins),
            i,
        )

    ranked = sorted(range(len(rows)), key=order)
    table = pd.DataFrame(rows)
    table["rank"] = 0
    table.loc[ranked, "rank"] = np.arange(1, len(ranked) + 1)
    table["selected"] = table["rank"] == 1
    best = specs[ranked[0]]
    log.info(
        "stage 2 %s: chose t=%s, b=%d, %s, C=%s (mean AUC %.3f over %d folds, %d candidates)",
        biomarker, best.threshold, best.n_bins, best.penalty, best.C,
        rows[ranked[0]]["mean_auc"], n_splits, len(specs),
    )
    return best, table


# --------------------------------------------------------------------------------------------
# Validation


def _check_biomarker(biomarker: object) -> None:
    if biomarker not in BIOMARKERS:
        raise Stage2Error(f"stage 2 biomarker must be one of {', '.join(BIOMARKERS)}, found {biomarker!r}")


def _check_threshold(threshold: object) -> None:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float | np.floating)
        or not (0.0 < float(threshold) <= 1.0)
    ):
        raise Stage2Error(f"stage 2 threshold t must be a number in (0, 1], found {threshold!r}")


def _check_n_bins(n_bins: object) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or int(n_bins) < 1:
        raise Stage2Error(f"stage 2 n_bins must be an integer >= 1, found {n_bins!r}")


def _validate_probs(probs: npt.ArrayLike, where: str = "patch predictions") -> FloatArray:
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Stage2Error(f"{where}: not a numeric array ({exc}); pass an (N, 3) float array") from exc
    if p.ndim != 2 or p.shape[1] != 3:
        raise Stage2Error(
            f"{where}: expected shape (N, 3) with columns (positive invasive carcinoma, negative invasive "
            f"carcinoma, non-tumor), found shape {p.shape}; pass stage 1's three class probabilities per patch"
        )
    if not np.all(np.isfinite(p)):
        raise Stage2Error(f"{where}: {int(np.size(p) - np.count_nonzero(np.isfinite(p)))} values are NaN or infinite; "
                          "re-run stage 1 on this slide")
    if p.size and (p.min() < -PROB_TOLERANCE or p.max() > 1.0 + PROB_TOLERANCE):
        raise Stage2Error(
            f"{where}: probabilities must lie in [0, 1], found values in [{p.min():.6g}, {p.max():.6g}]; "
            "pass softmax outputs, not logits"
        )
    clipped: FloatArray = np.clip(p, 0.0, 1.0)
    return clipped


def _validate_slides(slide_probs: Sequence[npt.ArrayLike]) -> list[FloatArray]:
    if isinstance(slide_probs, np.ndarray) and slide_probs.ndim == 2:
        raise Stage2Error(
            f"slide_probs: found one {slide_probs.shape} array; pass a list with one (N, 3) array per slide"
        )
    slides = list(slide_probs)
    if not slides:
        raise Stage2Error("slide_probs: no slides; pass a list with one (N, 3) array per slide")
    return [_validate_probs(p, where=f"slide {i}: patch predictions") for i, p in enumerate(slides)]


def _validate_labels(labels: npt.ArrayLike, n_slides: int) -> npt.NDArray[np.int64]:
    raw = np.asarray(labels)
    if raw.ndim != 1 or raw.shape[0] != n_slides:
        raise Stage2Error(f"labels: expected shape ({n_slides},), one per slide, found {raw.shape}")
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise Stage2Error(f"labels: expected 0/1 values, found {raw.dtype} ({exc})") from exc
    if np.any(np.isnan(values)):
        raise Stage2Error("labels: some are missing (NaN); drop slides without a status before stage 2")
    bad = ~np.isin(values, (0.0, 1.0))
    if np.any(bad):
        raise Stage2Error(
            f"labels: expected 0 (negative) or 1 (positive), found {sorted(set(values[bad].tolist()))[:5]}"
        )
    y = values.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise Stage2Error(
            f"labels: all {n_slides} slides are {'positive' if y[0] == 1 else 'negative'}; stage 2 needs "
            "both positive and negative slides to fit"
        )
    return y


__all__ = [
    "CLASS_ORDER",
    "DEFAULT_GRID",
    "Stage2Error",
    "Stage2Grid",
    "Stage2Model",
    "Stage2Spec",
    "bin_edges",
    "feature_matrix",
    "feature_names",
    "fit_stage2",
    "paper_defaults",
    "slide_features",
    "tune_stage2",
]

