"""Optical density, colour deconvolution, stain vectors and LAMT (bcpath.stain.deconvolution)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2hed

from bcpath.ihc.evaluate import load_deepliif
from bcpath.images import is_grayscale
from bcpath.stain.deconvolution import (
    DAB_CHANNEL,
    H_CHANNEL,
    RESIDUAL_CHANNEL,
    StainVectors,
    combine_stains,
    estimate_stain_vectors,
    estimate_white,
    get_stain_vectors,
    lamt,
    luminance,
    od_to_rgb,
    otsu_threshold,
    paper_stain_vectors,
    qupath_stain_vectors,
    rgb_to_od,
    separate_stains,
    stain_intensity_image,
)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def skimage_ihc() -> np.ndarray:
    return data.immunohistochemistry()


# --- optical density ------------------------------------------------------------------------


def test_optical_density_follows_beer_lambert():
    rgb = np.array([[[255, 255, 255], [25.5, 255, 2.55], [0, 0, 0]]], dtype=np.float32)
    od = rgb_to_od(rgb)
    assert od.dtype == np.float32 and od.shape == (1, 3, 3)
    np.testing.assert_allclose(od[0, 0], 0.0, atol=1e-7)  # white carries no stain
    np.testing.assert_allclose(od[0, 1], [1.0, 0.0, 2.0], atol=1e-6)  # 10 % and 1 % transmission
    np.testing.assert_allclose(od[0, 2], np.log10(255.0), atol=1e-6)  # black stays finite
    # A per-channel white: a pixel equal to it, or brighter, has OD 0.
    white = np.array([230.0, 220.0, 210.0])
    np.testing.assert_allclose(rgb_to_od(np.array([[230, 220, 210], [255, 255, 255]], np.uint8), white), 0.0, atol=1e-6)
    # od_to_rgb inverts it (to the uint8 grid).
    pix = np.arange(1, 256, dtype=np.uint8)[:, None].repeat(3, axis=1)
    assert np.array_equal(od_to_rgb(rgb_to_od(pix)), pix)


def test_optical_density_input_checks():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 100
    np.testing.assert_allclose(rgb_to_od(rgba), rgb_to_od(rgba[..., :3]))
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_od(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="i0"):
        rgb_to_od(np.zeros((2, 2, 3), np.uint8), 0.0)


def test_white_level_from_background_and_fallback():
    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), (150, 110, 90), np.uint8)
    img[:20] = (232, 226, 214)  # glass, not pure white
    img = np.clip(img + rng.integers(-2, 3, img.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(estimate_white(img), (232, 226, 214), atol=2)
    # No background at all: 255 rather than a tissue colour.
    dark = np.full((32, 32, 3), 120, np.uint8)
    np.testing.assert_allclose(estimate_white(dark), 255.0)


def test_luminance_and_grayscale_detection(skimage_ihc):
    np.testing.assert_allclose(luminance(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]])), [[76.245, 149.685, 29.07, 255.0]], rtol=1e-5)
    gray = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    assert is_grayscale(gray)
    assert is_grayscale(np.repeat(gray[..., None], 3, axis=-1))
    jitter = np.repeat(gray[..., None], 3, axis=-1).astype(int)
    jitter[..., 0] = np.clip(jitter[..., 0] + 2, 0, 255)  # within the tolerance
    assert is_grayscale(jitter.astype(np.uint8))
    assert not is_grayscale(skimage_ihc)
    few = np.repeat(gray[..., None], 3, axis=-1).copy()
    few[:2, :3] = (200, 100, 50)  # 6 of 1024 pixels coloured: 0.6 % > 0.1 % allowed
    assert not is_grayscale(few)


# --- stain vectors --------------------------------------------------------------------------


def test_paper_matrix_rows_and_cross_product_residual():
    sv = paper_stain_vectors()
    np.testing.assert_allclose(sv.dab, _unit([0.268, 0.570, 0.776]), atol=1e-12)
    np.testing.assert_allclose(sv.hematoxylin, _unit([0.650, 0.704, 0.286]), atol=1e-12)
    # Residual: unit, orthogonal to both stains, = normalised DAB x H.
    assert np.linalg.norm(sv.residual) == pytest.approx(1.0)
    assert abs(sv.residual @ sv.dab) < 1e-12 and abs(sv.residual @ sv.hematoxylin) < 1e-12
    np.testing.assert_allclose(sv.residual, [-0.636, 0.710, -0.302], atol=1e-3)
    # Channel order of the matrix: rows H, DAB, residual; the inverse is a true inverse.
    np.testing.assert_allclose(sv.matrix[H_CHANNEL], sv.hematoxylin)
    np.testing.assert_allclose(sv.matrix[DAB_CHANNEL], sv.dab)
    np.testing.assert_allclose(sv.matrix @ sv.inverse, np.eye(3), atol=1e-12)
    assert sv.as_dict()["residual"] == [-0.6362, 0.71, -0.3018]


def test_stain_vector_errors_and_names(skimage_ihc):
    with pytest.raises(ValueError, match="parallel"):
        StainVectors(hematoxylin=[0.6, 0.7, 0.3], dab=[1.2, 1.4, 0.6])
    with pytest.raises(ValueError, match="all zeros"):
        StainVectors(hematoxylin=[0, 0, 0], dab=[0.3, 0.6, 0.8])
    with pytest.raises(ValueError, match="one plane"):
        StainVectors(hematoxylin=[1, 0, 0], dab=[0, 1, 0], residual=[1, 1, 0])
    assert get_stain_vectors("liu2019").name == "liu2019"
    assert get_stain_vectors("QuPath").name == "qupath"
    assert get_stain_vectors("estimate", skimage_ihc).name == "estimated"
    with pytest.raises(ValueError, match="need the image"):
        get_stain_vectors("estimate")
    with pytest.raises(ValueError, match="unknown stain vectors"):
        get_stain_vectors("masson")


@pytest.mark.parametrize("stains", [paper_stain_vectors(), qupath_stain_vectors()], ids=["liu2019", "qupath"])
@pytest.mark.parametrize("amount", [0.1, 0.5, 1.2])
def test_pure_stain_colours_deconvolve_to_one_channel(stains, amount):
    dab_rgb = od_to_rgb(amount * stains.dab)[None, None]
    h_rgb = od_to_rgb(amount * stains.hematoxylin)[None, None]
    # Tolerance: the uint8 rounding of the colour, at most ~0.5/I * 0.43 OD per channel.
    tol = 0.02 * max(1.0, amount * 2)
    c = separate_stains(dab_rgb, stains)[0, 0]
    assert c[DAB_CHANNEL] == pytest.approx(amount, abs=tol)
    assert abs(c[H_CHANNEL]) < tol and abs(c[RESIDUAL_CHANNEL]) < tol
    c = separate_stains(h_rgb, stains)[0, 0]
    assert c[H_CHANNEL] == pytest.approx(amount, abs=tol)
    assert abs(c[DAB_CHANNEL]) < tol and abs(c[RESIDUAL_CHANNEL]) < tol


def test_mixture_is_unmixed_into_its_amounts():
    sv = paper_stain_vectors()
    rng = np.random.default_rng(2)
    amounts = np.column_stack([rng.uniform(0, 1, 500), rng.uniform(0, 1, 500), np.zeros(500)])
    rgb = od_to_rgb(amounts @ sv.matrix).reshape(20, 25, 3)
    back = separate_stains(rgb, sv).reshape(-1, 3)
    np.testing.assert_allclose(back[:, :2], amounts[:, :2], atol=0.05)
    assert np.abs(back[:, 2]).max() < 0.05


def test_round_trip_on_real_ihc_pixels(require_shared, skimage_ihc):
    tile = load_deepliif(require_shared("ihc/deepliif_ki67"), "test")[0].rgb
    for rgb in (tile, skimage_ihc):
        for stains in (paper_stain_vectors(), qupath_stain_vectors()):
            back = combine_stains(separate_stains(rgb, stains), stains)
            assert back.dtype == np.uint8 and back.shape == rgb.shape
            assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1
        # With the image's own white, exact for every pixel not brighter than it.
        white = estimate_white(rgb)
        back = combine_stains(separate_stains(rgb, None, white), None, white)
        inside = np.all(rgb <= white, axis=-1)
        assert inside.mean() > 0.8
        assert np.abs(back[inside].astype(int) - rgb[inside].astype(int)).max() <= 1


def test_dab_channel_agrees_with_skimage(skimage_ihc):
    # skimage uses other vectors and its own scaling: compare correlation, not values.
    ours = separate_stains(skimage_ihc)
    hed = rgb2hed(skimage_ihc)  # channels H, E, DAB
    r_dab = np.corrcoef(ours[..., DAB_CHANNEL].ravel(), hed[..., 2].ravel())[0, 1]
    r_h = np.corrcoef(ours[..., H_CHANNEL].ravel(), hed[..., 0].ravel())[0, 1]
    r_swapped = np.corrcoef(ours[..., DAB_CHANNEL].ravel(), hed[..., 0].ravel())[0, 1]
    assert r_dab > 0.98  # measured 0.994
    assert r_h > 0.93  # measured 0.953
    assert r_swapped < 0.5  # the channels are not swapped


def test_estimated_vectors_recover_planted_stains():
    h_true, d_true = _unit([0.78, 0.56, 0.29]), _unit([0.37, 0.52, 0.77])
    rng = np.random.default_rng(3)
    n = 4000
    kind = rng.integers(0, 3, n)  # pure H, pure DAB, mixtures
    h = np.where(kind == 1, 0, rng.uniform(0.2, 1.2, n))
    d = np.where(kind == 0, 0, rng.uniform(0.2, 1.2, n))
    od = h[:, None] * h_true + d[:, None] * d_true
    rgb = od_to_rgb(od).reshape(40, 100, 3)
    est = estimate_stain_vectors(rgb, alpha=0.5)
    assert est.name == "estimated"
    assert est.hematoxylin @ h_true > 0.995
    assert est.dab @ d_true > 0.995
    # Too few stained pixels: the reference comes back.
    blank = np.full((50, 50, 3), 250, np.uint8)
    assert estimate_stain_vectors(blank).name == "liu2019"


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(4)
    low, high = rng.normal(0.1, 0.02, 1000), rng.normal(0.8, 0.05, 300)
    t = otsu_threshold(np.concatenate([low, high, [np.nan, np.inf]]))
    assert low.max() < t < high.min()
    # Overlapping modes of equal size and spread: the split lies midway.
    a, b = rng.normal(0.3, 0.1, 5000), rng.normal(0.7, 0.1, 5000)
    assert otsu_threshold(np.concatenate([a, b])) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="empty"):
        otsu_threshold(np.array([np.nan]))


# --- LAMT and the stain-intensity image -----------------------------------------------------


def _ramp(seed: int = 0, n: int = 40):
    """Blocks of hematoxylin (a ramp of 12 densities), weak / moderate / strong DAB, background.

    The image is made with a hematoxylin colour that leaks into the paper's DAB channel
    (0.10 DAB OD per OD of hematoxylin), as real stains do: dark nuclei then carry more
    apparent DAB than weakly positive ones, which a single threshold cannot separate.
    """
    rng = np.random.default_rng(seed)
    h_true, d_true = _unit([0.60, 0.70, 0.39]), _unit([0.27, 0.57, 0.78])
    levels = [("H", a) for a in np.linspace(0.1, 1.6, 12)]
    levels += [("weak", a) for a in (0.12, 0.16, 0.2)] + [("moderate", a) for a in (0.35, 0.45, 0.55)]
    levels += [("strong", a) for a in (0.8, 1.0, 1.2)] + [("bg", 0.0)]
    blocks, labels = [], []
    for name, a in levels:
        v = h_true if name == "H" else d_true
        od = a * v + np.abs(rng.normal(0, 0.01, (n, n, 3)))
        blocks.append(od_to_rgb(od))
        labels.append(np.full((n, n), name, dtype=object))
    return np.concatenate(blocks, axis=1), np.concatenate(labels, axis=1)


def test_lamt_separates_weak_moderate_strong_dab_from_hematoxylin():
    rgb, label = _ramp()
    res = lamt(rgb)
    for name in ("weak", "moderate", "strong"):
        assert res.dab_mask[label == name].mean() > 0.97, name
    assert res.dab_mask[label == "H"].mean() < 0.01
    assert not res.dab_mask[label == "bg"].any() and not res.stained[label == "bg"].any()
    # Thresholds adapt to luminance: darker intervals need a higher DAB OD.
    assert res.thresholds.shape == (8,) and res.fitted.sum() >= 5
    assert res.thresholds[0] > 3 * res.thresholds[-1]
    assert np.all(np.diff(res.thresholds[res.fitted]) < 0.02)
    # One global threshold misses the weak class (why LAMT exists).
    dab = separate_stains(rgb)[..., DAB_CHANNEL]
    assert (dab[label == "weak"] > res.global_threshold).mean() < 0.05

    # I_la: DAB pixels in [0, 0.5), darker = lower; the rest in [0.5, 1].
    ila = stain_intensity_image(rgb, res.dab_mask)
    assert ila.dtype == np.float32 and ila.shape == label.shape

    def q(name, p):
        return np.percentile(ila[(label == name) & res.dab_mask], p)

    assert q("strong", 99) < q("moderate", 1) and q("moderate", 99) < q("weak", 1) and q("weak", 99) < 0.5
    assert ila[(label == "H") & ~res.dab_mask].min() >= 0.5
    np.testing.assert_allclose(ila[label == "bg"], 1 - luminance(rgb)[label == "bg"] / 510, atol=1e-6)
    # Without a mask, I_la runs LAMT itself.
    np.testing.assert_array_equal(stain_intensity_image(rgb), ila)


def test_lamt_on_unstained_image_marks_nothing():
    res = lamt(np.full((64, 64, 3), 250, np.uint8))
    assert not res.dab_mask.any() and not res.fitted.any()
    assert np.all(np.isinf(res.thresholds))


def test_lamt_on_deepliif_ki67_tiles(require_shared):
    """DAB pixels vs annotated cells, I0 = 255 as in the paper.

    Measured share of positive-cell pixels called DAB, LAMT vs one global Otsu threshold:
    22_2 0.89 / 0.62, 6_2 0.70 / 0.57, Bladder1 0.75 / 0.45, Lung1 0.82 / 0.55; share of
    negative-cell pixels called DAB with LAMT: 0.02, 0.14, 0.08, 0.04.
    """
    root = require_shared("ihc/deepliif_ki67")
    for tile in load_deepliif(root, "test") + load_deepliif(root, "val"):
        m = tile.mask.astype(int)
        pos_cells = (m[..., 0] > 127) & (m[..., 1] < 100)
        neg_cells = (m[..., 2] > 127) & (m[..., 1] < 100)
        res = lamt(tile.rgb)
        dab = separate_stains(tile.rgb)[..., DAB_CHANNEL]
        global_mask = res.stained & (dab > res.global_threshold)
        assert res.dab_mask[pos_cells].mean() >= 0.65, tile.name
        assert res.dab_mask[pos_cells].mean() >= global_mask[pos_cells].mean() + 0.08, tile.name
        assert res.dab_mask[neg_cells].mean() <= 0.2, tile.name
