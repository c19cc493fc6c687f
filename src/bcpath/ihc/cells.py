"""QuPath-like nucleus and cell detection and intensity scoring on DAB + hematoxylin images.

Follows the steps of QuPath's "Positive cell detection" (watershed cell detection), with every
size in µm so that it holds at any resolution:

1. colour deconvolution (:func:`bcpath.stain.deconvolution.separate_stains`), white level from
   the image (:func:`bcpath.stain.deconvolution.estimate_white`);
2. detection image: hematoxylin OD + DAB OD (default; a strongly Ki67/ER-positive nucleus
   hides its hematoxylin under DAB, so hematoxylin alone misses it), or hematoxylin OD
   (QuPath's default), or the summed RGB OD (QuPath's "Optical density sum");
3. background subtraction (10th percentile in a 40 µm window);
4. Gaussian smoothing (``sigma_um``, 1.5 µm), threshold (``threshold``, 0.1 OD, QuPath's),
   holes filled; after the split, each nucleus is trimmed back to the unsmoothed pixels above
   the threshold (``refine_sigma_um``) so that its stain means are not diluted;
5. watershed split of touching nuclei, seeded at the maxima of a Laplacian-of-Gaussian at the
   typical nucleus radius (3 µm), at least ``split_distance_um`` apart;
6. size filter in µm² (10-400 µm², QuPath's defaults);
7. cell = nucleus expanded by ``cell_expansion_um`` (5 µm), without overlap between cells;
8. intensity class per cell from its mean nuclear DAB OD against 0.2 / 0.4 / 0.6 (QuPath's
   1+ / 2+ / 3+ thresholds), and the H-Score 1·%1+ + 2·%2+ + 3·%3+ (0-300).

Measurements are in OD units on the unsmoothed deconvolved channels.

This threshold detector is no longer the default of IHC scoring: :func:`bcpath.ihc.score.score_core`
takes its nuclei from the contrast-normalised OD-sum detector (:mod:`bcpath.ihc.odsum`), because a
fixed 0.1 OD threshold misses pale-blue negative nuclei (issue 13). It stays available as
``--nuclei-model threshold`` / ``segmenter="threshold"``, and :func:`detect_cells` measures and
classifies the cells of every detector.

Defaults were chosen on the four annotated DeepLIIF Ki67 tiles (0.25 µm/px;
tests/test_ihc_cells.py), so these numbers are in-sample: pooled detection F1 0.78 at a 3 µm
matching radius, % positive within 2.8 points per tile. The previous defaults (hematoxylin only,
distance-transform split, Otsu threshold, no boundary refinement) reached F1 0.55 (recall 0.41):
Otsu's threshold rose towards DAB levels, and merged nucleus clusters exceeded the size limit
and were dropped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from bcpath.stain.deconvolution import (
    DAB_CHANNEL,
    H_CHANNEL,
    StainVectors,
    estimate_white,
    otsu_threshold,
    paper_stain_vectors,
    rgb_to_od,
    separate_stains,
)

logger = logging.getLogger(__name__)

DETECTION_IMAGES = ("hematoxylin+dab", "hematoxylin", "od_sum")
SPLIT_SEEDS = ("log", "distance", "intensity")
#: QuPath's default nuclear DAB OD thresholds for 1+, 2+, 3+.
INTENSITY_THRESHOLDS = (0.2, 0.4, 0.6)
INTENSITY_CLASS_NAMES = ("Negative", "1+", "2+", "3+")


@dataclass(frozen=True)
class DetectionParams:
    """Nucleus detection parameters, in physical units (converted with the image's µm/px).

    Attributes:
        detection_image: "hematoxylin+dab" (H OD + DAB OD, both clipped at 0), "hematoxylin"
            (QuPath's default) or "od_sum" (sum of the RGB optical densities).
        background: "percentile" (default) or "opening" (QuPath's); see
            :func:`estimate_background`.
        background_radius_um: window half-size / disk radius of the background; 0 disables.
        background_percentile: percentile for ``background="percentile"``.
        sigma_um: Gaussian smoothing of the detection image before thresholding.
        threshold: OD above which a smoothed, background-subtracted pixel is nucleus (QuPath's
            0.1); None = per image, Otsu's threshold of the smoothed image clipped to
            [0, ``auto_threshold_cap``] OD, at least ``min_threshold``.
        min_threshold: floor of the automatic threshold.
        auto_threshold_cap: OD at which the image is clipped before Otsu, so that a few very
            dark (DAB) nuclei do not pull the threshold above pale nuclei.
        min_area_um2, max_area_um2: nucleus size filter.
        split: split touching nuclei by watershed.
        split_on: seeds of the split: "log" (maxima of a scale-normalised Laplacian of Gaussian
            of the detection image at ``nucleus_radius_um``), "distance" (maxima of the
            smoothed distance transform of the mask) or "intensity" (maxima of the detection
            image smoothed by ``seed_sigma_um``).
        nucleus_radius_um: typical nucleus radius, the scale of the "log" seeds.
        split_distance_um: minimum distance between two seeds.
        split_smoothing_um: Gaussian smoothing of the distance transform ("distance" seeds).
        seed_sigma_um: Gaussian smoothing of the detection image ("intensity" seeds).
        refine_sigma_um: trim each nucleus to the pixels above ``threshold`` after this finer
            smoothing (0 = none; as QuPath's "refine boundaries"), so that the stain means are
            not diluted by the rim that ``sigma_um`` smoothing adds; None keeps that contour.
        cell_expansion_um: nucleus-to-cell expansion (QuPath's "cell expansion"); 0 = nucleus only.
    """

    detection_image: str = "hematoxylin+dab"
    background: str = "percentile"
    background_radius_um: float = 20.0
    background_percentile: float = 10.0
    sigma_um: float = 1.5
    threshold: float | None = 0.1
    min_threshold: float = 0.05
    auto_threshold_cap: float = 1.0
    min_area_um2: float = 10.0
    max_area_um2: float = 400.0
    split: bool = True
    split_on: str = "log"
    nucleus_radius_um: float = 3.0
    split_distance_um: float = 3.0
    split_smoothing_um: float = 1.0
    seed_sigma_um: float = 1.5
    refine_sigma_um: float | None = 0.0
    cell_expansion_um: float = 5.0

    def __post_init__(self) -> None:
        if self.detection_image not in DETECTION_IMAGES:
            raise ValueError(f"unknown detection image {self.detection_image!r}; use one of {', '.join(DETECTION_IMAGES)}")
        if self.split_on not in SPLIT_SEEDS:
            raise ValueError(f"unknown split_on {self.split_on!r}; use one of {', '.join(SPLIT_SEEDS)}")
        if self.background not in ("percentile", "opening"):
            raise ValueError(f"unknown background {self.background!r}; use 'percentile' or 'opening'")

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON outputs."""
        return asdict(self)


@dataclass
class CellDetections:
    """Detected nuclei and cells of one image.

    Attributes:
        nuclei: (H, W) int32 label image, 0 = background, 1..N nuclei.
        cells: (H, W) int32 label image of nuclei expanded into cells (same ids).
        x, y: (N,) float64 nucleus centroids in image px (x = column).
        area_um2: (N,) float64 nucleus area.
        dab_od_mean: (N,) float64 mean nuclear DAB OD (QuPath's "Nucleus: DAB OD mean").
        hematoxylin_od_mean: (N,) float64 mean nuclear hematoxylin OD.
        cell_dab_od_mean: (N,) float64 mean DAB OD over the whole cell.
        concentrations: (H, W, 3) float32 stain amounts [H, DAB, residual].
        mpp: µm/px of the image.
        params: the detection parameters used.
    """

    nuclei: np.ndarray
    cells: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area_um2: np.ndarray
    dab_od_mean: np.ndarray
    hematoxylin_od_mean: np.ndarray
    cell_dab_od_mean: np.ndarray
    concentrations: np.ndarray
    mpp: float
    params: DetectionParams = field(default_factory=DetectionParams)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def xy(self) -> np.ndarray:
        """(N, 2) float64 nucleus centroids (x, y) in px."""
        return np.stack([self.x, self.y], axis=1)

    def intensity_classes(self, thresholds: tuple[float, float, float] = INTENSITY_THRESHOLDS, compartment: str = "nucleus") -> np.ndarray:
        """(N,) int8 class per cell, 0 negative .. 3 strong; see :func:`intensity_classes`.

        Args:
            thresholds: DAB OD thresholds of 1+, 2+, 3+.
            compartment: "nucleus" (QuPath's default score compartment) or "cell".
        """
        if compartment not in ("nucleus", "cell"):
            raise ValueError(f"unknown compartment {compartment!r}; use 'nucleus' or 'cell'")
        return intensity_classes(self.dab_od_mean if compartment == "nucleus" else self.cell_dab_od_mean, thresholds)

    def positive(self, threshold: float = INTENSITY_THRESHOLDS[0], compartment: str = "nucleus") -> np.ndarray:
        """(N,) bool, cells whose mean DAB OD reaches ``threshold`` (1+ or more by default)."""
        if compartment not in ("nucleus", "cell"):
            raise ValueError(f"unknown compartment {compartment!r}; use 'nucleus' or 'cell'")
        return (self.dab_od_mean if compartment == "nucleus" else self.cell_dab_od_mean) >= threshold


def intensity_classes(dab_od: np.ndarray, thresholds: tuple[float, float, float] = INTENSITY_THRESHOLDS) -> np.ndarray:
    """Intensity class of each cell from its DAB OD, as QuPath's positive cell detection.

    Args:
        dab_od: (N,) mean DAB OD per cell.
        thresholds: increasing DAB OD thresholds of 1+ (weak), 2+ (moderate), 3+ (strong);
            a value at a threshold belongs to the higher class.

    Returns:
        (N,) int8 in {0, 1, 2, 3}.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (3,) or np.any(np.diff(t) < 0):
        raise ValueError(f"thresholds must be 3 increasing DAB OD values (1+, 2+, 3+), got {thresholds}")
    return np.searchsorted(t, np.asarray(dab_od, dtype=np.float64), side="right").astype(np.int8)


def h_score(classes: np.ndarray) -> float:
    """H-Score = 1·%1+ + 2·%2+ + 3·%3+ (0-300) of per-cell intensity classes.

    Args:
        classes: (N,) int in {0, 1, 2, 3}.

    Returns:
        float in [0, 300]; NaN when there are no cells.
    """
    c = np.asarray(classes)
    if c.size == 0:
        return float("nan")
    if c.min() < 0 or c.max() > 3:
        raise ValueError(f"intensity classes must be 0-3, got {c.min()}..{c.max()}")
    return float(100.0 * c.astype(np.float64).mean())


def percent_positive(classes: np.ndarray) -> float:
    """Percentage of cells of class 1+ or more (NaN when there are no cells)."""
    c = np.asarray(classes)
    return float(100.0 * np.mean(c > 0)) if c.size else float("nan")


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def detection_image(concentrations: np.ndarray, kind: str, od_sum: np.ndarray | None = None) -> np.ndarray:
    """The single-channel image nuclei are detected on.

    Args:
        concentrations: (H, W, 3) float32 [H, DAB, residual] OD.
        kind: one of ``DETECTION_IMAGES``.
        od_sum: (H, W) float32 summed RGB OD, needed for ``"od_sum"``.

    Returns:
        (H, W) float32 OD.
    """
    h = np.maximum(concentrations[..., H_CHANNEL], 0)
    if kind == "hematoxylin":
        return h.astype(np.float32)
    if kind == "hematoxylin+dab":
        return (h + np.maximum(concentrations[..., DAB_CHANNEL], 0)).astype(np.float32)
    if kind == "od_sum":
        if od_sum is None:
            raise ValueError("detection image 'od_sum' needs od_sum=")
        return od_sum.astype(np.float32)
    raise ValueError(f"unknown detection image {kind!r}; use one of {', '.join(DETECTION_IMAGES)}")


def estimate_background(image: np.ndarray, mpp: float, params: DetectionParams) -> np.ndarray:
    """Slowly varying background of a detection image (cytoplasm, stained mounting, haze).

    ``background="percentile"``: the ``background_percentile`` of a square window of side
    2 x ``background_radius_um`` (computed at 1/4 resolution, interpolated back). Unlike a
    morphological opening it does not rise to nucleus level inside dense nucleus clusters or
    fall to zero next to unstained specks. ``background="opening"``: QuPath's choice, an
    opening with a disk of ``background_radius_um``.

    Args:
        image: (H, W) float32 OD.
        mpp: µm/px.
        params: detection parameters.

    Returns:
        (H, W) float32 background OD.
    """
    radius_px = params.background_radius_um / mpp
    if params.background == "opening":
        return cv2.morphologyEx(image, cv2.MORPH_OPEN, _disk(radius_px))
    factor = 4 if min(image.shape) >= 64 else 1
    small = cv2.resize(image, (max(1, image.shape[1] // factor), max(1, image.shape[0] // factor)), interpolation=cv2.INTER_AREA)
    size = max(3, int(round(2 * radius_px / factor)) | 1)
    bg = ndi.percentile_filter(small, params.background_percentile, size=size, mode="reflect")
    return cv2.resize(bg, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _seed_map(image: np.ndarray, mask: np.ndarray, mpp: float, params: DetectionParams) -> np.ndarray:
    """(H, W) float32 map whose regional maxima seed one nucleus each (0 outside ``mask``)."""
    if params.split_on == "log":
        # Scale-normalised Laplacian of Gaussian at the typical nucleus radius: a blob
        # detector whose maxima sit at nucleus centres even inside touching groups.
        sigma = params.nucleus_radius_um / np.sqrt(2) / mpp
        log = -(sigma**2) * ndi.gaussian_laplace(image.astype(np.float32), sigma)
        return np.where(mask, log, 0).astype(np.float32)
    if params.split_on == "intensity":
        inten = cv2.GaussianBlur(image.astype(np.float32), (0, 0), params.seed_sigma_um / mpp)
        return np.where(mask, inten, 0).astype(np.float32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    if params.split_smoothing_um > 0:
        dist = cv2.GaussianBlur(dist, (0, 0), params.split_smoothing_um / mpp)
    return dist


def segment_nuclei(image: np.ndarray, mpp: float, params: DetectionParams) -> np.ndarray:
    """Nucleus labels from a detection image.

    Args:
        image: (H, W) float32 OD detection image.
        mpp: µm/px.
        params: detection parameters.

    Returns:
        (H, W) int32 labels, 0 = background, consecutive ids from 1.
    """
    img: np.ndarray = image.astype(np.float32)
    if params.background_radius_um > 0:
        img = img - estimate_background(img, mpp, params)
    img_raw = img
    if params.sigma_um > 0:
        img = cv2.GaussianBlur(img, (0, 0), params.sigma_um / mpp)
    threshold = params.threshold
    if threshold is None:
        threshold = max(params.min_threshold, otsu_threshold(np.clip(img, 0, params.auto_threshold_cap)))
    logger.debug("nucleus threshold %.3f OD", threshold)
    mask = ndi.binary_fill_holes(img > threshold)
    # Opening with a small disk drops one-pixel bridges and specks before splitting.
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _disk(max(1.0, 0.5 / mpp))).astype(bool)
    if params.split:
        seeds = _seed_map(img_raw, mask, mpp, params)
        comp, _ = ndi.label(mask)
        peaks = peak_local_max(seeds, min_distance=max(1, int(round(params.split_distance_um / mpp))), labels=comp, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-seeds, markers, mask=mask)
        # Components without a seed keep one label each.
        orphan = mask & (labels == 0)
        if orphan.any():
            extra, _ = ndi.label(orphan)
            labels = np.where(orphan, extra + labels.max(), labels)
    else:
        labels, _ = ndi.label(mask)
    labels = labels.astype(np.int32)
    if params.refine_sigma_um is not None:
        # The smoothed threshold contour lies outside the nucleus; trim each nucleus to the
        # pixels above the threshold at fine scale so that its stain means are not diluted.
        fine = cv2.GaussianBlur(img_raw, (0, 0), params.refine_sigma_um / mpp) if params.refine_sigma_um > 0 else img_raw
        labels = np.where(ndi.binary_fill_holes(fine > threshold), labels, 0).astype(np.int32)
    n = int(labels.max())
    if n == 0:
        return labels
    area_um2 = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64) * mpp * mpp
    keep = (area_um2 >= params.min_area_um2) & (area_um2 <= params.max_area_um2)
    keep[0] = False
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[labels]


def detect_cells(
    rgb: np.ndarray,
    mpp: float,
    *,
    params: DetectionParams | None = None,
    stains: StainVectors | None = None,
    white: float | np.ndarray | str = "auto",
    concentrations: np.ndarray | None = None,
    nuclei: np.ndarray | None = None,
) -> CellDetections:
    """Detect nuclei and cells and measure their stain.

    Args:
        rgb: (H, W, 3) uint8 RGB DAB + hematoxylin image (alpha dropped).
        mpp: µm/px of ``rgb``.
        params: detection parameters (QuPath-like defaults).
        stains: stain vectors, default Liu et al. 2019 (:func:`paper_stain_vectors`).
        white: I0 for optical density: "auto" (:func:`estimate_white`, per image), a number
            (255 = the paper's I0) or a (3,) per-channel white.
        concentrations: precomputed (H, W, 3) [H, DAB, residual] from :func:`separate_stains`.
        nuclei: (H, W) int nucleus labels from elsewhere (e.g. a nuclei U-Net,
            :func:`bcpath.nuclei.predict.predict_instances`); None = the threshold detector.
            Either way the nuclei are expanded into cells and measured the same way.

    Returns:
        :class:`CellDetections`; classify with :meth:`CellDetections.intensity_classes`.
    """
    if mpp <= 0:
        raise ValueError(f"mpp must be > 0 µm/px, got {mpp}")
    if isinstance(white, str) and white != "auto":
        raise ValueError(f"white must be 'auto', a number or a (3,) array, got {white!r}")
    params = params or DetectionParams()
    stains = stains or paper_stain_vectors()
    rgb = np.asarray(rgb)[..., :3]
    i0 = estimate_white(rgb) if isinstance(white, str) else np.asarray(white, dtype=np.float64)
    conc = concentrations if concentrations is not None else separate_stains(rgb, stains, i0)
    if nuclei is None:
        od_sum = rgb_to_od(rgb, i0).sum(axis=-1) if params.detection_image == "od_sum" else None
        nuclei = segment_nuclei(detection_image(conc, params.detection_image, od_sum), mpp, params)
    else:
        nuclei = np.asarray(nuclei)
        if nuclei.shape != rgb.shape[:2]:
            raise ValueError(f"nuclei labels {nuclei.shape} differ from the image {rgb.shape[:2]}")
        nuclei = relabel_sequential(nuclei.astype(np.int32))[0]
    n = int(nuclei.max())
    cells = expand_labels(nuclei, distance=params.cell_expansion_um / mpp) if params.cell_expansion_um > 0 and n else nuclei
    empty = np.zeros(0)
    area_px, cx, cy, dab_mean, h_mean, cell_dab = empty, empty, empty, empty, empty, empty
    if n:
        idx = np.arange(1, n + 1)
        ones = np.ones(nuclei.shape, np.float64)
        area_px = ndi.sum_labels(ones, nuclei, idx)
        cy, cx = np.asarray(ndi.center_of_mass(ones, nuclei, idx)).reshape(-1, 2).T
        dab_mean = ndi.mean(conc[..., DAB_CHANNEL], nuclei, idx)
        h_mean = ndi.mean(conc[..., H_CHANNEL], nuclei, idx)
        cell_dab = ndi.mean(conc[..., DAB_CHANNEL], cells, idx)
    logger.debug("detected %d nuclei (mpp %.3f, %s)", n, mpp, params.detection_image)
    return CellDetections(
        nuclei=nuclei,
        cells=cells.astype(np.int32),
        x=np.asarray(cx, np.float64),
        y=np.asarray(cy, np.float64),
        area_um2=np.asarray(area_px, np.float64) * mpp * mpp,
        dab_od_mean=np.asarray(dab_mean, np.float64),
        hematoxylin_od_mean=np.asarray(h_mean, np.float64),
        cell_dab_od_mean=np.asarray(cell_dab, np.float64),
        concentrations=conc,
        mpp=float(mpp),
        params=params,
    )
