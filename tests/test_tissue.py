"""Tissue detection, GeoJSON round trip and QC on synthetic and real slides."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from bcpath.geojson import read_geojson
from bcpath.tissue import (
    TissueParams,
    detect_tissue,
    extract_tissue,
    fill_small_holes,
    mask_from_geojson,
    mask_to_geojson_features,
    pen_mask,
)
from bcpath.wsi import open_slide


def _synthetic_thumbnail(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """White glass with a pink tissue ellipse that has a small lumen and a big tear."""
    image = np.full((400, 600, 3), 240, np.uint8) + rng.integers(0, 6, (400, 600, 3), dtype=np.uint8)
    truth = np.zeros((400, 600), np.uint8)
    cv2.ellipse(truth, (300, 200), (200, 120), 0, 0, 360, 1, -1)
    image[truth == 1] = (220, 140, 190)
    cv2.circle(image, (250, 200), 6, (240, 240, 240), -1)  # small lumen: filled
    cv2.circle(image, (380, 200), 60, (240, 240, 240), -1)  # large tear: kept as a hole
    return image, truth.astype(bool)


def test_detects_tissue_fills_small_holes_keeps_large():
    image, truth = _synthetic_thumbnail(np.random.default_rng(0))
    mask = detect_tissue(image, mpp=8.0, params=TissueParams(dilation_um=0))
    assert mask[200, 250]  # small lumen (113 px ≈ 0.007 mm²) filled
    assert not mask[200, 380]  # tear (11,300 px ≈ 0.72 mm²) stays a hole
    expected = truth.copy()
    cv2.circle(expected.view(np.uint8), (380, 200), 60, 0, -1)
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.97


def test_blank_glass_gives_empty_mask():
    rng = np.random.default_rng(1)
    glass = np.full((300, 300, 3), 235, np.uint8) + rng.integers(0, 10, (300, 300, 3), dtype=np.uint8)
    assert not detect_tissue(glass, mpp=8.0).any()


def test_pen_marks_are_not_tissue():
    image, _ = _synthetic_thumbnail(np.random.default_rng(2))
    cv2.line(image, (20, 20), (20, 380), (30, 60, 200), 8)  # blue marker outside tissue
    assert pen_mask(image)[200, 20]
    assert not pen_mask(image)[200, 150]  # H&E pink is not ink
    mask = detect_tissue(image, mpp=8.0)
    assert not mask[200, 20]


def test_fill_small_holes_leaves_border_background():
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    mask[20:23, 20:23] = False
    filled = fill_small_holes(mask, max_hole_px=100)
    assert filled[21, 21] and not filled[0, 0] and filled.sum() == 900


def test_fill_small_holes_matches_scipy_fill_holes_on_random_masks():
    """One labelling of the background fills what binary_fill_holes & ~mask labelled did."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for density in (0.3, 0.5, 0.7):
        mask = ndimage.binary_opening(rng.random((300, 420)) < density)
        holes = ndimage.binary_fill_holes(mask) & ~mask
        labels, count = ndimage.label(holes)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small = sizes < 12
        small[0] = False
        np.testing.assert_array_equal(fill_small_holes(mask, max_hole_px=12), mask | small[labels])


def test_component_labels_fall_back_to_int32_past_65535_components():
    from bcpath.tissue import _component_areas

    mask = np.zeros((600, 600), dtype=bool)
    mask[::2, ::2] = True  # 90,000 single-pixel components
    labels, areas = _component_areas(mask)
    assert labels.dtype == np.int32 and len(areas) == 90_001 and labels.max() == 90_000
    labels, areas = _component_areas(mask[:100, :100])
    assert labels.dtype == np.uint16 and len(areas) == 2_501 and (areas[1:] == 1).all()


def test_geojson_round_trip_matches_mask():
    image, _ = _synthetic_thumbnail(np.random.default_rng(3))
    mask = detect_tissue(image, mpp=8.0)
    features = mask_to_geojson_features(mask, mask_mpp=8.0, slide_mpp=0.5)
    assert features and features[0]["properties"]["objectType"] == "annotation"
    assert features[0]["properties"]["classification"]["name"] == "Tissue"
    # Level-0 coordinates: 16x the mask's pixels.
    xs = [x for x, _ in features[0]["geometry"]["coordinates"][0]]
    assert max(xs) == pytest.approx(16 * (np.nonzero(mask)[1].max() + 1), abs=17)


def test_extract_tissue_outputs(require_shared, tmp_path):
    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        qc = extract_tissue(slide, tmp_path)
    for name in ("mask.png", "tissue.geojson", "thumbnail.png", "qc.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "qc.json").read_text()) == json.loads(json.dumps(qc))
    # CMU-1-Small-Region: one piece of skin covering about a third of the field.
    assert qc["n_tissue_pieces"] == 1
    assert 0.3 < qc["tissue_fraction"] < 0.45
    assert 0.5 < qc["tissue_area_mm2"] < 0.75
    assert qc["blur_score"] > 500  # in focus
    assert qc["background_brightness"] > 230
    assert qc["flags"] == []
    # The GeoJSON rasterised back gives the mask.
    from bcpath.tissue import read_mask

    mask = read_mask(tmp_path / "mask.png")
    redrawn = mask_from_geojson(tmp_path / "tissue.geojson", mask.shape, 8.0, 0.499)
    assert (mask & redrawn).sum() / (mask | redrawn).sum() > 0.95
    assert len(read_geojson(tmp_path / "tissue.geojson")) == 1


def test_nearly_empty_slide_is_flagged_not_crashed(require_shared, tmp_path):
    with open_slide(require_shared("wsi/kidney-48-5.tif"), mpp=1.0) as slide:
        qc = extract_tissue(slide, tmp_path)
    assert qc["tissue_area_mm2"] == 0 and "no_tissue" in qc["flags"]
    assert qc["blur_score"] is None
    assert read_geojson(tmp_path / "tissue.geojson") == []


@pytest.mark.parametrize("layout", ["single_channel", "rgb_equal"])
def test_grayscale_slide_is_refused_with_one_clear_message(require_shared, tmp_path, layout):
    from bcpath.errors import SlideError
    from tests.workflow_helpers import write_grayscale_slide

    path = write_grayscale_slide(require_shared("wsi/CMU-1-Small-Region.svs"), tmp_path / "gray.tif", layout == "single_channel")
    with open_slide(path) as slide, pytest.raises(SlideError, match=r"^slide gray: grayscale slide .*H&E/IHC needs RGB; give the colour scan"):
        extract_tissue(slide, tmp_path / "out")
    assert not (tmp_path / "out" / "qc.json").exists()


def test_user_geojson_mask_replaces_computed(require_shared, tmp_path):
    from bcpath.geojson import feature, write_geojson

    square = {"type": "Polygon", "coordinates": [[[0, 0], [800, 0], [800, 800], [0, 800], [0, 0]]]}
    write_geojson(tmp_path / "mine.geojson", [feature(square, classification="Tissue")])
    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        qc = extract_tissue(slide, tmp_path / "out", user_mask=tmp_path / "mine.geojson")
    assert qc["mask_source"].startswith("user:")
    # 800 px at 0.499 µm/px ≈ 0.16 mm² (rasterised at 8 µm/px).
    assert qc["tissue_area_mm2"] == pytest.approx(0.159, abs=0.02)
