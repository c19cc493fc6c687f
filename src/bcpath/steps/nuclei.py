"""Steps of rules/nuclei.smk: nuclei segmentation, tumor regions, training and evaluation.
The work is in :mod:`bcpath.nuclei`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)


def _param(params: Any, name: str, default: Any = None) -> Any:
    if isinstance(params, Mapping):
        return params.get(name, default)
    return getattr(params, name, default)


def segment_nuclei_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule segment_nuclei (see workflow_scripts/segment_nuclei.py).

    input: slide, info (info.json), mask (tissue/mask.png), qc (tissue/qc.json), optional
    region (a whole-slide PNG mask intersected with the tissue). params: nuclei (config
    section ``nuclei``: :class:`bcpath.nuclei.slide.SegmentationSettings`), failure_record. output: labels
    (labels.zarr), geojson (nuclei.geojson), features (features.parquet).
    """
    from bcpath.nuclei.slide import MAX_UPSAMPLING, SegmentationSettings, segment_slide
    from bcpath.pipeline import open_from_info
    from bcpath.settings import from_params
    from bcpath.tissue import mask_mpp_from_qc, read_mask

    settings = from_params(SegmentationSettings, _param(params, "nuclei", None))
    qc = json.loads(Path(input.qc).read_text())
    mask = read_mask(input.mask)
    region_path = _param(input, "region", None)
    region = read_mask(region_path) if region_path else None
    with open_from_info(input.info, input.slide) as slide:
        model_mpp = settings.mpp
        if slide.mpp > MAX_UPSAMPLING * model_mpp:
            raise BcpathError(
                f"slide {slide.slide_id}: scanned at {slide.mpp:g} µm/px, too coarse to segment nuclei at "
                f"{model_mpp:g} µm/px (at most {MAX_UPSAMPLING:g}x upsampling); scan at 20x (0.5 µm/px) or "
                "finer, or check the slide's µm/px"
            )
        summary = segment_slide(
            slide,
            mask,
            mask_mpp_from_qc(qc),
            segmenter=settings.model,
            tta=settings.tta,
            model_mpp=settings.mpp,
            tile_px=settings.tile_px,
            overlap=settings.overlap,
            region_mask=region,
            labels_path=output.labels,
            geojson_path=output.geojson,
            features_path=output.features,
            threads=max(1, int(threads or 1)),
        )
    logger.info("slide %s: nuclei summary %s", slide.slide_id, json.dumps(summary))


def tumor_region_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule nuclei_tumor_region: nuclei/region.png (tissue-mask grid, 255 = tumor)."""
    from PIL import Image

    from bcpath.erpr.inference import read_predictions
    from bcpath.io import atomic_path
    from bcpath.nuclei.slide import tumor_region_mask
    from bcpath.tissue import mask_mpp_from_qc, read_mask

    info = json.loads(Path(input.info).read_text())
    qc = json.loads(Path(input.qc).read_text())
    tissue = read_mask(input.mask)
    region = tumor_region_mask(
        read_predictions(input.predictions), tissue.shape, mask_mpp_from_qc(qc), float(info["mpp"]), float(params.threshold)
    ) & tissue
    logger.info("tumor region: %.1f %% of the tissue", 100.0 * region.sum() / max(int(tissue.sum()), 1))
    with atomic_path(output.region) as tmp:
        Image.fromarray((region * 255).astype(np.uint8)).save(tmp, format="PNG")


def train_nuclei_model_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule train_nuclei_model: dataset folders → results/models/nuclei/{best.pt, last.pt, train.json, log.csv, stain.json}."""
    from bcpath.engine import choose_device, torch_threads
    from bcpath.nuclei.training import NucleiTrainSettings, train_nuclei_model
    from bcpath.settings import from_params

    settings = from_params(NucleiTrainSettings, params.training)
    folders = list(input.data)
    if not folders:
        raise BcpathError(
            "train_nuclei_model: nuclei.training.data lists no dataset folder; give MoNuSeg- or "
            "CPM-15-layout folders, e.g. --config nuclei='{training: {data: [/data/monuseg]}}'"
        )
    device = choose_device(settings.device)
    with torch_threads(threads, device):
        train_nuclei_model(
            folders,
            Path(output.weights).parent,
            encoder=settings.encoder,
            pretrained_encoder=settings.pretrained_encoder,
            init_from=settings.init_from,
            target_stain=settings.target_stain,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            patience=settings.patience,
            max_minutes=settings.max_minutes,
            val_organs=settings.val_organs,
            val_names=settings.val_names,
            plain_base=settings.plain_base,
            seed=settings.seed,
            model_mpp=float(params.mpp),
            device=str(device),
        )


def evaluate_dataset_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule evaluate_nuclei: results/cohort/nuclei/evaluation.csv for nuclei.evaluation.data."""
    from bcpath.io import atomic_path
    from bcpath.nuclei.datasets import evaluate_dataset
    from bcpath.nuclei.slide import get_segmenter

    folders = list(input.data)
    if not folders:
        raise BcpathError(
            "evaluate_nuclei: nuclei.evaluation.data lists no dataset folder; give annotated MoNuSeg- or CPM-15-layout folders"
        )
    table = evaluate_dataset(folders, get_segmenter(params.model))
    with atomic_path(output.csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    if len(table):
        mean = table.iloc[-1]
        logger.info("nuclei %s on %d images: AJI %.3f, mAP %.3f, PQ %.3f", params.model, len(table) - 1, mean["aji"], mean["map"], mean["pq"])
