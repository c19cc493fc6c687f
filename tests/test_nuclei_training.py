"""Nuclei U-Net training pipeline: tiles, augmentation, split, training run, normaliser."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from bcpath.errors import BcpathError
from bcpath.nuclei.datasets import NucleiSample, list_nuclei_folder, sample_organ
from bcpath.nuclei.predict import (
    decode_at_size,
    load_nuclei_model,
    predict_instances,
    resample_rgb,
    tile_grid,
    tile_starts,
)
from bcpath.nuclei.training import (
    NucleiTileDataset,
    PreparedImage,
    augment_tile,
    resample_labels,
    split_by_organ,
    train_nuclei_model,
)
from bcpath.stain.normalise import StainNormaliser

BACKGROUND_RGB = (235, 180, 210)  # eosin-pink
NUCLEUS_RGB = (110, 60, 150)  # hematoxylin-purple


def _synthetic(size: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = size
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = BACKGROUND_RGB
    labels = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        cy, cx, r = (
            int(rng.integers(8, h - 8)),
            int(rng.integers(8, w - 8)),
            int(rng.integers(4, 8)),
        )
        cv2.circle(labels, (cx, cy), r, k, -1)
    rgb[labels > 0] = NUCLEUS_RGB
    noise = rng.normal(0, 6, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8), labels


def _write_cpm_folder(root: Path, n_images: int = 4) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "inst_masks").mkdir()
    for i in range(1, n_images + 1):
        rgb, labels = _synthetic((96 + 16 * i, 112), 12, seed=i)
        cv2.imwrite(str(root / "images" / f"syn{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        tifffile.imwrite(root / "inst_masks" / f"syn{i:02d}_inst.tif", labels.astype(np.uint16))
    return root


@pytest.mark.parametrize("length", [256, 300, 500, 1000, 1234])
def test_tiles_cover_with_ten_percent_overlap(length: int) -> None:
    starts = tile_starts(length, 256, 0.1)
    assert starts[0] == 0 and starts[-1] + 256 == length
    assert all(b - a <= 256 * 0.9 + 1e-9 for a, b in zip(starts, starts[1:], strict=False))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + 256] = True
    assert covered.all()
    grid = tile_grid((length, 300))
    assert len(grid) == len(starts) * len(tile_starts(300))


def test_small_image_is_padded_to_one_tile() -> None:
    rgb, labels = _synthetic((100, 80), 5, 0)
    ds = NucleiTileDataset([PreparedImage("a", "x", rgb, labels)], augment=False)
    assert len(ds) == 1
    x, y, w = ds[0]
    assert x.shape == (3, 256, 256) and y.shape == (256, 256) and w.shape == (256, 256)
    assert y.dtype == torch.int64 and w.dtype == torch.float32
    assert int(y[150:, :].max()) == 0  # white padding is background


def test_augmentation_keeps_image_and_labels_aligned() -> None:
    rgb = np.full((400, 400, 3), 240, np.uint8)
    labels = np.zeros((400, 400), np.int32)
    cv2.circle(labels, (150, 230), 14, 7, -1)  # off-centre disc inside tile (100, 100)
    rgb[labels > 0] = (60, 20, 90)
    moved = 0
    for seed in range(12):
        out_rgb, out_lab = augment_tile(rgb, labels, (100, 100), 256, np.random.default_rng(seed))
        assert out_rgb.shape == (256, 256, 3) and out_lab.shape == (256, 256)
        assert set(np.unique(out_lab)) <= {0, 7}  # nearest neighbour: no new label values
        dark = out_rgb.mean(axis=2) < 150
        disc = out_lab == 7
        iou = (dark & disc).sum() / max((dark | disc).sum(), 1)
        assert disc.sum() > 300 and iou > 0.85, (seed, iou)
        ys, xs = np.nonzero(disc)
        moved += (abs(ys.mean() - 130) > 5) or (abs(xs.mean() - 50) > 5)
    assert moved > 0  # the disc does move with the image


def test_label_resampling_stays_aligned_with_the_image() -> None:
    """Labels taken to model µm/px follow the area-resampled RGB, and come back in place.

    MoNuSeg's 0.2485 µm/px → 0.5 is a non-integer scale: floor-based nearest neighbour
    (cv2.INTER_NEAREST) drifted by up to a source pixel there and cost half the mAP of a
    mask against itself."""
    rng = np.random.default_rng(11)
    labels = np.zeros((1000, 1000), np.int32)
    for k in range(1, 151):  # MoNuSeg-sized nuclei: 16-24 px across at 0.25 µm/px
        centre = (int(rng.integers(12, 988)), int(rng.integers(12, 988)))
        cv2.circle(labels, centre, int(rng.integers(8, 13)), k, -1)
    rgb = np.where(labels[..., None] > 0, 255, 0).astype(np.uint8).repeat(3, axis=2)
    small_rgb = resample_rgb(rgb, 0.2485, 0.5)
    small = resample_labels(labels, small_rgb.shape[:2])
    # the small labels sit where the small image's nuclei are
    dark = small_rgb[..., 0] > 127
    assert ((small > 0) == dark).mean() > 0.985
    back = resample_labels(small, labels.shape)
    for k in (5, 50, 100, 145):
        ys, xs = np.nonzero(labels == k)
        by, bx = np.nonzero(back == k)
        if len(by) == 0:  # a disc fully hidden by a later one
            continue
        assert abs(by.mean() - ys.mean()) < 0.75 and abs(bx.mean() - xs.mean()) < 0.75, k
    from bcpath.nuclei.metrics import mean_average_precision

    assert mean_average_precision(labels, back) > 0.75  # floor-based nearest: 0.50


def test_decoding_at_the_input_size_follows_fine_outlines() -> None:
    """Probabilities at 0.5 µm/px decoded at a 0.25 µm/px input's size: two touching nuclei
    stay two, land where they are, and their outlines beat labels decoded small and upsampled."""
    truth = np.zeros((200, 200), np.int32)
    cv2.circle(truth, (80, 100), 17, 1, -1)
    cv2.ellipse(truth, (113, 100), (15, 11), 0, 0, 360, 2, -1)  # touches the first
    interior = (truth > 0) & ~find_boundaries(truth, mode="inner") & (
        ndi.distance_transform_edt(truth > 0) > 4
    )
    boundary = (truth > 0) & ~interior
    full = np.stack([~(truth > 0), interior, boundary]).astype(np.float32)
    small = np.stack([cv2.resize(c, (100, 100), interpolation=cv2.INTER_AREA) for c in full])
    labels = decode_at_size(small, (200, 200), 0.5, 10)
    assert labels.shape == (200, 200) and labels.max() == 2
    from bcpath.nuclei.metrics import evaluate

    fine = evaluate(truth, labels)
    coarse = evaluate(truth, resample_labels(decode_at_size(small, (100, 100), 0.5, 10), (200, 200)))
    assert fine["aji"] > 0.9 and fine["aji"] > coarse["aji"]
    for k in (1, 2):
        ys, xs = np.nonzero(truth == k)
        hit = np.bincount(labels[truth == k]).argmax()
        py, px = np.nonzero(labels == hit)
        assert abs(py.mean() - ys.mean()) < 1 and abs(px.mean() - xs.mean()) < 1
    # small objects are dropped by their model-resolution area
    speck = np.zeros((3, 100, 100), np.float32)
    speck[0] = 1
    speck[:, 50:52, 50:52] = [[[0.0]], [[1.0]], [[0.0]]]
    assert decode_at_size(speck, (200, 200), 0.5, 10).max() == 0
    assert decode_at_size(speck, (200, 200), 0.5, 4).max() == 1


def _fake(name: str, dataset: str = "monuseg") -> NucleiSample:
    return NucleiSample(dataset, name, Path(f"{name}.tif"), Path(f"{name}.xml"), 0.25)


def test_split_is_deterministic_and_organ_disjoint() -> None:
    names = [
        "TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1", "TCGA-FG-A4MU-01B-01-TS1",
        "TCGA-HT-8564-01Z-00-DX1", "TCGA-CU-A0YN-01A-02-BSB", "TCGA-A6-6782-01A-01-BS1",
        "TCGA-CH-5767-01Z-00-DX1", "TCGA-ZF-A9R5-01A-01-TS1",
    ]  # fmt: skip
    samples = [_fake(n) for n in names] + [_fake("image03", "cpm15"), _fake("image05", "cpm15")]
    train, val = split_by_organ(samples)
    train2, val2 = split_by_organ(list(reversed(samples)))
    assert train == train2 and val == val2
    assert {sample_organ(s) for s in val if s.dataset == "monuseg"} == {"brain", "bladder"}
    train_organs = {sample_organ(s) for s in train if s.dataset == "monuseg"}
    assert not train_organs & {"brain", "bladder"}
    assert [s.name for s in val if s.dataset == "cpm15"] == ["image03"]
    with pytest.raises(BcpathError):
        split_by_organ(samples, val_organs=("mars",), val_names=())


def test_folder_layout_detection(tmp_path: Path) -> None:
    folder = _write_cpm_folder(tmp_path / "cpm", 2)
    assert [s.name for s in list_nuclei_folder(folder)] == ["syn01", "syn02"]
    (tmp_path / "junk" / "images").mkdir(parents=True)
    with pytest.raises(BcpathError, match="junk"):
        list_nuclei_folder(tmp_path / "junk")


def test_normaliser_json_round_trip_and_blank_tile(tmp_path: Path) -> None:
    rgb, _ = _synthetic((128, 128), 20, 3)
    norm = StainNormaliser.fit(rgb, "syn")
    norm.save(tmp_path / "stain.json")
    again = StainNormaliser.load(tmp_path / "stain.json")
    np.testing.assert_allclose(again.stain_matrix, norm.stain_matrix)
    np.testing.assert_allclose(again.max_concentrations, norm.max_concentrations)
    other, _ = _synthetic((128, 128), 20, 4)
    a, b = norm.normalise(other), again.normalise(other)
    assert a.dtype == np.uint8 and a.shape == other.shape
    np.testing.assert_array_equal(a, b)
    white = np.full((64, 64, 3), 255, np.uint8)
    np.testing.assert_array_equal(again.normalise(white), white)
    with pytest.raises(BcpathError):
        norm.normalise(np.zeros((4, 4), np.uint8), "gray")


def test_two_epoch_training_writes_outputs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folder = _write_cpm_folder(tmp_path / "data", 4)
    out = tmp_path / "model"
    kwargs = dict(
        epochs=2, batch_size=2, patience=5, seed=3, val_organs=(), val_names=("syn04",),
        plain_depth=2, plain_base=4, thresholds=(0.4, 0.5),
    )  # fmt: skip
    meta = train_nuclei_model([folder], out, **kwargs)  # type: ignore[arg-type]
    for name in ("best.pt", "last.pt", "train.json", "log.csv", "stain.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "train.json").read_text())
    assert saved["best_sha256"] == hashlib.sha256((out / "best.pt").read_bytes()).hexdigest()
    assert saved["epochs_run"] == 2 and saved["split"]["val"] == ["cpm15/syn04"]
    assert saved["threshold"] in (0.4, 0.5)
    for key in ("aji", "map", "pq", "f1_0.5"):
        assert 0.0 <= saved["validation"]["mean"][key] <= 1.0
    with (out / "log.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert meta["best_sha256"] == saved["best_sha256"]

    # deterministic given the seed
    meta2 = train_nuclei_model([folder], tmp_path / "model2", **kwargs)  # type: ignore[arg-type]
    assert meta2["best_sha256"] == saved["best_sha256"]

    bundle = load_nuclei_model(out)
    assert bundle.device == ("cuda" if torch.cuda.is_available() else "cpu")  # GPU when there is one
    assert next(bundle.model.parameters()).device.type == bundle.device
    rgb, _ = _synthetic((90, 130), 10, 9)
    labels = predict_instances(bundle, rgb, mpp=0.25)
    assert labels.shape == (90, 130) and labels.dtype == np.int32
    assert load_nuclei_model(out / "best.pt").threshold == bundle.threshold

    # `bcpath nuclei predict --model <training folder>`
    from bcpath.nuclei.cli import predict_files

    written = predict_files([folder / "images" / "syn01.png"], tmp_path / "pred", str(out), mpp=0.5)
    assert tifffile.imread(written[0]).shape == (112, 112)


def test_real_monuseg_image_normalise_and_tiles(require_shared) -> None:
    folder = require_shared("nuclei/monuseg_nonbreast")
    samples = list_nuclei_folder(folder)
    assert len(samples) >= 2
    assert all(sample_organ(s) != "unknown" for s in samples)
    train, val = split_by_organ(samples)
    assert {sample_organ(s) for s in train}.isdisjoint({sample_organ(s) for s in val})
    (ref_rgb, _), (rgb, labels) = samples[0].load(), samples[1].load()
    ref = resample_rgb(ref_rgb, samples[0].mpp, 0.5)
    small = resample_rgb(rgb, samples[1].mpp, 0.5)
    assert abs(small.shape[0] - 500) <= 10 and abs(small.shape[1] - 500) <= 10  # ~0.25 → 0.5 µm/px
    norm = StainNormaliser.fit(ref, samples[0].name)
    out = norm.normalise(small, samples[1].name)
    assert out.shape == small.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - small.astype(int)).mean() > 1.0  # colours did change
    lab = cv2.resize(labels, small.shape[1::-1], interpolation=cv2.INTER_NEAREST_EXACT)
    ds = NucleiTileDataset([PreparedImage(samples[1].name, "x", out, lab)], augment=True, seed=0)
    assert len(ds) == 9  # 3 × 3 tiles of 256 px over ~500 px
    _, y, w = ds[4]
    assert int((y == 1).sum()) > 100 and float(w.max()) > 1.0


def test_render_ihc_keeps_nuclei_and_plants_dab() -> None:
    from bcpath.stain.deconvolution import estimate_white, qupath_stain_vectors, separate_stains
    from bcpath.stain.ihc_render import render_ihc

    rgb, labels = _synthetic((128, 128), 14, seed=5)
    ids = np.unique(labels[labels > 0])

    def nuclear_dab(image: np.ndarray) -> np.ndarray:
        conc = separate_stains(image, qupath_stain_vectors(), estimate_white(image))
        return np.array([conc[..., 1][labels == k].mean() for k in ids])

    all_positive = render_ihc(rgb, labels, np.random.default_rng(0), positive_fraction=(1, 1), dab_od=(0.6, 0.6), haze_od=(0, 0), vector_sd=0)
    none_positive = render_ihc(rgb, labels, np.random.default_rng(0), positive_fraction=(0, 0), haze_od=(0, 0), vector_sd=0)
    assert all_positive.shape == rgb.shape and all_positive.dtype == np.uint8
    assert nuclear_dab(all_positive).min() > 0.25  # brown nuclei (0.6 OD planted, blurred at the rim)
    assert nuclear_dab(none_positive).max() < 0.08  # blue nuclei only
    # Nuclei stay darker than the background; the eosin-pink background becomes near-neutral glass.
    lum = none_positive.mean(axis=-1)
    assert lum[labels > 0].mean() < lum[labels == 0].mean() - 20
    background = none_positive[labels == 0].mean(axis=0)
    assert np.ptp(background) < 30  # H&E's pink background: R - G = 55
    # Same generator state, same image.
    again = render_ihc(rgb, labels, np.random.default_rng(0), positive_fraction=(1, 1), dab_od=(0.6, 0.6), haze_od=(0, 0), vector_sd=0)
    np.testing.assert_array_equal(again, all_positive)


def test_ihc_training_from_an_earlier_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folder = _write_cpm_folder(tmp_path / "data", 4)
    kwargs = dict(
        epochs=1, batch_size=2, patience=5, seed=3, val_organs=(), val_names=("syn04",),
        plain_depth=2, plain_base=4, thresholds=(0.5,),
    )  # fmt: skip
    first = train_nuclei_model([folder], tmp_path / "he", **kwargs)  # type: ignore[arg-type]
    meta = train_nuclei_model([folder], tmp_path / "ihc", init_from=tmp_path / "he", target_stain="ihc", **kwargs)  # type: ignore[arg-type]
    assert meta["init_from"]["sha256"] == first["best_sha256"]
    assert meta["target_stain"] == "ihc"
    bundle = load_nuclei_model(tmp_path / "ihc")
    assert bundle.normaliser is None  # IHC images go in as they are
    assert load_nuclei_model(tmp_path / "he").normaliser is not None
    with pytest.raises(BcpathError, match="architecture"):
        train_nuclei_model([folder], tmp_path / "bad", init_from=tmp_path / "he", **{**kwargs, "plain_base": 8})  # type: ignore[arg-type]
    with pytest.raises(BcpathError, match="target stain"):
        train_nuclei_model([folder], tmp_path / "bad2", target_stain="pas", **kwargs)  # type: ignore[arg-type]


def test_test_time_augmentation_is_rotation_invariant(tmp_path: Path) -> None:
    """With tta the probabilities of a rotated image are the rotated probabilities (up to
    float error); without it a trained-for-one-epoch U-Net is not equivariant."""
    from dataclasses import replace

    from bcpath.nuclei.predict import NucleiModel, build_model, predict_probabilities

    torch.manual_seed(0)
    model = build_model({"encoder": "plain", "depth": 2, "base": 4, "dropout": 0.0}).eval()
    bundle = NucleiModel(model, 0.5, 64, 0.5, 4, None, {"encoder": "plain"}, "cpu")
    rgb, _ = _synthetic((64, 64), 6, seed=2)
    rotated = np.ascontiguousarray(np.rot90(rgb))
    with_tta = replace(bundle, tta=True)
    p, p_rot = predict_probabilities(with_tta, rgb), predict_probabilities(with_tta, rotated)
    np.testing.assert_allclose(np.rot90(p, axes=(1, 2)), p_rot, atol=1e-5)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    q, q_rot = predict_probabilities(bundle, rgb), predict_probabilities(bundle, rotated)
    assert np.abs(np.rot90(q, axes=(1, 2)) - q_rot).max() > 1e-4
