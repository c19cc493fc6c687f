"""Per-slide foundation of the workflow: inspect a slide (info.json), reopen it from its
info.json, and the cohort QC table. The rules' steps (inspect, tissue, tiles, QC table) are in
:mod:`bcpath.steps.slides`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from bcpath.io import write_json
from bcpath.wsi import Slide, file_sha256, open_slide

logger = logging.getLogger(__name__)


def inspect_slide(path: str | os.PathLike[str], slide_id: str, out_json: str | os.PathLike[str], mpp: float | None = None, default_mpp: float | None = None, stain: str = "HE") -> dict[str, Any]:
    """Open a slide, settle its µm/px, check a low-resolution read and write info.json.

    Returns:
        The info dict: reader, vendor, dimensions, levels, mpp, mpp_source, sha256, ...
    """
    with open_slide(path, slide_id=slide_id, mpp=mpp, default_mpp=default_mpp) as slide:
        # Decoding the coarsest level catches files that open but cannot be read.
        coarsest = len(slide.level_dimensions) - 1
        width, height = slide.level_dimensions[coarsest]
        slide.read_level(coarsest, 0, 0, min(width, 256), min(height, 256))
        info = slide.info()
    info["stain"] = stain
    info["mpp_sheet"] = mpp  # kept so qc.csv can show a sheet value that disagrees with the file
    info["sha256"] = file_sha256(path)
    write_json(out_json, info)
    logger.info("slide %s: %s, %d levels, %s µm/px (%s)", slide_id, info["reader"], info["level_count"], info["mpp"], info["mpp_source"])
    return info


def open_from_info(info_json: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Slide:
    """Open a slide with the µm/px settled by ``inspect_slide`` (file, sheet or default)."""
    info = json.loads(Path(info_json).read_text())
    slide = open_slide(path or info["path"], slide_id=info["slide_id"], mpp=info["mpp"])
    if slide.mpp_source != "file":
        slide.mpp_source = info["mpp_source"]
    return slide


def cohort_qc_table(qc_files: list[str], info_files: list[str], grid_files: list[str]) -> Any:
    """One row per slide: reader, µm/px and its source, QC measures, flags and tile count."""
    import pandas as pd

    rows = []
    for qc_path, info_path, grid_path in zip(qc_files, info_files, grid_files, strict=True):
        qc = json.loads(Path(qc_path).read_text())
        info = json.loads(Path(info_path).read_text())
        n_tiles = len(pd.read_parquet(grid_path, columns=["tile_id"]))
        sheet_mpp = info.get("mpp_sheet")
        flags = list(qc["flags"])
        if sheet_mpp is not None and not math.isclose(float(sheet_mpp), float(info["mpp"]), rel_tol=0.05):
            flags.append("mpp_mismatch")  # the sheet's µm/px disagrees with the file's, which was used
        rows.append(
            {
                "slide_id": info["slide_id"],
                "reader": info["reader"],
                "mpp": info["mpp"],
                "mpp_source": info["mpp_source"],
                "mpp_sheet": sheet_mpp,
                "width": info["dimensions"][0],
                "height": info["dimensions"][1],
                "tissue_area_mm2": qc["tissue_area_mm2"],
                "tissue_fraction": qc["tissue_fraction"],
                "n_tissue_pieces": qc["n_tissue_pieces"],
                "blur_score": qc["blur_score"],
                "pen_fraction": qc["pen_fraction"],
                "background_brightness": qc["background_brightness"],
                "n_tiles": n_tiles,
                "flags": ";".join(flags),
                "status": "ok",
                "error": "",
            }
        )
    return pd.DataFrame(rows, columns=QC_COLUMNS)


#: Columns of results/cohort/qc.csv. ``status`` is ok, failed (``error`` says why) or not_run.
QC_COLUMNS = (
    "slide_id", "reader", "mpp", "mpp_source", "mpp_sheet", "width", "height", "tissue_area_mm2", "tissue_fraction",
    "n_tissue_pieces", "blur_score", "pen_fraction", "background_brightness", "n_tiles", "flags", "status", "error",
)


def partial_qc_table(slide_ids: list[str], patterns: dict[str, str], failures: dict[str, str]) -> Any:
    """qc.csv from the slides whose steps succeeded, one ``failed``/``not_run`` row for each other.

    Args:
        slide_ids: every slide of the cohort, in order.
        patterns: ``{"qc": ..., "info": ..., "grid": ...}`` paths with ``{slide}``.
        failures: slide id → error message (failures.csv) for slides that failed.
    """
    import pandas as pd

    def files(slide: str) -> list[str]:
        return [patterns[key].format(slide=slide) for key in ("qc", "info", "grid")]

    done = [s for s in slide_ids if all(Path(f).is_file() for f in files(s))]
    table = cohort_qc_table(*([files(s)[k] for s in done] for k in range(3)))
    others = pd.DataFrame(
        [{"slide_id": s, "status": "failed" if s in failures else "not_run", "error": failures.get(s, "")} for s in slide_ids if s not in done],
        columns=QC_COLUMNS,
    )
    if len(others):
        table = pd.concat([table, others], ignore_index=True) if len(table) else others
        table = table.astype({c: "Int64" for c in ("width", "height", "n_tissue_pieces", "n_tiles")})
    order = {s: i for i, s in enumerate(slide_ids)}
    return table.sort_values("slide_id", key=lambda ids: ids.map(order), kind="stable").reset_index(drop=True)


__all__ = ["inspect_slide", "open_from_info", "cohort_qc_table", "write_json"]
