"""Stage-1 inference and heatmaps on a real slide (../shared/data/wsi/CMU-1-Small-Region.svs).

The model is an untrained 3-class ResNet-18 (no trained ER/PR/HER2 weights ship); what is
checked is the path a real slide takes: OpenSlide → tissue → tiles.zarr → patches at a dense
stride → predictions in level-0 px → heatmap Zarr, overlay PNG and QuPath GeoJSON.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from bcpath.erpr.cohort import render_heatmaps
from bcpath.erpr.heatmaps import read_heatmap_zarr
from bcpath.erpr.inference import predict_slide, read_predictions, write_predictions
from bcpath.geojson import read_geojson
from bcpath.models.registry import build_model
from tests.model_specs import test_spec

SPEC = test_spec(
    128, model_id="real_slide_check",
    classes=("ER-positive invasive carcinoma", "ER-negative invasive carcinoma", "non-tumor"),
)
MASK_MPP = 8.0


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    import torch

    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide
    from tests.conftest import _require_shared

    path = _require_shared("wsi/CMU-1-Small-Region.svs")
    out = tmp_path_factory.mktemp("erpr_real")
    with open_slide(path, "CMU-1-Small-Region") as slide:
        thumbnail = slide.thumbnail(MASK_MPP)
        mask = detect_tissue(thumbnail, MASK_MPP, TissueParams())
        grid = tile_slide(slide, mask, MASK_MPP, out / "tiles.zarr", out / "grid.parquet", None, TilingParams(mpp=2.0, tile_px=128))
        level0_mpp, (width, height) = slide.mpp, slide.dimensions
    cv2.imwrite(str(out / "thumbnail.png"), cv2.cvtColor(thumbnail, cv2.COLOR_RGB2BGR))
    torch.manual_seed(0)
    model = build_model(SPEC)
    everywhere = predict_slide(
        model, SPEC, out / "tiles.zarr", out / "grid.parquet", stride_px=64,
        batch_size=32, device="cpu", progress=False, threads=2,
    )
    table = predict_slide(  # as rule predict_patches runs it: patch centres on the tissue mask
        model, SPEC, out / "tiles.zarr", out / "grid.parquet", stride_px=64,
        batch_size=32, device="cpu", progress=False, threads=2, tissue_mask=mask, mask_mpp=MASK_MPP,
    )
    write_predictions(table, out / "pred.parquet")
    summary = render_heatmaps(
        out / "pred.parquet", out / "thumbnail.png", MASK_MPP, level0_mpp,
        out / "heat.zarr", out / "heat.png", out / "heat.geojson", geojson_threshold=0.3,
    )
    return {
        "out": out, "grid": grid, "mask": mask, "summary": summary, "size": (width, height),
        "mpp": level0_mpp, "everywhere": everywhere,
    }


def test_half_stride_gives_four_patches_per_tissue_tile_then_keeps_those_on_tissue(real_run):
    table = read_predictions(real_run["out"] / "pred.parquet")
    everywhere = real_run["everywhere"]
    n_tiles = real_run["grid"].n_tiles
    assert n_tiles >= 10
    # Without the mask: patch centres fall in tissue tiles, 4 per tile (fewer at the image edge).
    assert 3 * n_tiles <= len(everywhere) <= 4 * n_tiles
    # With it: a subset, same coordinates, same probabilities.
    assert 0.3 * len(everywhere) < len(table) < len(everywhere)
    merged = table.merge(everywhere, on=["x", "y"], suffixes=("", "_all"))
    assert len(merged) == len(table)
    np.testing.assert_allclose(merged.p_0, merged.p_0_all, atol=1e-5)
    probs = table[["p_0", "p_1", "p_2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    width, height = real_run["size"]
    side = 128 * 2.0 / real_run["mpp"]
    centre_x = table["x0"].to_numpy() + side / 2
    centre_y = table["y0"].to_numpy() + side / 2
    # tiles.zarr is whole tiles, so edge tiles reach past the slide's edge (white padding);
    # a patch centre may lie there by less than half a stride.
    half_stride = 32 * 2.0 / real_run["mpp"]
    assert (centre_x >= 0).all() and (centre_x < width + half_stride).all()
    assert (centre_y >= 0).all() and (centre_y < height + half_stride).all()
    mask = real_run["mask"]
    rows = (centre_y * real_run["mpp"] / MASK_MPP).astype(int)
    cols = (centre_x * real_run["mpp"] / MASK_MPP).astype(int)
    assert mask[rows, cols].all()


def test_heatmap_files_agree_with_the_predictions(real_run):
    out = real_run["out"]
    maps, attrs = read_heatmap_zarr(out / "heat.zarr")
    table = read_predictions(out / "pred.parquet")
    assert maps.shape[0] == 3
    assert np.count_nonzero(~np.isnan(maps[0])) == len(table)
    assert attrs["stride_px"] == 64 and attrs["cell_mpp"] == pytest.approx(128.0)
    overlay = cv2.imread(str(out / "heat.png"))
    thumbnail = cv2.imread(str(out / "thumbnail.png"))
    assert overlay.shape == thumbnail.shape
    black = (overlay == 0).all(axis=2)
    assert 0.05 < black.mean() < 0.95  # background black, tissue coloured
    features = read_geojson(out / "heat.geojson")
    regions = real_run["summary"]["regions"]
    assert len(features) == sum(regions.values())
    for feature in features:
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] in SPEC.classes[:2]
        assert feature["properties"]["measurements"]["mean probability"] >= 0.3
    json.dumps(features)  # plain JSON


def test_a_slide_without_tissue_gets_empty_predictions_and_black_heatmaps(tmp_path):
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.wsi import open_slide
    from tests.conftest import _require_shared

    path = _require_shared("wsi/CMU-1-Small-Region.svs")
    with open_slide(path, "CMU-1-Small-Region") as slide:
        thumbnail = slide.thumbnail(MASK_MPP)
        no_tissue = np.zeros(thumbnail.shape[:2], dtype=bool)
        grid = tile_slide(slide, no_tissue, MASK_MPP, tmp_path / "tiles.zarr", tmp_path / "grid.parquet", None, TilingParams(mpp=2.0, tile_px=128))
        level0_mpp = slide.mpp
    assert grid.n_tiles == 0
    cv2.imwrite(str(tmp_path / "thumbnail.png"), cv2.cvtColor(thumbnail, cv2.COLOR_RGB2BGR))
    table = predict_slide(build_model(SPEC), SPEC, tmp_path / "tiles.zarr", tmp_path / "grid.parquet", device="cpu", progress=False, threads=1)
    assert len(table) == 0 and list(table.columns) == ["patch_id", "x", "y", "x0", "y0", "p_0", "p_1", "p_2"]
    write_predictions(table, tmp_path / "pred.parquet")
    summary = render_heatmaps(
        tmp_path / "pred.parquet", tmp_path / "thumbnail.png", MASK_MPP, level0_mpp,
        tmp_path / "heat.zarr", tmp_path / "heat.png", tmp_path / "heat.geojson",
    )
    assert summary["n_patches"] == 0 and read_geojson(tmp_path / "heat.geojson") == []
    assert (cv2.imread(str(tmp_path / "heat.png")) == 0).all()
