"""Steps of rules/slides.smk: per-slide foundation rules (inspect, tissue, tiles) and the QC table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def inspect_slide_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.pipeline import inspect_slide

    inspect_slide(input.slide, params.slide_id, output.info, mpp=params.mpp, default_mpp=params.default_mpp, stain=params.stain or "HE")


def detect_tissue_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.pipeline import open_from_info
    from bcpath.tissue import QcThresholds, TissueParams, extract_tissue

    out_dir = Path(output.qc).parent
    with open_from_info(input.info, input.slide) as slide:
        extract_tissue(
            slide,
            out_dir,
            params=TissueParams(**params.tissue),
            user_mask=params.user_mask or None,
            thresholds=QcThresholds(**params.qc),
        )


def tile_slide_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    from bcpath.pipeline import open_from_info
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import read_mask

    qc = json.loads(Path(input.qc).read_text())
    mask = read_mask(input.mask)
    with open_from_info(input.info, input.slide) as slide:
        tile_slide(
            slide,
            mask,
            float(qc["mask_mpp"]),
            output.zarr,
            output.grid,
            output.h5,
            params=TilingParams(**params.tiling),
            threads=threads,
            progress=True,
        )


def aggregate_qc_step(input: Any, output: Any, **_: Any) -> None:
    from bcpath.io import atomic_path
    from bcpath.pipeline import cohort_qc_table

    table = cohort_qc_table(list(input.qc), list(input.info), list(input.grid))
    with atomic_path(output.csv) as tmp:
        table.to_csv(tmp, index=False)
