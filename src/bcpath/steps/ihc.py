"""Steps of rules/ihc.smk: TMA dearraying, core scoring, the core table, RAM-CNN training and
the cohort H-Score table. The work is in :mod:`bcpath.ihc`."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)


def open_ihc_slide(input: Any, params: Any) -> Any:
    """The rule's slide: a single-core image (PNG/JPEG, no info.json) opened by
    :func:`bcpath.wsi.open_slide` with the sheet's µm/px, else the WSI reopened from its info.json."""
    if getattr(params, "core_image", False):
        from bcpath.wsi import open_slide

        return open_slide(input.slide, params.slide_id, params.mpp)
    from bcpath.pipeline import open_from_info

    return open_from_info(input.info, input.slide)


def dearray_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule dearray_tma (a single-core image gives its one-row table)."""
    from bcpath.ihc.cores import core_image_table, core_mask, dearray_slide
    from bcpath.io import atomic_path

    slide = open_ihc_slide(input, params)
    if slide.reader == "image":
        cores = core_image_table(slide)
    else:
        mask_mpp = max(float(params.mask_mpp), slide.mpp)
        mask = core_mask(slide.thumbnail(mask_mpp))
        cores = dearray_slide(slide, mask, mask_mpp, params.ihc, params.core_map)
    logger.info("%s: %d cores found, %d grid positions empty", slide.slide_id, int((~cores.missing).sum()), int(cores.missing.sum()))
    with atomic_path(output.cores) as tmp:
        cores.to_parquet(tmp, index=False)


def score_tma_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule score_tma."""
    from bcpath.ihc.cores import score_tma_slide

    slide = open_ihc_slide(input, params)
    cores = pd.read_parquet(input.cores)
    score_tma_slide(
        slide, cores, params.ihc, params.annotations, output.scores, output.geojson, output.cores,
        min_blur_score=params.min_blur_score,
    )


def collect_cores_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule collect_ihc_cores: results/cohort/ihc/cores.csv."""
    from bcpath.ihc.cores import collect_cores
    from bcpath.io import atomic_path

    table = collect_cores(list(input.scores), dict(params.core_scores))
    with atomic_path(output.table) as tmp:
        table.to_csv(tmp, index=False)


def aggregate_hscore_step(input: Any, output: Any, **_: Any) -> None:
    """Rule aggregate_hscore: results/cohort/hscore.csv, agreement JSON and scatter plot."""
    from bcpath.ihc.cores import (
        build_hscore_table,
        h_score_agreement,
        ramcnn_predictions,
        scatter_png,
    )
    from bcpath.io import atomic_path, write_json

    cores = pd.read_csv(input.cores, dtype={"core_id": str, "slide_id": str, "flags": str, "npz": str})
    model = input.get("model") if hasattr(input, "get") else None
    cv = input.get("cv") if hasattr(input, "get") else None
    ramcnn = ramcnn_predictions(cores, model, cv) if model else None
    table = build_hscore_table(cores, ramcnn)
    with atomic_path(output.csv) as tmp:
        table.to_csv(tmp, index=False)
    agreement = h_score_agreement(table)
    write_json(output.agreement, {"n_cores": int(len(table)), "metrics": agreement})
    scatter_png(table, output.scatter)
    for column, metrics in agreement.items():
        logger.info("%s vs reference: MAE %.1f, SD %.1f, r %.3f (n=%d)", column, metrics["mae"], metrics["sd_error"], metrics["pearson_r"], metrics["n"])


def train_ramcnn_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule train_ramcnn: leave-k-out CV, then a model on all cores.

    input.cores: cores table (see :func:`bcpath.ihc.ramcnn.load_training_cores`). params.ramcnn: config section
    ``ihc.ramcnn`` (:class:`bcpath.ihc.ramcnn.RamcnnSettings`; dla_sigma in H-Score points). Outputs: output.model (directory: ramcnn.pt, ramcnn.json), output.cv (CSV:
    slide_id, core_id, fold, reference, predicted), output.metrics (JSON: MAE, SD, r, ...).
    """
    from bcpath.engine import choose_device, torch_threads
    from bcpath.ihc.ramcnn import (
        RamcnnSettings,
        leave_k_out_cv,
        load_training_cores,
        save_ramcnn,
        train_ramcnn,
    )
    from bcpath.io import atomic_dir, atomic_path, write_json
    from bcpath.settings import from_params

    settings = from_params(RamcnnSettings, params.ramcnn)
    k, seed = settings.folds_k, settings.seed
    train_kwargs: dict[str, Any] = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "n_dla_labels": settings.n_dla_labels,
        "dla_sigma": settings.dla_sigma,
        "size": settings.size,
        "device": settings.device,
    }
    # Network shape: not (yet) config keys of the closed schema; read when present, else the
    # defaults (width 16, hidden 128, bins "auto": 8 intensity bins above 128 px).
    section = dict(params.ramcnn or {}) if isinstance(params.ramcnn, dict) else {}
    for key, default in (("width", 16), ("hidden", 128), ("bins", "auto"), ("pool", None)):
        train_kwargs[key] = section.get(key, default)
    cores, ids, skipped = load_training_cores(input.cores)
    if len(cores) < 2 * k:
        raise BcpathError(
            f"RAM-CNN training: {len(cores)} core(s) with a reference H-Score in {input.cores} ({skipped} without one); "
            f"leave-{k}-out cross-validation needs at least {2 * k}; add reference H-Scores or lower ramcnn.folds_k"
        )
    with torch_threads(threads, choose_device(train_kwargs["device"])):
        logger.info("RAM-CNN: %d cores (%d skipped without reference), leave-%d-out, settings %s", len(cores), skipped, k, train_kwargs)
        table, metrics = leave_k_out_cv(cores, k, seed=seed, **train_kwargs)
        logger.info("RAM-CNN CV: MAE %.1f, SD %.1f, r %.3f (n %d)", metrics["mae"], metrics["sd_error"], metrics["pearson_r"], metrics["n"])
        started = time.perf_counter()
        model, history = train_ramcnn(cores, seed=seed, **train_kwargs)
        logger.info("RAM-CNN on all %d cores: final loss %.5f (RMSE %.1f H-Score points), %.1fs", len(cores), history[-1]["loss"], history[-1]["rmse_h"], time.perf_counter() - started)
    table.insert(0, "slide_id", [ids[c][0] for c in table["core_id"]])
    table["core_id"] = [ids[c][1] for c in table["core_id"]]
    with atomic_path(output.cv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    summary = {
        "cv": metrics,
        "n_cores": len(cores),
        "n_skipped_no_reference": skipped,
        "training": {**train_kwargs, "folds_k": k, "seed": seed, "dla_sigma_unit": "H-Score points (0-300)"},
    }
    write_json(output.metrics, summary)
    with atomic_dir(output.model) as tmp_dir:
        save_ramcnn(model, tmp_dir, {**summary, "history": history, "cores": sorted(ids)})
