"""IHC TMA cores: dearray a slide, score every core, gather the cohort table (the rules' steps
are in :mod:`bcpath.steps.ihc`).

Per IHC slide (``stain = IHC`` in the sample sheet)::

    results/slides/{slide}/ihc/cores.parquet    one row per grid position (core_id, row, col, x, y level-0 px, missing)
    results/slides/{slide}/ihc/scores.parquet   one row per grid position: H-Scores, counts, Allred, QC flags
    results/slides/{slide}/ihc/cells.geojson    QuPath: core outlines (TMA core) + classified cells (Negative/1+/2+/3+)
    results/slides/{slide}/ihc/cores/{core}/overlay.png  cells.csv  ramcnn_inputs.npz

and for the cohort ``results/cohort/hscore.csv`` (:data:`HSCORE_COLUMNS`).

The tumor mask T of a core comes from the slide's region annotations (sample-sheet column
``annotations``, QuPath GeoJSON in level-0 px; classes named in ``ihc.tumor_classes``). Without
annotations every detected cell is scored, ``tumor_fraction`` is empty and the row carries the
flag ``no_tumor_mask`` (a tumor FCN is not part of bcpath yet).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from bcpath.errors import BcpathError
from bcpath.geojson import classification_name, feature, polygon_rings, read_geojson
from bcpath.images import laplacian_variance
from bcpath.io import atomic_dir, atomic_path
from bcpath.wsi import Slide

logger = logging.getLogger(__name__)

#: Columns of results/cohort/hscore.csv, in order.
HSCORE_COLUMNS = (
    "slide_id", "core_id", "row", "col", "x", "y",
    "h_score_ramcnn", "ramcnn_source", "h_score_cells", "h_score_nap",
    "n_neg", "n1", "n2", "n3", "n_cells", "percent_positive", "allred",
    "tumor_fraction", "flags", "reference_h_score",
)
#: Flags a core row can carry besides those of :func:`bcpath.ihc.score.score_core`.
CORE_FLAGS = ("missing", "low_tumor", "no_tumor_mask", "out_of_focus", "probable_fold")
#: Tumor below this share of the core's tissue raises ``low_tumor`` (the issue's 15 %).
MIN_TUMOR_FRACTION = 0.15
#: Folds: tissue where the summed OD, smoothed over ``FOLD_SMOOTH_UM``, exceeds
#: ``FOLD_OD`` in connected areas of at least ``FOLD_MIN_AREA_UM2`` (several nuclei wide, so single
#: dark nuclei never qualify); ``probable_fold`` when that is ≥ ``FOLD_MIN_FRACTION`` of the tissue.
FOLD_SMOOTH_UM = 5.0
FOLD_OD = 1.2
FOLD_MIN_AREA_UM2 = 2000.0
FOLD_MIN_FRACTION = 0.05
CORE_TISSUE_SMOOTH_UM = 5.0
CLASS_GEOJSON_NAMES = ("Negative", "1+", "2+", "3+")
CLASS_COLORS = ([112, 112, 225], [255, 215, 0], [255, 140, 0], [200, 0, 0])


# --------------------------------------------------------------------------- core images

def core_image_table(slide: Slide) -> pd.DataFrame:
    """The one "core" of a single-core image (a PNG/JPEG opened by :func:`bcpath.wsi.open_slide`
    with its plain-image backend): the whole image (``shape`` = "image")."""
    width, height = slide.dimensions
    return pd.DataFrame(
        [{"slide_id": slide.slide_id, "core_id": "core", "row": pd.NA, "col": pd.NA, "x": width / 2, "y": height / 2,
          "diameter_um": max(width, height) * slide.mpp / 1.15, "missing": False, "shape": "image"}]
    ).astype({"row": "Int64", "col": "Int64"})


# --------------------------------------------------------------------------- dearraying


def dearray_slide(slide: Any, mask: np.ndarray, mask_mpp: float, ihc: dict[str, Any], core_map: str | None = None) -> pd.DataFrame:
    """Core table of a TMA slide in level-0 px (core map when given, else detection + grid fit).

    Returns:
        DataFrame core_id, row, col, x, y (level-0 px), diameter_um, missing.
    """
    from bcpath.ihc.tma import dearray

    try:
        cores = dearray(
            mask,
            mask_mpp,
            core_diameter_um=float(ihc["core_diameter_um"]),
            core_map=core_map,
            slide_mpp=slide.mpp,
            expected_spacing_um=ihc.get("core_spacing_um"),
        )
    except BcpathError as error:
        raise BcpathError(f"slide {slide.slide_id}: {error}") from None
    out = cores[["core_id", "row", "col", "x", "y", "diameter_um", "missing"]].copy()
    out["diameter_um"] = out["diameter_um"].fillna(float(ihc["core_diameter_um"]))
    out.insert(0, "slide_id", slide.slide_id)
    return out.reset_index(drop=True)


def core_mask(thumbnail: np.ndarray) -> np.ndarray:
    """(H, W) bool tissue of a TMA thumbnail by brightness: Otsu on luminance, holes filled.

    The slide tissue mask (Otsu on HSV saturation, tuned for H&E) splits pale IHC cores into
    their bluish stroma and their brown or colourless parts; glass against tissue is the
    contrast that holds for every bright-field stain, so dearraying uses brightness.
    """
    from scipy import ndimage

    from bcpath.stain.deconvolution import luminance, otsu_threshold

    grey = cv2.medianBlur(np.clip(luminance(thumbnail), 0, 255).astype(np.uint8), 5).astype(np.float32)
    glass = float(np.percentile(grey, 99))
    threshold = min(otsu_threshold(grey.ravel()), glass - 8.0)
    mask = ndimage.binary_fill_holes(grey < threshold)
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


# --------------------------------------------------------------------------- scoring


def tumor_polygons(annotations: str | None, classes: list[str]) -> list[list[np.ndarray]]:
    """Polygons (level-0 px) of the annotations whose class is a tumor class.

    Returns:
        one list of rings per polygon, exterior first then holes, each (N, 2) float64.
    """
    if not annotations:
        return []
    try:
        features = read_geojson(annotations)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise BcpathError(f"annotations {annotations}: not readable GeoJSON ({error}); export the annotations from QuPath as GeoJSON") from None
    wanted = {c.lower() for c in classes}
    rings: list[list[np.ndarray]] = []
    for feat in features:
        name = classification_name(feat)
        if not isinstance(name, str) or name.lower() not in wanted:
            continue
        for poly in polygon_rings(feat):
            if poly:
                rings.append([np.asarray(ring, dtype=np.float64)[:, :2] for ring in poly])
    return rings


def _rasterise(polygons: list[list[np.ndarray]], x0: float, y0: float, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W) mask of level-0 polygons (exterior, holes...) in a window whose top-left is
    (x0, y0), window px = level-0 px × scale."""
    mask = np.zeros(shape, np.uint8)

    def points(ring: np.ndarray) -> np.ndarray:
        return np.round((ring - (x0, y0)) * scale * 16).astype(np.int32).reshape(-1, 1, 2)

    for rings in polygons:
        cv2.fillPoly(mask, [points(rings[0])], 1, lineType=cv2.LINE_8, shift=4)
        if len(rings) > 1:
            cv2.fillPoly(mask, [points(r) for r in rings[1:]], 0, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def blur_score(rgb: np.ndarray, tissue: np.ndarray, mpp: float) -> float:
    """Variance of the Laplacian of the grey image at 1 µm/px over tissue (as the slide QC)."""
    scale = mpp / 1.0
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        tissue = cv2.resize(tissue.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    return laplacian_variance(grey, tissue, float32=True) if tissue.sum() > 100 else float("nan")


def fold_fraction(od_sum: np.ndarray, tissue: np.ndarray, mpp: float) -> float:
    """Share of tissue in large, uniformly dark areas (a probable fold; see ``FOLD_*``)."""
    if not tissue.any():
        return 0.0
    smooth = cv2.GaussianBlur(od_sum.astype(np.float32), (0, 0), FOLD_SMOOTH_UM / mpp)
    dark = ((smooth > FOLD_OD) & tissue).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] * mpp * mpp >= FOLD_MIN_AREA_UM2)
    big = big[big > 0]
    return float(np.isin(labels, big).sum() / tissue.sum()) if big.size else 0.0


def _disk(shape: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return np.hypot(xx - (shape[1] - 1) / 2, yy - (shape[0] - 1) / 2) <= radius


def score_tma_core(
    slide: Any,
    core: dict[str, Any],
    ihc: dict[str, Any],
    tumor_rings: list[list[np.ndarray]] | None,
    min_blur_score: float | None = None,
    segmenter: Any = None,
) -> dict[str, Any]:
    """Read one core at ``ihc["mpp"]`` and score it (nuclei by ``segmenter`` when given:
    :func:`bcpath.ihc.score.nuclei_model_segmenter`).

    The core window is a square of 1.15 × the core diameter centred on the core; only the disc
    of 1.05 × the diameter counts (so a neighbouring core never leaks in).

    Returns:
        dict: ``row`` (one hscore row without slide-level columns), ``rgb`` (H, W, 3) uint8,
        ``tumor`` (H, W) bool or None, ``roi`` (H, W) bool, ``score`` (CoreScore), ``x0``,
        ``y0`` (level-0 px of the window's top-left) and ``scale`` (window px per level-0 px).
    """
    from bcpath.ihc.score import TISSUE_OD, score_core
    from bcpath.stain.deconvolution import estimate_white, rgb_to_od

    mpp = float(ihc["mpp"])
    diameter_um = float(core["diameter_um"])
    size = int(math.ceil(diameter_um * 1.15 / mpp))
    scale = slide.mpp / mpp
    x0 = float(core["x"]) - size / 2 / scale
    y0 = float(core["y"]) - size / 2 / scale
    rgb = slide.read_region(x0, y0, size, size, mpp)
    if core.get("shape") == "image":  # a single-core image: all of it counts
        width, height = slide.dimensions
        roi = np.zeros(rgb.shape[:2], bool)
        r0, c0 = max(0, int(round(-y0 * scale))), max(0, int(round(-x0 * scale)))
        roi[r0 : r0 + int(round(height * scale)), c0 : c0 + int(round(width * scale))] = True
    else:
        roi = _disk(rgb.shape[:2], diameter_um * 1.05 / 2 / mpp)
    # Outside the core's disc becomes the scan's own white, so the white level (I0) of scoring
    # stays that of the glass.
    white = np.rint(estimate_white(rgb)).astype(np.uint8)
    rgb = np.where(roi[..., None], rgb, white).astype(np.uint8)
    tumor = None
    if tumor_rings is not None:
        tumor = _rasterise(tumor_rings, x0, y0, scale, rgb.shape[:2]) & roi
    name = f"slide {slide.slide_id} core {core['core_id']}"
    score = score_core(rgb, mpp, stains=str(ihc["stains"]), tumor_mask=tumor, name=name, min_cells=int(ihc["min_cells"]), segmenter=segmenter)
    summary = score.summary
    od_sum = rgb_to_od(rgb, estimate_white(rgb)).sum(axis=-1)
    # The core's tissue includes pale stroma, which single pixels of it do not show reliably:
    # summed OD smoothed over CORE_TISSUE_SMOOTH_UM above a third of the cell-scoring level.
    smooth = cv2.GaussianBlur(od_sum, (0, 0), CORE_TISSUE_SMOOTH_UM / mpp)
    tissue = (smooth > TISSUE_OD / 3) & roi
    flags = list(summary["flags"])
    tumor_fraction = float("nan")
    if tumor is None:
        flags.append("no_tumor_mask")
    else:
        tumor_fraction = float((tumor & tissue).sum() / tissue.sum()) if tissue.any() else 0.0
        if tumor_fraction < MIN_TUMOR_FRACTION:
            flags.append("low_tumor")
    blur = blur_score(rgb, tissue, mpp)
    if min_blur_score is not None and math.isfinite(blur) and blur < min_blur_score:
        flags.append("out_of_focus")
    folds = fold_fraction(od_sum, tissue, mpp)
    if folds >= FOLD_MIN_FRACTION:
        flags.append("probable_fold")
    row = {
        "core_id": core["core_id"], "row": core["row"], "col": core["col"], "x": float(core["x"]), "y": float(core["y"]),
        "h_score_cells": summary["h_score_cells"], "h_score_nap": summary["h_score_nap"],
        "n_neg": summary["n_neg"], "n1": summary["n1"], "n2": summary["n2"], "n3": summary["n3"],
        "n_cells": summary["n_cells"], "percent_positive": summary["percent_positive"], "allred": summary["allred"],
        "tumor_fraction": tumor_fraction, "flags": ";".join(flags),
        "tissue_fraction": float(tissue.sum() / roi.sum()), "dab_p99": summary["dab_p99"],
        "blur_score": blur, "fold_fraction": folds,
    }
    return {"row": row, "rgb": rgb, "tumor": tumor, "roi": roi, "score": score, "x0": x0, "y0": y0, "scale": scale}


def missing_core_row(core: dict[str, Any]) -> dict[str, Any]:
    """hscore row of an empty grid position: no numbers, flag ``missing``."""
    nan = float("nan")
    return {
        "core_id": core["core_id"], "row": core["row"], "col": core["col"], "x": float(core["x"]), "y": float(core["y"]),
        "h_score_cells": nan, "h_score_nap": nan, "n_neg": 0, "n1": 0, "n2": 0, "n3": 0, "n_cells": 0,
        "percent_positive": nan, "allred": nan, "tumor_fraction": nan, "flags": "missing",
        "tissue_fraction": nan, "dab_p99": nan, "blur_score": nan, "fold_fraction": nan,
    }


def overlay_png(rgb: np.ndarray, scored: Any, tumor: np.ndarray | None, roi: np.ndarray, i_la: np.ndarray) -> np.ndarray:
    """(H, 2W, 3) uint8: the core with tumor outline and cells coloured by class | the I_la image."""
    left = rgb.copy()
    for mask, colour in ((roi, (90, 90, 90)), (tumor, (0, 160, 0))):
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(left, contours, -1, colour, 2)
    for x, y, cls in zip(scored.x, scored.y, scored.classes, strict=True):
        cv2.circle(left, (int(round(x)), int(round(y))), 3, tuple(int(v) for v in CLASS_COLORS[int(cls)]), -1)
    right = np.repeat((np.clip(i_la, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    return np.concatenate([left, right], axis=1)


def _circle(x: float, y: float, radius: float, n_vertices: int) -> dict[str, Any]:
    """GeoJSON Polygon: a closed ring of ``n_vertices`` points on a circle (0.1 px rounding)."""
    angles = np.linspace(0, 2 * np.pi, n_vertices + 1)[:-1]
    ring = [[round(float(x + radius * np.cos(a)), 1), round(float(y + radius * np.sin(a)), 1)] for a in angles]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _not_scored(flags: Any) -> bool:
    """A core row whose flags say it has no scores (empty grid position or a scoring error)."""
    return bool({"missing", "error"} & set(str(flags).split(";")))


def _cell_feature(x: float, y: float, radius: float, cls: int, dab: float) -> dict[str, Any]:
    return feature(_circle(x, y, radius, 8), "detection", CLASS_GEOJSON_NAMES[cls], CLASS_COLORS[cls], measurements={"Nucleus: DAB OD mean": dab})


def _core_feature(row: dict[str, Any], radius: float) -> dict[str, Any]:
    measurements = {k: row[k] for k in ("h_score_cells", "h_score_nap", "percent_positive", "n_cells") if isinstance(row[k], (int, float)) and math.isfinite(row[k])}
    props = feature(_circle(row["x"], row["y"], radius, 64), "annotation", "TMA core", [80, 80, 80], row["core_id"], measurements)
    props["properties"]["isMissing"] = _not_scored(row["flags"])
    return props


def core_stain_intensity(rgb: np.ndarray, stains: str) -> np.ndarray:
    """(H, W) float32 I_la of a core with the configured stain vectors and the core's own white
    (as cell scoring and SINI/SITI use), computed once for the overlay and the RAM-CNN inputs."""
    from bcpath.stain.deconvolution import estimate_white, get_stain_vectors, stain_intensity_image

    return stain_intensity_image(rgb, stains=get_stain_vectors(stains), i0=estimate_white(rgb))


def ramcnn_inputs(scored: dict[str, Any], size: int, stains: str, i_la: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """SINI and SITI (size × size float32 in [0, 1]) of a scored core (Liu et al.'s RAM-CNN inputs).

    G = the nuclei cell scoring detected; T = the tumor mask, or the core's tissue when the
    slide has no tumor annotations. ``i_la``: the core's stain-intensity image when already
    computed (:func:`core_stain_intensity`).
    """
    from bcpath.ihc.ramcnn import resize_input, sini_siti

    rgb = scored["rgb"]
    nuclei = scored["score"].nuclei > 0
    tumor = scored["tumor"] if scored["tumor"] is not None else scored["roi"]
    sini, siti = sini_siti(rgb, nuclei, tumor, stains=stains, i_la=i_la)
    return {"sini": resize_input(sini, size), "siti": resize_input(siti, size)}


def score_tma_slide(
    slide: Any,
    cores: pd.DataFrame,
    ihc: dict[str, Any],
    annotations: str | None,
    out_scores: str | Path,
    out_geojson: str | Path,
    out_cores_dir: str | Path,
    min_blur_score: float | None = None,
) -> pd.DataFrame:
    """Score every core of a dearrayed TMA slide; write scores, GeoJSON and per-core files.

    A core that fails to score gets an ``error`` flag and the message in the log; the other
    cores are still scored.
    """
    from bcpath.geojson import write_geojson

    rings = tumor_polygons(annotations, list(ihc["tumor_classes"])) if annotations else None
    if annotations and not rings:
        logger.warning("%s: no %s annotations in %s; scoring every cell", slide.slide_id, "/".join(ihc["tumor_classes"]), annotations)
        rings = None
    rows: list[dict[str, Any]] = []
    features: list[dict[str, Any]] = []
    size = int(ihc["ramcnn"]["size"])
    segmenter = None
    if ihc.get("nuclei_model"):
        from bcpath.ihc.score import nuclei_model_segmenter

        segmenter = nuclei_model_segmenter(ihc["nuclei_model"])
    with atomic_dir(out_cores_dir) as folder:
        for core in cores.to_dict("records"):
            radius_l0 = float(core["diameter_um"]) / 2 / slide.mpp
            if core["missing"]:
                row = missing_core_row(core)
                rows.append(row)
                features.append(_core_feature(row, radius_l0))
                continue
            try:
                scored = score_tma_core(slide, core, ihc, rings, min_blur_score, segmenter)
            except BcpathError as error:
                logger.error("%s core %s not scored: %s", slide.slide_id, core["core_id"], error)
                row = {**missing_core_row(core), "flags": "error"}
                rows.append(row)
                features.append(_core_feature(row, radius_l0))
                continue
            row = scored["row"]
            rows.append(row)
            features.append(_core_feature(row, radius_l0))
            sc = scored["score"]
            inv = 1.0 / scored["scale"]
            radius_cell = 3.0 / slide.mpp
            for x, y, cls, dab in zip(sc.x, sc.y, sc.classes, sc.dab_od_mean, strict=True):
                features.append(_cell_feature(scored["x0"] + x * inv, scored["y0"] + y * inv, radius_cell, int(cls), float(dab)))
            core_dir = Path(folder) / str(core["core_id"])
            core_dir.mkdir()
            pd.DataFrame(sc.cell_rows(), columns=["x", "y", "dab_od_mean", "class"]).to_csv(core_dir / "cells.csv", index=False)
            i_la = core_stain_intensity(scored["rgb"], str(ihc["stains"]))
            cv2.imwrite(str(core_dir / "overlay.png"), overlay_png(scored["rgb"], sc, scored["tumor"], scored["roi"], i_la)[..., ::-1])
            inputs = ramcnn_inputs(scored, size, str(ihc["stains"]), i_la)
            np.savez_compressed(core_dir / "ramcnn_inputs.npz", sini=inputs["sini"], siti=inputs["siti"])
            logger.info("%s %s: H cells %.1f, NAP %.1f, %d cells, flags %s", slide.slide_id, core["core_id"], row["h_score_cells"], row["h_score_nap"], row["n_cells"], row["flags"] or "-")
    table = pd.DataFrame(rows)
    table.insert(0, "slide_id", slide.slide_id)
    with atomic_path(out_scores) as tmp:
        table.to_parquet(tmp, index=False)
    write_geojson(out_geojson, features)
    return table


# --------------------------------------------------------------------------- cohort table


def read_reference_scores(path: str | None, slide_id: str) -> pd.DataFrame:
    """Reference H-Scores of one slide's cores: CSV with core_id and reference_h_score
    (optionally reference_h_score_2 for a second reader). Empty table when no file is given."""
    columns = ["slide_id", "core_id", "reference_h_score", "reference_h_score_2"]
    if not path:
        return pd.DataFrame(columns=columns)
    try:
        table = pd.read_csv(path, dtype={"core_id": str})
    except (OSError, ValueError) as error:
        raise BcpathError(f"slide {slide_id}: core scores {path} not readable ({error}); give a CSV with core_id, reference_h_score") from None
    if "reference_h_score" not in table.columns and "h_score" in table.columns:
        table = table.rename(columns={"h_score": "reference_h_score"})
    missing = [c for c in ("core_id", "reference_h_score") if c not in table.columns]
    if missing:
        raise BcpathError(f"slide {slide_id}: core scores {path} lacks column(s) {', '.join(missing)}; give core_id, reference_h_score (0-300)")
    bad = table[~table["reference_h_score"].between(0, 300) & table["reference_h_score"].notna()]
    if len(bad):
        raise BcpathError(f"slide {slide_id}: core scores {path}: core {bad.iloc[0]['core_id']} has H-Score {bad.iloc[0]['reference_h_score']} outside 0-300; fix the value")
    table["slide_id"] = slide_id
    if "reference_h_score_2" not in table.columns:
        table["reference_h_score_2"] = np.nan
    return table[columns]


def collect_cores(score_files: list[str], core_scores: dict[str, str | None]) -> pd.DataFrame:
    """Every IHC slide's core scores with their reference H-Scores and RAM-CNN input files.

    Args:
        score_files: results/slides/{slide}/ihc/scores.parquet of each IHC slide.
        core_scores: slide_id → reference CSV (sample-sheet column core_scores) or None.

    Returns:
        the scores rows plus reference_h_score, reference_h_score_2 and npz (path of the core's
        ramcnn_inputs.npz; empty for missing cores).
    """
    frames = []
    for path in score_files:
        scores = pd.read_parquet(path)
        folder = Path(path).parent / "cores"
        scores["npz"] = [
            "" if _not_scored(flags) else str(folder / str(core) / "ramcnn_inputs.npz")
            for core, flags in zip(scores["core_id"], scores["flags"], strict=True)
        ]
        frames.append(scores)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["slide_id", "core_id", "flags", "npz"])
    references = pd.concat([read_reference_scores(core_scores.get(s), s) for s in core_scores] or [read_reference_scores(None, "")], ignore_index=True)
    unknown = references[~references.set_index(["slide_id", "core_id"]).index.isin(table.set_index(["slide_id", "core_id"]).index)]
    for row in unknown.itertuples():
        logger.warning("core scores of slide %s name core %s, which the slide does not have; ignored", row.slide_id, row.core_id)
    return table.merge(references, on=["slide_id", "core_id"], how="left")


def ramcnn_predictions(table: pd.DataFrame, model_dir: str | None, cv_csv: str | None) -> pd.DataFrame:
    """RAM-CNN H-Score per core: the held-out (cross-validation) prediction for a core with a
    reference H-Score, the model trained on all of them for any other core.

    Returns:
        DataFrame slide_id, core_id, h_score_ramcnn, ramcnn_source ("cv_fold_k" or "model").
    """
    from bcpath.ihc.ramcnn import load_ramcnn, predict_h_scores

    rows: list[dict[str, Any]] = []
    done: set[tuple[str, str]] = set()
    if cv_csv:
        cv = pd.read_csv(cv_csv, dtype={"core_id": str, "slide_id": str})
        for r in cv.itertuples():
            rows.append({"slide_id": r.slide_id, "core_id": r.core_id, "h_score_ramcnn": float(r.predicted), "ramcnn_source": f"cv_fold_{int(r.fold)}"})
            done.add((r.slide_id, r.core_id))
    if model_dir:
        not_done = np.array([(s, c) not in done for s, c in zip(table["slide_id"], table["core_id"], strict=True)], bool)
        todo = table[(table["npz"].fillna("") != "").to_numpy() & not_done]
        if len(todo):
            model, _ = load_ramcnn(model_dir)
            pairs = []
            for npz in todo["npz"]:
                with np.load(npz) as data:
                    pairs.append((data["sini"], data["siti"]))
            predicted = predict_h_scores(model, pairs)
            for (s, c), h in zip(zip(todo["slide_id"], todo["core_id"], strict=True), predicted, strict=True):
                rows.append({"slide_id": s, "core_id": c, "h_score_ramcnn": float(h), "ramcnn_source": "model"})
    return pd.DataFrame(rows, columns=["slide_id", "core_id", "h_score_ramcnn", "ramcnn_source"])


def build_hscore_table(cores: pd.DataFrame, ramcnn: pd.DataFrame | None) -> pd.DataFrame:
    """results/cohort/hscore.csv (:data:`HSCORE_COLUMNS` first, then QC numbers) from
    :func:`collect_cores`'s table and :func:`ramcnn_predictions`."""
    table = cores.copy()
    if ramcnn is not None and len(ramcnn):
        table = table.merge(ramcnn, on=["slide_id", "core_id"], how="left")
    else:
        table["h_score_ramcnn"] = np.nan
        table["ramcnn_source"] = ""
    table["ramcnn_source"] = table["ramcnn_source"].fillna("")
    table["status"] = "ok"
    table["error"] = ""
    extra = [c for c in table.columns if c not in HSCORE_COLUMNS and c not in ("npz", "status", "error")]
    return table[[*HSCORE_COLUMNS, *extra, "status", "error"]]


def partial_hscore_table(slide_ids: list[str], scores_pattern: str, core_scores: dict[str, str | None], failures: dict[str, str]) -> pd.DataFrame:
    """hscore.csv from the IHC slides that were scored (cell scoring and NAP; RAM-CNN needs every
    slide), plus one row per other slide with status ``failed`` (and its error) or ``not_run``.

    Args:
        slide_ids: every IHC slide, in order.
        scores_pattern: results/slides/{slide}/ihc/scores.parquet.
        core_scores: slide id → reference CSV (sheet column core_scores) or None.
        failures: slide id → error message for slides that failed.
    """
    done = [s for s in slide_ids if Path(scores_pattern.format(slide=s)).is_file()]
    others = [{"slide_id": s, "status": "failed" if s in failures else "not_run", "error": failures.get(s, "")} for s in slide_ids if s not in done]
    if not done:
        return pd.DataFrame(others, columns=[*HSCORE_COLUMNS, "status", "error"])
    table = build_hscore_table(collect_cores([scores_pattern.format(slide=s) for s in done], {s: core_scores.get(s) for s in done}), None)
    return pd.concat([table, pd.DataFrame(others, columns=table.columns)], ignore_index=True) if others else table


def h_score_agreement(table: pd.DataFrame) -> dict[str, Any]:
    """MAE, SD of the error and Pearson r of each method (and a second reader) against the reference."""
    from bcpath.ihc.ramcnn import h_score_metrics

    result: dict[str, Any] = {}
    usable = table[table["reference_h_score"].notna() & ~table["flags"].fillna("").str.contains("missing")]
    for column in ("h_score_ramcnn", "h_score_cells", "h_score_nap", "reference_h_score_2"):
        if column not in usable.columns:
            continue
        pairs = usable[usable[column].notna()]
        if len(pairs) >= 2:
            result[column] = h_score_metrics(pairs["reference_h_score"].to_numpy(float), pairs[column].to_numpy(float))
    return result


def scatter_png(table: pd.DataFrame, path: str | Path) -> None:
    """Scatter of each method's H-Score against the reference (the report's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    usable = table[table["reference_h_score"].notna()]
    for column, label, marker in (("h_score_cells", "cell scoring", "o"), ("h_score_nap", "NAP", "s"), ("h_score_ramcnn", "RAM-CNN", "^")):
        pairs = usable[usable[column].notna()]
        if len(pairs):
            ax.scatter(pairs["reference_h_score"], pairs[column], label=label, marker=marker, alpha=0.8)
    ax.plot([0, 300], [0, 300], color="grey", lw=1)
    ax.set(xlim=(-10, 310), ylim=(-10, 310), xlabel="reference H-Score", ylabel="predicted H-Score", title="IHC H-Score per core")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


