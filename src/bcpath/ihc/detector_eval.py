"""Validation of IHC nucleus detectors on the annotated DeepLIIF Ki67 tiles (validation only).

For each detector and tile: nuclei → cells (:func:`bcpath.ihc.cells.detect_cells`, same
measurement for every detector), positive = nuclear DAB OD ≥ 0.2 (1+), cell centroids matched
one-to-one to the ground truth within 8 px (2 µm at 0.25 µm/px; the ground-truth mask first
moved onto its image, :func:`bcpath.ihc.evaluate.estimate_mask_shift`). Per tile: detection
precision / recall / F1, positive/negative accuracy of the matched cells, % positive of detected
vs annotated cells and its absolute error; then the mean over tiles and the worst tile.

Detectors (:data:`DETECTORS`):

- ``threshold``: the QuPath-like threshold detector of :mod:`bcpath.ihc.cells` (its own defaults);
- ``unet``: the H&E nuclei U-Net (``models/nuclei_unet_v2``) on the tile and on its view with
  DAB counted as hematoxylin (:mod:`bcpath.ihc.unet_detector`), the default detector of
  :func:`bcpath.ihc.score.score_core`; nothing about it is fitted on DeepLIIF;
- ``od_sum``: :mod:`bcpath.ihc.odsum`, with its free parameters chosen leave-one-tile-out
  (:func:`leave_one_tile_out`: for each tile the candidate with the best mean F1 on the other
  tiles, scored on that tile);
- ``learned``: :mod:`bcpath.ihc.nuclei_net` (``models/ihc_nuclei``), trained on H&E re-rendered as
  IHC; nothing about it is fitted on DeepLIIF, so every tile is held out.

Command line: ``bcpath ihc detector-eval`` (also bench/ihc_detector.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.ihc.evaluate import (
    DEEPLIIF_MPP,
    DeepliifTile,
    cell_metrics,
    estimate_mask_shift,
    ground_truth_cells,
)

logger = logging.getLogger(__name__)

#: The issue's matching radius: 8 px = 2 µm at DeepLIIF's 0.25 µm/px.
RADIUS_PX = 8.0
DETECTORS = ("threshold", "unet", "od_sum", "learned")
#: Repository folder holding the shipped models (source checkout).
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"

Segmenter = Callable[[np.ndarray, float], np.ndarray]


def _gt(tile: DeepliifTile) -> tuple[np.ndarray, np.ndarray]:
    gt = ground_truth_cells(tile.mask)
    return gt["xy"] + np.array(estimate_mask_shift(tile.rgb, tile.mask), float), gt["positive"]


def tile_metrics(tile: DeepliifTile, segmenter: Segmenter | None, radius: float = RADIUS_PX) -> dict[str, Any]:
    """Metrics of one detector (None = the threshold detector) on one tile."""
    from bcpath.ihc.cells import detect_cells

    started = time.perf_counter()
    nuclei = segmenter(tile.rgb, DEEPLIIF_MPP) if segmenter is not None else None
    det = detect_cells(tile.rgb, DEEPLIIF_MPP, nuclei=nuclei)
    seconds = time.perf_counter() - started
    gt_xy, gt_pos = _gt(tile)
    m = cell_metrics(det.xy, det.positive(), gt_xy, gt_pos, radius=radius).as_dict()
    return {"tile": tile.name, **m, "seconds": round(seconds, 2)}


def fade_hematoxylin(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` with its hematoxylin amount × ``factor`` (DAB and residual kept): the same cells
    under a paler counterstain, to check that pale negative nuclei are still found."""
    from bcpath.stain.deconvolution import (
        combine_stains,
        estimate_white,
        paper_stain_vectors,
        separate_stains,
    )

    sv = paper_stain_vectors()
    i0 = estimate_white(rgb)
    conc = separate_stains(rgb, sv, i0)
    conc[..., 0] *= factor
    return combine_stains(conc, sv, i0)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over tiles and worst tile (lowest F1, lowest accuracy, largest % positive error)."""
    f1 = [r["f1"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [r["percent_positive_abs_error"] for r in rows]
    worst = rows[int(np.argmin(f1))]
    return {
        "mean_f1": round(float(np.mean(f1)), 4),
        "mean_precision": round(float(np.mean([r["precision"] for r in rows])), 4),
        "mean_recall": round(float(np.mean([r["recall"] for r in rows])), 4),
        "mean_accuracy": round(float(np.nanmean(acc)), 4),
        "mean_percent_positive_abs_error": round(float(np.mean(err)), 2),
        "worst_f1": round(float(min(f1)), 4),
        "worst_f1_tile": worst["tile"],
        "worst_accuracy": round(float(np.nanmin(acc)), 4),
        "worst_percent_positive_abs_error": round(float(max(err)), 2),
    }


def od_sum_candidates() -> list[Any]:
    """The OD-sum detector settings :func:`leave_one_tile_out` chooses among: the seed scale
    factor (× the image's median single-nucleus radius) and the threshold scale (× Otsu)."""
    from bcpath.ihc.odsum import OdSumParams

    base = OdSumParams()
    return [replace(base, radius_factor=f, threshold_scale=s) for f in (0.7, 0.8, 0.9) for s in (0.8, 1.0, 1.2)]


def leave_one_tile_out(
    tiles: Sequence[DeepliifTile],
    make_segmenter: Callable[[Any], Segmenter],
    candidates: Sequence[Any],
    radius: float = RADIUS_PX,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Per tile: the candidate with the best mean F1 on the *other* tiles, scored on this tile.

    Returns:
        (one metrics row per tile with ``chosen`` = the candidate's index, the chosen candidates).
    """
    table = [[tile_metrics(t, make_segmenter(c), radius) for t in tiles] for c in candidates]
    rows, chosen = [], []
    for k, tile in enumerate(tiles):
        others = [float(np.mean([row[j]["f1"] for j in range(len(tiles)) if j != k])) for row in table]
        best = int(np.argmax(others))
        rows.append({**table[best][k], "chosen": best, "chosen_on_others_f1": round(others[best], 4)})
        chosen.append(candidates[best])
        logger.info("held out %s: chose candidate %d (F1 %.3f on the others), F1 %.3f here", tile.name, best, others[best], table[best][k]["f1"])
    return rows, chosen


def segmenter_for(name: str, models_dir: str | Path | None = None) -> Segmenter | None:
    """The segmenter of a detector name (None for ``threshold``)."""
    from bcpath.errors import BcpathError
    from bcpath.ihc.score import nuclei_model_segmenter

    models = Path(models_dir) if models_dir else MODELS_DIR
    if name == "unet":
        from bcpath.ihc.score import UNET_PREFIX

        return nuclei_model_segmenter(f"{UNET_PREFIX}{models / 'nuclei_unet_v2'}")
    if name == "learned":
        return nuclei_model_segmenter(models / "ihc_nuclei")
    if name in ("threshold", "od_sum"):
        return nuclei_model_segmenter(name)
    raise BcpathError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")


def compare_detectors(
    root: str | Path,
    detectors: Sequence[str] = DETECTORS,
    models_dir: str | Path | None = None,
    radius: float = RADIUS_PX,
    fade: float | None = None,
) -> dict[str, Any]:
    """Per-tile metrics, mean and worst tile of each detector on the annotated DeepLIIF tiles.

    ``od_sum`` is reported twice: ``od_sum`` with its shipped defaults and ``od_sum_loto`` with
    its settings chosen leave-one-tile-out (:func:`leave_one_tile_out`). ``fade``: scale every
    tile's hematoxylin by this first (:func:`fade_hematoxylin`; a paler counterstain).
    """
    from bcpath.ihc.nuclei_training import annotated_tiles

    tiles = annotated_tiles(root)
    if fade is not None:
        tiles = [replace(t, rgb=fade_hematoxylin(t.rgb, fade)) for t in tiles]
    result: dict[str, Any] = {"root": str(root), "fade": fade, "radius_px": radius, "mpp": DEEPLIIF_MPP, "tiles": [t.name for t in tiles], "detectors": {}}
    for name in detectors:
        segmenter = segmenter_for(name, models_dir)
        rows = [tile_metrics(t, segmenter, radius) for t in tiles]
        result["detectors"][name] = {"tiles": rows, **summarise(rows)}
        if name == "od_sum":
            from bcpath.ihc.odsum import od_sum_segmenter

            candidates = od_sum_candidates()
            loto, chosen = leave_one_tile_out(tiles, od_sum_segmenter, candidates, radius)
            result["detectors"]["od_sum_loto"] = {
                "tiles": loto,
                **summarise(loto),
                "chosen": [{"tile": t.name, "radius_factor": c.radius_factor, "threshold_scale": c.threshold_scale} for t, c in zip(tiles, chosen, strict=True)],
            }
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per detector and tile, then mean and worst."""
    lines = [
        "| detector | tile | n gt | n found | P | R | F1 (8 px) | pos/neg acc | % pos found / true | abs error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in result["detectors"].items():
        for r in res["tiles"]:
            lines.append(
                f"| {name} | {r['tile']} | {r['n_gt']} | {r['n_pred']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                f"{r['accuracy']:.3f} | {r['percent_positive_pred']:.1f} / {r['percent_positive_gt']:.1f} | {r['percent_positive_abs_error']:.1f} |"
            )
        lines.append(
            f"| {name} | **mean** | | | {res['mean_precision']:.3f} | {res['mean_recall']:.3f} | **{res['mean_f1']:.3f}** | {res['mean_accuracy']:.3f} | | "
            f"{res['mean_percent_positive_abs_error']:.1f} |"
        )
        lines.append(
            f"| {name} | **worst** ({res['worst_f1_tile']}) | | | | | **{res['worst_f1']:.3f}** | {res['worst_accuracy']:.3f} | | "
            f"{res['worst_percent_positive_abs_error']:.1f} |"
        )
    return "\n".join(lines)
