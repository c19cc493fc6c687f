"""IHC core scoring (bcpath.ihc.score) and ``bcpath ihc score``.

Planted truth: synthetic round nuclei painted with known hematoxylin / DAB amounts
(:func:`bcpath.stain.deconvolution.combine_stains`) in known class proportions. Real images:
``skimage.data.immunohistochemistry()`` (DAB + hematoxylin) and an H&E tile of
../shared/data/wsi/CMU-1-Small-Region.svs, which must be flagged ``no_dab_signal``.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from bcpath.cli import main
from bcpath.errors import BcpathError
from bcpath.ihc.score import (
    CLASS_NAMES,
    allred_intensity_score,
    allred_proportion_score,
    allred_score,
    nap_h_score,
    score_core,
)
from bcpath.stain.deconvolution import combine_stains

# Planted classes: (hematoxylin OD, DAB OD, class, number of nuclei); DAB mid-class.
PLANTED = [(0.5, 0.08, 0, 40), (0.35, 0.3, 1, 30), (0.25, 0.5, 2, 20), (0.15, 0.85, 3, 10)]


def _planted_core(mpp: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image of 100 nuclei (radius 3.5 µm, 20 µm grid, shuffled classes) on
    faintly stained stroma, and their (100, 3) truth x, y (px), class."""
    rng = np.random.default_rng(seed)
    classes = np.concatenate([np.full(n, cls) for _, _, cls, n in PLANTED])
    rng.shuffle(classes)
    step, radius = 20 / mpp, 3.5 / mpp
    size = int(round(10 * step))
    conc = np.zeros((size, size, 3), np.float64)
    conc[..., 0] = 0.06  # pale hematoxylin stroma: tissue, not nuclei
    truth = []
    for k, cls in enumerate(classes):
        x, y = (k % 10 + 0.5) * step, (k // 10 + 0.5) * step
        disc = np.zeros((size, size), np.uint8)
        cv2.circle(disc, (int(round(x * 16)), int(round(y * 16))), int(round(radius * 16)), 1, -1, shift=4)
        h, d = PLANTED[int(cls)][:2]
        conc[disc > 0, 0] = h
        conc[disc > 0, 1] = d
        truth.append((x, y, cls))
    conc[..., :2] += np.abs(rng.normal(0, 0.01, (size, size, 2)))
    # A strip of glass so that the white level is found from the image.
    conc[:, : int(8 / mpp)] = 0
    conc[: int(8 / mpp)] = 0
    return combine_stains(conc, i0=245.0), np.array(truth)


@pytest.mark.parametrize("mpp", [0.5, 0.25])
def test_planted_nuclei_give_the_planted_h_score(mpp):
    rgb, truth = _planted_core(mpp)
    result = score_core(rgb, mpp)
    s = result.summary
    truth_counts = np.bincount(truth[:, 2].astype(int), minlength=4)
    truth_h = 100.0 * float(np.sum(np.arange(4) * truth_counts)) / truth_counts.sum()
    print("planted", truth_counts.tolist(), truth_h, "measured", [s["n_neg"], s["n1"], s["n2"], s["n3"]], s["h_score_cells"], "NAP", s["h_score_nap"])
    assert abs(s["h_score_cells"] - truth_h) <= 15
    assert np.abs(np.array([s["n_neg"], s["n1"], s["n2"], s["n3"]]) - truth_counts).max() <= 3
    assert s["percent_positive"] == pytest.approx(60.0, abs=3)
    assert s["allred"] == 6 and s["allred_proportion"] == 4 and s["allred_intensity"] == 2
    assert s["flags"] == []


def test_tumor_mask_restricts_the_scored_cells():
    rgb, truth = _planted_core()
    mask = np.zeros(rgb.shape[:2], bool)
    mask[:, : rgb.shape[1] // 2] = True  # left five columns of nuclei
    result = score_core(rgb, 0.5, tumor_mask=mask)
    inside = truth[truth[:, 0] < rgb.shape[1] // 2]
    assert len(result) == len(inside) == 50 and np.all(result.x < rgb.shape[1] // 2)
    assert np.bincount(result.classes, minlength=4).tolist() == np.bincount(inside[:, 2].astype(int), minlength=4).tolist()
    with pytest.raises(BcpathError, match="mask"):
        score_core(rgb, 0.5, tumor_mask=mask[:10])


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(float("nan"), 0), (0.0, 0), (0.5, 1), (0.999, 1), (1.0, 2), (5.0, 2), (10.0, 2), (10.01, 3), (33.0, 3), (100 / 3, 3),
     (33.4, 4), (66.0, 4), (200 / 3, 4), (66.7, 5), (100.0, 5)],
)
def test_allred_proportion_score_boundaries(percent, expected):
    assert allred_proportion_score(percent) == expected


def test_allred_intensity_and_total_on_hand_cases():
    assert allred_intensity_score(np.array([0, 0])) == 0
    assert allred_intensity_score(np.array([0, 1, 1])) == 1
    assert allred_intensity_score(np.array([1, 2])) == 2  # mean 1.5 rounds up
    assert allred_intensity_score(np.array([1, 1, 2])) == 1  # mean 1.33
    assert allred_intensity_score(np.array([2, 3, 0, 0])) == 3  # mean of positives 2.5 rounds up
    assert allred_intensity_score(np.array([3, 3, 3])) == 3
    # 1 of 200 cells 3+: PS 1 (0.5 %), IS 3.
    assert allred_score(np.array([3] + [0] * 199)) == {"proportion": 1, "intensity": 3, "total": 4}
    # No positive cell: 0 (not 2).
    assert allred_score(np.zeros(50, int)) == {"proportion": 0, "intensity": 0, "total": 0}
    # 70 % positive, mostly 2+: 5 + 2.
    assert allred_score(np.array([0] * 3 + [2] * 6 + [3])) == {"proportion": 5, "intensity": 2, "total": 7}


def test_nap_h_score_from_area_percentages():
    dab = np.array([[0.0, 0.1, 0.25, 0.45], [0.7, 0.2, 0.4, 0.6], [9.0, 9.0, 9.0, 9.0]])
    tissue = np.ones_like(dab, bool)
    tissue[2] = False  # not tissue: ignored
    nap = nap_h_score(dab, tissue)  # 8 px: 2 negative, 2 weak, 2 moderate, 2 strong
    assert nap["pct_weak"] == nap["pct_moderate"] == nap["pct_strong"] == pytest.approx(25.0)
    assert nap["h_score"] == pytest.approx(150.0)
    assert np.isnan(nap_h_score(dab, np.zeros_like(tissue))["h_score"])


def test_skimage_ihc_smoke():
    result = score_core(data.immunohistochemistry(), 0.5)
    s = result.summary
    print("skimage IHC", {k: s[k] for k in ("h_score_cells", "h_score_nap", "n_neg", "n1", "n2", "n3", "percent_positive", "allred", "dab_p99", "flags")})
    assert s["n_cells"] > 200 and len(result) == s["n_cells"] == s["n_neg"] + s["n1"] + s["n2"] + s["n3"]
    assert 0 <= s["h_score_cells"] <= 300 and 0 <= s["h_score_nap"] <= 300
    assert "no_dab_signal" not in s["flags"] and s["flags"] == []
    assert 2 <= s["allred"] <= 8
    rows = result.cell_rows()
    assert rows[0].keys() == {"x", "y", "dab_od_mean", "class"} and {r["class"] for r in rows} <= set(CLASS_NAMES)
    qupath = score_core(data.immunohistochemistry(), 0.5, stains="qupath").summary
    assert abs(qupath["h_score_cells"] - s["h_score_cells"]) < 10  # the two vector sets nearly agree


def test_he_tile_is_flagged_no_dab_signal(require_shared):
    from bcpath.wsi import open_slide

    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        tile = slide.read_level(0, 800, 1200, 512, 512)
    s = score_core(tile, 0.499).summary
    print("H&E tile", {k: s[k] for k in ("h_score_cells", "dab_p99", "tissue_fraction", "flags")})
    assert "no_dab_signal" in s["flags"] and "no_tissue" not in s["flags"]


def test_he_images_are_not_ihc_and_get_no_h_score(require_shared, tmp_path, capsys):
    from bcpath.images import read_uint8_image
    from bcpath.wsi import open_slide

    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        tiles = [slide.read_level(0, x, y, 512, 512) for x, y in ((800, 1200), (500, 1000), (1200, 2000))]
    monuseg = sorted(require_shared("nuclei/monuseg_nonbreast/images").glob("*.tif"))[:6]
    tiles += [read_uint8_image(p) for p in monuseg]
    for tile in tiles:
        s = score_core(tile, 0.5).summary
        assert "not_ihc" in s["flags"], s["eosin_fraction"]
        assert s["h_score_cells"] is None and s["h_score_nap"] is None and s["allred"] is None and s["percent_positive"] is None
    # Real IHC (DeepLIIF Ki67 tiles: first 512 px panel of each strip; skimage's colon IHC) is scored.
    ihc_tiles = [read_uint8_image(p)[:512, :512] for p in sorted(require_shared("ihc/deepliif_ki67/test").glob("*.png"))]
    ihc_tiles += [read_uint8_image(p) for p in sorted(require_shared("ihc/deepliif_ki67/Sample_Large_Tissues").glob("*.png"))[:3]]
    for tile in [*ihc_tiles, data.immunohistochemistry()]:
        s = score_core(tile, 0.5).summary
        assert "not_ihc" not in s["flags"] and s["eosin_fraction"] < 0.05 and 0 <= s["h_score_cells"] <= 300
    # The command line prints the flag and exits non-zero; the JSON says null.
    he = tmp_path / "he.png"
    Image.fromarray(tiles[0]).save(he)
    assert main(["ihc", "score", "--mpp", "0.5", str(he), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"image {he}: not an IHC image (flag not_ihc" in err
    summary = json.loads((tmp_path / "out/he.json").read_text())
    assert summary["h_score_cells"] is None and summary["allred"] is None and "not_ihc" in summary["flags"]


def test_tiny_images_are_refused():
    ihc = data.immunohistochemistry()
    for size in (1, 8, 31):
        with pytest.raises(BcpathError, match=f"core1: {size} × {size} px is too small to score"):
            score_core(ihc[:size, :size], 0.5, name="core1")
    assert score_core(ihc[:64, :64], 0.5).summary["tissue_fraction"] < 1.0


def test_blank_core_and_bad_input():
    blank = np.full((128, 128, 3), 238, np.uint8)
    s = score_core(blank, 0.5).summary
    assert {"no_tissue", "no_dab_signal", "few_cells"} <= set(s["flags"])
    assert s["n_cells"] == 0 and np.isnan(s["h_score_cells"]) and s["allred"] == 0
    gray = np.repeat(data.immunohistochemistry()[..., 1:2], 3, axis=-1)
    with pytest.raises(BcpathError, match="grayscale.*needs an RGB"):
        score_core(gray, 0.5, name="core7")
    with pytest.raises(BcpathError, match="grayscale"):
        score_core(gray[..., 0], 0.5)
    with pytest.raises(BcpathError, match="stains"):
        score_core(blank, 0.5, stains="macenko")
    with pytest.raises(BcpathError, match="µm/px"):
        score_core(blank, 0.0)


def test_cli_scores_good_images_and_names_the_bad_one(tmp_path, capsys):
    import tifffile

    ihc = data.immunohistochemistry()
    good = tmp_path / "coreA.png"
    Image.fromarray(ihc).save(good)
    gray = tmp_path / "coreB.png"
    Image.fromarray(ihc[..., 1]).save(gray)
    tagged = tmp_path / "coreC.tif"  # 0.5 µm/px in the TIFF tags (20000 px/cm)
    tifffile.imwrite(tagged, ihc[:256, :256], resolution=(20000, 20000), resolutionunit=3)
    out = tmp_path / "out"
    assert main(["ihc", "score", "--mpp", "0.5", str(good), str(gray), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"image {gray}: grayscale image; IHC scoring needs an RGB image" in err and "coreA" not in err
    assert not (out / "coreB.json").exists()
    summary = json.loads((out / "coreA.json").read_text())
    for key in ("h_score_cells", "h_score_nap", "n_neg", "n1", "n2", "n3", "percent_positive", "allred", "n_cells", "flags"):
        assert key in summary
    assert summary["h_score_ramcnn"] is None and summary["mpp"] == 0.5
    with open(out / "coreA.cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["x", "y", "dab_od_mean", "class"] and len(rows) == summary["n_cells"]
    counts = {name: sum(r["class"] == name for r in rows) for name in CLASS_NAMES}
    assert [counts[n] for n in CLASS_NAMES] == [summary["n_neg"], summary["n1"], summary["n2"], summary["n3"]]
    # µm/px from the TIFF tags; a PNG without --mpp fails with a clear message.
    assert main(["ihc", "score", "--stains", "qupath", str(tagged), str(good), "--out", str(out / "tags")]) == 1
    err = capsys.readouterr().err
    assert f"image {good}: no µm/px" in err and "--mpp" in err
    tagged_summary = json.loads((out / "tags" / "coreC.json").read_text())
    assert tagged_summary["mpp"] == pytest.approx(0.5) and tagged_summary["stains"] == "qupath"


def test_cli_adds_the_ram_cnn_h_score_when_given_a_model(tmp_path):
    import torch

    from bcpath.ihc.ramcnn import RamCnn, predict_h_score, resize_input, save_ramcnn, sini_siti

    torch.manual_seed(0)
    model = RamCnn(size=64, width=4, hidden=8)
    save_ramcnn(model, tmp_path / "ramcnn", {"note": "untrained, for the CLI test"})
    ihc = data.immunohistochemistry()
    image = tmp_path / "core.png"
    Image.fromarray(ihc).save(image)
    assert main(["ihc", "score", "--mpp", "0.5", "--ramcnn", str(tmp_path / "ramcnn"), str(image), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out/core.json").read_text())
    scored = score_core(ihc, 0.5)
    sini, siti = sini_siti(ihc, scored.nuclei > 0, None, mpp=0.5)
    expected = predict_h_score(model, resize_input(sini, 64), resize_input(siti, 64))
    assert 0 <= summary["h_score_ramcnn"] <= 300
    assert summary["h_score_ramcnn"] == pytest.approx(expected, abs=1e-3)
