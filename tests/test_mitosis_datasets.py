"""The mitosis training crops read from ../shared/data (AMi-Br figures, nuclei-set negatives)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from bcpath.errors import BcpathError
from bcpath.proliferation.datasets import (
    list_nuclei_samples,
    load_nuclei_images,
    nuclei_group,
    nuclei_negative_crops,
    read_amibr,
    split_groups,
)


def test_amibr_reader_labels_and_slides(require_shared):
    root = require_shared("mitosis/amibr")
    figures = read_amibr(root, model_mpp=0.25, crop_px=96)
    crops = figures.crops
    assert crops.images.shape == (2480, 96, 96, 3) and crops.images.dtype == np.uint8
    assert (crops.labels == 1).all()
    assert int((crops.atypical == 1).sum()) == 530 and int((crops.atypical == 0).sum()) == 1950
    assert not figures.skipped
    # Every patch is listed in AMI-BR.csv: groups are dataset:slide, 135 slides of two challenges.
    groups = set(crops.groups.tolist())
    assert len(groups) == 135 and {g.split(":")[0] for g in groups} == {"MIDOG21", "TUPAC16"}
    # The figure is centred: the central 96 px of the 128 px patch.
    from bcpath.images import read_uint8_image

    first = read_uint8_image(figures.files[0])
    assert np.array_equal(crops.images[0], first[16:112, 16:112])


def test_amibr_resampled_to_a_coarser_model(require_shared):
    figures = read_amibr(require_shared("mitosis/amibr"), model_mpp=0.5, crop_px=48)
    assert figures.crops.images.shape[1:] == (48, 48, 3)


def test_corrupt_crop_is_named_skipped_and_counted(require_shared, tmp_path, caplog):
    source = require_shared("mitosis/amibr")
    for name in ("normal", "atypical"):
        (tmp_path / "patches" / name).mkdir(parents=True)
        for path in sorted((source / "patches" / name).glob("*.png"))[:3]:
            shutil.copy(path, tmp_path / "patches" / name / path.name)
    shutil.copy(source / "AMI-BR.csv", tmp_path / "AMI-BR.csv")
    broken = tmp_path / "patches" / "normal" / "MIDOG21_999999.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with caplog.at_level(logging.WARNING):
        figures = read_amibr(tmp_path, 0.25, 96)
    assert len(figures.crops) == 6 and figures.skipped == [broken]
    assert str(broken) in caplog.text and "skipped" in caplog.text


def test_amibr_folder_without_patches_is_refused(tmp_path):
    with pytest.raises(BcpathError, match="patches"):
        read_amibr(tmp_path, 0.25, 96)


def test_nuclei_negatives_groups_and_resolution(require_shared):
    cpm15 = require_shared("nuclei/cpm15")
    consep = require_shared("nuclei/consep_train")
    samples = list_nuclei_samples([cpm15, consep], model_mpp=0.25)
    # CPM-15's 20x images (0.5 µm/px) are coarser than the model: left out, as detection refuses them.
    assert {s.name for s in samples if s.image.parent.parent == cpm15} == {f"image{i:02d}" for i in range(8, 16)}
    consep_samples = [s for s in samples if s.image.parent.parent == consep]
    assert len(consep_samples) == 432
    assert nuclei_group(consep_samples[0]) == "consep_train:train_10"  # tiles grouped by source image
    chosen = [s for s in samples if s.name in ("image08", "train_10_006")]
    images = load_nuclei_images(chosen, 0.25)
    assert all(len(image.centroids) > 10 for image in images)
    negatives = nuclei_negative_crops(images, 0.25, 96, nuclei_per_mm2=500, candidates_per_mm2=300, seed=0)
    assert len(negatives) > 20 and negatives.images.shape[1:] == (96, 96, 3)
    assert (negatives.labels == 0).all() and (negatives.atypical == -1).all()
    assert set(negatives.groups.tolist()) == {"cpm15:image08", "consep_train:train_10"}


def test_split_groups_keeps_groups_whole_and_datasets_on_both_sides():
    groups = np.array(["A:s1"] * 10 + ["A:s2"] * 5 + ["A:s3"] * 5 + ["B:t1"] * 3 + ["B:t2"] * 3)
    val = split_groups(groups, 0.3, seed=1)
    assert {g.split(":")[0] for g in val} == {"A", "B"}
    assert {g.split(":")[0] for g in set(groups.tolist()) - val} == {"A", "B"}
    assert split_groups(groups, 0.3, seed=1) == val  # deterministic
