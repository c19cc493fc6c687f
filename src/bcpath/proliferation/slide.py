"""Slide-level mitosis detection: the tumour region read tile by tile at the model's µm/px.

Memory stays bounded by one tile (``tile_px`` + margin): candidates are searched in each tile's
core (inside the tumour mask), crops come from the tile with its margin, and a last global
non-maximum suppression removes figures split across a tile border. The heap is trimmed after
each tile (:func:`bcpath.io.release_free_memory`), so freed tile arrays do not pile up as
resident memory over the hundreds of tumour tiles of a real-size slide.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.io import release_free_memory
from bcpath.proliferation.candidates import non_maximum_suppression
from bcpath.proliferation.mitosis import DETECTION_COLUMNS, DetectionParams, detect_in_image

if TYPE_CHECKING:
    import torch

    from bcpath.models.registry import ModelSpec
    from bcpath.wsi.reader import Slide

logger = logging.getLogger(__name__)

MPP_TOLERANCE = 1.25
"""A slide may be at most this much coarser than the model's µm/px (resampling up beyond that
invents detail the model was never shown)."""


def check_resolution(slide_id: str, slide_mpp: float, spec: ModelSpec) -> None:
    """Refuse a slide scanned coarser than the mitosis model allows (message names slide and fix)."""
    if slide_mpp > spec.mpp * MPP_TOLERANCE:
        raise BcpathError(
            f"slide {slide_id}: scanned at {slide_mpp:.3f} µm/px, coarser than mitosis model {spec.model_id} "
            f"allows ({spec.mpp} µm/px, up to {spec.mpp * MPP_TOLERANCE:.3f}); rescan at a higher magnification, "
            "or use a model trained at this resolution (proliferation.mitosis_model)"
        )


def detect_slide(
    slide: Slide,
    tumor: NDArray[np.bool_],
    tumor_mpp: float,
    model: torch.nn.Module,
    spec: ModelSpec,
    params: DetectionParams | None = None,
    tile_px: int = 1024,
    margin_px: int = 48,
) -> tuple[pd.DataFrame, NDArray[np.float32]]:
    """Mitotic figures in the tumour of a slide.

    Args:
        slide: the open slide.
        tumor: (H, W) bool tumour mask, pixel (0, 0) at level-0 (0, 0), at ``tumor_mpp``.
        model, spec: the loaded mitosis classifier and its registry entry.
        params: detection settings (embeddings are always returned here).
        tile_px, margin_px: tile core and context margin at ``spec.mpp``.

    Returns:
        (detections with columns x0, y0 (level-0 px) + :data:`DETECTION_COLUMNS` (x, y dropped),
        embeddings (n, D) float32 in the same order).
    """
    import cv2

    check_resolution(slide.slide_id, slide.mpp, spec)
    params = params or DetectionParams()
    params = DetectionParams(params.threshold, params.nms_um, params.candidates, embeddings=True)
    width0, height0 = slide.dimensions
    scale = spec.mpp / slide.mpp  # level-0 px per model px
    width, height = math.ceil(width0 / scale), math.ceil(height0 / scale)
    frames: list[pd.DataFrame] = []
    embeddings: list[NDArray[np.float32]] = []
    tiles_read = 0
    for top in range(0, height, tile_px):
        for left in range(0, width, tile_px):
            # The tumour mask over this tile core, at the model's µm/px.
            m_scale = spec.mpp / tumor_mpp
            r0, r1 = int(top * m_scale), int(math.ceil((top + tile_px) * m_scale))
            c0, c1 = int(left * m_scale), int(math.ceil((left + tile_px) * m_scale))
            window = tumor[r0:r1, c0:c1]
            if not window.any():
                continue
            tiles_read += 1
            size = tile_px + 2 * margin_px
            rgb = slide.read_region((left - margin_px) * scale, (top - margin_px) * scale, size, size, spec.mpp)
            core = np.zeros((size, size), np.uint8)
            # mask pixels of the core at model resolution, centre-aligned nearest neighbour
            mask_core = cv2.resize(window.astype(np.uint8), (tile_px, tile_px), interpolation=cv2.INTER_NEAREST_EXACT)
            ch, cw = min(tile_px, height - top), min(tile_px, width - left)
            core[margin_px : margin_px + ch, margin_px : margin_px + cw] = mask_core[:ch, :cw]
            found, emb = detect_in_image(rgb, model, spec, params, mask=core.astype(bool))
            del rgb, core, mask_core
            release_free_memory()  # else freed tile-sized arrays stay resident, 2 MB more per tile
            if len(found):
                found = found.assign(
                    x0=(left - margin_px + found["x"]) * scale, y0=(top - margin_px + found["y"]) * scale
                )
                frames.append(found)
                embeddings.append(emb)
    columns = ["x0", "y0", *[c for c in DETECTION_COLUMNS if c not in ("x", "y")]]
    if not frames:
        logger.info("slide %s: %d tumour tiles, no mitoses", slide.slide_id, tiles_read)
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}), np.zeros((0, int(getattr(model, "embed_dim", 0))), np.float32)
    table = pd.concat(frames, ignore_index=True)
    emb_all = np.concatenate(embeddings)
    kept = non_maximum_suppression(table["x0"].to_numpy(), table["y0"].to_numpy(), table["probability"].to_numpy(), params.nms_um / slide.mpp)
    logger.info("slide %s: %d tumour tiles, %d mitoses", slide.slide_id, tiles_read, len(kept))
    return table.iloc[kept][columns].reset_index(drop=True), emb_all[kept]


def tumor_mask_from_map(p_map: NDArray[np.float32], meta: dict[str, Any], threshold: float, out_mpp: float, level0_mpp: float, slide_dims: tuple[int, int]) -> NDArray[np.bool_]:
    """A tumour probability map (tumor.zarr cells) as a bool mask over the whole slide at ``out_mpp``.

    ``meta`` is tumor.zarr's ``bcpath`` block (origin_x0/y0, level0_px_per_cell).
    """
    width0, height0 = slide_dims
    out_w, out_h = math.ceil(width0 * level0_mpp / out_mpp), math.ceil(height0 * level0_mpp / out_mpp)
    cell_level0 = float(meta["level0_px_per_cell"])
    ox, oy = float(meta["origin_x0"]), float(meta["origin_y0"])
    # centre of each output pixel in level-0 px → cell index
    xs = ((np.arange(out_w) + 0.5) * out_mpp / level0_mpp - ox) / cell_level0
    ys = ((np.arange(out_h) + 0.5) * out_mpp / level0_mpp - oy) / cell_level0
    cols, rows = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    valid_c = (cols >= 0) & (cols < p_map.shape[1])
    valid_r = (rows >= 0) & (rows < p_map.shape[0])
    selected = np.nan_to_num(p_map, nan=0.0) >= threshold
    mask = selected[np.clip(rows, 0, p_map.shape[0] - 1)][:, np.clip(cols, 0, p_map.shape[1] - 1)]
    mask &= valid_r[:, None] & valid_c[None, :]
    return mask


def mitosis_features_geojson(detections: pd.DataFrame) -> list[dict[str, Any]]:
    """Detections as QuPath detection objects (class "Mitosis"), one Point each at its level-0
    position with probability, atypical probability and morphometry as measurements."""
    from bcpath import geojson

    features = []
    for row in detections.itertuples(index=False):
        features.append(
            geojson.feature(
                {"type": "Point", "coordinates": [round(float(row.x0), 1), round(float(row.y0), 1)]},
                object_type="detection", classification="Mitosis", color=[255, 0, 255],
                name=f"mitosis p={float(row.probability):.2f}",
                measurements={
                    "probability": float(row.probability), "atypical probability": float(row.atypical_probability),
                    "area um2": float(row.area_um2), "eccentricity": float(row.eccentricity),
                    "solidity": float(row.solidity), "mean hematoxylin OD": float(row.mean_od),
                },
            )
        )
    return features
