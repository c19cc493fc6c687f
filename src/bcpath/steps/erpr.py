"""Steps of rules/erpr.smk: ER/PR/HER2 stage-1 training, patch predictions, heatmaps, stage 2
and the interpretability reports. The work is in :mod:`bcpath.erpr`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)


def train_patch_classifier_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule train_patch_classifier: sample sheet + annotations → best.pt, train.json, log.csv."""
    from bcpath.erpr.cohort import model_spec
    from bcpath.erpr.training import TrainConfig, train_patch_classifier
    from bcpath.settings import from_params

    spec = model_spec(params.registry, params.model_id)
    pretrained = dict(params.training).get("pretrained")
    config = from_params(TrainConfig, params.training, threads=threads)
    result = train_patch_classifier(
        spec, input.samples, params.biomarker, Path(output.weights).parent, config,
        pretrained_path=pretrained, progress=True,
    )
    logger.info(
        "model %s (%s): best epoch %d of %d, tune loss %.4f, tune patch AUC %.3f; sha256 %s",
        spec.model_id, params.biomarker, result.best_epoch, result.epochs_run,
        result.best_tune_loss, result.best_tune_auc, result.sha256,
    )


def _per_model(paths: Sequence[str], model_ids: Sequence[str], what: str) -> dict[str, str]:
    """model_id → the path among ``paths`` named ``{model_id}`` + suffix (one per model)."""
    by_model: dict[str, str] = {}
    for path in paths:
        name = Path(path).name
        stem = name[: -len(".zarr")] if name.endswith(".zarr") else Path(path).stem
        by_model[stem] = str(path)
    missing = [m for m in model_ids if m not in by_model]
    if missing:
        raise BcpathError(f"{what}: no output path for model(s) {', '.join(missing)}")
    return by_model


def predict_patches_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule predict_patches (one job per slide): tiles.zarr + grid.parquet + tissue mask + the
    weights of every active stage-1 model → predictions/{model}.parquet for each model
    (patches whose centre is on the tissue mask), on one read of the tiles.

    Input ``weights_<k>`` (and ``train_json_<k>`` for weights a training rule wrote) belong to
    ``params.model_ids[k]``."""
    from bcpath.erpr.cohort import load_stage1_model
    from bcpath.erpr.inference import predict_slide_models, write_predictions
    from bcpath.tissue import mask_mpp_from_qc, read_mask

    model_ids = list(params.model_ids)
    models = [
        load_stage1_model(params.registry, model_id, input.get(f"weights_{k}"), input.get(f"train_json_{k}"))
        for k, model_id in enumerate(model_ids)
    ]
    mask_mpp = mask_mpp_from_qc(json.loads(Path(input.qc).read_text()))
    tables = predict_slide_models(
        models, input.tiles, input.grid, tissue_mask=read_mask(input.mask), mask_mpp=mask_mpp,
        stride_px=params.inference.get("stride_px"),
        batch_size=int(params.inference["batch_size"]),
        num_workers=params.inference.get("num_workers"),
        device=params.inference.get("device"),
        threads=threads,
        progress=True,
    )
    paths = _per_model(list(output.predictions), model_ids, "predict_patches")
    for model_id, table in zip(model_ids, tables, strict=True):
        write_predictions(table, paths[model_id])


def render_heatmaps_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule render_heatmaps (one job per slide): each model's predictions →
    heatmaps/{model}.zarr, .png, .geojson (outputs ``zarr_<k>``, ``png_<k>``, ``geojson_<k>``
    of ``params.model_ids[k]``)."""
    from bcpath.erpr.cohort import render_heatmaps

    info = json.loads(Path(input.info).read_text())
    from bcpath.tissue import mask_mpp_from_qc

    thumbnail_mpp = mask_mpp_from_qc(json.loads(Path(input.qc).read_text()))  # thumbnail.png's µm/px
    model_ids = list(params.model_ids)
    predictions = _per_model(list(input.predictions), model_ids, "render_heatmaps")
    for k, model_id in enumerate(model_ids):
        summary = render_heatmaps(
            predictions[model_id], input.thumbnail, float(thumbnail_mpp), float(info["mpp"]),
            output.get(f"zarr_{k}"), output.get(f"png_{k}"), output.get(f"geojson_{k}"),
            float(params.geojson_threshold),
        )
        logger.info("heatmaps %s: %d patches; regions above threshold: %s", model_id, summary["n_patches"], summary["regions"])


def train_stage2_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule train_stage2."""
    from bcpath.erpr.cohort import train_stage2

    train_stage2(
        list(input.predictions), input.samples, params.biomarker, output.model, output.tuning,
        tune=bool(params.stage2["tune"]), folds=int(params.stage2["folds"]), seed=int(params.stage2["seed"]),
    )


def evaluate_stage2_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule evaluate_stage2."""
    from bcpath.erpr.cohort import evaluate_stage2

    evaluate_stage2(
        input.model, list(input.predictions), input.samples, params.biomarker,
        output.predictions, output.evaluation, output.roc,
        n_bootstrap=int(params.evaluation["n_bootstrap"]), confidence=float(params.evaluation["confidence"]),
        seed=int(params.evaluation["seed"]),
    )


def _model(input: Any, params: Any) -> tuple[Any, Any]:
    from bcpath.erpr.cohort import load_stage1_model

    return load_stage1_model(params.registry, params.model_id, input.weights, input.get("train_json"))


def smoothgrad_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule interpret_smoothgrad."""
    from bcpath.engine import torch_threads
    from bcpath.erpr.interpret_reports import smoothgrad_report

    with torch_threads(threads):
        model, spec = _model(input, params)
        settings = params.interpret
        smoothgrad_report(model, spec, list(input.predictions), output.png, output.csv,
                          top_k=int(settings["top_k"]), n_samples=int(settings["smoothgrad_samples"]),
                          sigma=float(settings["smoothgrad_sigma"]), seed=int(settings["seed"]))


def cluster_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule interpret_clusters."""
    from bcpath.engine import torch_threads
    from bcpath.erpr.interpret_reports import cluster_report

    with torch_threads(threads):
        model, spec = _model(input, params)
        settings = params.interpret
        by_biomarker = {b: [p for p in input.predictions if Path(p).stem == m] for b, m in params.models.items()}
        cluster_report(model, spec, by_biomarker, params.embedding_biomarker, Path(output.hierarchy).parent,
                       n_clusters=int(settings["n_clusters"]), max_patches_per_slide=int(settings["max_patches_per_slide"]),
                       seed=int(settings["seed"]))


def tcav_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule interpret_tcav."""
    from bcpath.engine import torch_threads
    from bcpath.erpr.interpret_reports import tcav_report

    with torch_threads(threads):
        model, spec = _model(input, params)
        settings = params.interpret
        tcav_report(model, spec, list(input.predictions), dict(settings["concepts"]), output.tcav,
                    n_runs=int(settings["tcav_runs"]), n_random=int(settings["tcav_random_patches"]), seed=int(settings["seed"]))
