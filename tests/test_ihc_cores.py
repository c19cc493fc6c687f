"""IHC TMA cores (bcpath.ihc.cores): the demo TMA's planted truth, dearraying, per-core scoring and the cohort table."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from bcpath.demo.tma import CLASS_DAB, TMA_MISSING, class_proportions, core_id, make_demo_tma
from bcpath.errors import BcpathError
from bcpath.ihc import cores as ihc_cores
from bcpath.ihc.score import INTENSITY_THRESHOLDS
from bcpath.wsi import open_slide


@pytest.fixture(scope="module")
def demo_tma(tmp_path_factory):
    out = tmp_path_factory.mktemp("tma")
    record = make_demo_tma(out, seed=0)
    return out, record


@pytest.mark.parametrize("target", [0.0, 37.5, 150.0, 262.0, 300.0])
def test_class_proportions_hit_the_target_h_score(target):
    p = class_proportions(target)
    assert p.sum() == pytest.approx(1.0) and (p >= 0).all()
    assert 100 * float(p @ np.arange(4)) == pytest.approx(target, abs=1e-6)


def test_planted_dab_amounts_sit_inside_the_scoring_bins():
    low, mid, high = INTENSITY_THRESHOLDS
    assert CLASS_DAB[0] + 0.03 < low < CLASS_DAB[1] - 0.03 < CLASS_DAB[1] + 0.03 < mid
    assert mid < CLASS_DAB[2] - 0.03 < CLASS_DAB[2] + 0.03 < high < CLASS_DAB[3] - 0.03


def test_demo_tma_truth_spans_0_to_300_with_a_missing_core_and_a_low_tumor_core(demo_tma):
    out, record = demo_tma
    truth = pd.read_csv(out / record["core_scores"])
    assert len(truth) == record["n_cores"] == 19
    assert core_id(*TMA_MISSING[0]) not in set(truth.core_id)
    assert truth.h_score.min() == 0.0 and truth.h_score.max() == 300.0
    counts = truth[["n_neg", "n1", "n2", "n3"]].to_numpy()
    h = (counts @ np.arange(4)) / counts.sum(axis=1) * 100
    np.testing.assert_allclose(truth.h_score, h, atol=0.01)
    assert (truth.n_tumor_cells > 100).all()
    assert (truth.tumor_fraction < 0.15).sum() == 1
    features = json.loads((out / record["annotations"]).read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert names.count("TMA core") == 19 and names.count("Tumor") == 19
    # a tumor region with stroma islands keeps them as holes
    assert any(f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"]) > 1 for f in features if f["properties"]["name"].endswith("tumor"))


def test_dearraying_by_brightness_finds_every_planted_core(demo_tma):
    from bcpath.wsi import open_slide

    out, record = demo_tma
    truth = pd.read_csv(out / "truth/tma_ihc_01.cores.csv").set_index("core_id")
    with open_slide(out / record["path"], "tma_ihc_01") as slide:
        cores = ihc_cores.dearray_slide(slide, ihc_cores.core_mask(slide.thumbnail(8.0)), 8.0, {"core_diameter_um": 600.0}).set_index("core_id")
    assert sorted(cores.index[~cores.missing]) == sorted(truth.index)
    assert list(cores.index[cores.missing]) == ["B4"]
    offset_um = np.hypot(cores.loc[truth.index, "x"] - truth.x, cores.loc[truth.index, "y"] - truth.y) * 0.5
    assert offset_um.max() < 15


def test_cell_scoring_of_demo_cores_matches_the_planted_h_score(demo_tma):
    from bcpath.wsi import open_slide

    out, record = demo_tma
    truth = pd.read_csv(out / record["core_scores"]).set_index("core_id")
    rings = ihc_cores.tumor_polygons(str(out / record["annotations"]), ["Tumor"])
    ihc = {"mpp": 0.5, "stains": "liu2019", "min_cells": 50}
    lowest, highest = truth.h_score.idxmin(), truth.h_score.idxmax()
    middle = (truth.h_score - 150).abs().idxmin()
    with open_slide(out / record["path"], "tma_ihc_01") as slide:
        for core in (lowest, middle, highest):
            row = truth.loc[core].to_dict() | {"core_id": core, "diameter_um": 600.0}
            scored = ihc_cores.score_tma_core(slide, row, ihc, rings, min_blur_score=15.0)["row"]
            assert scored["h_score_cells"] == pytest.approx(truth.loc[core, "h_score"], abs=15), core
            assert scored["tumor_fraction"] == pytest.approx(truth.loc[core, "tumor_fraction"], abs=0.05), core
            assert scored["n_cells"] == pytest.approx(truth.loc[core, "n_tumor_cells"], rel=0.1), core
            assert "out_of_focus" not in scored["flags"] and "probable_fold" not in scored["flags"]


def test_rasterised_tumor_polygons_keep_their_holes():
    outer = np.array([[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]], float)
    hole = np.array([[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]], float)
    mask = ihc_cores._rasterise([[outer, hole]], x0=0, y0=0, scale=0.5, shape=(60, 60))
    assert mask[10, 10] and not mask[25, 25] and not mask[55, 55]
    assert mask.sum() == pytest.approx(50 * 50 - 10 * 10, rel=0.05)


def test_tumor_polygons_read_only_the_named_classes(tmp_path):
    path = tmp_path / "a.geojson"
    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    features = [
        {"type": "Feature", "geometry": square, "properties": {"classification": {"name": "tumour"}}},
        {"type": "Feature", "geometry": square, "properties": {"classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [square["coordinates"]] * 2}, "properties": {"classification": {"name": "Tumor"}}},
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert len(ihc_cores.tumor_polygons(str(path), ["Tumor", "Tumour"])) == 3
    path.write_text("{not json")
    with pytest.raises(BcpathError, match="not readable GeoJSON"):
        ihc_cores.tumor_polygons(str(path), ["Tumor"])


def test_a_large_dark_area_is_a_probable_fold_but_dark_nuclei_are_not():
    mpp = 0.5
    tissue = np.ones((400, 400), bool)
    nuclei = np.zeros((400, 400), np.float32)
    for y in range(10, 400, 26):
        for x in range(10, 400, 26):
            cv2.circle(nuclei, (x, y), 8, 2.0, -1)  # OD 2 nuclei, 8 µm wide, 13 µm apart
    assert ihc_cores.fold_fraction(nuclei + 0.3, tissue, mpp) == 0.0
    folded = nuclei + 0.3
    folded[100:300, 100:300] = 1.8  # 100 × 100 µm of doubled tissue
    assert ihc_cores.fold_fraction(folded, tissue, mpp) > ihc_cores.FOLD_MIN_FRACTION


def test_core_mask_separates_pale_cores_from_glass():
    thumb = np.full((120, 160, 3), 242, np.uint8)
    cv2.circle(thumb, (40, 60), 25, (205, 200, 225), -1)  # pale blue stroma core
    cv2.circle(thumb, (110, 60), 25, (200, 180, 170), -1)  # brownish core
    mask = ihc_cores.core_mask(thumb)
    assert mask[60, 40] and mask[60, 110] and not mask[5, 5]
    assert mask.sum() == pytest.approx(2 * np.pi * 25**2, rel=0.1)


def test_reference_scores_are_checked(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("core_id,h_score\nA1,120\nA2,\n")
    table = ihc_cores.read_reference_scores(str(good), "s1")
    assert list(table.reference_h_score.isna()) == [False, True] and (table.slide_id == "s1").all()
    bad = tmp_path / "bad.csv"
    bad.write_text("core_id,reference_h_score\nA1,320\n")
    with pytest.raises(BcpathError, match="outside 0-300"):
        ihc_cores.read_reference_scores(str(bad), "s1")
    (tmp_path / "cols.csv").write_text("core,score\nA1,1\n")
    with pytest.raises(BcpathError, match="lacks column"):
        ihc_cores.read_reference_scores(str(tmp_path / "cols.csv"), "s1")


def test_hscore_table_uses_held_out_predictions_for_reference_cores(tmp_path):
    cores = pd.DataFrame(
        {
            "slide_id": ["s"] * 3, "core_id": ["A1", "A2", "A3"], "row": 1, "col": [1, 2, 3], "x": 0.0, "y": 0.0,
            "h_score_cells": [100.0, 200.0, np.nan], "h_score_nap": [90.0, 180.0, np.nan],
            "n_neg": 1, "n1": 1, "n2": 1, "n3": 1, "n_cells": 4, "percent_positive": 75.0, "allred": 7,
            "tumor_fraction": 0.5, "flags": ["", "", "missing"], "npz": ["", "", ""],
            "reference_h_score": [110.0, 190.0, np.nan], "reference_h_score_2": np.nan,
        }
    )
    cv = tmp_path / "cv.csv"
    pd.DataFrame({"slide_id": ["s", "s"], "core_id": ["A1", "A2"], "fold": [0, 1], "reference": [110, 190], "predicted": [105.0, 185.0]}).to_csv(cv, index=False)
    ramcnn = ihc_cores.ramcnn_predictions(cores, None, str(cv))
    table = ihc_cores.build_hscore_table(cores, ramcnn)
    assert list(table.columns[: len(ihc_cores.HSCORE_COLUMNS)]) == list(ihc_cores.HSCORE_COLUMNS)
    assert list(table.ramcnn_source) == ["cv_fold_0", "cv_fold_1", ""]
    agreement = ihc_cores.h_score_agreement(table)
    assert agreement["h_score_cells"]["mae"] == pytest.approx(10.0)
    assert agreement["h_score_ramcnn"]["mae"] == pytest.approx(5.0)
    assert "npz" not in table.columns


def test_a_core_that_fails_is_flagged_and_the_others_are_scored(tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data

    Image.fromarray(data.immunohistochemistry()).save(tmp_path / "core.png")
    slide = open_slide(tmp_path / "core.png", "img", 0.5)
    cores = pd.concat([ihc_cores.core_image_table(slide), ihc_cores.core_image_table(slide).assign(core_id="bad")], ignore_index=True)
    real = ihc_cores.score_tma_core

    def flaky(slide, core, *args, **kwargs):
        if core["core_id"] == "bad":
            raise BcpathError("core bad: cannot be read")
        return real(slide, core, *args, **kwargs)

    monkeypatch.setattr(ihc_cores, "score_tma_core", flaky)
    ihc = {"mpp": 0.5, "stains": "liu2019", "min_cells": 50, "tumor_classes": ["Tumor"], "ramcnn": {"size": 64}}
    table = ihc_cores.score_tma_slide(slide, cores, ihc, None, tmp_path / "s.parquet", tmp_path / "c.geojson", tmp_path / "cores")
    assert table.set_index("core_id").at["bad", "flags"] == "error"
    assert table.set_index("core_id").at["core", "n_cells"] > 100
    assert sorted(p.name for p in (tmp_path / "cores").iterdir()) == ["core"]
    with pytest.raises(BcpathError, match="no µm/px"):
        open_slide(tmp_path / "core.png", "img", None)
