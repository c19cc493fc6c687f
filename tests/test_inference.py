"""ER/PR/HER2 stage 1: patch inference over tiles.zarr, predictions parquet, heatmaps."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcpath.erpr.heatmaps import (
    heatmap_arrays,
    heatmap_geojson_features,
    heatmap_overlay_png,
    read_heatmap_zarr,
    write_heatmap_zarr,
    write_png,
)
from bcpath.erpr.inference import (
    PatchDataset,
    predict_slide,
    probability_columns,
    read_predictions,
    write_predictions,
)
from bcpath.errors import BcpathError
from bcpath.models.registry import ModelSpec, build_model
from tests.model_specs import test_spec

TILE = 128
SPEC = test_spec(TILE)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from bcpath.demo.cohort import make_demo_slide
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    out = tmp_path_factory.mktemp("infer")
    record = make_demo_slide(out, seed=0, index=0, size=(3000, 2400))
    slide = open_slide(out / record["path"])
    thumbnail = slide.thumbnail(8.0)
    mask = detect_tissue(thumbnail, 8.0, TissueParams())
    grid = tile_slide(
        slide, mask, 8.0, out / "tiles.zarr", out / "grid.parquet", None, TilingParams(mpp=2.0, tile_px=TILE)
    )
    level0_mpp = slide.mpp
    slide.close()
    assert 3 < grid.n_tiles < grid.n_rows * grid.n_cols  # some tissue, some background
    return {"out": out, "grid": grid, "thumbnail": thumbnail, "level0_mpp": level0_mpp}


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    return build_model(SPEC)


@pytest.fixture(scope="module")
def half_stride(tiled: dict, model) -> pd.DataFrame:
    out = tiled["out"]
    return predict_slide(
        model, SPEC, out / "tiles.zarr", out / "grid.parquet", stride_px=TILE // 2,
        batch_size=16, num_workers=0, device="cpu", progress=False, threads=1,
    )


def test_stride_equal_patch_gives_one_patch_per_tile(tiled: dict, model) -> None:
    out = tiled["out"]
    preds = predict_slide(model, SPEC, out / "tiles.zarr", out / "grid.parquet", num_workers=0, device="cpu", progress=False, threads=1)
    grid = pd.read_parquet(out / "grid.parquet")
    assert list(preds.columns) == ["patch_id", "x", "y", "x0", "y0", "p_0", "p_1", "p_2"]
    assert len(preds) == len(grid)
    for column in ("x", "y", "x0", "y0"):
        np.testing.assert_array_equal(preds[column].to_numpy(), grid[column].to_numpy())
    probs = preds[probability_columns(3)].to_numpy()
    assert probs.dtype == np.float32 and (probs >= 0).all() and (probs <= 1).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert preds.attrs["bcpath"]["classes"] == list(SPEC.classes)


def test_half_stride_gives_four_patches_per_tile_centred_in_tissue(tiled: dict, half_stride: pd.DataFrame) -> None:
    grid = pd.read_parquet(tiled["out"] / "grid.parquet")
    preds = half_stride
    assert len(preds) == 4 * len(grid)
    # Sorted by (y, x) and numbered in that order.
    order = np.lexsort((preds.x.to_numpy(), preds.y.to_numpy()))
    np.testing.assert_array_equal(order, np.arange(len(preds)))
    np.testing.assert_array_equal(preds.patch_id, np.arange(len(preds)))
    tiles = set(zip(grid.row, grid.col, strict=True))
    centre_tiles = set(zip((preds.y + TILE // 2) // TILE, (preds.x + TILE // 2) // TILE, strict=True))
    assert centre_tiles == tiles
    # Level-0 coordinates: origin + analysis px × level-0 px per analysis px.
    scale = 2.0 / tiled["level0_mpp"]
    g = tiled["grid"]
    np.testing.assert_allclose(preds.x0, g.origin_x0 + preds.x * scale, atol=0.5)
    np.testing.assert_allclose(preds.y0, g.origin_y0 + preds.y * scale, atol=0.5)
    np.testing.assert_allclose(preds[probability_columns(3)].sum(axis=1), 1.0, atol=1e-5)


def test_workers_do_not_change_results(tiled: dict, model, half_stride: pd.DataFrame) -> None:
    out = tiled["out"]
    with_workers = predict_slide(
        model, SPEC, out / "tiles.zarr", out / "grid.parquet", stride_px=TILE // 2,
        batch_size=16, num_workers=2, device="cpu", progress=False, threads=1,
    )
    pd.testing.assert_frame_equal(with_workers, half_stride)


def test_dataset_pickles_and_pads_with_white(tiled: dict) -> None:
    out = tiled["out"]
    dataset = PatchDataset(out / "tiles.zarr", out / "grid.parquet", TILE, TILE // 2)
    patch, index = dataset[0]
    assert index == 0 and patch.dtype.__str__() == "torch.uint8" and tuple(patch.shape) == (3, TILE, TILE)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._array is None
    np.testing.assert_array_equal(clone[0][0].numpy(), patch.numpy())
    # A patch hanging over the image's top-left corner reads white outside the image.
    corner = dataset.read_patch(-TILE // 4, -TILE // 4)
    assert (corner[:, : TILE // 4, :] == 255).all() and (corner[:, :, : TILE // 4] == 255).all()


def test_cached_chunk_reads_equal_direct_zarr_slices(tiled: dict) -> None:
    from bcpath.tiling import open_tiles

    out = tiled["out"]
    image = np.asarray(open_tiles(out / "tiles.zarr")[...])
    height, width = image.shape[1:]
    padded = np.full((3, height + 2 * TILE, width + 2 * TILE), 255, dtype=np.uint8)
    padded[:, TILE : TILE + height, TILE : TILE + width] = image
    dataset = PatchDataset(out / "tiles.zarr", out / "grid.parquet", TILE, TILE)
    rng = np.random.default_rng(0)
    # Inside one tile, across 2 and 4 tiles, over the image edges and fully outside.
    corners = [(0, 0), (TILE // 2, 0), (TILE // 2, TILE // 2), (-TILE // 3, 5), (width - TILE // 2, height - 10), (-2 * TILE, 0)]
    corners += [tuple(int(v) for v in rng.integers(-TILE // 2, (width, height))) for _ in range(40)]
    for x, y in corners:
        expected = padded[:, max(0, y + TILE) : y + 2 * TILE, max(0, x + TILE) : x + 2 * TILE] if x > -2 * TILE else np.full((3, TILE, TILE), 255)
        np.testing.assert_array_equal(dataset.read_patch(x, y), expected, err_msg=f"patch at {(x, y)}")


def test_predictions_round_trip_and_mpp_check(tiled: dict, model, half_stride: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "predictions" / "tiny.parquet"
    write_predictions(half_stride, path)
    assert os.listdir(path.parent) == ["tiny.parquet"]  # no temporary leftovers
    back = read_predictions(path)
    pd.testing.assert_frame_equal(back, half_stride)
    assert back.attrs["bcpath"]["classes"] == list(SPEC.classes)
    assert back.attrs["bcpath"]["stride_px"] == TILE // 2
    wrong = ModelSpec(**{**SPEC.__dict__, "mpp": 0.5})
    with pytest.raises(BcpathError, match="µm/px"):
        predict_slide(model, wrong, tiled["out"] / "tiles.zarr", tiled["out"] / "grid.parquet", progress=False)


def _fake_predictions(cells: list[tuple[int, int, float]], stride: int, patch: int) -> pd.DataFrame:
    """Patches centred on the given (row, col) cells with p_0 = p, p_1 = 1 − p, p_2 = 0."""
    offset = (stride - patch) // 2
    rows = [
        {"x": col * stride + offset, "y": row * stride + offset, "p_0": p, "p_1": 1 - p, "p_2": 0.0}
        for row, col, p in cells
    ]
    return pd.DataFrame(rows).astype({"p_0": "float32", "p_1": "float32", "p_2": "float32"})


@pytest.mark.parametrize(("stride", "patch"), [(64, 64), (64, 128), (50, 128)])
def test_heatmap_arrays_place_cells_exactly(stride: int, patch: int) -> None:
    cells = [(0, 0, 0.1), (0, 3, 0.9), (2, 1, 0.5), (4, 4, 1.0)]
    maps = heatmap_arrays(_fake_predictions(cells, stride, patch), (5 * stride - 3, 5 * stride), stride, patch)
    assert maps.shape == (3, 5, 5) and maps.dtype == np.float32
    expected = np.full((5, 5), np.nan, dtype=np.float32)
    for row, col, p in cells:
        expected[row, col] = p
    np.testing.assert_array_equal(maps[0], expected)
    np.testing.assert_allclose(maps[1], 1 - expected, atol=1e-6)


def test_heatmap_of_real_predictions_is_nan_outside_tissue(tiled: dict, half_stride: pd.DataFrame) -> None:
    grid = pd.read_parquet(tiled["out"] / "grid.parquet")
    g = tiled["grid"]
    maps = heatmap_arrays(half_stride, (g.n_rows * TILE, g.n_cols * TILE), TILE // 2, TILE)
    assert maps.shape == (3, 2 * g.n_rows, 2 * g.n_cols)
    tissue = np.zeros((g.n_rows, g.n_cols), dtype=bool)
    tissue[grid.row, grid.col] = True
    tissue_cells = np.kron(tissue, np.ones((2, 2), dtype=bool))
    assert (~np.isnan(maps[0]) == tissue_cells).all()
    np.testing.assert_allclose(np.nansum(maps, axis=0)[tissue_cells], 1.0, atol=1e-5)


def test_heatmap_zarr_has_maps_and_ngff_attrs(tmp_path: Path) -> None:
    maps = heatmap_arrays(_fake_predictions([(0, 1, 0.25), (2, 2, 0.75)], 64, 128), (192, 256), 64, 128)
    path = tmp_path / "heatmaps" / "tiny.zarr"
    write_heatmap_zarr(path, maps, SPEC.classes, 64, 2.0, (1000, 2000), 0.5, model_id="tiny", patch_px=128)
    back, meta = read_heatmap_zarr(path)
    np.testing.assert_array_equal(back, maps)
    assert meta["classes"] == list(SPEC.classes) and meta["level0_px_per_cell"] == 256.0
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs: dict = dict(group.attrs)
    assert attrs["ome"]["version"] == "0.5"
    transforms = attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == [1.0, 128.0, 128.0]
    # Origin 1000 level-0 px × 0.5 µm = 500 µm, plus half a cell minus half a pixel (63 µm).
    assert transforms[1]["translation"] == [0.0, 1000.0 + 63.0, 500.0 + 63.0]
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == list(SPEC.classes)


def test_overlay_png_black_outside_tissue_blue_to_red(tmp_path: Path) -> None:
    p_map = np.full((4, 6), np.nan, dtype=np.float32)
    p_map[1, 1], p_map[1, 4], p_map[2, 2] = 0.0, 1.0, 0.5
    thumbnail = np.full((40, 60, 3), 230, dtype=np.uint8)  # 8 µm/px; cells 80 µm = 10 thumbnail px
    image = heatmap_overlay_png(thumbnail, 8.0, p_map, 80.0, (0.0, 0.0))
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert (image[0:10, :] == 0).all() and (image[35, 55] == 0).all()  # no tissue: black
    blue, red, grey = image[15, 15].astype(int), image[15, 45].astype(int), image[25, 25].astype(int)
    assert blue[2] > blue[0] + 100 and red[0] > red[2] + 100
    assert abs(grey[0] - grey[2]) < 10 and grey[0] > 150
    # Shifted origin: cell (0, 0) starts 20 thumbnail px in, so the blue cell moves by 20 px.
    shifted = heatmap_overlay_png(thumbnail, 8.0, p_map, 80.0, (160.0, 0.0))
    np.testing.assert_array_equal(shifted[15, 35], image[15, 15])
    assert (shifted[:, :20] == 0).all()
    blended = heatmap_overlay_png(thumbnail, 8.0, p_map, 80.0, (0.0, 0.0), alpha=0.5)
    assert blended[15, 15, 2] > blended[15, 15, 0] and (blended[0:10] == 0).all()
    write_png(tmp_path / "h.png", image)
    import cv2

    written = cv2.imread(str(tmp_path / "h.png"))
    assert written is not None
    np.testing.assert_array_equal(written[..., ::-1], image)


def test_geojson_polygons_cover_cells_above_threshold() -> None:
    import shapely

    p_map = np.full((8, 8), np.nan, dtype=np.float32)
    p_map[1:6, 1:6] = 0.9  # a 5×5 block ...
    p_map[3, 3] = 0.2  # ... with a one-cell hole
    p_map[7, 7] = 0.8  # a lone cell
    p_map[6, 0] = 0.5  # below threshold
    cell, origin = 256.0, (1000.0, 2000.0)
    features = heatmap_geojson_features(p_map, 0.7, "ER-positive invasive carcinoma", cell, origin)
    assert len(features) == 2
    polygons = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert all(p.is_valid for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx(25 * cell**2)
    block = max(polygons, key=lambda p: p.area)
    assert len(block.interiors) == 1 and block.bounds == (1256.0, 2256.0, 2536.0, 3536.0)
    lone = min(polygons, key=lambda p: p.area)
    assert lone.bounds == (1000 + 7 * cell, 2000 + 7 * cell, 1000 + 8 * cell, 2000 + 8 * cell)
    props = features[0]["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"]["name"] == "ER-positive invasive carcinoma"
    means = sorted(f["properties"]["measurements"]["mean probability"] for f in features)
    assert means == pytest.approx([0.8, 0.9])
    assert heatmap_geojson_features(p_map, 0.95, "x", cell, origin) == []


def test_patch_origins_grid_tiles_and_empty_slide() -> None:
    from bcpath.erpr.inference import patch_origins

    rows, cols = np.array([0, 1, 1]), np.array([2, 0, 1])
    x, y = patch_origins(rows, cols, 128, (256, 384), 128, 128)
    np.testing.assert_array_equal(x, [256, 0, 128])
    np.testing.assert_array_equal(y, [0, 128, 128])
    # A model patch larger than the stride: origins shift back by (P − s) / 2, centres stay put.
    x, y = patch_origins(rows, cols, 128, (256, 384), 256, 128)
    np.testing.assert_array_equal(x, [192, -64, 64])
    empty_x, empty_y = patch_origins(np.zeros(0, int), np.zeros(0, int), 128, (0, 0), 128, 64)
    assert len(empty_x) == len(empty_y) == 0
