"""Classical nuclei baseline (hematoxylin -> Otsu -> distance-transform watershed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from bcpath.nuclei.classical import (
    BASELINES,
    classical_baseline,
    foreground_mask,
    segment_connected_components,
    segment_fiji,
    segment_watershed,
)
from bcpath.nuclei.datasets import list_cpm15, list_monuseg
from bcpath.nuclei.metrics import evaluate

HEMATOXYLIN_RGB = (70, 50, 140)  # dark purple


def _touching_discs(mpp: float) -> np.ndarray:
    """Two 4 µm-radius nuclei, centres 6.5 µm apart (touching), plus one apart, on pink-white."""
    size = int(round(40 / mpp))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * mpp  # µm
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[:] = (235, 210, 225)
    for cy, cx in ((12.0, 12.0), (12.0, 18.5), (30.0, 28.0)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4.0**2] = HEMATOXYLIN_RGB
    return rgb


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_watershed_splits_touching_nuclei_at_any_resolution(mpp):
    rgb = _touching_discs(mpp)
    labels = segment_watershed(rgb, mpp)
    assert labels.dtype == np.int32 and labels.shape == rgb.shape[:2]
    assert labels.max() == 3 and np.unique(labels).size == 4
    assert segment_connected_components(rgb, mpp).max() == 2
    areas_um2 = np.bincount(labels.ravel())[1:] * mpp**2
    assert np.all(np.abs(areas_um2 - np.pi * 16) < 0.3 * np.pi * 16)


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_fiji_splits_touching_nuclei_with_a_line(mpp):
    rgb = _touching_discs(mpp)
    labels = segment_fiji(rgb, mpp)
    assert labels.dtype == np.int32 and labels.shape == rgb.shape[:2]
    assert labels.max() == 3 and np.unique(labels).size == 4
    # A 1 px background line (4-connected) separates the two halves, as in ImageJ.
    left = labels == labels[int(12 / mpp), int(12 / mpp)]
    right = labels == labels[int(12 / mpp), int(18.5 / mpp)]
    assert not (ndi.binary_dilation(left) & right).any()
    areas_um2 = np.bincount(labels.ravel())[1:] * mpp**2
    assert np.all(np.abs(areas_um2 - np.pi * 16) < 0.3 * np.pi * 16)
    touching = segment_fiji(rgb, mpp, watershed_line=False)
    assert touching.max() == 3 and (touching > 0).sum() > (labels > 0).sum()


def test_named_baselines():
    rgb = _touching_discs(0.5)
    assert set(BASELINES) == {"otsu", "watershed", "fiji"}
    expected = {"otsu": 2, "watershed": 3, "fiji": 3}
    for name, n in expected.items():
        labels = classical_baseline(name, rgb, 0.5)
        assert labels.dtype == np.int32 and labels.max() == n, name
    np.testing.assert_array_equal(
        classical_baseline("watershed", rgb, 0.5), segment_watershed(rgb, 0.5)
    )
    with pytest.raises(ValueError, match="available: otsu, watershed, fiji"):
        classical_baseline("hovernet", rgb, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        segment_fiji(rgb, 0.5, threshold="triangle")


def test_blank_image_and_bad_mpp():
    blank = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert segment_watershed(blank, 0.5).max() == 0
    assert segment_fiji(blank, 0.5).max() == 0
    assert not foreground_mask(blank, 0.5).any()
    with pytest.raises(ValueError, match="mpp"):
        segment_watershed(_touching_discs(0.5), 0.0)
    with pytest.raises(ValueError, match="mpp"):
        segment_fiji(_touching_discs(0.5), -1.0)


# Measured with these defaults (see the docstring of bcpath.nuclei.classical):
# name -> (watershed AJI, connected-components AJI).
REAL_CASES = {
    ("monuseg", "TCGA-21-5784-01Z-00-DX1"): (0.398, 0.344),
    ("monuseg", "TCGA-2Z-A9J9-01A-01-TS1"): (0.316, 0.109),
    ("cpm15", "image09"): (0.526, 0.415),
    ("cpm15", "image15"): (0.617, 0.515),
}


@pytest.mark.parametrize(("dataset", "name"), list(REAL_CASES))
def test_real_images_watershed_beats_connected_components(require_shared, dataset, name):
    if dataset == "monuseg":
        samples = list_monuseg(require_shared("nuclei/monuseg_nonbreast"))
    else:
        samples = list_cpm15(require_shared("nuclei/cpm15"))
    sample = next(s for s in samples if s.name == name)
    rgb, gt = sample.load()
    ws = evaluate(gt, segment_watershed(rgb, sample.mpp))
    cc = evaluate(gt, segment_connected_components(rgb, sample.mpp))
    aji_ws, aji_cc = REAL_CASES[(dataset, name)]
    assert ws["aji"] > aji_ws - 0.05, ws
    assert ws["aji"] > cc["aji"] + 0.03, (ws["aji"], cc["aji"])
    assert ws["map"] > 0.08 and ws["f1_50"] > 0.4 and ws["dice"] > 0.65, ws


def test_fiji_baseline_reaches_the_papers_fiji_aji_on_monuseg(require_shared):
    """Mean AJI over the 21 MoNuSeg non-breast images: measured 0.485 (mAP 0.214, PQ 0.459).

    Lagree et al. 2021 report Fiji AJI 0.340 (on breast images); assert 0.46, a small margin
    below the measured value (bit-exact across platforms is not expected of EDT ties).
    """
    samples = list_monuseg(require_shared("nuclei/monuseg_nonbreast"))
    scores = []
    for sample in samples:
        rgb, gt = sample.load()
        scores.append(evaluate(gt, classical_baseline("fiji", rgb, sample.mpp)))
    mean_aji = float(np.mean([s["aji"] for s in scores]))
    assert len(samples) == 21
    assert mean_aji >= 0.46 > 0.34, mean_aji
    assert float(np.mean([s["pq"] for s in scores])) > 0.43
    assert float(np.mean([s["map"] for s in scores])) > 0.19


def _distance_maps(rgb: np.ndarray, mpp: float) -> list[np.ndarray]:
    """The two maps the baselines take maxima of: Fiji's EDT (px) and the watershed's smoothed EDT (µm)."""
    from skimage.filters import threshold_otsu

    from bcpath.nuclei.classical import foreground_mask, hematoxylin

    h = hematoxylin(rgb, mpp, 0.5)
    fiji = ndi.distance_transform_edt(ndi.binary_fill_holes(h > threshold_otsu(h)))
    mask = foreground_mask(rgb, mpp, 0.5, 8.0, 0.5)
    smoothed = ndi.gaussian_filter(ndi.distance_transform_edt(mask) * mpp, max(0.5, 0.25 / mpp))
    return [np.asarray(fiji, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)]


def test_h_maxima_equals_skimage_bit_for_bit(require_shared):
    from skimage.morphology import h_maxima as skimage_h_maxima

    from bcpath.images import h_maxima

    rng = np.random.default_rng(0)
    images = [
        rng.random((64, 80)),  # noise: many shallow maxima
        np.round(rng.random((50, 50)) * 4) / 2,  # plateaus and ties
        ndi.gaussian_filter(rng.random((96, 96)), 3).astype(np.float32) * 10,
        np.zeros((20, 20)),  # flat: no maxima
    ]
    sample = list_monuseg(require_shared("nuclei/monuseg_nonbreast"))[0]
    rgb, _ = sample.load()
    images += _distance_maps(rgb[:512, :512], sample.mpp)
    for image in images:
        for h in (0.05, 0.5, 2.0):
            np.testing.assert_array_equal(h_maxima(image, h), skimage_h_maxima(image, h))
    assert h_maxima(images[-2], 0.5).sum() > 20  # real nuclei: many seeds
    with pytest.raises(ValueError, match="2-D float"):
        h_maxima(np.zeros((4, 4), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="> 0"):
        h_maxima(np.zeros((4, 4)), 0)
