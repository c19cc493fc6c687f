"""Whole-slide nuclei segmentation: stitching, outputs, tissue-only chunks, real slide."""

from __future__ import annotations

import json
import logging
import math
import os
import runpy
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from bcpath.errors import BcpathError
from bcpath.nuclei.slide import (
    FEATURE_COLUMNS,
    get_segmenter,
    open_labels,
    plan_tiles,
    segment_slide,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

MPP0 = 0.25  # synthetic slide level-0 µm/px (model 0.5 µm/px: 2 level-0 px per model px)
WIDTH0, HEIGHT0 = 2048, 1536
SPACING0 = 128  # disc centres every 128 level-0 px = 64 model px: on core borders and window edges
RADIUS_UM = 4.0
MASK_MPP = 8.0
#: 256 px windows at 50 % overlap (segment_slide defaults to the workflow's 512 / 0.25): small tiles
#: put several seams across the synthetic slide.
SMALL_TILES = {"tile_px": 256, "overlap": 0.5}
PINK, PURPLE = (236, 178, 212), (72, 40, 128)


def _disc_centres() -> list[tuple[float, float]]:
    """Level-0 (x, y) centres: a 128 px lattice with a small deterministic jitter; the first
    row and column sit on the slide's top and left edge (half discs)."""
    centres = []
    for j, y in enumerate(range(0, HEIGHT0, SPACING0)):
        for i, x in enumerate(range(0, WIDTH0, SPACING0)):
            jx = 0 if i == 0 else ((7 * i + 3 * j) % 13) - 6
            jy = 0 if j == 0 else ((5 * i + 11 * j) % 13) - 6
            centres.append((float(x + jx), float(y + jy)))
    return centres


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory) -> Path:
    from bcpath.demo.writer import write_slide_tiff

    rng = np.random.default_rng(0)
    rgb = np.empty((HEIGHT0, WIDTH0, 3), dtype=np.float32)
    rgb[:] = PINK
    yy, xx = np.mgrid[0:HEIGHT0, 0:WIDTH0]
    r0 = RADIUS_UM / MPP0
    for cx, cy in _disc_centres():
        y0, y1 = max(0, int(cy - r0 - 2)), min(HEIGHT0, int(cy + r0 + 3))
        x0, x1 = max(0, int(cx - r0 - 2)), min(WIDTH0, int(cx + r0 + 3))
        # pixel (x, y) covers [x, x+1): its centre is at x + 0.5
        inside = (xx[y0:y1, x0:x1] + 0.5 - cx) ** 2 + (yy[y0:y1, x0:x1] + 0.5 - cy) ** 2 <= r0**2
        rgb[y0:y1, x0:x1][inside] = PURPLE
    rgb += rng.normal(0, 4, rgb.shape)
    path = tmp_path_factory.mktemp("slide") / "discs.tiff"
    write_slide_tiff(path, np.clip(rgb, 0, 255).astype(np.uint8), mpp=MPP0, tile=256)
    return path


def _full_mask() -> np.ndarray:
    return np.ones((math.ceil(HEIGHT0 * MPP0 / MASK_MPP), math.ceil(WIDTH0 * MPP0 / MASK_MPP)), dtype=bool)


def threshold_segmenter(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Exact segmenter for the synthetic slide: dark green channel, connected components."""
    return ndi.label(rgb[..., 1] < 110)[0].astype(np.int32)


def _chunk_keys(labels_zarr: Path) -> list[tuple[int, int]]:
    root = labels_zarr / "0" / "c"
    keys = []
    for folder, _, files in os.walk(root):
        for name in files:
            parts = Path(folder, name).relative_to(root).parts
            keys.append((int(parts[0]), int(parts[1])))
    return sorted(keys)


def _ring_area_centroid(ring: list[list[float]]) -> tuple[float, float, float]:
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    area = cross.sum() / 2
    cx = ((x[:-1] + x[1:]) * cross).sum() / (6 * area)
    cy = ((y[:-1] + y[1:]) * cross).sum() / (6 * area)
    return abs(area), cx, cy


def _check_outputs(out: Path, summary: dict, n_expected: int) -> tuple[pd.DataFrame, np.ndarray]:
    features = pd.read_parquet(out / "features.parquet")
    assert list(features.columns) == list(FEATURE_COLUMNS)
    assert summary["n_nuclei"] == len(features) == n_expected
    ids = features["nucleus_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids) and (ids >= 1).all()
    labels = open_labels(out / "labels.zarr")
    assert labels.dtype == np.uint32 and labels.shape == (HEIGHT0 // 2, WIDTH0 // 2)
    full = np.asarray(labels[:])
    present = np.unique(full)
    assert set(present[present > 0].tolist()) == set(ids.tolist())
    # labels.zarr pixels agree with the measured areas
    counts = np.bincount(full.ravel().astype(np.int64), minlength=int(ids.max()) + 1)
    np.testing.assert_allclose(counts[ids] * 0.25, features["area_um2"].to_numpy())
    return features, full


def test_each_planted_disc_found_once_and_whole(synthetic_slide, tmp_path):
    out = tmp_path / "nuclei"
    summary = segment_slide(synthetic_slide, _full_mask(), MASK_MPP, out, threshold_segmenter, chunk_px=128, **SMALL_TILES)
    centres = _disc_centres()
    features, full = _check_outputs(out, summary, len(centres))
    assert summary["n_tiles"] == 8 * 6
    # Every planted disc maps to its own label (no duplicate, none lost).
    found = []
    for cx, cy in centres:
        my, mx = min(int((cy + 1) / 2), full.shape[0] - 1), min(int((cx + 1) / 2), full.shape[1] - 1)
        found.append(int(full[my, mx]))
    assert 0 not in found and len(set(found)) == len(centres)
    table = features.set_index("nucleus_id")
    planted_um2 = math.pi * RADIUS_UM**2
    r0 = RADIUS_UM / MPP0
    whole = [(c, i) for c, i in zip(centres, found, strict=True) if c[0] > r0 + 2 and c[1] > r0 + 2]
    assert len(whole) == (WIDTH0 // SPACING0 - 1) * (HEIGHT0 // SPACING0 - 1)
    for (cx, cy), nid in whole:
        row = table.loc[nid]
        assert abs(row["area_um2"] - planted_um2) < 0.15 * planted_um2, (cx, cy, row["area_um2"])
        assert abs(row["centroid_x_level0_px"] - cx) < 2.0 and abs(row["centroid_y_level0_px"] - cy) < 2.0
        assert abs(row["centroid_x_model_px"] - (cx / 2 - 0.5)) < 1.0
        assert row["eccentricity"] < 0.5 and row["solidity"] > 0.9
        assert abs(row["major_axis_um"] - 2 * RADIUS_UM) < 1.2 and abs(row["minor_axis_um"] - 2 * RADIUS_UM) < 1.2
        assert abs(row["perimeter_um"] - 2 * math.pi * RADIUS_UM) < 0.2 * 2 * math.pi * RADIUS_UM
    assert (features["hematoxylin_od_mean"] > 0.05).all()
    assert (features["green_mean"] < 110).all() and (features["red_mean"] > features["green_mean"]).all()
    # Half discs on the slide's top and left edge are kept (cut by the slide, not by a tile).
    edge = [nid for c, nid in zip(centres, found, strict=True) if c[0] == 0 or c[1] == 0]
    assert len(edge) == WIDTH0 // SPACING0 + HEIGHT0 // SPACING0 - 1

    # GeoJSON: one QuPath detection per nucleus, outlines in level-0 px.
    collection = json.loads((out / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    detections = collection["features"]
    assert len(detections) == len(features)
    by_id = {}
    for feat in detections:
        props = feat["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus" and len(props["classification"]["color"]) == 3
        assert feat["geometry"]["type"] == "Polygon"
        by_id[int(props["measurements"]["Nucleus ID"])] = feat
    assert set(by_id) == set(table.index)
    for (cx, cy), nid in whole:
        feat = by_id[nid]
        area0, gx, gy = _ring_area_centroid(feat["geometry"]["coordinates"][0])
        assert abs(gx - cx) < 2.0 and abs(gy - cy) < 2.0
        assert abs(area0 * MPP0**2 - table.loc[nid, "area_um2"]) < 0.15 * planted_um2
        assert feat["properties"]["measurements"]["Nucleus: Area µm^2"] == pytest.approx(table.loc[nid, "area_um2"], abs=1e-3)

    # labels.zarr: Zarr v3 with OME-NGFF 0.5 (y, x) metadata at the model µm/px
    meta = json.loads((out / "labels.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["y", "x"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert meta["attributes"]["bcpath"]["n_nuclei"] == len(features)


def test_fiji_segmenter_finds_each_disc_once(synthetic_slide, tmp_path):
    out = tmp_path / "nuclei"
    summary = segment_slide(synthetic_slide, _full_mask(), MASK_MPP, out, "fiji", threads=2, **SMALL_TILES)
    centres = _disc_centres()
    features, full = _check_outputs(out, summary, len(centres))
    found = {int(full[min(int((cy + 1) / 2), full.shape[0] - 1), min(int((cx + 1) / 2), full.shape[1] - 1)]) for cx, cy in centres}
    assert 0 not in found and len(found) == len(centres)
    interior = features[(features["centroid_x_level0_px"] > 30) & (features["centroid_y_level0_px"] > 30)]
    planted_um2 = math.pi * RADIUS_UM**2
    assert ((interior["area_um2"] - planted_um2).abs() < 0.15 * planted_um2).all()


def test_region_mask_restricts_nuclei_and_chunks(synthetic_slide, tmp_path):
    out = tmp_path / "nuclei"
    # Region at a different resolution (4 µm/px) than the tissue mask: x < 704, y < 512 level-0 px.
    region = np.zeros((int(HEIGHT0 * MPP0 / 4), int(WIDTH0 * MPP0 / 4)), dtype=bool)
    region[: int(512 * MPP0 / 4), : int(704 * MPP0 / 4)] = True
    summary = segment_slide(synthetic_slide, _full_mask(), MASK_MPP, out, threshold_segmenter, region_mask=region, chunk_px=128, **SMALL_TILES)
    features = pd.read_parquet(out / "features.parquet")
    inside = [c for c in _disc_centres() if c[0] < 700 and c[1] < 508]
    assert summary["n_nuclei"] == len(features) > 0
    assert (features["centroid_x_level0_px"] < 704).all() and (features["centroid_y_level0_px"] < 512).all()
    assert abs(len(features) - len(inside)) <= 6  # discs on the region border go either way
    assert summary["n_tiles"] < 8 * 6
    # Only chunks with nuclei exist: all within the region (+ a nucleus radius), 128 px chunks.
    keys = _chunk_keys(out / "labels.zarr")
    assert keys and len(keys) == summary["n_chunks"]
    assert all(cy <= 2 and cx <= 2 for cy, cx in keys), keys
    assert len(keys) < (HEIGHT0 // 2 // 128) * (WIDTH0 // 2 // 128)


def test_no_tissue_gives_empty_outputs(synthetic_slide, tmp_path):
    out = tmp_path / "nuclei"
    summary = segment_slide(synthetic_slide, np.zeros_like(_full_mask()), MASK_MPP, out, threshold_segmenter, **SMALL_TILES)
    assert summary["n_nuclei"] == 0 and summary["n_tiles"] == 0
    features = pd.read_parquet(out / "features.parquet")
    assert len(features) == 0 and list(features.columns) == list(FEATURE_COLUMNS)
    assert json.loads((out / "nuclei.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    labels = open_labels(out / "labels.zarr")
    assert labels.shape == (HEIGHT0 // 2, WIDTH0 // 2) and _chunk_keys(out / "labels.zarr") == []
    assert not np.asarray(labels[:16, :16]).any()
    assert not list(out.glob(".*tmp*"))  # no temporary leftovers


def test_plan_tiles_and_segmenter_lookup():
    mask = np.zeros((48, 64), dtype=bool)
    mask[0, 0] = True  # one 8 µm pixel = 16 model px: inside core (0, 0) only
    tiling = plan_tiles(mask, 8.0, MPP0, (WIDTH0, HEIGHT0), 0.5, 256, 0.5)
    assert (tiling.stride, tiling.margin, tiling.n_rows, tiling.n_cols) == (128, 64, 6, 8)
    assert tiling.rows.tolist() == [0] and tiling.cols.tolist() == [0]
    assert tiling.window(0, 0) == (0, 192, 0, 192) and tiling.window(5, 7) == (576, 768, 832, 1024)
    assert tiling.window(2, 3) == (192, 448, 320, 576)
    for name in ("fiji", "watershed", "otsu"):
        labels = get_segmenter(name)(np.full((32, 32, 3), 230, dtype=np.uint8), 0.5)
        assert labels.shape == (32, 32)
    assert get_segmenter(threshold_segmenter) is threshold_segmenter
    assert get_segmenter("tests.test_nuclei_slide:threshold_segmenter") is threshold_segmenter
    with pytest.raises(BcpathError, match="unknown nuclei segmenter"):
        get_segmenter("stardist")
    with pytest.raises(BcpathError, match="overlap"):
        plan_tiles(mask, 8.0, MPP0, (WIDTH0, HEIGHT0), 0.5, 256, 1.0)


def test_bad_segmenter_output_is_a_clear_error(synthetic_slide, tmp_path):
    with pytest.raises(BcpathError, match="segmenter returned"):
        segment_slide(synthetic_slide, _full_mask(), MASK_MPP, tmp_path / "n", lambda rgb, mpp: rgb[..., 0].astype(float), **SMALL_TILES)
    assert not (tmp_path / "n" / "features.parquet").exists() and not (tmp_path / "n" / "labels.zarr").exists()


def _fake_snakemake(tmp_path: Path, slide: Path, info: Path) -> SimpleNamespace:
    from PIL import Image

    mask_png = tmp_path / "tissue" / "mask.png"
    mask_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((_full_mask() * 255).astype(np.uint8)).save(mask_png)
    qc = tmp_path / "tissue" / "qc.json"
    qc.write_text(json.dumps({"mask_mpp": MASK_MPP}))
    nuclei = tmp_path / "nuclei"
    return SimpleNamespace(
        input=SimpleNamespace(slide=str(slide), info=str(info), mask=str(mask_png), qc=str(qc)),
        output=SimpleNamespace(labels=str(nuclei / "labels.zarr"), geojson=str(nuclei / "nuclei.geojson"), features=str(nuclei / "features.parquet")),
        params=SimpleNamespace(
            nuclei={"model": "tests.test_nuclei_slide:threshold_segmenter", "mpp": 0.5, "tile_px": 256, "overlap": 0.5},
            failure_record=str(tmp_path / "failures" / "discs.segment_nuclei.json"),
        ),
        log=[str(tmp_path / "logs" / "segment_nuclei.log")],
        rule="segment_nuclei",
        threads=1,
        wildcards={"slide": "discs"},
    )


def test_workflow_script_runs_and_records_failures(synthetic_slide, tmp_path):
    from bcpath.pipeline import inspect_slide

    info = tmp_path / "info.json"
    inspect_slide(synthetic_slide, "discs", info)
    fake = _fake_snakemake(tmp_path, synthetic_slide, info)
    script = REPO_ROOT / "workflow_scripts" / "segment_nuclei.py"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        _run_script_checks(script, fake, tmp_path)
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _run_script_checks(script: Path, fake: SimpleNamespace, tmp_path: Path) -> None:
    runpy.run_path(str(script), init_globals={"snakemake": fake})
    assert len(pd.read_parquet(fake.output.features)) == len(_disc_centres())
    assert Path(fake.output.labels, "zarr.json").exists() and Path(fake.output.geojson).exists()
    assert not Path(fake.params.failure_record).exists()

    fake.input.mask = str(tmp_path / "missing.png")
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), init_globals={"snakemake": fake})
    record = json.loads(Path(fake.params.failure_record).read_text())
    assert record["slide_id"] == "discs" and record["rule"] == "segment_nuclei"


def test_real_slide_fiji(require_shared, tmp_path, capsys):
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    path = require_shared("wsi/CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        mask = detect_tissue(slide.thumbnail(MASK_MPP), MASK_MPP, TissueParams())
        started = time.perf_counter()
        summary = segment_slide(slide, mask, MASK_MPP, tmp_path / "nuclei", "fiji", **SMALL_TILES)
        seconds = time.perf_counter() - started
    features = pd.read_parquet(tmp_path / "nuclei" / "features.parquet")
    with capsys.disabled():
        print(f"\nCMU-1-Small-Region fiji: {summary['n_nuclei']} nuclei, {summary['n_tiles']} tiles, {seconds:.1f} s, "
              f"median area {features['area_um2'].median():.1f} µm², dropped {summary['dropped_duplicate']} duplicates")
    tissue_mm2 = mask.sum() * (MASK_MPP / 1000) ** 2
    density = summary["n_nuclei"] / tissue_mm2
    assert 500 <= summary["n_nuclei"] and 500 <= density <= 20000, (summary["n_nuclei"], density)
    assert 8 <= features["area_um2"].median() <= 60
    assert features["nucleus_id"].is_unique
    detections = json.loads((tmp_path / "nuclei" / "nuclei.geojson").read_text())["features"]
    assert len(detections) == len(features)
    xs = np.concatenate([np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in detections[:200]])
    assert xs.min() >= 0 and xs.max() <= 2220


def test_overlap_with_earlier_tiles_is_resolved_first_written_wins():
    from bcpath.nuclei.slide import _ChunkBuffer, _stitch_tile, _TileResult

    tiling = plan_tiles(np.ones((8, 8), dtype=bool), 8.0, 0.5, (1024, 1024), 0.5, 256, 0.5)
    y0, y1, x0, x1 = tiling.window(1, 1)  # core rows/cols [128, 256), window [64, 320)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    labels = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    labels[(yy - 150) ** 2 + (xx - 150) ** 2 <= 64] = 7  # nucleus a, centroid in the core
    labels[(yy - 200) ** 2 + (xx - 200) ** 2 <= 64] = 3  # nucleus b, centroid in the core
    labels[(yy - 100) ** 2 + (xx - 150) ** 2 <= 64] = 5  # centroid above the core: not this tile's
    rgb = np.full(labels.shape + (3,), 200, dtype=np.uint8)
    buffer = _ChunkBuffer(np.zeros((tiling.height, tiling.width), dtype=np.uint32), 64)
    earlier = np.zeros((tiling.height, tiling.width), dtype=np.uint32)
    earlier[140:150, 130:170] = 99  # covers ~40 % of a's pixels
    earlier[190:215, 185:215] = 98  # covers all of b
    buffer.put(0, 0, earlier)
    stats = {"dropped_edge": 0, "dropped_outside_mask": 0, "dropped_duplicate": 0}
    mask = np.ones((8, 8), dtype=bool)
    columns, outlines = _stitch_tile(_TileResult(1, 1, (y0, y1, x0, x1), rgb, labels), tiling, mask, 0.5 / 8.0, buffer, 10, 0.5, stats)
    assert stats["dropped_duplicate"] == 1 and columns["nucleus_id"].tolist() == [10]
    after = buffer.get(0, tiling.height, 0, tiling.width)
    assert (after[earlier > 0] == earlier[earlier > 0]).all()  # earlier pixels untouched
    a_pixels = (yy - 150) ** 2 + (xx - 150) ** 2 <= 64
    free = a_pixels & (earlier[y0:y1, x0:x1] == 0)
    assert (after[y0:y1, x0:x1][free] == 10).all() and int((after == 10).sum()) == int(free.sum())
    assert columns["area_um2"][0] == pytest.approx(free.sum() * 0.25) and len(outlines) == 1


def test_chunk_buffer_retire_stores_or_packs_and_flush_writes_the_same_labels():
    from bcpath.nuclei.slide import _ChunkBuffer

    rng = np.random.default_rng(1)
    values = (rng.random((200, 300)) < 0.3) * rng.integers(1, 70_000, (200, 300))
    values = values.astype(np.uint32)
    plain, retired = np.zeros((200, 300), np.uint32), np.zeros((200, 300), np.uint32)
    direct = _ChunkBuffer(plain, 64)
    direct.put(0, 0, values)
    buffer = _ChunkBuffer(retired, 64)
    buffer.put(0, 0, values)
    buffer.retire(130, 70)  # chunk columns 0-1: row 0 stored, rows 1-3 packed
    assert retired[:64, :128].tolist() == values[:64, :128].tolist() and not retired[64:].any()
    assert sorted(buffer.packed) == [(cy, cx) for cy in (1, 2, 3) for cx in (0, 1)]
    assert (buffer.get(64, 140, 100, 200) == values[64:140, 100:200]).all()  # unpacks what it reads
    buffer.put(100, 20, np.full((10, 10), 5, np.uint32))
    values[100:110, 20:30] = 5
    direct.put(100, 20, np.full((10, 10), 5, np.uint32))
    buffer.flush_above(None)
    direct.flush_above(None)
    assert (retired == values).all() and (plain == values).all()
    assert buffer.n_written == direct.n_written == 20 and not buffer.chunks and not buffer.packed
