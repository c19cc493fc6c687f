"""One OME-NGFF version for every Zarr store bcpath writes.

tiles.zarr (both compressions), heatmaps/{model}.zarr (and the proliferation tumour map, same
writer) and nuclei/labels.zarr are written on a small synthetic slide; each must be Zarr v3
with ``attrs["ome"]["version"] == bcpath.tiling.NGFF_VERSION`` and open with ome-zarr's reader.
The demo run's stores are checked the same way in tests/test_report.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bcpath.tiling import NGFF_VERSION, ngff_version

MPP0 = 0.5
WIDTH0, HEIGHT0 = 1024, 768
MASK_MPP = 8.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Every kind of store, written by the library functions the rules call."""
    from bcpath.demo.writer import write_slide_tiff
    from bcpath.erpr.heatmaps import write_heatmap_zarr
    from bcpath.nuclei.slide import segment_slide
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.wsi import open_slide

    root = tmp_path_factory.mktemp("ngff")
    rng = np.random.default_rng(0)
    rgb = np.full((HEIGHT0, WIDTH0, 3), (236, 178, 212), dtype=np.float32)
    yy, xx = np.mgrid[0:HEIGHT0, 0:WIDTH0]
    for cx, cy in rng.uniform(40, (WIDTH0 - 40, HEIGHT0 - 40), size=(40, 2)):
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= 8**2] = (72, 40, 128)
    rgb += rng.normal(0, 4, rgb.shape)
    slide_path = root / "discs.tiff"
    write_slide_tiff(slide_path, np.clip(rgb, 0, 255).astype(np.uint8), mpp=MPP0, tile=256)
    mask = np.ones((math.ceil(HEIGHT0 * MPP0 / MASK_MPP), math.ceil(WIDTH0 * MPP0 / MASK_MPP)), dtype=bool)
    out = {}
    with open_slide(slide_path) as slide:
        for compression in ("lossless", "jpeg"):
            path = root / f"tiles_{compression}.zarr"
            tile_slide(slide, mask, MASK_MPP, path, root / f"grid_{compression}.parquet", None, TilingParams(mpp=2.0, tile_px=128, compression=compression))
            out[f"tiles ({compression})"] = path
    maps = rng.uniform(0, 1, (3, 4, 6)).astype(np.float32)
    write_heatmap_zarr(root / "heatmap.zarr", maps, ["pos", "neg", "other"], 32, 2.0, (0.0, 0.0), MPP0, model_id="tiny", patch_px=64)
    out["heatmap"] = root / "heatmap.zarr"

    def dark(image: np.ndarray, mpp: float) -> np.ndarray:
        from scipy import ndimage

        return ndimage.label(image[..., 1] < 100)[0]

    segment_slide(slide_path, mask, MASK_MPP, root / "nuclei", dark, tile_px=256, overlap=0.5)
    out["labels"] = root / "nuclei" / "labels.zarr"
    return out


KINDS = ["tiles (lossless)", "tiles (jpeg)", "heatmap", "labels"]


def test_ngff_version_is_0_5():
    assert NGFF_VERSION == "0.5"


@pytest.mark.parametrize("kind", KINDS)
def test_every_store_is_zarr_v3_with_the_one_ngff_version(stores, kind):
    path = stores[kind]
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group", kind
    ome = meta["attributes"]["ome"]
    assert ome["version"] == NGFF_VERSION == ngff_version(path), kind
    assert "multiscales" not in meta["attributes"], "0.4-style top-level multiscales left over"
    multiscale = ome["multiscales"][0]
    assert "version" not in multiscale  # 0.5: the version lives in the ome block only
    axes = [axis["name"] for axis in multiscale["axes"]]
    array = json.loads((path / "0" / "zarr.json").read_text())
    assert array["zarr_format"] == 3 and array["dimension_names"] == axes, kind
    assert "bcpath" in meta["attributes"]


@pytest.mark.parametrize("kind", KINDS)
def test_ome_zarr_reads_every_store(stores, kind):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(stores[kind])))())
    assert nodes, kind
    image = nodes[0].data[0]
    assert tuple(image.shape) == zarr.open_group(str(stores[kind]), mode="r")["0"].shape


def test_jpeg_tiles_read_back_in_a_fresh_process(stores):
    """The JPEG chunk codec is registered by open_tiles itself (no import order needed)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from bcpath.tiling import open_tiles; "
        "a = open_tiles(sys.argv[1]); b = open_tiles(sys.argv[2]); "
        "x, y = np.asarray(a[:]).astype(int), np.asarray(b[:]).astype(int); "
        "assert x.shape == y.shape and np.abs(x - y).mean() < 3, np.abs(x - y).mean()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(stores["tiles (jpeg)"]), str(stores["tiles (lossless)"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_zarr_v2_stores_of_earlier_runs_still_open(tmp_path):
    """A 0.4 (Zarr v2) tiles.zarr from before the move opens with open_tiles and reports 0.4."""
    import zarr

    from bcpath.tiling import open_tiles

    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    group.attrs.update({"multiscales": [{"version": "0.4", "axes": [], "datasets": [{"path": "0"}]}], "bcpath": {"compression": "lossless"}})
    group.create_array("0", shape=(3, 8, 8), chunks=(3, 8, 8), dtype="uint8", fill_value=255)
    assert ngff_version(tmp_path / "old.zarr") == "0.4"
    assert open_tiles(tmp_path / "old.zarr").shape == (3, 8, 8)
