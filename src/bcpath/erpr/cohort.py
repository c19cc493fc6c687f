"""ER/PR/HER2 across the cohort: registry models, heatmap rendering, stage-2 training and
evaluation. The rules of rules/erpr.smk call these from :mod:`bcpath.steps.erpr`; tests and the
CLI call them directly.

Files (DESIGN.md):

- ``results/models/{model}/best.pt, train.json, log.csv, patches.csv``: a trained stage-1 model.
- ``results/slides/{slide}/predictions/{model}.parquet``: patch probabilities.
- ``results/slides/{slide}/heatmaps/{model}.zarr, .png, .geojson``.
- ``results/cohort/stage2/{biomarker}/model.json, tuning.csv``: the fitted stage-2 model.
- ``results/cohort/stage2/{biomarker}/predictions.csv, evaluation.json, roc.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)

STATUS_VALUES = {"positive": 1, "negative": 0}
"""Sample-sheet biomarker status → stage-2 label."""


# --------------------------------------------------------------------------------------------
# Model loading


def model_spec(registry_path: str | os.PathLike[str], model_id: str) -> Any:
    """The registry entry ``model_id``; a clear error naming the registry when it is absent."""
    from bcpath.models.registry import load_registry

    registry = load_registry(registry_path)
    if model_id not in registry:
        raise BcpathError(
            f"model {model_id} is not in the model registry {registry_path} (entries: "
            f"{', '.join(registry)}); add it there or fix erpr.models in config.yaml"
        )
    return registry[model_id]


def load_stage1_model(registry_path: str | os.PathLike[str], model_id: str, weights: str | os.PathLike[str], train_json: str | None = None) -> tuple[Any, Any]:
    """Build a registry model and load its weights (sha256-checked).

    Args:
        registry_path: models/registry.yaml.
        model_id: the entry.
        weights: the weights file: the registry's own (checked against the registry sha256), or
            one a training rule wrote (checked against ``train_json``'s sha256).
        train_json: the training rule's train.json when ``weights`` came from it.

    Returns:
        (model in eval mode, ModelSpec).
    """
    from bcpath.models.registry import build_model, load_weights_file

    spec = model_spec(registry_path, model_id)
    if train_json:
        expected = json.loads(Path(train_json).read_text())["result"]["sha256"]
        fix = f"re-run the training rule (`{spec.training_command}`)"
    else:
        if spec.sha256 is None:
            raise BcpathError(f"model {model_id}: the registry lists no weights; run `{spec.training_command}`")
        expected = spec.sha256
        fix = f"re-run `{spec.training_command}` or update weights/sha256 in {registry_path}"
    model = build_model(spec)
    return load_weights_file(model, spec, weights, expected, fix), spec


# --------------------------------------------------------------------------------------------
# Heatmaps


def render_heatmaps(
    predictions_path: str | os.PathLike[str],
    thumbnail_path: str | os.PathLike[str],
    thumbnail_mpp: float,
    level0_mpp: float,
    out_zarr: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    out_geojson: str | os.PathLike[str],
    geojson_threshold: float = 0.5,
) -> dict[str, Any]:
    """Heatmap Zarr, overlay PNG and GeoJSON of one slide's predictions.

    The PNG is Gamble et al.'s Fig. 3 view: p(positive) blue → red per stride cell over the
    slide thumbnail's pixel grid, black where no tissue patch. The GeoJSON holds one QuPath
    annotation per 4-connected region with p ≥ ``geojson_threshold`` of each tumor class
    (positive and negative; non-tumor regions are left out).

    Returns:
        Summary: number of patches and of GeoJSON regions per class.
    """
    import cv2

    from bcpath import geojson
    from bcpath.erpr.heatmaps import (
        heatmap_arrays,
        heatmap_geojson_features,
        heatmap_overlay_png,
        write_heatmap_zarr,
        write_png,
    )
    from bcpath.erpr.inference import read_predictions

    table = read_predictions(predictions_path)
    meta = table.attrs.get("bcpath", {})
    stride, patch = int(meta["stride_px"]), int(meta["patch_px"])
    analysis_mpp = float(meta["mpp"])
    origin = (float(meta["origin_x0"]), float(meta["origin_y0"]))
    classes = list(meta["classes"])
    maps = heatmap_arrays(table, tuple(meta["image_shape"]), stride, patch)
    write_heatmap_zarr(out_zarr, maps, classes, stride, analysis_mpp, origin, level0_mpp, meta.get("model_id"), patch)

    bgr = cv2.imread(str(thumbnail_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BcpathError(f"cannot read the tissue thumbnail {thumbnail_path}; re-run detect_tissue for this slide")
    overlay = heatmap_overlay_png(
        bgr[..., ::-1], thumbnail_mpp, maps[0], stride * analysis_mpp,  # bgr[..., ::-1]: RGB view, no copy
        (origin[0] * level0_mpp, origin[1] * level0_mpp),
    )
    del bgr  # a thumbnail-sized buffer: free it before write_png makes its BGR copy
    write_png(out_png, overlay)

    cell_level0_px = stride * float(meta["level0_px_per_px"])
    features: list[dict[str, Any]] = []
    regions: dict[str, int] = {}
    for k, name in enumerate(classes[:2]):  # the two tumor classes
        found = heatmap_geojson_features(maps[k], geojson_threshold, name, cell_level0_px, origin)
        regions[name] = len(found)
        features.extend(found)
    geojson.write_geojson(out_geojson, features)
    return {"n_patches": int(len(table)), "regions": regions}


# --------------------------------------------------------------------------------------------
# Stage 2


def slide_status(samples: Any, biomarker: str) -> dict[str, int | None]:
    """slide_id → 1 (positive), 0 (negative) or None (not given) from a sample-sheet table."""
    from bcpath.cohort import optional_value

    if biomarker not in samples.columns:
        return {str(s): None for s in samples.index}
    return {str(s): STATUS_VALUES.get(optional_value(samples, s, biomarker)) for s in samples.index}


def _patch_probabilities(table: Any, predictions_path: str | os.PathLike[str]) -> np.ndarray:
    """(N, 3) float64 (p_pos, p_neg, p_non-tumor) of one slide's predictions table."""
    from bcpath.erpr.inference import _probability_columns_of

    columns = _probability_columns_of(table.columns)
    if len(columns) != 3:
        raise BcpathError(
            f"{predictions_path}: {len(columns)} class columns, stage 2 needs 3 (positive tumor, "
            "negative tumor, non-tumor); use a 3-class stage-1 model"
        )
    return table[columns].to_numpy(dtype=np.float64)


def slide_of(predictions_path: str | os.PathLike[str]) -> str:
    """The slide id of ``results/slides/{slide}/predictions/{model}.parquet``."""
    return Path(predictions_path).parent.parent.name


def _has_split(samples: Any) -> bool:
    from bcpath.cohort import optional_value

    return "split" in samples.columns and any(optional_value(samples, s, "split") for s in samples.index)


def train_stage2(
    predictions: Sequence[str],
    samples_path: str | os.PathLike[str],
    biomarker: str,
    out_model: str | os.PathLike[str],
    out_tuning: str | os.PathLike[str],
    tune: bool = True,
    folds: int = 10,
    seed: int = 0,
) -> Any:
    """Fit stage 2 on the train + tune slides that have a status for ``biomarker``.

    With ``tune``, t/b/penalty/C come from :func:`bcpath.erpr.stage2.tune_stage2` (stratified
    k-fold CV; folds drop to the minority-class count); when the cohort has fewer than 2 slides
    of a class, tuning is skipped with a warning and the paper's values are used (recorded in
    model.json under ``tuning``). Slides without status, or outside train/tune, are not used;
    when the sheet has no split column, every slide with a status is used (and the evaluation
    is then in-sample, which evaluation.json says).

    Returns:
        The fitted :class:`bcpath.erpr.stage2.Stage2Model`.

    Raises:
        BcpathError: no slide with a status, or a single class among them.
    """
    import pandas as pd

    from bcpath.cohort import optional_value, read_sample_sheet
    from bcpath.erpr.inference import read_predictions
    from bcpath.erpr.stage2 import fit_stage2, paper_defaults, tune_stage2
    from bcpath.io import atomic_path

    samples = read_sample_sheet(samples_path, check_files=False)
    status = slide_status(samples, biomarker)
    has_split = _has_split(samples)
    used_ids, probs, labels = [], [], []
    for path in predictions:
        slide = slide_of(path)
        if slide not in status or status[slide] is None:
            continue
        if has_split and optional_value(samples, slide, "split") not in ("train", "tune"):
            continue
        used_ids.append(slide)
        probs.append(_patch_probabilities(read_predictions(path), path))
        labels.append(status[slide])
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0 or y.min() == y.max():
        raise BcpathError(
            f"stage 2 {biomarker}: needs train/tune slides of both statuses, found "
            f"{int(y.sum())} positive and {int(len(y) - y.sum())} negative in {samples_path}; add "
            f"{biomarker} status (positive/negative) for more slides"
        )
    tuning: dict[str, Any] = {"tuned": False, "folds": None, "reason": "tuning off (erpr.stage2.tune: false)"}
    table = pd.DataFrame()
    spec = paper_defaults(biomarker)
    if tune:
        n_minority = int(min(y.sum(), len(y) - y.sum()))
        if n_minority >= 2:
            spec, table = tune_stage2(probs, y, biomarker, folds=folds, seed=seed)
            tuning = {"tuned": True, "folds": int(table["n_folds"].iloc[0]), "reason": None}
        else:
            tuning["reason"] = f"too few slides to cross-validate ({n_minority} in the minority class); paper defaults used"
            logger.warning("stage 2 %s: %s", biomarker, tuning["reason"])
    model = fit_stage2(probs, y, spec, random_state=seed)
    model.training.update({"slides": used_ids, "tuning": tuning, "in_sample_evaluation": not has_split})
    model.save_json(out_model)
    with atomic_path(out_tuning) as tmp:
        table.to_csv(tmp, index=False)
    logger.info(
        "stage 2 %s: %d slides (%d positive); t=%s b=%d %s C=%s",
        biomarker, len(y), int(y.sum()), spec.threshold, spec.n_bins, spec.penalty, spec.C,
    )
    return model


def evaluate_stage2(
    model_json: str | os.PathLike[str],
    predictions: Sequence[str],
    samples_path: str | os.PathLike[str],
    biomarker: str,
    out_csv: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Slide scores for every slide, and patch- and slide-level AUCs with bootstrap CIs.

    predictions.csv has one row per slide: slide_id, split, status (1/0/empty), n_patches,
    n_pos, n_neg (at the model's threshold), score (stage-2 P(positive)), flag
    (``no_tissue_patches`` when the slide has no patch: its score is the model's answer for
    all-zero features, kept so no slide silently disappears, but excluded from AUCs).

    evaluation.json: slide-level AUC over the test slides with a status (all such slides when
    the sheet has no split column: in-sample, flagged), and patch-level one-vs-all AUC of
    p(positive) over the patches of those slides whose centre lies in an annotated region
    (positive tumor vs negative tumor + non-tumor), each with a percentile bootstrap CI.
    """
    import pandas as pd

    from bcpath.cohort import optional_value, read_sample_sheet
    from bcpath.erpr.evaluation import auc_with_ci, label_patches, roc_png
    from bcpath.erpr.inference import read_predictions
    from bcpath.erpr.stage2 import Stage2Model, slide_features
    from bcpath.geojson import read_geojson
    from bcpath.io import atomic_path, json_ready, write_json

    model = Stage2Model.load_json(model_json)
    samples = read_sample_sheet(samples_path, check_files=False)
    status = slide_status(samples, biomarker)
    has_split = _has_split(samples)
    rows = []
    patch_labels: list[np.ndarray] = []
    patch_scores: list[np.ndarray] = []
    for path in predictions:
        slide = slide_of(path)
        table = read_predictions(path)
        probs = _patch_probabilities(table, path)
        split = optional_value(samples, slide, "split") if slide in samples.index else None
        feats = slide_features(probs, model.spec.threshold, model.spec.n_bins)
        rows.append(
            {
                "slide_id": slide,
                "split": split,
                "status": status.get(slide),
                "n_patches": int(len(probs)),
                "n_pos": int(np.count_nonzero(probs[:, 0] >= model.spec.threshold)),
                "n_neg": int(np.count_nonzero(probs[:, 1] >= model.spec.threshold)),
                "ratio": float(feats[0]),
                "score": float(model.predict_proba([probs])[0]),
                "flag": "no_tissue_patches" if len(probs) == 0 else "",
            }
        )
        annotations = optional_value(samples, slide, "annotations") if slide in samples.index else None
        evaluated = (split == "test") if has_split else True
        if evaluated and annotations and len(probs):
            meta = table.attrs.get("bcpath", {})
            side = float(meta["patch_px"]) * float(meta["level0_px_per_px"])
            labels = label_patches(read_geojson(annotations), biomarker, table["x0"], table["y0"], side)
            keep = labels >= 0
            patch_labels.append((labels[keep] == 0).astype(np.int64))
            patch_scores.append(probs[keep, 0])
    slides = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        slides.to_csv(tmp, index=False, float_format="%.6g")

    evaluated_slides = slides[(slides["split"] == "test") if has_split else slides["status"].notna()]
    evaluated_slides = evaluated_slides[evaluated_slides["status"].notna() & (evaluated_slides["flag"] == "")]
    slide_y = evaluated_slides["status"].astype(int).to_numpy()
    slide_s = evaluated_slides["score"].to_numpy(dtype=np.float64)
    patch_y = np.concatenate(patch_labels) if patch_labels else np.zeros(0, dtype=np.int64)
    patch_s = np.concatenate(patch_scores) if patch_scores else np.zeros(0)
    split_name = "test" if has_split else "all labelled slides (in-sample: the sheet has no split column)"
    report: dict[str, Any] = {
        "biomarker": biomarker,
        "evaluated_on": split_name,
        "slide_level": auc_with_ci(slide_y, slide_s, n_bootstrap, confidence, seed),
        "patch_level": auc_with_ci(patch_y, patch_s, n_bootstrap, confidence, seed),
        "slides": list(evaluated_slides["slide_id"]),
        "flagged_slides": list(slides.loc[slides["flag"] != "", "slide_id"]),
        "stage2": {
            "threshold": model.spec.threshold, "n_bins": model.spec.n_bins,
            "penalty": model.spec.penalty, "C": model.spec.C,
        },
        "bootstrap": {"resamples": n_bootstrap, "confidence": confidence, "seed": seed},
    }
    write_json(out_json, json_ready(report))
    roc_png(
        out_png, f"{biomarker} ({split_name.split(' ')[0]})",
        [("slides", slide_y, slide_s), ("annotated patches", patch_y, patch_s)],
    )
    logger.info(
        "%s: slide AUC %s (%d slides), patch AUC %s (%d patches)",
        biomarker, _fmt(report["slide_level"]), len(slide_y), _fmt(report["patch_level"]), len(patch_y),
    )
    return report


def _fmt(result: Mapping[str, Any]) -> str:
    value = result["auc"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    return f"{value:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}]"


