"""Training-patch sampling (bcpath.erpr.sampling) on demo slides of seed 0.

Only demo_01 (luminal: ER+/PR+/HER2-) and demo_04 (HER2-enriched: ER-/PR-/HER2+) are painted,
with ``make_demo_slide``: a demo slide depends only on (seed, index), so these are the slides
``make_demo_cohort(tmp, n_slides=8, seed=0, size=(2400, 1800))`` writes, at a quarter of the
time (the full cohort takes ~35 s on two shared cores).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import numpy as np
import pytest

shapely = pytest.importorskip("shapely")
torch = pytest.importorskip("torch")

from shapely.geometry import box, shape  # noqa: E402

from bcpath.demo.cohort import make_demo_slide  # noqa: E402
from bcpath.erpr.sampling import (  # noqa: E402
    LABEL_ORDER,
    MIN_INSIDE_FRACTION,
    PatchSampleDataset,
    sample_patch_positions,
)
from bcpath.geojson import read_geojson  # noqa: E402
from bcpath.labels import region_label  # noqa: E402
from bcpath.wsi.reader import open_slide  # noqa: E402

SMALL = (2400, 1800)
SLIDES = {"demo_01": 0, "demo_04": 3}  # slide_id → index in the seed-0 cohort
MODEL_MPP = 1.0  # demo slides are 0.5 µm/px at level 0
PATCH_PX = 64
PATCH_LEVEL0 = PATCH_PX * MODEL_MPP / 0.5


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sampling_demo")
    records = {}
    for slide_id, index in SLIDES.items():
        record = make_demo_slide(out, 0, index, SMALL, threads=1)
        assert record["slide_id"] == slide_id
        records[slide_id] = {
            **record,
            "slide": str(out / record["path"]),
            "features": read_geojson(out / record["annotations"]),
        }
    return records


def _class_unions(features: list[dict[str, Any]], biomarker: str) -> list[Any]:
    parts: list[list[Any]] = [[] for _ in LABEL_ORDER]
    for feat in features:
        label = region_label(feat, biomarker)
        if label is not None:
            parts[LABEL_ORDER.index(label)].append(shape(feat["geometry"]).buffer(0))
    return [shapely.union_all(p) if p else None for p in parts]


@pytest.mark.parametrize(("slide_id", "biomarker"), [("demo_01", "ER"), ("demo_04", "ER"), ("demo_04", "HER2")])
def test_positions_lie_inside_regions_of_their_class(demo, slide_id, biomarker):
    features = demo[slide_id]["features"]
    table = sample_patch_positions(features, biomarker, LABEL_ORDER, 24, PATCH_LEVEL0, np.random.default_rng(1))
    assert list(table.columns) == ["x0", "y0", "label"]
    assert all(str(table[c].dtype) == "int64" for c in table.columns)
    unions = _class_unions(features, biomarker)
    for label, union in enumerate(unions):
        rows = table[table["label"] == label]
        assert len(rows) == (24 if union is not None else 0)
        if union is None:
            continue
        squares = shapely.box(rows["x0"], rows["y0"], rows["x0"] + PATCH_LEVEL0, rows["y0"] + PATCH_LEVEL0)
        inside = shapely.area(shapely.intersection(squares, union)) / PATCH_LEVEL0**2
        # x0, y0 are rounded to whole px: allow the ≤ 1 px strip that moves.
        assert inside.min() >= MIN_INSIDE_FRACTION - 2.0 / PATCH_LEVEL0
        centres = shapely.points(rows["x0"] + PATCH_LEVEL0 / 2, rows["y0"] + PATCH_LEVEL0 / 2)
        assert shapely.distance(union, centres).max() <= 1.0
        # ... and not inside the regions of another class (classes never overlap).
        for other, other_union in enumerate(unions):
            if other != label and other_union is not None:
                overlap = shapely.area(shapely.intersection(squares, other_union)) / PATCH_LEVEL0**2
                assert overlap.max() <= 1.0 - MIN_INSIDE_FRACTION + 2.0 / PATCH_LEVEL0


def test_labels_follow_the_biomarker(demo):
    er_positive = sample_patch_positions(demo["demo_01"]["features"], "ER", LABEL_ORDER, 8, PATCH_LEVEL0, np.random.default_rng(0))
    assert set(er_positive["label"]) == {0, 2}
    her2_slide = demo["demo_04"]["features"]
    er = sample_patch_positions(her2_slide, "ER", LABEL_ORDER, 8, PATCH_LEVEL0, np.random.default_rng(0))
    her2 = sample_patch_positions(her2_slide, "HER2", LABEL_ORDER, 8, PATCH_LEVEL0, np.random.default_rng(0))
    assert set(er["label"]) == {1, 2}  # ER-negative tumor, non-tumor
    assert set(her2["label"]) == {0, 2}  # HER2-positive tumor, non-tumor
    # Same regions, same draws: only the tumor label differs.
    assert er[["x0", "y0"]].equals(her2[["x0", "y0"]])
    assert not er["label"].equals(her2["label"])


def test_same_seed_same_table(demo):
    features = demo["demo_04"]["features"]
    first = sample_patch_positions(features, "PR", LABEL_ORDER, 16, PATCH_LEVEL0, np.random.default_rng(7))
    again = sample_patch_positions(features, "PR", LABEL_ORDER, 16, PATCH_LEVEL0, np.random.default_rng(7))
    other = sample_patch_positions(features, "PR", LABEL_ORDER, 16, PATCH_LEVEL0, np.random.default_rng(8))
    assert first.equals(again)
    assert not first.equals(other)


def _region(cls: str | None, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    properties: dict[str, Any] = {"objectType": "annotation"}
    if cls is not None:
        properties["classification"] = {"name": cls, "color": [0, 0, 0]}
    return {"type": "Feature", "geometry": box(x0, y0, x1, y1).__geo_interface__, "properties": properties}


def test_area_proportion_unknown_classes_and_min_inside():
    # Two non-tumor regions with areas 1 : 3, plus classes that must be ignored.
    features = [
        _region("non-tumor", 0, 0, 1000, 1000),
        _region("non-tumor", 2000, 0, 5000, 1000),
        _region("Tumor", 6000, 0, 9000, 3000),
        _region("PR-positive tumor", 6000, 4000, 9000, 7000),
        _region(None, 0, 4000, 3000, 7000),
    ]
    table = sample_patch_positions(features, "ER", LABEL_ORDER, 800, 10.0, np.random.default_rng(3))
    assert set(table["label"]) == {2} and len(table) == 800
    in_small = int((table["x0"] < 1500).sum())
    assert 0.2 < in_small / 800 < 0.3  # expected 0.25
    # min_inside=1: every square wholly inside.
    strict = sample_patch_positions(features[:1], "ER", LABEL_ORDER, 200, 100.0, np.random.default_rng(3), min_inside=1.0)
    assert len(strict) == 200
    assert strict["x0"].min() >= 0 and strict["y0"].min() >= 0
    assert (strict[["x0", "y0"]] + 100).max().max() <= 1000
    with pytest.raises(ValueError, match="min_inside"):
        sample_patch_positions(features, "ER", LABEL_ORDER, 1, 10.0, np.random.default_rng(0), min_inside=0.0)


def test_tiny_regions_give_fewer_rows_and_a_warning(caplog):
    features = [_region("ER-positive tumor", 0, 0, 50, 50), _region("non-tumor", 100, 0, 1100, 1000)]
    with caplog.at_level(logging.WARNING, logger="bcpath.erpr.sampling"):
        table = sample_patch_positions(features, "ER", LABEL_ORDER, 5, 200.0, np.random.default_rng(0))
    assert (table["label"] == 0).sum() == 0
    assert (table["label"] == 2).sum() == 5
    assert "only 0 of 5" in caplog.text
    assert sample_patch_positions([], "ER", LABEL_ORDER, 5, 200.0, np.random.default_rng(0)).empty


def _dataset(demo, augment: bool, seed: int | None = 0) -> PatchSampleDataset:
    import pandas as pd

    frames = []
    for slide_id in SLIDES:
        table = sample_patch_positions(demo[slide_id]["features"], "ER", LABEL_ORDER, 3, PATCH_LEVEL0, np.random.default_rng(0))
        table.insert(0, "slide_id", slide_id)
        frames.append(table)
    positions = pd.concat(frames, ignore_index=True)
    paths = {slide_id: demo[slide_id]["slide"] for slide_id in SLIDES}
    return PatchSampleDataset(paths, positions, MODEL_MPP, PATCH_PX, augment=augment, seed=seed)


def test_dataset_reads_exact_patches(demo):
    dataset = _dataset(demo, augment=False)
    assert len(dataset) == 2 * 3 * 2  # two slides, 3 per class, 2 classes each
    restored = pickle.loads(pickle.dumps(dataset))
    slides = {slide_id: open_slide(demo[slide_id]["slide"], slide_id) for slide_id in SLIDES}
    try:
        for index in range(len(dataset)):
            patch, label = restored[index]
            assert patch.dtype == torch.uint8 and tuple(patch.shape) == (3, PATCH_PX, PATCH_PX)
            assert isinstance(label, int) and label == int(dataset.labels[index])
            expected = slides[str(dataset.slide_ids[index])].read_region(
                int(dataset.x0[index]), int(dataset.y0[index]), PATCH_PX, PATCH_PX, MODEL_MPP
            )
            assert np.array_equal(patch.permute(1, 2, 0).numpy(), expected)
        assert pickle.loads(pickle.dumps(restored))._slides == {}  # opened slides never pickle
    finally:
        restored.close()
        for slide in slides.values():
            slide.close()


def test_augmentation_changes_pixels_and_repeats_per_seed(demo):
    plain = _dataset(demo, augment=False)
    augmented = _dataset(demo, augment=True, seed=5)
    same_seed = pickle.loads(pickle.dumps(_dataset(demo, augment=True, seed=5)))
    other_seed = _dataset(demo, augment=True, seed=6)
    try:
        changed = 0
        for index in range(len(plain)):
            patch, label = augmented[index]
            reference, reference_label = plain[index]
            assert patch.dtype == torch.uint8 and patch.shape == reference.shape and label == reference_label
            changed += int(not torch.equal(patch, reference))
            assert torch.equal(patch, same_seed[index][0])
            assert torch.equal(patch, augmented[index][0])  # a pure function of (seed, epoch, index)
        assert changed == len(plain)  # colour jitter alone changes almost every pixel
        assert any(not torch.equal(augmented[i][0], other_seed[i][0]) for i in range(len(plain)))
        first_epoch = [augmented[i][0] for i in range(len(plain))]
        augmented.set_epoch(1)
        assert any(not torch.equal(augmented[i][0], first_epoch[i]) for i in range(len(plain)))
    finally:
        for dataset in (plain, augmented, same_seed, other_seed):
            dataset.close()
