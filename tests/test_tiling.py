"""Tiling to OME-NGFF Zarr: grid, content, only-tissue chunks, HDF5 coordinates."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest

from bcpath.tiling import TilingParams, open_tiles, plan_grid, tile_runs, tile_slide
from bcpath.tissue import TissueParams, detect_tissue
from bcpath.wsi import open_slide

PARAMS = TilingParams(mpp=1.0, tile_px=256, min_tissue_fraction=0.1)


def _chunk_files(zarr_path) -> list[str]:
    return [name for _, _, files in os.walk(zarr_path / "0") for name in files if not name.startswith(".") and name != "zarr.json"]


@pytest.fixture(scope="module")
def cmu_tiled(tmp_path_factory, request):
    from tests.conftest import _require_shared

    path = _require_shared("wsi/CMU-1-Small-Region.svs")
    out = tmp_path_factory.mktemp("tiles")
    slide = open_slide(path)
    mask = detect_tissue(slide.thumbnail(8.0), 8.0, TissueParams())
    grid = tile_slide(slide, mask, 8.0, out / "tiles.zarr", out / "grid.parquet", out / "patches.h5", PARAMS, threads=2)
    yield slide, mask, grid, out
    slide.close()


def test_grid_selects_tissue_tiles(cmu_tiled):
    slide, mask, grid, out = cmu_tiled
    table = pd.read_parquet(out / "grid.parquet")
    assert list(table.columns) == ["tile_id", "row", "col", "x", "y", "x0", "y0", "tissue_fraction"]
    assert len(table) == grid.n_tiles > 5
    assert (table.tissue_fraction >= PARAMS.min_tissue_fraction).all()
    assert (table.tissue_fraction <= 1).all()
    # Level-0 coordinates = origin + analysis px × (analysis µm/px ÷ level-0 µm/px).
    scale = PARAMS.mpp / slide.mpp
    np.testing.assert_allclose(table.x0, grid.origin_x0 + table.x * scale, atol=1)
    np.testing.assert_allclose(table.y0, grid.origin_y0 + table.y * scale, atol=1)
    # The grid covers every tissue pixel of the mask (tissue bounding box).
    ys, xs = np.nonzero(mask)
    assert grid.origin_x0 <= xs.min() * 8.0 / slide.mpp + 1
    assert grid.origin_x0 + grid.n_cols * 256 * scale >= (xs.max() + 1) * 8.0 / slide.mpp - 1


def test_zarr_is_ome_ngff_with_only_tissue_chunks(cmu_tiled):
    slide, _, grid, out = cmu_tiled
    import zarr

    group = zarr.open_group(str(out / "tiles.zarr"), mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["ome"]["version"] == "0.5"
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    array = open_tiles(out / "tiles.zarr")
    assert array.shape == (3, grid.n_rows * 256, grid.n_cols * 256)
    assert array.chunks == (3, 256, 256)
    assert len(_chunk_files(out / "tiles.zarr")) <= grid.n_tiles < grid.n_rows * grid.n_cols


def test_ome_zarr_reader_opens_tiles(cmu_tiled):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, _, grid, out = cmu_tiled
    nodes = list(Reader(parse_url(str(out / "tiles.zarr")))())
    image = nodes[0].data[0]
    assert tuple(image.shape) == (3, grid.n_rows * 256, grid.n_cols * 256)


def test_tile_pixels_match_direct_reads(cmu_tiled):
    slide, _, grid, out = cmu_tiled
    table = pd.read_parquet(out / "grid.parquet")
    array = open_tiles(out / "tiles.zarr")
    for tile in table.sample(4, random_state=0).itertuples():
        stored = np.asarray(array[:, tile.y : tile.y + 256, tile.x : tile.x + 256]).transpose(1, 2, 0)
        direct = slide.read_region(tile.x0, tile.y0, 256, 256, PARAMS.mpp)
        # Runs are resampled together; with a non-integer scale (1.0 / 0.499) single reads
        # sit up to half a level-0 pixel apart, a fraction of a grey level on average.
        assert np.abs(stored.astype(int) - direct.astype(int)).mean() < 3.0


def test_h5_coords_in_clam_layout(cmu_tiled):
    slide, _, _, out = cmu_tiled
    table = pd.read_parquet(out / "grid.parquet")
    with h5py.File(out / "patches.h5", "r") as handle:
        coords = handle["coords"][:]
        attrs = dict(handle["coords"].attrs)
    np.testing.assert_array_equal(coords, table[["x0", "y0"]].to_numpy())
    assert attrs["patch_level"] == 0
    assert attrs["patch_size_level0"] == round(256 * PARAMS.mpp / slide.mpp)
    assert attrs["patch_size"] == attrs["patch_size_level0"]
    assert attrs["target_mpp"] == PARAMS.mpp


def test_jpeg_chunks_close_to_lossless(cmu_tiled, tmp_path):
    slide, mask, grid, out = cmu_tiled
    params = TilingParams(mpp=1.0, tile_px=256, compression="jpeg", jpeg_quality=90)
    tile_slide(slide, mask, 8.0, tmp_path / "j.zarr", tmp_path / "g.parquet", None, params)
    lossy, lossless = open_tiles(tmp_path / "j.zarr"), open_tiles(out / "tiles.zarr")
    assert lossy.chunks == (1, 256, 256)
    difference = np.abs(np.asarray(lossy[:]).astype(int) - np.asarray(lossless[:]).astype(int))
    assert difference.mean() < 4
    size = lambda p: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)  # noqa: E731
    assert size(tmp_path / "j.zarr") < size(out / "tiles.zarr")


def test_threads_do_not_change_output(cmu_tiled, tmp_path):
    slide, mask, _, out = cmu_tiled
    tile_slide(slide, mask, 8.0, tmp_path / "t1.zarr", tmp_path / "g.parquet", None, PARAMS, threads=1)
    np.testing.assert_array_equal(open_tiles(tmp_path / "t1.zarr")[:], open_tiles(out / "tiles.zarr")[:])


def test_empty_mask_gives_empty_grid(require_shared, tmp_path):
    with open_slide(require_shared("wsi/kidney-48-5.tif"), mpp=1.0) as slide:
        mask = np.zeros((113, 187), bool)
        grid = tile_slide(slide, mask, 8.0, tmp_path / "t.zarr", tmp_path / "g.parquet", tmp_path / "p.h5")
    assert grid.n_tiles == 0
    assert len(pd.read_parquet(tmp_path / "g.parquet")) == 0
    assert open_tiles(tmp_path / "t.zarr").shape == (3, 0, 0)
    with h5py.File(tmp_path / "p.h5") as handle:
        assert handle["coords"].shape == (0, 2)


def test_runs_split_rows_gaps_and_length():
    class Grid:
        rows = np.array([0, 0, 0, 0, 1, 1])
        cols = np.array([0, 1, 2, 4, 1, 2])

    assert list(tile_runs(Grid(), max_run_tiles=2)) == [(0, 0, 2), (0, 2, 1), (0, 4, 1), (1, 1, 2)]


def test_plan_grid_fraction_of_half_covered_tile(require_shared):
    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        mask = np.zeros((371, 278), bool)  # 2 µm/px mask over the slide
        mask[:128, :64] = True  # left half of one 128×128 block (one 256 px tile at 1 µm/px)
        grid = plan_grid(mask, 2.0, slide, TilingParams(mpp=1.0, tile_px=256, min_tissue_fraction=0.0))
    assert grid.n_tiles == 1
    assert (grid.origin_x0, grid.origin_y0) == (0, 0)
    assert grid.tissue_fraction[0] == pytest.approx(0.5, abs=0.02)


def test_plan_grid_fractions_equal_brute_force_counts(require_shared):
    """Every tile's tissue fraction is the mean of the mask over its window (random blobs)."""
    rng = np.random.default_rng(7)
    mask = np.zeros((371, 278), bool)  # 2 µm/px mask; one 256 px tile at 1 µm/px = 128 mask px
    for _ in range(12):
        y, x, r = rng.integers(20, 350), rng.integers(20, 260), rng.integers(5, 40)
        yy, xx = np.ogrid[:371, :278]
        mask |= (yy - y) ** 2 + (xx - x) ** 2 < r**2
    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        grid = plan_grid(mask, 2.0, slide, TilingParams(mpp=1.0, tile_px=256, min_tissue_fraction=0.0))
    top = int(np.flatnonzero(mask.any(axis=1))[0])
    left = int(np.flatnonzero(mask.any(axis=0))[0])
    assert grid.n_tiles > 3
    for row, col, fraction in zip(grid.rows, grid.cols, grid.tissue_fraction, strict=True):
        window = mask[top + row * 128 : top + (row + 1) * 128, left + col * 128 : left + (col + 1) * 128]
        assert fraction == pytest.approx(window.sum() / 128**2, abs=1e-6)
    padded = np.zeros((grid.n_rows * 128, grid.n_cols * 128), bool)
    crop = mask[top:, left:][: padded.shape[0], : padded.shape[1]]
    padded[: crop.shape[0], : crop.shape[1]] = crop
    n_nonempty = int((padded.reshape(grid.n_rows, 128, grid.n_cols, 128).sum(axis=(1, 3)) > 0).sum())
    assert grid.n_tiles == n_nonempty
