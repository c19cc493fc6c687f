"""Figures and tables for ``snakemake --report`` (rules/report.smk).

Each function reads outputs that other rules wrote and draws one report figure or table;
the drawing itself is in :mod:`bcpath.overlays` and the rules' steps are in
:mod:`bcpath.steps.report`. Nothing here changes an analysis result.

* :func:`write_table_html`: a cohort CSV (qc.csv, hscore.csv) as an HTML table page.
* :func:`nuclei_overlay`: ``nuclei/overlay.png``, a field of the slide with every
  segmented nucleus outlined, at the densest nuclei area.
* :func:`nuclei_counts`: ``results/cohort/nuclei/counts.csv`` (+ ``.html``): nuclei per
  slide, per mm² of the segmented region, and their median size and shape.
* :func:`hotspot_overlay`: ``proliferation/hotspot.png``, the thumbnail with the tumour
  outline, the mitotic hotspot and the detected mitoses, beside a close-up of the hotspot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.overlays import (
    draw_nuclei_overlay,
    fit_height,
    hotspot_closeup,
    hotspot_thumbnail,
    html_table,
    side_by_side,
    with_text_bar,
)

NUCLEI_COUNT_COLUMNS = (
    "slide_id",
    "n_nuclei",
    "region",
    "region_area_mm2",
    "nuclei_per_mm2",
    "median_area_um2",
    "median_eccentricity",
    "mean_hematoxylin_od",
)
"""counts.csv columns: region = the area segmented (tumour or tissue), its area in mm² from
the region / tissue mask; nuclei_per_mm2 = n_nuclei / region_area_mm2."""


def _write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    from PIL import Image

    from bcpath.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp)


def _read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- tables


def write_table_html(csv_path: str | os.PathLike[str], html_path: str | os.PathLike[str], title: str, note: str = "") -> None:
    """``csv_path`` as a self-contained HTML table page (flagged rows shaded)."""
    import pandas as pd

    from bcpath.io import write_text

    table = pd.read_csv(csv_path, dtype={"flags": str, "error": str})
    write_text(html_path, html_table(table, title, note))


# --------------------------------------------------------------------------- nuclei


def nuclei_overlay(
    slide_path: str | os.PathLike[str],
    info_json: str | os.PathLike[str],
    labels_zarr: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    window_um: float = 256.0,
) -> dict[str, Any]:
    """Draw the nuclei of the densest ``window_um`` square of a slide over its pixels.

    The field is the square (on a window/4 grid) holding the most nucleus centroids; its
    pixels are read from the slide at the labels' µm/px. Returns the field (model px) and counts.
    """
    import pandas as pd
    import zarr

    from bcpath.nuclei.slide import open_labels
    from bcpath.overlays import densest_window
    from bcpath.pipeline import open_from_info

    attrs: Any = zarr.open_group(str(labels_zarr), mode="r").attrs["bcpath"]
    meta = dict(attrs)
    labels = open_labels(labels_zarr)
    height, width = int(labels.shape[0]), int(labels.shape[1])
    mpp = float(meta["mpp"])
    scale = float(meta.get("level0_px_per_px", 1.0))
    window = int(round(window_um / mpp))
    centroids = pd.read_parquet(features_parquet, columns=["centroid_x_model_px", "centroid_y_model_px"])
    xs, ys = centroids["centroid_x_model_px"].to_numpy(), centroids["centroid_y_model_px"].to_numpy()
    x, y = densest_window(xs, ys, width, height, window)
    w, h = min(window, width - x), min(window, height - y)
    crop = np.asarray(labels[y : y + h, x : x + w])
    with open_from_info(info_json, slide_path) as slide:
        rgb = slide.read_region(float(meta.get("origin_x0", 0)) + x * scale, float(meta.get("origin_y0", 0)) + y * scale, w, h, mpp)
        slide_id = slide.slide_id
    inside = int(((xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)).sum())
    title = f"{slide_id}: {inside} nuclei in this {w * mpp:.0f} x {h * mpp:.0f} um field ({len(xs)} on the slide)"
    _write_png(out_png, draw_nuclei_overlay(rgb, crop, mpp, title))
    return {"slide_id": slide_id, "x": x, "y": y, "width": w, "height": h, "n_in_field": inside, "n_nuclei": len(xs)}


def nuclei_counts(
    slide_ids: list[str],
    features: list[str],
    regions: list[str],
    qc_files: list[str],
    region_kind: str,
) -> Any:
    """One row per slide (``NUCLEI_COUNT_COLUMNS``) from features.parquet and the region mask
    (nuclei/region.png for the tumour region, tissue/mask.png for the whole tissue)."""
    import pandas as pd

    from bcpath.tissue import mask_mpp_from_qc, read_mask

    rows = []
    wanted = ["area_um2", "eccentricity", "hematoxylin_od_mean"]
    for slide_id, table_path, region_path, qc_path in zip(slide_ids, features, regions, qc_files, strict=True):
        table = pd.read_parquet(table_path, columns=wanted)
        mask_mpp = mask_mpp_from_qc(json.loads(Path(qc_path).read_text()))
        area_mm2 = float(read_mask(region_path).sum()) * (mask_mpp / 1000.0) ** 2
        rows.append(
            {
                "slide_id": slide_id,
                "n_nuclei": len(table),
                "region": region_kind,
                "region_area_mm2": round(area_mm2, 4),
                "nuclei_per_mm2": round(len(table) / area_mm2, 1) if area_mm2 > 0 else float("nan"),
                "median_area_um2": float(table["area_um2"].median()) if len(table) else float("nan"),
                "median_eccentricity": float(table["eccentricity"].median()) if len(table) else float("nan"),
                "mean_hematoxylin_od": float(table["hematoxylin_od_mean"].mean()) if len(table) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=list(NUCLEI_COUNT_COLUMNS))


# --------------------------------------------------------------------------- proliferation


def hotspot_overlay(
    slide_path: str | os.PathLike[str],
    info_json: str | os.PathLike[str],
    thumbnail_png: str | os.PathLike[str],
    qc_json: str | os.PathLike[str],
    tumor_geojson: str | os.PathLike[str],
    features_json: str | os.PathLike[str],
    mitoses_parquet: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    closeup_px: int = 600,
) -> dict[str, Any]:
    """Thumbnail (tumour outline, hotspot square, mitoses) beside a close-up of the hotspot.

    Without a hotspot (no tumour, or no mitosis) only the thumbnail is drawn and the text
    strip says why. Returns the numbers written in the strip."""
    import pandas as pd

    from bcpath.geojson import read_geojson
    from bcpath.pipeline import open_from_info
    from bcpath.tissue import mask_mpp_from_qc

    info = json.loads(Path(info_json).read_text())
    level0_mpp = float(info["mpp"])
    thumb_mpp = mask_mpp_from_qc(json.loads(Path(qc_json).read_text()))
    features = json.loads(Path(features_json).read_text())
    hotspot = features.get("hotspot")
    mitoses = pd.read_parquet(mitoses_parquet, columns=["x0", "y0"]).to_numpy(dtype=float)
    bounds = hotspot["bounds_level0"] if hotspot else None
    left = hotspot_thumbnail(_read_rgb(thumbnail_png), level0_mpp / thumb_mpp, read_geojson(tumor_geojson), bounds, mitoses)
    slide_id = features.get("slide_id", info.get("slide_id", ""))
    if hotspot:
        x0, y0, x1, y1 = (float(v) for v in hotspot["bounds_level0"])
        mpp = (x1 - x0) * level0_mpp / closeup_px
        height = max(1, int(round((y1 - y0) * level0_mpp / mpp)))
        with open_from_info(info_json, slide_path) as slide:
            region = slide.read_region(x0, y0, closeup_px, height, mpp)
        right = hotspot_closeup(region, mpp, (x0, y0), level0_mpp, mitoses)
        panel = side_by_side(fit_height(left, right.shape[0]), right)
        text = (
            f"{slide_id}: hotspot {hotspot['count']} mitoses in {hotspot['area_mm2']:.2f} mm2 -> mitotic score "
            f"{hotspot['score']}; {len(mitoses)} mitoses detected on the slide"
        )
    else:
        panel = fit_height(left, closeup_px) if left.shape[0] < closeup_px // 2 else left
        flags = ", ".join(features.get("flags") or []) or "no tumour or no mitosis"
        text = f"{slide_id}: no hotspot ({flags}); {len(mitoses)} mitoses detected on the slide"
    _write_png(out_png, with_text_bar(panel, text))
    return {"slide_id": slide_id, "hotspot": hotspot, "n_mitoses": len(mitoses)}


