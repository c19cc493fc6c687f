"""Annotated H&E re-rendered as DAB + hematoxylin IHC, to train nuclei models for IHC scoring.

No annotated IHC nuclei set is reachable here, and the H&E U-Net misses many pale nuclei of an
IHC counterstain (DeepLIIF Ki67 tiles: recall 0.62 at 8 px). The paper's nuclei FCN was trained
on grayscale; we instead keep colour and re-stain the annotated H&E images: the hematoxylin
amount is taken from the H&E by colour deconvolution (Ruifrok & Johnston H&E vectors), eosin is
dropped, a random subset of the annotated nuclei is made DAB-positive at random strengths
(1+ to 3+ and beyond), and the result is rendered with jittered H-DAB vectors under a random
white. The instance labels are unchanged, so every training target stays exact.

Measured (2026-12-02, CPU): fine-tuning models/nuclei_unet on these renders for 12 epochs
(lr 5e-4) segments rendered validation images as well as the H&E model does H&E (AJI 0.631),
but on the real DeepLIIF Ki67 tiles it detects cells no better than the threshold detector
(F1 within 8 px 0.656 vs 0.695), so no such model is shipped: the renders are not yet real
enough (see README, IHC section).

2026-12-04: :func:`render_ihc_from_amounts` renders from separated amounts (one deconvolution per
image, many renders) with wider ranges, structured stromal DAB and blur; the learned IHC
detector ``models/ihc_nuclei`` (:mod:`bcpath.ihc.nuclei_net`) is trained on it from scratch. On the
DeepLIIF tiles it reaches mean F1 0.646 within 8 px, below the OD-sum detector's 0.664
(:mod:`bcpath.ihc.odsum`) and the default ``unet`` detector's 0.725, so it is shipped but not
the default.

Units: stain amounts are optical densities (OD, log10), as in :mod:`bcpath.stain.deconvolution`.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from bcpath.stain.deconvolution import QUPATH_DAB, QUPATH_HEMATOXYLIN, StainVectors, separate_stains

#: Ruifrok & Johnston's H&E OD vectors (hematoxylin, eosin), as in scikit-image's rgb2hed.
HE_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
HE_EOSIN = np.array([0.07, 0.99, 0.11])


def hematoxylin_from_he(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(H, W) hematoxylin and eosin amounts (OD, clipped at 0) of an (H, W, 3) uint8 H&E image."""
    # The H-DAB deconvolution with eosin in DAB's slot: channel 1 is then the eosin amount.
    he = StainVectors(hematoxylin=HE_HEMATOXYLIN, dab=HE_EOSIN, name="ruifrok_he")
    conc = separate_stains(rgb, he, 255.0)
    return np.maximum(conc[..., 0], 0), np.maximum(conc[..., 1], 0)


def _jitter(vector: NDArray[np.float64], rng: np.random.Generator, sd: float) -> NDArray[np.float64]:
    """Unit OD vector moved by N(0, sd) per component (kept positive), renormalised."""
    moved = np.clip(vector / np.linalg.norm(vector) + rng.normal(0.0, sd, 3), 0.02, None)
    return moved / np.linalg.norm(moved)


def render_ihc(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    rng: np.random.Generator,
    *,
    positive_fraction: tuple[float, float] = (0.0, 0.7),
    dab_od: tuple[float, float] = (0.12, 1.5),
    nuclear_hematoxylin_od: tuple[float, float] = (0.2, 0.9),
    haze_od: tuple[float, float] = (0.0, 0.08),
    vector_sd: float = 0.05,
    white: tuple[float, float] = (225.0, 252.0),
    noise_sd: float = 2.0,
) -> NDArray[np.uint8]:
    """An (H, W, 3) uint8 IHC-looking image with the same nuclei as an H&E image.

    Args:
        rgb: (H, W, 3) uint8 H&E.
        labels: (H, W) int instance labels of its nuclei (0 = background).
        rng: random source (every draw comes from it: same state, same image).
        positive_fraction: range of the fraction of nuclei made DAB-positive.
        dab_od: range of a positive nucleus's DAB amount (log-uniform; QuPath's 1+ starts at 0.2).
        nuclear_hematoxylin_od: range the 90th percentile of nuclear hematoxylin is scaled to
            (IHC counterstains are often paler than H&E).
        haze_od: range of a uniform DAB background (non-specific staining).
        vector_sd: per-component jitter of the H and DAB OD vectors before renormalising.
        white: range of the white level (glass); each channel then varies by ~6 levels (tinted glass).
        noise_sd: Gaussian noise in 8-bit units.
    """
    hema, eosin = hematoxylin_from_he(rgb)
    return render_ihc_from_amounts(
        hema, eosin, labels, rng, positive_fraction=positive_fraction, dab_od=dab_od,
        nuclear_hematoxylin_od=nuclear_hematoxylin_od, haze_od=haze_od, vector_sd=vector_sd,
        white=white, noise_sd=noise_sd,
    )  # fmt: skip


def render_ihc_from_amounts(
    hema: NDArray[np.float32],
    eosin: NDArray[np.float32],
    labels: NDArray[np.integer],
    rng: np.random.Generator,
    *,
    positive_fraction: tuple[float, float] = (0.0, 0.7),
    dab_od: tuple[float, float] = (0.12, 1.5),
    nuclear_hematoxylin_od: tuple[float, float] = (0.2, 0.9),
    haze_od: tuple[float, float] = (0.0, 0.08),
    vector_sd: float = 0.05,
    white: tuple[float, float] = (225.0, 252.0),
    noise_sd: float = 2.0,
    log_uniform_hematoxylin: bool = False,
    eosin_counterstain: tuple[float, float] = (0.0, 0.15),
    blur_sigma_px: tuple[float, float] = (0.0, 0.0),
    stroma_dab_od: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.uint8]:
    """:func:`render_ihc` from hematoxylin and eosin amounts already separated
    (:func:`hematoxylin_from_he`), so that one H&E image renders many times cheaply.

    Extra args (defaults keep :func:`render_ihc`'s behaviour):
        log_uniform_hematoxylin: draw the nuclear hematoxylin level log-uniformly (a wide range,
            from barely visible to dark, is then spread evenly over its decades).
        eosin_counterstain: range of the share of eosin kept as faint counterstain.
        blur_sigma_px: range of a Gaussian blur (out of focus scans) of the rendered OD.
        stroma_dab_od: range of DAB laid on the eosin-stained cytoplasm and stroma (OD at the
            image's 90th eosin percentile): the beige, structured background of real IHC, which
            is not a nucleus.
    """
    lab = np.asarray(labels)
    inside = lab > 0
    reference = float(np.percentile(hema[inside], 90)) if inside.any() else float(np.percentile(hema, 99))
    low_h, high_h = nuclear_hematoxylin_od
    level = float(np.exp(rng.uniform(np.log(low_h), np.log(high_h)))) if log_uniform_hematoxylin else rng.uniform(low_h, high_h)
    hema = hema * (level / max(reference, 0.05))
    # A little of the eosin-stained cytoplasm/stroma stays visible as counterstain.
    hema = hema + rng.uniform(*eosin_counterstain) * eosin

    ids = np.unique(lab[inside])
    amount = np.zeros(int(lab.max()) + 1 if lab.size else 1, np.float32)
    if ids.size:
        chosen = ids[rng.random(ids.size) < rng.uniform(*positive_fraction)]
        low, high = np.log(dab_od[0]), np.log(dab_od[1])
        amount[chosen] = np.exp(rng.uniform(low, high, chosen.size))
    nuclear_dab = amount[lab]
    # Texture follows the nucleus's own chromatin; DAB over a nucleus hides part of its hematoxylin.
    texture = np.clip(hema / max(float(np.percentile(hema[inside], 50)) if inside.any() else 1.0, 1e-3), 0.5, 1.5)
    dab = cv2.GaussianBlur((nuclear_dab * texture).astype(np.float32), (0, 0), 1.0)
    hema = np.where(nuclear_dab > 0, hema * rng.uniform(0.2, 0.8), hema)
    dab = dab + rng.uniform(*haze_od)
    if stroma_dab_od[1] > 0:
        eosin_ref = max(float(np.percentile(eosin, 90)), 0.05)
        dab = dab + rng.uniform(*stroma_dab_od) * np.clip(eosin / eosin_ref, 0, 2) * (nuclear_dab == 0)

    h_vec = _jitter(QUPATH_HEMATOXYLIN, rng, vector_sd)
    d_vec = _jitter(QUPATH_DAB, rng, vector_sd)
    od = hema[..., None] * h_vec + dab[..., None] * d_vec
    if blur_sigma_px[1] > 0:
        sigma = rng.uniform(*blur_sigma_px)
        if sigma > 0.05:
            od = cv2.GaussianBlur(od.astype(np.float32), (0, 0), sigma)
    glass = np.clip(rng.uniform(*white) + rng.normal(0.0, 6.0, 3), 0, 255)
    out = glass * np.power(10.0, -od) + rng.normal(0.0, noise_sd, od.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
