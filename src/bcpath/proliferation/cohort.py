"""Cohort-level parts of the proliferation system: training crops for the mitosis model, the
detection threshold, the cohort feature table, embeddings and the evaluation figures. The rules'
steps are in :mod:`bcpath.steps.proliferation`:

train_tumor_locnet → locate_tumor (tumor.zarr/png/geojson) → [train_mitosis_model] →
detect_mitoses (mitoses.parquet/geojson, hotspot.geojson, features.json) →
train_proliferation_models (bag of words, grade and score models, cohort feature table) →
proliferation_table (predictions, evaluation, figures, results/cohort/proliferation.csv).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

EMBEDDING_PREFIX = "emb_"


# ---------------------------------------------------------------------------------- mitoses


def _window_mask(mask: np.ndarray, coarse: float, scale: float, x0: float, y0: float, window_px: int) -> np.ndarray:
    """The part of a coarse mask (pixel = ``coarse`` level-0 px) under a window of ``window_px``
    model px (pixel = ``scale`` level-0 px) at level-0 (x0, y0), resampled to the window."""
    import cv2

    r0, c0 = int(np.floor(y0 / coarse)), int(np.floor(x0 / coarse))
    span = int(np.ceil(window_px * scale / coarse)) + 1
    part = np.zeros((span, span), np.uint8)
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + span, mask.shape[0]), min(c0 + span, mask.shape[1])
    if rr1 > rr0 and cc1 > cc0:
        part[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = mask[rr0:rr1, cc0:cc1]
    size = int(round(span * coarse / scale))
    out = cv2.resize(part, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    # the window starts at x0, not at the coarse pixel's corner
    dy, dx = int(round((y0 - r0 * coarse) / scale)), int(round((x0 - c0 * coarse) / scale))
    return out[dy : dy + window_px, dx : dx + window_px].astype(bool)


def slide_training_crops(
    slide_path: str, slide_id: str, mitoses_csv: str, annotations: str | None, spec: Any, tumor_classes: list[str],
    negatives_per_slide: int, seed: int, crop_px: int, window_px: int = 1024, max_tumor_windows: int = 24, other_windows: int = 8,
) -> Any:
    """Crops of one annotated slide at the model's µm/px.

    Positives: every annotated mitosis (``mitoses_csv``: x, y level-0 px). Negatives: candidates
    farther than 8 µm from any annotated figure, ``negatives_per_slide`` from the tumour
    annotations (every window of the tumour's bounding box, at most ``max_tumor_windows``) and
    half as many from ``other_windows`` random windows elsewhere in the annotated tissue (normal
    lobules, ducts, stroma: what a tumour map that overreaches shows the detector). Memory stays
    bounded by one window whatever the slide size.

    Returns:
        (CropSet of positives + sampled negatives, every far candidate's crop for stage-2
        hard-negative mining and threshold choice).
    """
    from scipy.spatial import cKDTree

    from bcpath.proliferation.candidates import find_candidates
    from bcpath.proliferation.locnet import annotation_masks
    from bcpath.proliferation.mitosis import CropSet, extract_crops
    from bcpath.proliferation.slide import check_resolution
    from bcpath.wsi.reader import open_slide

    truth = pd.read_csv(mitoses_csv)
    rng = np.random.default_rng(seed)
    coarse_mpp = 8.0
    truth_xy = truth[["x", "y"]].to_numpy(float)
    tree = cKDTree(truth_xy) if len(truth_xy) else None
    with open_slide(slide_path, slide_id) as slide:
        check_resolution(slide_id, slide.mpp, spec)
        scale = spec.mpp / slide.mpp  # level-0 px per model px
        coarse = coarse_mpp / slide.mpp  # level-0 px per coarse px
        width0, height0 = slide.dimensions
        shape = (math.ceil(height0 / coarse), math.ceil(width0 / coarse))
        if annotations:
            tumor, annotated = annotation_masks(annotations, shape, 1.0 / coarse, (0.0, 0.0), tumor_classes)
        else:
            tumor = annotated = np.ones(shape, bool)
        if not tumor.any():
            tumor = np.ones(shape, bool)
        other = annotated & ~tumor
        if not other.any():
            other = ~tumor if (~tumor).any() else tumor
        half = crop_px / 2 * scale
        positives = (
            np.stack([slide.read_region(x - half, y - half, crop_px, crop_px, spec.mpp) for x, y in truth_xy])
            if len(truth_xy) else np.zeros((0, crop_px, crop_px, 3), np.uint8)
        )
        side = window_px * scale  # level-0 px
        rows, cols = np.nonzero(tumor)
        top, left = rows.min() * coarse, cols.min() * coarse
        bottom, right = (rows.max() + 1) * coarse, (cols.max() + 1) * coarse
        tumor_windows = [(x, y) for y in np.arange(top, bottom, side) for x in np.arange(left, right, side)
                         if _window_mask(tumor, coarse, scale, x, y, window_px).any()]
        if len(tumor_windows) > max_tumor_windows:
            tumor_windows = [tumor_windows[i] for i in rng.choice(len(tumor_windows), max_tumor_windows, replace=False)]
        orows, ocols = np.nonzero(other)
        picks = rng.integers(len(orows), size=other_windows)
        other_list = [((ocols[k] + 0.5) * coarse - side / 2, (orows[k] + 0.5) * coarse - side / 2) for k in picks]
        pools: dict[str, list[np.ndarray]] = {"tumor": [], "other": []}
        for kind, windows, region in (("tumor", tumor_windows, tumor), ("other", other_list, other)):
            for x0, y0 in windows:
                rgb = slide.read_region(x0, y0, window_px, window_px, spec.mpp)
                found = find_candidates(rgb, spec.mpp, mask=_window_mask(region, coarse, scale, x0, y0, window_px))
                cx, cy = found["x"].to_numpy(), found["y"].to_numpy()
                if tree is not None and len(cx):
                    keep = tree.query(np.stack([x0 + cx * scale, y0 + cy * scale], 1))[0] > 8.0 / slide.mpp
                    cx, cy = cx[keep], cy[keep]
                pools[kind].append(extract_crops(rgb, cx, cy, crop_px))
    empty = np.zeros((0, crop_px, crop_px, 3), np.uint8)
    chosen = []
    for kind, n in (("tumor", negatives_per_slide), ("other", negatives_per_slide // 2)):
        pool_k = np.concatenate(pools[kind]) if pools[kind] else empty
        chosen.append(pool_k[rng.choice(len(pool_k), size=min(len(pool_k), n), replace=False)] if len(pool_k) else empty)
    pool = np.concatenate([np.concatenate(pools[k]) if pools[k] else empty for k in ("tumor", "other")])
    negatives = np.concatenate(chosen)
    images = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    crops = CropSet(images, labels, np.full(len(labels), -1, np.int64), np.full(len(labels), slide_id))
    return crops, pool


def detection_threshold(setting: Any, weights: str, train_json: str | None) -> float:
    """A number as given; ``auto`` = the threshold in the model's train.json (the training
    rule's, or one beside registry weights), else 0.5."""
    if setting != "auto":
        return float(setting)
    record = Path(train_json) if train_json else Path(weights).parent / "train.json"
    if record.is_file():
        value = json.loads(record.read_text()).get("threshold")
        if value is not None:
            return float(value)
    logger.info("detection threshold: no threshold recorded beside %s; using 0.5", weights)
    return 0.5


# ---------------------------------------------------------------------------------- cohort


def feature_table(features_json: list[str]) -> pd.DataFrame:
    """One row per slide: slide_id, flags and every handcrafted feature."""
    rows = []
    for path in features_json:
        data = json.loads(Path(path).read_text())
        rows.append({"slide_id": data["slide_id"], "flags": ";".join(data["flags"]), **data["features"]})
    return pd.DataFrame(rows).set_index("slide_id", drop=False)


def mitosis_embeddings(mitoses: str) -> np.ndarray:
    """The embedding columns of a mitoses.parquet, (N, D) float64."""
    table = pd.read_parquet(mitoses)
    columns = [c for c in table.columns if c.startswith(EMBEDDING_PREFIX)]
    return table[columns].to_numpy(dtype=np.float64)


def proliferation_figures(test: pd.DataFrame, grade_model: Any, score_model: Any, roc_path: str, scatter_path: str) -> None:
    """One-vs-all ROC of the grade on the test slides, and predicted vs reference score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bcpath.erpr.evaluation import roc_points
    from bcpath.io import atomic_path
    from bcpath.proliferation.slide_models import GRADES

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if grade_model is not None and test["grade"].notna().any():
        known = test[test["grade"].notna()]
        for g in GRADES:
            y = (known["grade"] == g).to_numpy()
            if 0 < y.sum() < len(y):
                fpr, tpr = roc_points(y, known[f"p_grade_{g}"].to_numpy())
                ax.plot(fpr, tpr, label=f"grade {g} vs rest")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="grade, test slides")
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(roc_path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if score_model is not None and test["proliferation"].notna().any():
        ax.scatter(test["proliferation"], test["predicted_score"], c="C1")
        for row in test.itertuples():
            ax.annotate(str(row.slide_id), (row.proliferation, row.predicted_score), fontsize=7)
        lo = float(np.nanmin([test["proliferation"].min(), test["predicted_score"].min()]))
        hi = float(np.nanmax([test["proliferation"].max(), test["predicted_score"].max()]))
        ax.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax.set(xlabel="reference proliferation score", ylabel="predicted", title="proliferation score, test slides")
    with atomic_path(scatter_path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
