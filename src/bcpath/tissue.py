"""Tissue extraction and slide QC.

Method (seed 3, with CLAM's refinements): Otsu threshold on the HSV saturation of a
low-resolution thumbnail (median-blurred), a floor on that threshold so an empty slide
does not yield noise, removal of small objects, filling of small holes, and a binary
dilation. Sizes are given in µm / mm² and converted with the thumbnail's µm/px, so the
result does not depend on the scanner's magnification.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcpath import geojson
from bcpath.errors import SlideError
from bcpath.wsi import Slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection parameters (units in the names).

    Attributes:
        mask_mpp: µm/px of the thumbnail the mask is computed on (8 µm/px ≈ 1.25×).
        median_blur_px: median filter size on saturation before thresholding (CLAM: 7).
        min_saturation: floor on the Otsu threshold, 0–255; keeps blank glass out.
        min_object_area_mm2: tissue pieces smaller than this are dropped.
        max_hole_area_mm2: holes smaller than this are filled (lumina, fat, tears).
        dilation_um: radius of the final binary dilation.
        exclude_pen: drop pen-ink pixels (blue, green, black marker) from the mask.
    """

    mask_mpp: float = 8.0
    median_blur_px: int = 7
    min_saturation: int = 20
    min_object_area_mm2: float = 0.05
    max_hole_area_mm2: float = 0.5
    dilation_um: float = 16.0
    exclude_pen: bool = True


@dataclass(frozen=True)
class QcThresholds:
    """Flags raised in qc.json when a measure crosses these values."""

    min_tissue_area_mm2: float = 0.5
    min_blur_score: float = 15.0  # variance of the Laplacian of grey levels at blur_mpp
    max_pen_fraction: float = 0.01
    min_background_brightness: float = 200.0


def _area_px(area_mm2: float, mpp: float) -> int:
    return max(1, int(round(area_mm2 * 1e6 / (mpp * mpp))))


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pen-marker ink in an (H, W, 3) uint8 RGB image → (H, W) bool.

    Blue and green marker have hues far from H&E's pink-purple range and strong
    saturation; black marker is very dark. H&E hematoxylin is blue-purple (hue ~ 260–300°)
    so the blue band stops short of it.
    """
    import cv2

    ink = np.empty(rgb.shape[:2], dtype=bool)
    for top in range(0, rgb.shape[0], _MASK_BLOCK_ROWS):  # blocks of rows: whole-slide thumbnails
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb[top : top + _MASK_BLOCK_ROWS, :, :3]), cv2.COLOR_RGB2HSV_FULL)
        hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]  # hue: 0-255 for 0-360°
        # Hue bands in degrees compared as whole 0-255 steps (step · 360/256 ≥ 190° ⇔ step ≥ 136,
        # ...): the same pixels as comparing degrees, without a float copy of the image.
        blue = (hue >= _hue_step_at_least(190)) & (hue <= _hue_step_at_most(245)) & (sat > 80)
        green = (hue >= _hue_step_at_least(75)) & (hue <= _hue_step_at_most(170)) & (sat > 60)
        ink[top : top + _MASK_BLOCK_ROWS] = blue | green | (val < 45)
    return ink


_MASK_BLOCK_ROWS = 256


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (OpenCV's, 0-255) of an (H, W, 3) uint8 RGB image → (H, W) uint8, converted
    in blocks of rows: no whole-image HSV copy (3 bytes/px) of a whole-slide thumbnail."""
    import cv2

    saturation = np.empty(rgb.shape[:2], dtype=np.uint8)
    for top in range(0, rgb.shape[0], _MASK_BLOCK_ROWS):
        block = np.ascontiguousarray(rgb[top : top + _MASK_BLOCK_ROWS, :, :3])
        saturation[top : top + _MASK_BLOCK_ROWS] = cv2.cvtColor(block, cv2.COLOR_RGB2HSV)[..., 1]
    return saturation


def _hue_step_at_least(degrees: float) -> int:
    """Smallest OpenCV full-range hue step (0-255) whose angle step · 360/256 is ≥ ``degrees``."""
    return int(math.ceil(degrees * 256.0 / 360.0))


def _hue_step_at_most(degrees: float) -> int:
    """Largest OpenCV full-range hue step (0-255) whose angle step · 360/256 is ≤ ``degrees``."""
    return int(math.floor(degrees * 256.0 / 360.0))


def _component_areas(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of an (H, W) bool mask: (labels (H, W) uint16, or int32 from
    65,536 components on, 0 = background; areas (n + 1,) px, areas[0] = background). cv2 counts
    the areas itself, so no int64 copy of the labels is made (np.bincount's), which matters on
    whole-slide thumbnails; 2-byte labels halve the largest array of tissue detection."""
    import cv2

    try:  # OpenCV refuses (cv2.error) rather than wraps when 16-bit labels overflow
        count, labels, stats, _ = cv2.connectedComponentsWithStats(_as_uint8(mask), connectivity=4, ltype=cv2.CV_16U)
    except cv2.error:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(_as_uint8(mask), connectivity=4, ltype=cv2.CV_32S)
    return labels, stats[:count, cv2.CC_STAT_AREA]


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    """An (H, W) bool mask as 0/1 uint8 for OpenCV: a view of a bool array, no copy."""
    return mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)


def fill_small_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:
    """Fill enclosed holes smaller than ``max_hole_px`` in an (H, W) bool mask.

    Background touching the image border is never a hole (skimage's remove_small_holes
    would fill small border pockets of glass as well). The holes are the 4-connected background
    components that do not touch the border (what scipy's binary_fill_holes fills), found with
    one labelling of the background: (H, W) int32 labels, no further whole-mask copies.
    """
    if mask.size == 0:
        return mask.copy()
    labels, sizes = _component_areas(~mask)  # label 0: the mask's pixels
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small = sizes < max_hole_px
    small[0] = False
    small[border] = False
    filled = small[labels]
    del labels
    filled |= mask
    return filled


def detect_tissue(thumbnail: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Tissue mask of a thumbnail.

    Args:
        thumbnail: (H, W, 3) uint8 RGB at ``mpp``.
        mpp: µm/px of the thumbnail.
        params: detection parameters.

    Returns:
        (H, W) bool mask, True on tissue.
    """
    import cv2
    from scipy import ndimage
    from skimage import morphology

    from bcpath.io import release_free_memory

    saturation = hsv_saturation(thumbnail)
    if params.median_blur_px > 1:
        saturation = cv2.medianBlur(saturation, params.median_blur_px | 1)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(params.min_saturation))
    mask = saturation > threshold
    del saturation
    if params.exclude_pen:
        ink = pen_mask(thumbnail)
        np.logical_not(ink, out=ink)
        mask &= ink
        del ink
    release_free_memory()
    labels, areas = _component_areas(mask)  # skimage's remove_small_objects (4-connected), without its int64 copy
    keep = areas >= _area_px(params.min_object_area_mm2, mpp)
    keep[0] = False
    mask = keep[labels]
    del labels
    release_free_memory()  # freed whole-thumbnail arrays stay resident in glibc's heap otherwise
    mask = fill_small_holes(mask, _area_px(params.max_hole_area_mm2, mpp))
    release_free_memory()
    radius = int(round(params.dilation_um / mpp))
    if radius > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, structure=morphology.disk(radius))
    return mask


def mask_from_png(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user-supplied mask image covering the whole slide, resized to ``shape`` (H, W)."""
    import cv2
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("L"))
    resized = cv2.resize(array, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized > 0


def mask_from_geojson(path: str | Path, shape: tuple[int, int], mask_mpp: float, slide_mpp: float) -> np.ndarray:
    """Rasterise GeoJSON polygons (level-0 px) onto a mask of ``shape`` at ``mask_mpp``.

    Holes (interior rings) are cut out. Features of any class count as tissue.
    """
    import cv2

    scale = slide_mpp / mask_mpp
    mask = np.zeros(shape, dtype=np.uint8)
    for feat in geojson.read_geojson(path):
        for rings in geojson.polygon_rings(feat):
            for index, ring in enumerate(rings):
                points = np.round(np.asarray(ring, dtype=np.float64) * scale).astype(np.int32)
                cv2.fillPoly(mask, [points], 1 if index == 0 else 0)
    return mask.astype(bool)


def mask_to_geojson_features(mask: np.ndarray, mask_mpp: float, slide_mpp: float) -> list[dict[str, Any]]:
    """Tissue contours as QuPath annotations in level-0 px (one Polygon per piece, holes kept)."""
    import cv2

    contours, hierarchy = cv2.findContours(_as_uint8(mask), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    scale = mask_mpp / slide_mpp
    features: list[dict[str, Any]] = []
    hierarchy = hierarchy[0]

    def ring(contour: np.ndarray) -> list[list[float]]:
        points = (contour[:, 0, :].astype(np.float64) + 0.5) * scale
        coords = [[round(float(x), 1), round(float(y), 1)] for x, y in points]
        return coords + [coords[0]]

    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1 or len(contour) < 3:
            continue  # holes are attached to their parent below
        rings = [ring(contour)]
        child = hierarchy[index][2]
        while child != -1:
            if len(contours[child]) >= 3:
                rings.append(ring(contours[child]))
            child = hierarchy[child][0]
        features.append(
            geojson.feature(
                {"type": "Polygon", "coordinates": rings},
                object_type="annotation",
                classification="Tissue",
                name=f"tissue {len(features) + 1}",
            )
        )
    return features


def draw_contours(thumbnail: np.ndarray, mask: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Thumbnail (H, W, 3) uint8 with the tissue contour of the (H, W) bool ``mask`` drawn in
    green: a copy, or ``thumbnail`` itself with ``in_place`` (no second whole-slide image)."""
    import cv2

    contours, _ = cv2.findContours(_as_uint8(mask), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = thumbnail if in_place else thumbnail.copy()
    thickness = max(1, int(round(max(thumbnail.shape[:2]) / 500)))
    cv2.drawContours(out, contours, -1, (0, 200, 0), thickness)
    return out


def blur_score(slide: Slide, mask: np.ndarray, mask_mpp: float, n_samples: int = 16, size_px: int = 256, seed: int = 0) -> float | None:
    """Median variance of the Laplacian over tissue, from ``n_samples`` fields at ≤1 µm/px.

    Fields are centred on random tissue pixels (deterministic from ``seed``). Sharp
    tissue scores high; out-of-focus scans score low. Returns None without tissue.
    """
    import cv2

    from bcpath.images import laplacian_variance

    # The k-th tissue pixel in row-major order (np.nonzero's), found from per-row counts: no
    # (n_tissue_pixels,) coordinate arrays on a whole-slide mask.
    row_ends = np.cumsum(np.count_nonzero(mask, axis=1))
    n_tissue = int(row_ends[-1]) if len(row_ends) else 0
    if n_tissue == 0:
        return None
    read_mpp = max(slide.mpp, 1.0)
    rng = np.random.default_rng(seed)
    picks = rng.choice(n_tissue, size=min(n_samples, n_tissue), replace=False)
    scores = []
    for pick in np.sort(picks):
        y = int(np.searchsorted(row_ends, pick, side="right"))
        x = int(np.flatnonzero(mask[y])[pick - (row_ends[y - 1] if y else 0)])
        cx0 = (x + 0.5) * mask_mpp / slide.mpp
        cy0 = (y + 0.5) * mask_mpp / slide.mpp
        half0 = size_px / 2 * read_mpp / slide.mpp
        field = slide.read_region(cx0 - half0, cy0 - half0, size_px, size_px, read_mpp)
        grey = cv2.cvtColor(field, cv2.COLOR_RGB2GRAY)
        hsv_sat = cv2.cvtColor(field, cv2.COLOR_RGB2HSV)[..., 1]
        tissue = hsv_sat > 20
        if tissue.sum() < 0.1 * tissue.size:
            continue
        scores.append(laplacian_variance(grey, tissue))
    return float(np.median(scores)) if scores else None


def qc_metrics(
    slide: Slide,
    thumbnail: np.ndarray,
    mask: np.ndarray,
    mask_mpp: float,
    mask_source: str,
    thresholds: QcThresholds = QcThresholds(),
) -> dict[str, Any]:
    """QC measures and flags for qc.json.

    Returns a dict with tissue_area_mm2, tissue_fraction, blur_score (variance of the
    Laplacian), pen_fraction (of tissue-or-ink pixels), background_brightness (mean grey
    of non-tissue, 0–255) and ``flags`` (list of str).
    """
    import cv2

    pixel_mm2 = (mask_mpp / 1000.0) ** 2
    n_tissue = int(np.count_nonzero(mask))
    tissue_area = float(n_tissue * pixel_mm2)
    pens = pen_mask(thumbnail)
    # Whole-thumbnail temporaries only a block of rows at a time: the grey values of the
    # background (neither tissue nor ink, row-major as one array) and the ink-or-tissue count.
    background_parts, n_ink_or_tissue = [], 0
    for top in range(0, thumbnail.shape[0], _MASK_BLOCK_ROWS):
        rows = slice(top, top + _MASK_BLOCK_ROWS)
        ink_or_tissue = mask[rows] | pens[rows]
        n_ink_or_tissue += int(np.count_nonzero(ink_or_tissue))
        np.logical_not(ink_or_tissue, out=ink_or_tissue)
        background_parts.append(cv2.cvtColor(np.ascontiguousarray(thumbnail[rows, :, :3]), cv2.COLOR_RGB2GRAY)[ink_or_tissue])
    background = np.concatenate(background_parts)
    del background_parts
    # Ink pixels are all ink-or-tissue pixels: the share of ink among them is a ratio of counts.
    pen_fraction = int(np.count_nonzero(pens)) / n_ink_or_tissue if n_ink_or_tissue else 0.0
    del pens
    blur = blur_score(slide, mask, mask_mpp)
    background_brightness = float(background.mean()) if background.size else None
    del background
    flags = []
    if tissue_area < thresholds.min_tissue_area_mm2:
        flags.append("no_tissue" if tissue_area == 0 else "little_tissue")
    if blur is not None and blur < thresholds.min_blur_score:
        flags.append("blurry")
    if pen_fraction > thresholds.max_pen_fraction:
        flags.append("pen_marks")
    if background_brightness is not None and background_brightness < thresholds.min_background_brightness:
        flags.append("dark_background")
    return {
        "slide_id": slide.slide_id,
        "mask_source": mask_source,
        "mask_mpp": mask_mpp,
        "tissue_area_mm2": round(tissue_area, 4),
        "tissue_fraction": round(n_tissue / mask.size, 5),
        "n_tissue_pieces": None,
        "blur_score": None if blur is None else round(blur, 2),
        "pen_fraction": round(pen_fraction, 5),
        "background_brightness": None if background_brightness is None else round(background_brightness, 2),
        "flags": flags,
    }


#: Share of thumbnail pixels darker than ``_CONTENT_LEVEL`` above which a slide has content;
#: below it a grayscale slide is blank glass (no_tissue), not a grayscale scan.
_CONTENT_FRACTION = 0.001
_CONTENT_LEVEL = 220


def check_colour(thumbnail: np.ndarray, slide_id: str) -> None:
    """Refuse a grayscale slide (R = G = B wherever there is something to see).

    Tissue detection, pen-mark removal and every stain model read colour; a grayscale scan
    would otherwise pass as "no tissue, pen marks" (dark gray looks like black ink).

    Raises:
        SlideError: the slide has content and no colour.
    """
    from bcpath.images import is_grayscale

    rgb = np.asarray(thumbnail)
    n_pixels = rgb.shape[0] * rgb.shape[1]
    dark = sum(  # in blocks of rows: no whole-thumbnail temporaries
        int(np.count_nonzero(rgb[top : top + _MASK_BLOCK_ROWS, :, :3].min(axis=-1) < _CONTENT_LEVEL))
        for top in range(0, rgb.shape[0], _MASK_BLOCK_ROWS)
    )
    has_content = n_pixels > 0 and dark / n_pixels >= _CONTENT_FRACTION
    if has_content and is_grayscale(thumbnail):
        raise SlideError(
            slide_id,
            "grayscale slide (no colour: R = G = B throughout): H&E/IHC needs RGB",
            "give the colour scan of the slide (a grayscale or fluorescence export cannot be analysed), or drop it from the cohort",
        )


def extract_tissue(
    slide: Slide,
    out_dir: str | Path,
    params: TissueParams = TissueParams(),
    user_mask: str | Path | None = None,
    thresholds: QcThresholds = QcThresholds(),
) -> dict[str, Any]:
    """Detect tissue and write mask.png, tissue.geojson, thumbnail.png and qc.json.

    Args:
        slide: an open slide.
        out_dir: the slide's ``tissue/`` folder.
        params: detection parameters.
        user_mask: a PNG (covering the whole slide) or GeoJSON (level-0 px) that replaces
            the computed mask.

    Returns:
        The QC dict written to qc.json.
    """
    from PIL import Image

    from bcpath.io import atomic_path, release_free_memory, write_json

    out_dir = Path(out_dir)
    mask_mpp = max(params.mask_mpp, slide.mpp)
    thumbnail = slide.thumbnail(mask_mpp)
    shape = thumbnail.shape[:2]
    check_colour(thumbnail, slide.slide_id)
    if user_mask:
        user_mask = Path(user_mask)
        if not user_mask.exists():
            raise SlideError(slide.slide_id, f"tissue_mask file not found: {user_mask}", "fix the tissue_mask column of the sample sheet")
        if user_mask.suffix.lower() in (".geojson", ".json"):
            mask = mask_from_geojson(user_mask, shape, mask_mpp, slide.mpp)
        else:
            mask = mask_from_png(user_mask, shape)
        source = f"user:{user_mask}"
    else:
        mask = detect_tissue(thumbnail, mask_mpp, params)
        source = "computed"
    features = mask_to_geojson_features(mask, mask_mpp, slide.mpp)
    qc = qc_metrics(slide, thumbnail, mask, mask_mpp, source, thresholds)
    qc["n_tissue_pieces"] = len(features)
    qc["params"] = asdict(params)
    release_free_memory()  # the QC's whole-thumbnail temporaries, kept resident by glibc otherwise
    with atomic_path(out_dir / "mask.png") as tmp:
        Image.fromarray(_as_uint8(mask) * np.uint8(255)).save(tmp)  # uint8 throughout: no int64 copy of the mask
    # The mask's and the thumbnail's last uses: PIL's copy of the thumbnail (4 bytes/px) is
    # made without the mask and encoded without the thumbnail.
    draw_contours(thumbnail, mask, in_place=True)
    del mask
    release_free_memory()
    image = Image.fromarray(thumbnail)
    del thumbnail
    with atomic_path(out_dir / "thumbnail.png") as tmp:
        image.save(tmp)
    del image
    geojson.write_geojson(out_dir / "tissue.geojson", features)
    write_json(out_dir / "qc.json", qc)
    logger.info("slide %s: %.2f mm² tissue in %d pieces, flags %s", slide.slide_id, qc["tissue_area_mm2"], len(features), qc["flags"])
    return qc


def read_mask(path: str | Path) -> np.ndarray:
    """Read mask.png → (H, W) bool."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def mask_mpp_from_qc(qc: dict[str, Any]) -> float:
    value = float(qc["mask_mpp"])
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"bad mask_mpp in qc.json: {value}")
    return value
