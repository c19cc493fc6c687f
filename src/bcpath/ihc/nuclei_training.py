"""Nuclei for IHC scoring learned from annotated IHC cells (DeepLIIF-style masks).

The H&E nuclei U-Net (``models/nuclei_unet``) finds DAB and hematoxylin nuclei on IHC, but
misses pale hematoxylin nuclei that IHC annotators count (DeepLIIF: recall 0.62 at 8 px).
Fine-tuning it on annotated IHC tiles is the way to teach it those. This module

- writes annotated DeepLIIF tiles as a nuclei training folder in CPM-15 layout
  (``images/<name>.png``, ``inst_masks/<name>_inst.tif``, ``mpp.json``), which
  ``bcpath nuclei train`` reads (:func:`write_nuclei_training_folder`);
- measures what fine-tuning buys by leave-one-tile-out cross-validation: for each annotated
  tile, fine-tune on the others (one of them for early stopping and the threshold), detect cells
  on the held-out tile and match them to its ground truth (:func:`cross_validate`).

Command line: ``bcpath ihc nuclei-data`` and ``bcpath ihc nuclei-cv``.

Measured on the 4 DeepLIIF Ki67 tiles (2026-12-02, ``bcpath ihc nuclei-cv`` defaults: 0.5 µm/px,
200 epochs, lr 3e-4, from models/nuclei_unet): recall at 8 px rises from 0.62 to 0.70 but
precision falls from 0.87 to 0.75, so pooled F1 stays level (0.726 vs 0.723); per tile
22_2 0.756 → 0.672, 6_2 0.484 → 0.672, Bladder1 0.704 → 0.738, Lung1 0.831 → 0.857. Three
training tiles (one of them for early stopping) are too few; fine-tuned models merge touching
nuclei that the masks split.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from bcpath.errors import BcpathError
from bcpath.ihc.evaluate import (
    DEEPLIIF_MPP,
    DeepliifTile,
    cell_metrics,
    estimate_mask_shift,
    ground_truth_cells,
    ground_truth_labels,
    load_deepliif,
    pool_metrics,
)

logger = logging.getLogger(__name__)

__all__ = ["annotated_tiles", "cross_validate", "write_nuclei_training_folder"]

#: Matching radius of the cross-validation (the issue's 8 px = 2 µm at 0.25 µm/px).
CV_RADIUS_PX = 8.0


def annotated_tiles(root: str | Path) -> list[DeepliifTile]:
    """Every annotated tile of a DeepLIIF folder (``test`` then ``val``), names unique."""
    tiles = load_deepliif(root, "test") + load_deepliif(root, "val")
    names = [t.name for t in tiles]
    if not tiles:
        raise BcpathError(f"{root}: no annotated DeepLIIF tiles under test/ or val/")
    if len(set(names)) != len(names):
        raise BcpathError(f"{root}: tile names repeat between test/ and val/: {sorted(names)}")
    return tiles


def write_nuclei_training_folder(
    tiles: Sequence[DeepliifTile], out: str | Path, mpp: float = DEEPLIIF_MPP
) -> Path:
    """Write ``tiles`` (images at ``mpp`` µm/px) as a CPM-15-layout nuclei training folder.

    Images are written as they are, with ``mpp.json`` = {"*": mpp}; each mask is moved onto
    its image first (:func:`estimate_mask_shift`) and written as instance labels
    (:func:`ground_truth_labels`). Names are prefixed ``ihc_``. Returns ``out``.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "inst_masks").mkdir(exist_ok=True)
    (out / "mpp.json").write_text(json.dumps({"*": mpp}))
    for tile in tiles:
        labels = ground_truth_labels(tile.mask, estimate_mask_shift(tile.rgb, tile.mask))
        name = f"ihc_{tile.name}"
        if not cv2.imwrite(str(out / "images" / f"{name}.png"), cv2.cvtColor(tile.rgb, cv2.COLOR_RGB2BGR)):
            raise BcpathError(f"could not write {out / 'images' / name}.png")
        tifffile.imwrite(out / "inst_masks" / f"{name}_inst.tif", labels.astype(np.uint16))
    return out


def _link_subset(source: Path, names: Sequence[str], out: Path) -> Path:
    """A folder of links to ``names`` of a written training folder (one CV fold's data)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "mpp.json").write_text((source / "mpp.json").read_text())
    for sub, suffix in (("images", ".png"), ("inst_masks", "_inst.tif")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = out / sub / f"ihc_{name}{suffix}"
            if not link.exists():
                link.symlink_to((source / sub / f"ihc_{name}{suffix}").resolve())
    return out


def cross_validate(
    root: str | Path,
    out: str | Path,
    init_from: str | Path,
    *,
    epochs: int = 200,
    lr: float = 3e-4,
    seed: int = 0,
    model_mpp: float = 0.5,
    held_out: Sequence[str] | None = None,
    avoid_for_validation: Sequence[str] = ("6_2",),
) -> dict[str, Any]:
    """Leave-one-tile-out fine-tuning of the nuclei U-Net ``init_from`` on DeepLIIF tiles.

    For each held-out tile: train on the other tiles, stopping early (patience epochs/3) on the
    next tile in order that is not in ``avoid_for_validation`` (6_2 leaves many nuclei
    unannotated, a poor stopping signal) and choosing the decoding threshold there; then detect
    cells on the held-out tile with :func:`bcpath.ihc.cells.detect_cells` and those nuclei, and
    match them within 8 px to its ground truth. The same tile is also scored with ``init_from``
    as is, so each row compares fine-tuned against not.

    Args:
        root: DeepLIIF folder (``test``, ``test_groundtruth``, ``val``).
        out: work folder: ``data/`` (all tiles), ``<tile>/`` (fold data and model), ``cv.json``.
        init_from: nuclei model folder to start from (e.g. models/nuclei_unet).
        epochs, lr, seed: fine-tuning settings (batch 4, Adam, no stain normalisation).
        model_mpp: µm/px the fine-tuned model works at (0.25 = DeepLIIF's own resolution:
            the thin gaps between touching nuclei survive).
        held_out: tile names to hold out (default: every tile).
        avoid_for_validation: tiles never used for early stopping while others remain.

    Returns:
        ``{"folds": [per tile: name, validation tile, minutes, threshold, fine_tuned / initial
        metrics (cell_metrics dicts)], "pooled": {"fine_tuned", "initial"}, settings}``,
        also written to ``out/cv.json``.
    """
    from bcpath.ihc.cells import detect_cells
    from bcpath.nuclei.slide import get_segmenter
    from bcpath.nuclei.training import train_nuclei_model

    out = Path(out)
    tiles = annotated_tiles(root)
    if len(tiles) < 3:
        raise BcpathError(f"{root}: cross-validation needs at least 3 annotated tiles, found {len(tiles)}")
    names = [t.name for t in tiles]
    chosen = list(held_out) if held_out else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise BcpathError(f"held-out tiles {unknown} are not in {root} (tiles: {names})")
    data = write_nuclei_training_folder(tiles, out / "data")
    initial = get_segmenter(str(init_from))
    folds: list[dict[str, Any]] = []
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {"fine_tuned": [], "initial": []}
    for k, test in enumerate(tiles):
        if test.name not in chosen:
            continue
        order = [tiles[(k + j) % len(tiles)].name for j in range(1, len(tiles))]
        val = next((n for n in order if n not in avoid_for_validation), order[0])
        fold_dir = out / test.name
        started = time.monotonic()
        meta = train_nuclei_model(
            [_link_subset(data, order, fold_dir / "data")],
            fold_dir / "model",
            encoder="plain",
            epochs=epochs,
            lr=lr,
            patience=max(epochs // 3, 5),
            seed=seed,
            val_organs=(),
            val_names=(f"ihc_{val}",),
            stain_normalisation=False,
            init_from=init_from,
            model_mpp=model_mpp,
        )
        tuned = get_segmenter(str(fold_dir / "model"))
        gt = ground_truth_cells(test.mask)
        gt_xy = gt["xy"] + np.array(estimate_mask_shift(test.rgb, test.mask), float)
        row: dict[str, Any] = {"tile": test.name, "validation_tile": val, "threshold": meta["threshold"],
                               "epochs_run": meta["epochs_run"], "best_epoch": meta["best_epoch"]}
        for key, segmenter in (("fine_tuned", tuned), ("initial", initial)):
            det = detect_cells(test.rgb, DEEPLIIF_MPP, nuclei=segmenter(test.rgb, DEEPLIIF_MPP))
            metrics = cell_metrics(det.xy, det.positive(), gt_xy, gt["positive"], radius=CV_RADIUS_PX)
            row[key] = metrics.as_dict()
            pooled[key].append((det.xy, det.positive(), gt_xy, gt["positive"]))
        row["minutes"] = (time.monotonic() - started) / 60
        logger.info("held out %s: F1 %.3f fine-tuned, %.3f before", test.name, row["fine_tuned"]["f1"], row["initial"]["f1"])
        folds.append(row)
    result = {
        "init_from": str(init_from),
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "model_mpp": model_mpp,
        "radius_px": CV_RADIUS_PX,
        "folds": folds,
        "pooled": {key: pool_metrics(per, CV_RADIUS_PX).as_dict() for key, per in pooled.items()},
    }
    (out / "cv.json").write_text(json.dumps(result, indent=2))
    return result
