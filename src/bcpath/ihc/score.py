"""H-Score, NAP and Allred score of one IHC core (DAB + hematoxylin), after Liu et al. 2019.

:func:`score_core` combines:

- **cell-based scoring** as QuPath's "Positive cell detection": nuclei from the default
  detector (:data:`DEFAULT_DETECTOR`, the shipped nuclei U-Net ``models/nuclei_unet_v2`` on
  the IHC image and on its view with DAB counted as hematoxylin) or another (:func:`nuclei_model_segmenter`), cells from
  :func:`bcpath.ihc.cells.detect_cells`, each classified by its mean nuclear DAB OD against
  0.2 / 0.4 / 0.6 into negative / 1+ / 2+ / 3+;
  ``H = (1·n1 + 2·n2 + 3·n3) / (n_neg + n1 + n2 + n3) × 100`` (0-300), percent positive =
  share of 1+ or more;
- **Allred score** (Allred et al. 1998) = proportion score + intensity score (:func:`allred_score`);
- the **NAP baseline** (Liu et al.'s pixel H-Score from area percentages): the DAB OD of every
  tissue pixel is binned with the same 0.2 / 0.4 / 0.6 thresholds into weak / moderate / strong,
  and ``H_NAP = 1·%weak + 2·%moderate + 3·%strong`` with percentages of the tissue area
  (:func:`nap_h_score`);
- **QC flags** (:data:`FLAGS`).

Tissue pixels are those whose summed RGB optical density exceeds ``TISSUE_OD`` (0.15, LAMT's
background level), with the white level estimated from the image.

``no_dab_signal`` statistic (:func:`dab_signal`): colour deconvolution pushes the dark
red-purple of H&E nuclei and eosin into the DAB channel (99th percentile of tissue DAB OD
0.65-0.75 on CMU-1 H&E tiles against 1.16 on ``skimage.data.immunohistochemistry()`` and 0.74
on a low-Ki67 DeepLIIF tile), so the plain percentile does not separate the two. Brown DAB
absorbs blue most (OD blue > OD green); eosin and hematoxylin absorb green more than blue. The
statistic is therefore the 99th percentile over tissue of the DAB OD of *brown* pixels (OD_B >
OD_G; other pixels count as 0). Measured with Liu et al.'s vectors (QuPath's give the same to
0.01): CMU-1-Small-Region H&E tiles 0.00-0.16; skimage IHC 1.16; DeepLIIF Ki67 tiles
0.74-3.1. ``NO_DAB_P99`` = 0.4 OD (the 2+ threshold) lies between, about the geometric mean
of 0.16 and 1.16. A truly DAB-negative IHC core is flagged as well: the flag means "no DAB
stain worth scoring; check that this is an IHC image".
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.errors import BcpathError
from bcpath.ihc.cells import (
    INTENSITY_THRESHOLDS,
    DetectionParams,
    detect_cells,
    h_score,
    intensity_classes,
    percent_positive,
)
from bcpath.images import is_grayscale
from bcpath.stain.deconvolution import (
    DAB_CHANNEL,
    estimate_white,
    get_stain_vectors,
    rgb_to_od,
    separate_stains,
)

logger = logging.getLogger(__name__)

#: Class names of the per-cell table, index = intensity class.
CLASS_NAMES = ("negative", "1+", "2+", "3+")
#: Summed RGB OD above which a pixel is tissue.
TISSUE_OD = 0.15
#: Below this share of tissue pixels the core is flagged ``no_tissue``.
MIN_TISSUE_FRACTION = 0.02
#: 99th percentile of brown-pixel DAB OD below which the image is flagged ``no_dab_signal``.
NO_DAB_P99 = 0.4
#: Fewer scored cells than this flags ``few_cells`` (the H-Score is then unreliable).
MIN_CELLS = 50
#: Tissue pixels (summed OD above ``EOSIN_MIN_OD``) whose green OD exceeds their red + blue OD
#: are eosin-dominated: hematoxylin (0.65, 0.70, 0.29) and DAB (0.27, 0.57, 0.78) and any mix of
#: them stay below 0.75 of red + blue, eosin (0.07, 0.99, 0.11) is at 5.5. Measured share of such
#: pixels: DeepLIIF Ki67 IHC 0.000-0.028, skimage IHC 0.000; H&E: MoNuSeg 0.007-0.62, CPM-15
#: 0.26-0.95, CoNSeP 0.31-0.44, CMU-1 tiles 0.11-0.52.
EOSIN_MIN_OD = 0.3
#: An image with at least this share of eosin-dominated tissue is H&E (``not_ihc``) ...
NOT_IHC_EOSIN = 0.10
#: ... and so is one with no DAB signal and at least this share (a hematoxylin-heavy H&E tile).
NOT_IHC_EOSIN_NO_DAB = 0.005
#: Images smaller than this (either side, px) are refused: no cell fits, and the white level
#: estimated from a handful of pixels makes everything "tissue".
MIN_IMAGE_PX = 32
#: QC flags :func:`score_core` can raise. ``not_ihc``: an H&E (eosin) image, not DAB +
#: hematoxylin; its H-Scores, % positive and Allred are None.
FLAGS = ("no_tissue", "no_dab_signal", "few_cells", "not_ihc")
STAIN_CHOICES = ("liu2019", "qupath")


def allred_proportion_score(percent: float) -> int:
    """Allred proportion score of a percentage of positive cells.

    0: none (0 %); 1: > 0 and < 1 %; 2: 1-10 %; 3: > 10 % and <= 1/3; 4: > 1/3 and <= 2/3;
    5: > 2/3. Allred's fractions 1/3 and 2/3 are used (33.3 % and 66.7 %), so 33 % scores 3
    and 66 % scores 4; 1 % and 10 % both score 2. NaN (no cells) scores 0.
    """
    if not math.isfinite(percent) or percent <= 0:
        return 0
    if percent < 1:
        return 1
    if percent <= 10:
        return 2
    if percent <= 100 / 3:
        return 3
    if percent <= 200 / 3:
        return 4
    return 5


def allred_intensity_score(classes: np.ndarray) -> int:
    """Allred intensity score (0 none, 1 weak, 2 moderate, 3 strong) of per-cell classes.

    Rule: the mean intensity class (1-3) of the *positive* cells, rounded half up
    (1.5 -> 2, 2.5 -> 3); 0 when no cell is positive.

    Args:
        classes: (N,) int in {0, 1, 2, 3}.
    """
    c = np.asarray(classes)
    pos = c[c > 0]
    if pos.size == 0:
        return 0
    return int(min(3, math.floor(float(pos.mean()) + 0.5)))


def allred_score(classes: np.ndarray) -> dict[str, int]:
    """Allred score of per-cell classes: ``{"proportion", "intensity", "total"}`` (total 0 or 2-8)."""
    ps = allred_proportion_score(percent_positive(classes))
    intensity = allred_intensity_score(classes) if ps else 0
    return {"proportion": ps, "intensity": intensity, "total": ps + intensity}


def nap_h_score(dab_od: np.ndarray, tissue: np.ndarray, thresholds: tuple[float, float, float] = INTENSITY_THRESHOLDS) -> dict[str, float]:
    """NAP (pixel) H-Score from area percentages of DAB intensity bins.

    Args:
        dab_od: (H, W) DAB OD.
        tissue: (H, W) bool, the area the percentages refer to.
        thresholds: DAB OD of weak, moderate, strong (a value at a threshold is the higher bin).

    Returns:
        ``{"h_score", "pct_weak", "pct_moderate", "pct_strong"}`` (percent of tissue area);
        NaN values when there is no tissue.
    """
    values = np.asarray(dab_od)[np.asarray(tissue, bool)]
    if values.size == 0:
        nan = float("nan")
        return {"h_score": nan, "pct_weak": nan, "pct_moderate": nan, "pct_strong": nan}
    counts = np.bincount(intensity_classes(values, thresholds), minlength=4)
    pct = 100.0 * counts / values.size
    return {
        "h_score": float(pct[1] + 2 * pct[2] + 3 * pct[3]),
        "pct_weak": float(pct[1]),
        "pct_moderate": float(pct[2]),
        "pct_strong": float(pct[3]),
    }


def eosin_fraction(od: np.ndarray) -> float:
    """Share of tissue pixels (summed OD > ``EOSIN_MIN_OD``) dominated by eosin (OD_G > OD_R + OD_B)."""
    stained = od.sum(axis=-1) > EOSIN_MIN_OD
    if not stained.any():
        return 0.0
    eosin = od[..., 1] > od[..., 0] + od[..., 2]
    return float((eosin & stained).sum() / stained.sum())


def dab_signal(od: np.ndarray, dab_od: np.ndarray, tissue: np.ndarray, percentile: float = 99.0) -> float:
    """QC statistic of DAB presence: percentile of brown-pixel DAB OD over tissue (module docstring).

    Args:
        od: (H, W, 3) RGB optical density.
        dab_od: (H, W) DAB OD from colour deconvolution.
        tissue: (H, W) bool.

    Returns:
        OD (0.0 when there is no tissue).
    """
    brown = od[..., 2] > od[..., 1]
    values = np.where(brown, dab_od, 0.0)[np.asarray(tissue, bool)]
    return float(np.percentile(values, percentile)) if values.size else 0.0


def _tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose summed OD (white from the image) exceeds ``TISSUE_OD``."""
    x = np.asarray(rgb)[..., :3]
    return float((rgb_to_od(x, estimate_white(x)).sum(axis=-1) > TISSUE_OD).mean())


@dataclass
class CoreScore:
    """Scores of one core.

    Attributes:
        x, y: (N,) float64 nucleus centroids of the scored cells, image px (x = column).
        dab_od_mean: (N,) float64 mean nuclear DAB OD.
        classes: (N,) int8 intensity class, 0 negative .. 3 strong (names in ``CLASS_NAMES``).
        nuclei: (H, W) int32 label image of every detected nucleus (scored or not; 0 = none).
        summary: h_score_cells, h_score_nap, n_neg, n1, n2, n3, percent_positive, allred,
            allred_proportion, allred_intensity, n_cells, flags, and QC numbers
            (tissue_fraction, dab_p99, nap_pct_weak/moderate/strong, mpp, stains).
    """

    x: np.ndarray
    y: np.ndarray
    dab_od_mean: np.ndarray
    classes: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    nuclei: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def cell_rows(self) -> list[dict[str, Any]]:
        """Per-cell table rows ``{"x", "y", "dab_od_mean", "class"}`` (class as "negative".."3+")."""
        return [
            {"x": float(x), "y": float(y), "dab_od_mean": float(d), "class": CLASS_NAMES[int(c)]}
            for x, y, d, c in zip(self.x, self.y, self.dab_od_mean, self.classes, strict=True)
        ]


#: Nucleus detectors by name: "unet" (the shipped H&E nuclei U-Net :data:`SHIPPED_NUCLEI_UNET`,
#: trained on MoNuSeg, CPM-15 and CoNSeP with stain augmentation, on the IHC image and on its
#: view with DAB counted as hematoxylin, :mod:`bcpath.ihc.unet_detector`),
#: "od_sum" (:mod:`bcpath.ihc.odsum`), "learned" (the shipped ``models/ihc_nuclei``,
#: :mod:`bcpath.ihc.nuclei_net`), "threshold" (:mod:`bcpath.ihc.cells`).
NUCLEI_DETECTORS = ("unet", "od_sum", "learned", "threshold")
#: The detector of :func:`score_core`, ``bcpath ihc score`` and the TMA rules when no nuclei
#: model is given (``ihc.nuclei_model: null``). README, IHC section: on the 4 DeepLIIF tiles
#: (never trained on) mean F1 0.725 against the OD-sum detector's 0.664, better on every tile,
#: and with the hematoxylin halved too.
DEFAULT_DETECTOR = "unet"
SHIPPED_NUCLEI_UNET = Path(__file__).resolve().parents[3] / "models" / "nuclei_unet_v2"
#: ``"unet:<folder>"``: the ``unet`` detector with another H&E nuclei model folder (the rules
#: pass the workflow's own models/nuclei_unet_v2 this way: the package may be installed elsewhere)
UNET_PREFIX = "unet:"


@functools.lru_cache(maxsize=4)
def _unet_detector(folder: str) -> Callable[[np.ndarray, float], np.ndarray]:
    """The H&E model ``folder`` on the image and on its hematoxylin view (:mod:`bcpath.ihc.unet_detector`)."""
    from bcpath.ihc.unet_detector import ihc_unet_segmenter
    from bcpath.nuclei.slide import get_segmenter

    if not Path(folder).is_dir():
        raise BcpathError(
            f"nuclei detector 'unet': model folder {folder} is missing (models/nuclei_unet_v2 ships with the "
            "source checkout); give unet:<model folder> or another detector (od_sum, learned, threshold)"
        )
    return ihc_unet_segmenter(get_segmenter(folder))


def nuclei_model_segmenter(path: str | Path) -> Callable[[np.ndarray, float], np.ndarray] | None:
    """A ``segmenter`` for :func:`score_core` from a detector name or a model folder.

    Args:
        path: a name of :data:`NUCLEI_DETECTORS` or ``unet:<H&E model folder>`` ("threshold" gives None: the threshold
            detector of :func:`bcpath.ihc.cells.detect_cells`); an IHC nucleus detector folder
            (``bcpath ihc train-detector`` output, train.json ``"model": "ihc_nuclei"``); or a
            nuclei U-Net folder (``bcpath nuclei train``; e.g. models/nuclei_unet).

    Raises:
        BcpathError: neither a known name nor a loadable folder.
    """
    import json

    name = str(path)
    if name == "threshold":
        return None
    if name == "unet" or name.startswith(UNET_PREFIX):
        unet_folder = name[len(UNET_PREFIX) :] or str(SHIPPED_NUCLEI_UNET)
        return _unet_detector(str(Path(unet_folder).resolve()))  # one cache entry per folder
    if name == "od_sum":
        from bcpath.ihc.odsum import od_sum_segmenter

        return od_sum_segmenter()
    if name == "learned":
        from bcpath.ihc.nuclei_net import SHIPPED_DETECTOR, load_detector

        return load_detector(SHIPPED_DETECTOR)
    folder = Path(path)
    meta = folder / "train.json" if folder.is_dir() else folder.parent / "train.json"
    if meta.is_file():
        try:
            model = json.loads(meta.read_text()).get("model")
        except ValueError as error:
            raise BcpathError(f"nuclei model {path}: {meta} is not valid JSON ({error})") from None
        if model == "ihc_nuclei":
            from bcpath.ihc.nuclei_net import load_detector

            return load_detector(folder if folder.is_dir() else folder.parent)
    if not folder.exists():
        raise BcpathError(f"nuclei model {path}: no such folder; give one of {', '.join(NUCLEI_DETECTORS)} or a model folder (e.g. models/nuclei_unet_v2)")
    from bcpath.nuclei.slide import get_segmenter

    return get_segmenter(str(path))


def default_segmenter() -> Callable[[np.ndarray, float], np.ndarray] | None:
    """The segmenter of :data:`DEFAULT_DETECTOR`."""
    return nuclei_model_segmenter(DEFAULT_DETECTOR)


def score_core(
    rgb: np.ndarray,
    mpp: float,
    stains: str = "liu2019",
    tumor_mask: np.ndarray | None = None,
    *,
    name: str = "image",
    params: DetectionParams | None = None,
    min_cells: int = MIN_CELLS,
    segmenter: Callable[[np.ndarray, float], np.ndarray] | str | None = None,
) -> CoreScore:
    """Cell-based H-Score, NAP H-Score, Allred score and QC flags of one IHC core.

    Args:
        rgb: (H, W, 3) uint8 RGB DAB + hematoxylin image (alpha dropped).
        mpp: µm/px.
        stains: stain vectors, "liu2019" (Liu et al.'s DAB-H matrix) or "qupath".
        tumor_mask: optional (H, W) bool; only cells whose centroid falls in it are scored, and
            the NAP tissue area is restricted to it.
        name: image name for error messages.
        params: cell detection parameters (QuPath-like defaults; the nucleus detection fields
            apply to the "threshold" detector only; ``cell_expansion_um`` to all).
        min_cells: fewer scored cells than this raise the ``few_cells`` flag.
        segmenter: (rgb (H, W, 3) uint8, µm/px) → (H, W) int nucleus labels, e.g.
            :func:`nuclei_model_segmenter`; a name of :data:`NUCLEI_DETECTORS`; None = the
            default detector (:data:`DEFAULT_DETECTOR`).

    Returns:
        :class:`CoreScore`.

    Raises:
        BcpathError: grayscale or non-RGB image, bad mpp, unknown stains, mask of another size.
    """
    arr = np.asarray(rgb)
    # Equal R, G, B with tissue in it is a grayscale image; equal channels without tissue is
    # empty glass, scored (and flagged no_tissue) like any blank core.
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1) or (arr.ndim == 3 and arr.shape[2] in (3, 4) and is_grayscale(arr) and _tissue_fraction(arr) >= MIN_TISSUE_FRACTION):
        raise BcpathError(
            f"{name}: grayscale image; IHC scoring needs an RGB image, because it separates the "
            "brown DAB from the blue hematoxylin by colour; give the colour scan"
        )
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BcpathError(f"{name}: shape {arr.shape} is not (H, W, 3) RGB; give an RGB image")
    if arr.dtype != np.uint8:
        raise BcpathError(f"{name}: pixel type {arr.dtype}; give 8-bit RGB")
    if min(arr.shape[:2]) < MIN_IMAGE_PX:
        raise BcpathError(
            f"{name}: {arr.shape[1]} × {arr.shape[0]} px is too small to score; give an image of at least "
            f"{MIN_IMAGE_PX} × {MIN_IMAGE_PX} px (a 600 µm core at 0.5 µm/px is 1200 px across)"
        )
    if not (math.isfinite(mpp) and mpp > 0):
        raise BcpathError(f"{name}: µm/px {mpp} must be a positive number; give e.g. 0.5 for 20x")
    if stains not in STAIN_CHOICES:
        raise BcpathError(f"{name}: unknown stains {stains!r}; use one of {', '.join(STAIN_CHOICES)}")
    arr = np.ascontiguousarray(arr[..., :3])
    mask = None
    if tumor_mask is not None:
        mask = np.asarray(tumor_mask, bool)
        if mask.shape != arr.shape[:2]:
            raise BcpathError(f"{name}: tumour mask {mask.shape} differs from the image {arr.shape[:2]}; give a mask of the image's size")

    sv = get_stain_vectors(stains)
    i0 = estimate_white(arr)
    conc = separate_stains(arr, sv, i0)
    od = rgb_to_od(arr, i0)
    tissue = od.sum(axis=-1) > TISSUE_OD
    tissue_fraction = float(tissue.mean())
    dab_p99 = dab_signal(od, conc[..., DAB_CHANNEL], tissue)
    area = tissue & mask if mask is not None else tissue
    nap = nap_h_score(conc[..., DAB_CHANNEL], area)

    if segmenter is None or isinstance(segmenter, str):
        segmenter = nuclei_model_segmenter(segmenter or DEFAULT_DETECTOR)
    nuclei = segmenter(arr, mpp) if segmenter is not None else None
    det = detect_cells(arr, mpp, params=params, stains=sv, white=i0, concentrations=conc, nuclei=nuclei)
    keep = np.ones(len(det), bool)
    if mask is not None and len(det):
        rows = np.clip(np.rint(det.y).astype(int), 0, mask.shape[0] - 1)
        cols = np.clip(np.rint(det.x).astype(int), 0, mask.shape[1] - 1)
        keep = mask[rows, cols]
    classes = det.intensity_classes()[keep]
    counts = np.bincount(classes, minlength=4) if classes.size else np.zeros(4, int)
    allred = allred_score(classes)

    flags = []
    if tissue_fraction < MIN_TISSUE_FRACTION:
        flags.append("no_tissue")
    if dab_p99 < NO_DAB_P99:
        flags.append("no_dab_signal")
    if classes.size < min_cells:
        flags.append("few_cells")
    eosin = eosin_fraction(od)
    not_ihc = eosin >= NOT_IHC_EOSIN or (dab_p99 < NO_DAB_P99 and eosin >= NOT_IHC_EOSIN_NO_DAB)
    if not_ihc:
        flags.append("not_ihc")
    summary: dict[str, Any] = {
        "h_score_cells": h_score(classes),
        "h_score_nap": nap["h_score"],
        "n_neg": int(counts[0]),
        "n1": int(counts[1]),
        "n2": int(counts[2]),
        "n3": int(counts[3]),
        "percent_positive": percent_positive(classes),
        "allred": allred["total"],
        "allred_proportion": allred["proportion"],
        "allred_intensity": allred["intensity"],
        "n_cells": int(classes.size),
        "flags": flags,
        "tissue_fraction": tissue_fraction,
        "dab_p99": dab_p99,
        "nap_pct_weak": nap["pct_weak"],
        "nap_pct_moderate": nap["pct_moderate"],
        "nap_pct_strong": nap["pct_strong"],
        "mpp": float(mpp),
        "stains": sv.name,
        "eosin_fraction": eosin,
    }
    if not_ihc:  # an H&E image has no DAB to score: no H-Score rather than a made-up one
        summary.update({key: None for key in ("h_score_cells", "h_score_nap", "percent_positive", "allred", "allred_proportion", "allred_intensity")})
    logger.debug("%s: %d cells, H %.1f (NAP %.1f), flags %s", name, classes.size, summary["h_score_cells"], nap["h_score"], flags)
    return CoreScore(
        x=det.x[keep],
        y=det.y[keep],
        dab_od_mean=det.dab_od_mean[keep],
        classes=classes.astype(np.int8),
        summary=summary,
        nuclei=det.nuclei,
    )
