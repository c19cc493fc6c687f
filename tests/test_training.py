"""ER/PR/HER2 stage 1 training: patch sampling in QuPath regions, the dataset, the training loop."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bcpath.cohort import read_sample_sheet
from bcpath.demo.cohort import make_demo_slide, write_samples_tsv
from bcpath.erpr.sampling import (
    LABEL_ORDER,
    MIN_INSIDE_FRACTION,
    PatchSampleDataset,
    color_jitter,
    sample_patch_positions,
)
from bcpath.erpr.training import (
    LOG_COLUMNS,
    TrainConfig,
    balanced_epoch_indices,
    sample_training_patches,
    train_patch_classifier,
)
from bcpath.errors import BcpathError
from bcpath.geojson import read_geojson, write_geojson
from bcpath.labels import region_label
from bcpath.models.registry import build_model, load_weights
from bcpath.wsi import open_slide
from tests.model_specs import test_spec

SMALL = (2400, 1800)
PATCH_PX = 64
SPEC = test_spec(PATCH_PX, classes=("ER-positive tumor", "ER-negative tumor", "non-tumor"))
TINY = TrainConfig(epochs=2, batch_size=8, lr=1e-3, patience=5, patches_per_class_per_slide=4, seed=3, threads=2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 4 slides of the seed-0 demo cohort (a slide depends only on (seed, index)):
    demo_01 luminal and demo_02 triple-negative (train), demo_03 luminal and demo_04
    HER2-enriched (tune)."""
    out = tmp_path_factory.mktemp("train") / "demo"
    records = [make_demo_slide(out, seed=0, index=i, size=SMALL) for i in range(4)]
    write_samples_tsv(out / "samples.tsv", records)
    return out


@pytest.fixture(scope="module")
def sheet(cohort: Path) -> pd.DataFrame:
    return read_sample_sheet(cohort / "samples.tsv")


def _her2_enriched(sheet: pd.DataFrame) -> str:
    rows = sheet[(sheet["HER2"] == "positive") & (sheet["ER"] == "negative")]
    return str(rows.index[0])


def _shapes(features: list[dict], biomarker: str, label: str) -> list:
    from shapely.geometry import shape

    return [shape(f["geometry"]) for f in features if region_label(f, biomarker) == label]


# --- sampling -------------------------------------------------------------------------------


def test_positions_lie_in_regions_of_their_label(sheet: pd.DataFrame) -> None:
    import shapely

    slide_id = _her2_enriched(sheet)
    features = read_geojson(sheet.at[slide_id, "annotations"])
    side = 256.0
    by_marker = {}
    for biomarker in ("ER", "HER2"):
        positions = sample_patch_positions(features, biomarker, LABEL_ORDER, 20, side, np.random.default_rng(0))
        assert list(positions.columns) == ["x0", "y0", "label"]
        assert positions.dtypes.tolist() == [np.int64] * 3
        for label_index, label in enumerate(LABEL_ORDER):
            rows = positions[positions["label"] == label_index]
            regions = _shapes(features, biomarker, label)
            if not regions:
                assert rows.empty
                continue
            union = shapely.union_all(regions)
            assert len(rows) == 20
            cx, cy = rows["x0"] + side / 2, rows["y0"] + side / 2
            assert shapely.contains_xy(union, cx.to_numpy(), cy.to_numpy()).all()
            boxes = shapely.box(rows["x0"], rows["y0"], rows["x0"] + side, rows["y0"] + side)
            fraction = shapely.area(shapely.intersection(boxes, union)) / side**2
            assert (fraction >= MIN_INSIDE_FRACTION - 0.01).all()  # rounding of the corner to px
        by_marker[biomarker] = positions
    # HER2-enriched: the tumor is ER-negative (class 1) but HER2-positive (class 0).
    assert set(by_marker["ER"]["label"]) == {1, 2}
    assert set(by_marker["HER2"]["label"]) == {0, 2}


def test_positions_deterministic_from_rng(sheet: pd.DataFrame) -> None:
    features = read_geojson(sheet.iloc[0]["annotations"])
    first = sample_patch_positions(features, "ER", LABEL_ORDER, 10, 256.0, np.random.default_rng(7))
    again = sample_patch_positions(features, "ER", LABEL_ORDER, 10, 256.0, np.random.default_rng(7))
    other = sample_patch_positions(features, "ER", LABEL_ORDER, 10, 256.0, np.random.default_rng(8))
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_sampling_edge_cases(sheet: pd.DataFrame) -> None:
    features = read_geojson(sheet.iloc[0]["annotations"])
    assert sample_patch_positions(features, "ER", LABEL_ORDER, 0, 256.0, np.random.default_rng(0)).empty
    # A square larger than any region: nothing fits, no error.
    assert sample_patch_positions(features, "ER", LABEL_ORDER, 5, 1e6, np.random.default_rng(0)).empty
    with pytest.raises(ValueError, match="region labels"):
        sample_patch_positions(features, "ER", ("tumor",), 5, 256.0, np.random.default_rng(0))


def test_training_patches_use_train_and_tune_slides_only(sheet: pd.DataFrame) -> None:
    patches, paths, _ = sample_training_patches(SPEC, sheet, "ER", 3, seed=0)
    splits = sheet["split"].to_dict()
    assert set(patches["split"]) == {"train", "tune"}
    assert all(splits[s] == split for s, split in zip(patches["slide_id"], patches["split"], strict=True))
    assert set(paths) == {s for s, split in splits.items() if split in ("train", "tune")}
    assert set(patches["label"]) == {0, 1, 2}


# --- dataset --------------------------------------------------------------------------------


def test_dataset_reads_exact_patches(sheet: pd.DataFrame) -> None:
    slide_id = str(sheet.index[0])
    features = read_geojson(sheet.at[slide_id, "annotations"])
    positions = sample_patch_positions(features, "ER", LABEL_ORDER, 3, PATCH_PX * 4.0, np.random.default_rng(0))
    positions.insert(0, "slide_id", slide_id)
    dataset = PatchSampleDataset({slide_id: sheet.at[slide_id, "path"]}, positions, 2.0, PATCH_PX, augment=False)
    assert len(dataset) == len(positions) > 0
    with open_slide(sheet.at[slide_id, "path"]) as slide:
        for i in range(len(dataset)):
            patch, label = dataset[i]
            assert patch.shape == (3, PATCH_PX, PATCH_PX) and patch.dtype == torch.uint8
            assert label == positions["label"].iloc[i]
            expected = slide.read_region(int(positions["x0"].iloc[i]), int(positions["y0"].iloc[i]), PATCH_PX, PATCH_PX, 2.0)
            assert np.array_equal(patch.permute(1, 2, 0).numpy(), expected)
            assert torch.equal(patch, dataset[i][0])  # no randomness without augment
    clone = pickle.loads(pickle.dumps(dataset))  # workers get the dataset without open slides
    assert clone._slides == {} and torch.equal(clone[0][0], dataset[0][0])

    augmented = PatchSampleDataset({slide_id: sheet.at[slide_id, "path"]}, positions, 2.0, PATCH_PX, augment=True)
    torch.manual_seed(0)
    first = [augmented[i][0] for i in range(len(augmented))]
    torch.manual_seed(0)
    again = [augmented[i][0] for i in range(len(augmented))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(a.shape == (3, PATCH_PX, PATCH_PX) and a.dtype == torch.uint8 for a in first)
    assert any(not torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    with pytest.raises(BcpathError, match="without a path"):
        PatchSampleDataset({}, positions, 2.0, PATCH_PX)


def test_color_jitter() -> None:
    patch = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(color_jitter(patch, 1.0, 1.0, 1.0, 0.0), patch)
    brighter = color_jitter(patch, 1.1, 1.0, 1.0, 0.0).int()
    assert (brighter >= patch.int()).all()
    grey = color_jitter(patch, 1.0, 1.0, 0.0, 0.0).int()
    assert (grey.max(0).values - grey.min(0).values).max() <= 1  # saturation 0 → grey


def test_balanced_epoch_indices() -> None:
    labels = np.array([0] * 3 + [1] * 7 + [2] * 10)
    indices = balanced_epoch_indices(labels, np.random.default_rng(0))
    assert np.bincount(labels[indices]).tolist() == [10, 10, 10]
    assert set(indices) == set(range(len(labels)))
    assert np.array_equal(indices, balanced_epoch_indices(labels, np.random.default_rng(0)))


# --- training -------------------------------------------------------------------------------


def test_tiny_training_run(cohort: Path, tmp_path: Path) -> None:
    result = train_patch_classifier(SPEC, cohort / "samples.tsv", "ER", tmp_path / "a", TINY, progress=False)
    log = pd.read_csv(result.log_path)
    assert tuple(log.columns) == LOG_COLUMNS
    assert log["epoch"].tolist() == [1, 2] and result.epochs_run == 2 and not result.stopped_early
    assert log["n_train"].iloc[0] % 3 == 0 and (log["n_tune"] > 0).all()
    assert log["tune_auc"].between(0, 1).all()
    best = int(log["tune_loss"].idxmin())
    assert result.best_epoch == best + 1 and math.isclose(result.best_tune_loss, log["tune_loss"].iloc[best], rel_tol=1e-4)
    assert log["is_best"].iloc[0] == 1

    # best.pt: sha256 as returned, loads strictly through the registry path; last.pt too.
    entry = dataclasses.replace(SPEC, weights="best.pt", sha256=result.sha256)
    load_weights(build_model(entry), entry, tmp_path / "a")
    state = torch.load(result.last_path, weights_only=True)
    build_model(SPEC).load_state_dict(state, strict=True)
    patches = pd.read_csv(tmp_path / "a" / "patches.csv")
    assert list(patches.columns) == ["slide_id", "split", "x0", "y0", "label"]
    assert (tmp_path / "a" / "train.json").is_file()

    # Same seed → the same log (wall time aside).
    again = train_patch_classifier(SPEC, cohort / "samples.tsv", "ER", tmp_path / "b", TINY, progress=False)
    log_again = pd.read_csv(again.log_path)
    pd.testing.assert_frame_equal(log.drop(columns="seconds"), log_again.drop(columns="seconds"))
    # (The files' sha256 differ: torch.save names the zip records after the temporary file.)
    for name in ("best.pt", "last.pt"):
        first, second = (torch.load(d / name, weights_only=True) for d in (tmp_path / "a", tmp_path / "b"))
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_early_stopping_with_patience_zero(cohort: Path, sheet: pd.DataFrame, tmp_path: Path) -> None:
    # Synthetic: the tune slides are the train slides with the region classes permuted, so
    # everything the model learns raises the tune loss; with patience 0 the run stops at
    # epoch 2 and keeps epoch 1.
    swap = {"ER-positive tumor": "non-tumor", "non-tumor": "ER-negative tumor", "ER-negative tumor": "ER-positive tumor"}
    train = sheet[sheet["split"] == "train"]
    tune = train.copy()
    for slide_id in train.index:
        features = read_geojson(train.at[slide_id, "annotations"])
        for feat in features:
            name = feat["properties"].get("classification", {}).get("name")
            if name in swap:
                feat["properties"]["classification"]["name"] = swap[name]
        write_geojson(tmp_path / f"{slide_id}.geojson", features)
        tune.at[slide_id, "annotations"] = str(tmp_path / f"{slide_id}.geojson")
    tune["split"] = "tune"
    tune["slide_id"] = [f"{s}_swapped" for s in tune.index]
    table = pd.concat([train, tune.set_index("slide_id", drop=False)])
    config = dataclasses.replace(TINY, epochs=4, patience=0)
    result = train_patch_classifier(SPEC, table, "ER", tmp_path / "out", config, progress=False)
    log = pd.read_csv(result.log_path)
    assert result.stopped_early and result.epochs_run == 2 == len(log)
    assert log["tune_loss"].iloc[1] >= log["tune_loss"].iloc[0]
    assert result.best_epoch == 1 and log["is_best"].tolist() == [1, 0]


def test_training_needs_three_classes_and_tune_slides(cohort: Path, sheet: pd.DataFrame, tmp_path: Path) -> None:
    two = dataclasses.replace(SPEC, classes=("tumor", "non-tumor"))
    with pytest.raises(BcpathError, match="3"):
        train_patch_classifier(two, sheet, "ER", tmp_path, TINY, progress=False)
    no_tune = sheet.assign(split=sheet["split"].replace({"tune": "test"}))
    with pytest.raises(BcpathError, match="no tune patches"):
        train_patch_classifier(SPEC, no_tune, "ER", tmp_path, TINY, progress=False)
