"""Stain intensity description for DAB + hematoxylin IHC (Liu et al. 2019, IEEE TMI 38(2)).

Optical density (Beer-Lambert), colour deconvolution, luminance, luminance-adaptive
multi-thresholding (LAMT) and the stain-intensity image I_la.

Conventions
-----------
- Input images are (H, W, 3) uint8 RGB (a 4th alpha channel is dropped); I0 = 255 (the white
  of a bright-field scan) unless a per-channel white is given (:func:`estimate_white`).
- Optical density: ``OD = -log10(max(I, 1) / I0)``, float32, >= 0 (pixels brighter than I0 clip
  to 0; 0-valued pixels are treated as 1 so OD stays finite, max ~2.41).
- Stain vectors are OD colours (R, G, B) normalised to unit length, one per row.
- Channel order of every deconvolved array here is fixed: ``[..., 0]`` hematoxylin,
  ``[..., 1]`` DAB, ``[..., 2]`` residual (``H_CHANNEL``, ``DAB_CHANNEL``, ``RESIDUAL_CHANNEL``),
  whatever order a source lists its vectors in. Values are stain amounts in OD units, as QuPath's
  "Hematoxylin OD" / "DAB OD" measurements.

The paper's matrix
------------------
Liu et al. give the DAB-H matrix ``[[0.268, 0.570, 0.776], [0.650, 0.704, 0.286], [0, 0, 0]]``.
These are Ruifrok & Johnston's (2001) H-DAB vectors: the first row (0.268, 0.570, 0.776: absorbs
blue most, so the pixel looks brown) is **DAB** and the second row (0.650, 0.704, 0.286: absorbs
red/green, looks blue) is **hematoxylin**. That is our reading of the paper's convention; it matches
the physics (brown = strong blue absorption) independently of the row order. The zero third row
makes the matrix singular, so it is completed as the normalised cross product of the first two,
``r = (d x h) / |d x h|`` = (-0.636, 0.710, -0.302) for the paper's vectors (sign fixed so that
the largest-magnitude component is positive): an OD direction orthogonal to both stains that
collects what neither explains. ImageJ's Colour Deconvolution instead completes a missing vector with
``sqrt(1 - sum of squares)`` per component; we follow the issue and use the cross product.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

I0 = 255.0
H_CHANNEL = 0
DAB_CHANNEL = 1
RESIDUAL_CHANNEL = 2

#: Liu et al. 2019 matrix exactly as printed: rows DAB, hematoxylin, zeros (completed on use).
PAPER_DAB_H_MATRIX = np.array([[0.268, 0.570, 0.776], [0.650, 0.704, 0.286], [0.0, 0.0, 0.0]])
#: QuPath's default "H-DAB" vectors (Hematoxylin, DAB); QuPath computes the residual itself.
QUPATH_HEMATOXYLIN = np.array([0.651, 0.701, 0.290])
QUPATH_DAB = np.array([0.269, 0.568, 0.778])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if n == 0:
        raise ValueError("stain vector is all zeros; give an OD colour such as (0.65, 0.70, 0.29)")
    return v / n


def cross_residual(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Third stain vector as the normalised cross product of two stain vectors.

    Args:
        first, second: (3,) OD colour vectors (any length, not parallel).

    Returns:
        (3,) float64 unit vector orthogonal to both; sign chosen so that its largest-magnitude
        component is positive (the cross product's sign depends on the argument order).
    """
    r = np.cross(_unit(first), _unit(second))
    n = float(np.linalg.norm(r))
    if n < 1e-6:
        raise ValueError("stain vectors are parallel; they cannot span two stains")
    r = r / n
    return r if r[np.argmax(np.abs(r))] > 0 else -r


@dataclass(frozen=True, eq=False)
class StainVectors:
    """Unit OD colour vectors of hematoxylin, DAB and a residual channel.

    Attributes:
        hematoxylin: (3,) float64 unit OD vector (R, G, B).
        dab: (3,) float64 unit OD vector.
        residual: (3,) float64 unit OD vector; None or all zeros (the paper's third row) is
            replaced by the normalised cross product of DAB and hematoxylin.
        name: where the vectors come from ("liu2019", "qupath", "estimated", ...).

    Raises:
        ValueError: a zero vector, parallel stains, or three vectors in one plane (the stain
            matrix would not be invertible).
    """

    hematoxylin: np.ndarray
    dab: np.ndarray
    residual: np.ndarray | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        h, d = _unit(self.hematoxylin), _unit(self.dab)
        r = cross_residual(d, h) if self.residual is None or not np.any(self.residual) else _unit(self.residual)
        if abs(float(np.linalg.det(np.stack([h, d, r])))) < 1e-6:
            raise ValueError(
                f"stain vectors {self.name!r} lie in one plane (hematoxylin {np.round(h, 3).tolist()}, "
                f"DAB {np.round(d, 3).tolist()}, residual {np.round(r, 3).tolist()}); "
                "leave the residual out to use the cross product"
            )
        object.__setattr__(self, "hematoxylin", h)
        object.__setattr__(self, "dab", d)
        object.__setattr__(self, "residual", r)

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) float64 stain matrix, rows hematoxylin, DAB, residual (OD = C @ matrix)."""
        return np.stack([self.hematoxylin, self.dab, np.asarray(self.residual)])

    @property
    def inverse(self) -> np.ndarray:
        """(3, 3) float64 matrix taking OD rows to stain amounts (C = OD @ inverse)."""
        return np.linalg.inv(self.matrix)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description: name and the three rounded vectors."""
        return {
            "name": self.name,
            "hematoxylin": [round(float(x), 4) for x in self.hematoxylin],
            "dab": [round(float(x), 4) for x in self.dab],
            "residual": [round(float(x), 4) for x in np.asarray(self.residual)],
        }


def paper_stain_vectors() -> StainVectors:
    """Liu et al. 2019 DAB-H vectors (row 0 = DAB, row 1 = hematoxylin; residual = cross product)."""
    return StainVectors(hematoxylin=PAPER_DAB_H_MATRIX[1], dab=PAPER_DAB_H_MATRIX[0], name="liu2019")


def qupath_stain_vectors() -> StainVectors:
    """QuPath's default H-DAB vectors (Hematoxylin 0.651 0.701 0.290; DAB 0.269 0.568 0.778)."""
    return StainVectors(hematoxylin=QUPATH_HEMATOXYLIN, dab=QUPATH_DAB, name="qupath")


def get_stain_vectors(name: str = "liu2019", rgb: np.ndarray | None = None) -> StainVectors:
    """Stain vectors by name: ``liu2019`` (default), ``qupath``, or ``estimate`` (needs ``rgb``).

    Raises:
        ValueError: unknown name, or ``estimate`` without an image.
    """
    key = name.lower()
    if key in {"liu2019", "paper"}:
        return paper_stain_vectors()
    if key == "qupath":
        return qupath_stain_vectors()
    if key in {"estimate", "estimated", "macenko"}:
        if rgb is None:
            raise ValueError("stain vectors 'estimate' need the image; pass rgb=")
        return estimate_stain_vectors(rgb)
    raise ValueError(f"unknown stain vectors {name!r}; use 'liu2019', 'qupath' or 'estimate'")


def _rgb3(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) view of an RGB or RGBA array (alpha dropped); other shapes are an error."""
    x = np.asarray(rgb)
    if x.ndim < 1 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (..., 3) RGB or (..., 4) RGBA array, got shape {x.shape}")
    return x[..., :3]


def rgb_to_od(rgb: np.ndarray, i0: float | np.ndarray = I0) -> np.ndarray:
    """Beer-Lambert optical density.

    Args:
        rgb: (..., 3) uint8 (or float in [0, 255]) RGB; a 4th (alpha) channel is dropped.
        i0: incident intensity (white level): 255 for 8-bit scans, or a (3,) per-channel white
            such as :func:`estimate_white` returns.

    Returns:
        (..., 3) float32 OD = -log10(max(I, 1) / i0), clipped at 0 (pixels brighter than the
        white carry no stain).
    """
    x = np.maximum(_rgb3(rgb).astype(np.float32), 1.0)
    white = np.asarray(i0, dtype=np.float32)
    if np.any(white <= 0):
        raise ValueError(f"white level i0 must be > 0, got {i0}")
    return np.maximum(-np.log10(x / white), 0.0).astype(np.float32)


def estimate_white(rgb: np.ndarray, percentile: float = 99.0, min_luminance: float = 180.0) -> np.ndarray:
    """Per-channel white level (I0) of a bright-field image, from its brightest pixels.

    Scanners rarely render glass as 255; taking I0 from the image makes unstained background
    OD ~0, which the fixed OD thresholds of cell scoring (0.2 / 0.4 / 0.6) presume. QuPath
    does the same when it estimates the image background.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        percentile: pixels at or above this luminance percentile are taken as white.
        min_luminance: if those pixels are darker than this (no background in the image),
            255 is returned instead and a message is logged.

    Returns:
        (3,) float64 per-channel I0 in [1, 255].
    """
    x = _rgb3(rgb).reshape(-1, 3)
    lum = luminance(x)
    bright = x[lum >= np.percentile(lum, percentile)].astype(np.float64)
    white = np.median(bright, axis=0)
    if float(luminance(white[None, None])[0, 0]) < min_luminance:
        logger.info("no white background found (brightest pixels ~%s); using I0 = 255", np.round(white).tolist())
        return np.full(3, I0)
    return np.clip(white, 1.0, 255.0)


def od_to_rgb(od: np.ndarray, i0: float | np.ndarray = I0) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: (..., 3) OD to (..., 3) uint8 RGB."""
    white = np.asarray(i0, dtype=np.float64)
    return np.clip(np.rint(white * np.power(10.0, -np.asarray(od, dtype=np.float64))), 0, 255).astype(np.uint8)


def separate_stains(rgb: np.ndarray, stains: StainVectors | None = None, i0: float | np.ndarray = I0) -> np.ndarray:
    """Colour deconvolution (Ruifrok & Johnston 2001) into hematoxylin, DAB, residual.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        stains: stain vectors; default :func:`paper_stain_vectors`.
        i0: white level, scalar or (3,) per channel.

    Returns:
        (H, W, 3) float32 stain amounts in OD units, channels ``[H, DAB, residual]``. Values can
        be slightly negative where a pixel's colour lies outside the stains' cone.
    """
    stains = stains or paper_stain_vectors()
    od = rgb_to_od(rgb, i0)
    return (od.reshape(-1, 3) @ stains.inverse.astype(np.float32)).reshape(od.shape).astype(np.float32)


def combine_stains(concentrations: np.ndarray, stains: StainVectors | None = None, i0: float | np.ndarray = I0) -> np.ndarray:
    """Inverse of :func:`separate_stains`: (H, W, 3) stain amounts to (H, W, 3) uint8 RGB."""
    stains = stains or paper_stain_vectors()
    c = np.asarray(concentrations, dtype=np.float64)
    return od_to_rgb((c.reshape(-1, 3) @ stains.matrix).reshape(c.shape), i0)


def estimate_stain_vectors(
    rgb: np.ndarray,
    *,
    od_threshold: float = 0.15,
    alpha: float = 1.0,
    reference: StainVectors | None = None,
    min_pixels: int = 500,
    i0: float | np.ndarray = I0,
) -> StainVectors:
    """Per-image H and DAB vectors, Macenko et al. (2009) style, on optical density.

    Stained pixels (OD sum > 3 x ``od_threshold``; Macenko's per-channel test would drop pale
    brown, whose red OD is small) are projected on the plane of the two largest OD principal
    directions; the robust extreme angles (``alpha`` and ``100 - alpha`` percentiles) give two
    stain vectors, and the one more hematoxylin-like than DAB-like (by cosine to the reference
    vectors) is called hematoxylin.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        od_threshold: mean per-channel OD below which a pixel counts as background.
        alpha: percentile (%) for the robust extreme angles.
        reference: vectors to label the two estimates and to fall back to; default paper's.
        min_pixels: fewer stained pixels than this -> the reference is returned (logged).
        i0: white level for the optical density, scalar or (3,).

    Returns:
        :class:`StainVectors` named ``"estimated"`` (or the reference when estimation fails).
    """
    reference = reference or paper_stain_vectors()
    od = rgb_to_od(rgb, i0).reshape(-1, 3).astype(np.float64)
    od = od[od.sum(axis=1) > 3 * od_threshold]
    if len(od) < min_pixels:
        logger.warning("stain estimation: %d stained pixels (< %d); using %s vectors", len(od), min_pixels, reference.name)
        return reference
    # Principal plane of the stained OD (uncentred, as Macenko), both axes pointing into the
    # positive octant so that angles are measured consistently.
    _, _, vt = np.linalg.svd(od[:: max(1, len(od) // 200_000)], full_matrices=False)
    plane = vt[:2] * np.where(vt[:2].sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    proj = od @ plane.T
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    vectors = []
    for angle in (lo, hi):
        v = np.array([np.cos(angle), np.sin(angle)]) @ plane
        v = v if v.sum() > 0 else -v
        # A stain absorbs in every channel or not at all: negative components are noise.
        vectors.append(_unit(np.maximum(v, 1e-6)))
    v1, v2 = vectors
    if float(v1 @ v2) > 0.995:
        logger.warning("stain estimation: one stain only (vectors %.3f apart); using %s vectors", float(v1 @ v2), reference.name)
        return reference
    if (v1 @ reference.hematoxylin - v1 @ reference.dab) >= (v2 @ reference.hematoxylin - v2 @ reference.dab):
        h, d = v1, v2
    else:
        h, d = v2, v1
    return StainVectors(hematoxylin=h, dab=d, name="estimated")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance I_l = 0.299 R + 0.587 G + 0.114 B.

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W) float32 in [0, 255].
    """
    x = np.asarray(rgb, dtype=np.float32)
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# LAMT: luminance-adaptive multi-thresholding


@dataclass
class LamtResult:
    """Output of :func:`lamt`.

    Attributes:
        dab_mask: (H, W) bool, True where the pixel is assigned to the DAB class.
        stained: (H, W) bool, pixels that carry stain (the rest is background, never DAB).
        edges: (K + 1,) float luminance interval edges in [0, 255].
        thresholds: (K,) float DAB OD threshold of each interval, darkest interval first.
        fitted: (K,) bool, True where the interval held both classes and got its own threshold;
            the others are interpolated from the fitted neighbours (global when none fitted).
        global_threshold: float, Otsu's threshold of the DAB OD of all stained pixels.
    """

    dab_mask: np.ndarray
    stained: np.ndarray
    edges: np.ndarray
    thresholds: np.ndarray
    fitted: np.ndarray
    global_threshold: float


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of an array of values (any shape), from a ``bins`` histogram.

    Non-finite values are ignored. Returns the upper edge of the last bin of the lower class,
    so ``values > t`` is the upper class.

    Raises:
        ValueError: no finite value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("Otsu threshold of an empty array (no finite values)")
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def map_threshold(dab_values: np.ndarray, initial: float, iterations: int = 5, min_count: int = 20) -> float | None:
    """MAP threshold between the hematoxylin (low DAB) and DAB (high DAB) classes.

    Each class's DAB OD values are modelled as a Gaussian with a prior equal to its share of
    pixels, starting from the split at ``initial``; the threshold is the value between the two
    means where the posteriors are equal (the Bayes decision boundary), refined by a few
    re-fits on the new split.

    Args:
        dab_values: (N,) DAB OD of the stained pixels in one luminance interval.
        initial: starting threshold.
        iterations: re-fit rounds.
        min_count: minimum pixels per class to fit; otherwise None is returned.

    Returns:
        The threshold (float), or None when one class is too small to model.
    """
    x = np.asarray(dab_values, dtype=np.float64)
    t = float(initial)
    for _ in range(iterations):
        lo, hi = x[x < t], x[x >= t]
        if len(lo) < min_count or len(hi) < min_count:
            return None
        p0, p1 = len(lo) / len(x), len(hi) / len(x)
        m0, m1 = lo.mean(), hi.mean()
        s0, s1 = max(lo.std(), 1e-3), max(hi.std(), 1e-3)
        grid = np.linspace(m0, m1, 512)
        post0 = np.log(p0) - np.log(s0) - 0.5 * ((grid - m0) / s0) ** 2
        post1 = np.log(p1) - np.log(s1) - 0.5 * ((grid - m1) / s1) ** 2
        diff = post1 - post0  # < 0 near m0, > 0 near m1 when the classes separate
        above = np.nonzero(diff > 0)[0]
        new_t = float(grid[above[0]]) if len(above) else float(m1)
        if abs(new_t - t) < 1e-4:
            t = new_t
            break
        t = new_t
    return t


def _interval_threshold(x: np.ndarray, global_t: float, min_count: int, min_separation: float) -> float | None:
    """DAB threshold of one luminance interval, or None when it holds a single class.

    Otsu's split of the interval's own DAB OD is accepted when both sides have ``min_count``
    pixels, their means are ``min_separation`` OD apart and the lower side looks like
    hematoxylin (mean below the global threshold ``global_t``; dark intervals often hold
    strong and very strong DAB only). :func:`map_threshold` then refines it; the result is
    capped at ``global_t``.
    """
    t = otsu_threshold(x)
    lo, hi = x[x <= t], x[x > t]
    if len(lo) < min_count or len(hi) < min_count:
        return None
    if hi.mean() - lo.mean() < min_separation or lo.mean() >= global_t:
        return None
    refined = map_threshold(x, t, min_count=min_count)
    return min(t if refined is None else refined, global_t)


def lamt(
    rgb: np.ndarray,
    *,
    k: int = 8,
    stains: StainVectors | None = None,
    concentrations: np.ndarray | None = None,
    i0: float | np.ndarray = I0,
    background_od: float = 0.15,
    min_count: int = 50,
    min_separation: float = 0.1,
) -> LamtResult:
    """Luminance-adaptive multi-thresholding of the DAB channel (Liu et al. 2019).

    A single threshold on the DAB channel fails because the DAB that hematoxylin leaks into
    it (imperfect stain vectors) grows with stain density: dark blue nuclei can carry more
    apparent DAB than pale brown ones. LAMT therefore thresholds within luminance bands.
    Stained pixels (OD sum > ``background_od``) are split into ``k`` luminance intervals of
    equal width between their 1st and 99th luminance percentiles (outer intervals open-ended).
    In each interval holding two classes, Otsu's split of the DAB OD, refined by a MAP
    (Bayes) boundary between the two classes' Gaussians (:func:`map_threshold`) and capped at
    the global Otsu threshold, gives the interval's threshold. Intervals with one class only
    (too few pixels on a side, means closer than ``min_separation``, or a lower class already
    above the global threshold: dark intervals of strong DAB only) take the threshold
    interpolated from the fitted intervals around them (the global one when none fitted).

    Args:
        rgb: (H, W, 3) uint8 RGB.
        k: number of luminance intervals.
        stains: stain vectors (default paper's); ignored when ``concentrations`` is given.
        concentrations: (H, W, 3) float32 from :func:`separate_stains`, to avoid recomputing.
        i0: white level for the optical density, scalar or (3,).
        background_od: OD-sum threshold separating stained pixels from background.
        min_count: minimum pixels per class in an interval to fit its own threshold.
        min_separation: minimum DAB OD between the two class means of an interval.

    Returns:
        :class:`LamtResult`.
    """
    conc = concentrations if concentrations is not None else separate_stains(rgb, stains, i0)
    dab = conc[..., DAB_CHANNEL]
    lum = luminance(rgb)
    stained = rgb_to_od(rgb, i0).sum(axis=-1) > background_od
    values = dab[stained]
    if values.size < 2 * min_count:
        edges = np.linspace(0, 255, k + 1)
        nothing = np.zeros(dab.shape, bool)
        return LamtResult(nothing, stained, edges, np.full(k, np.inf), np.zeros(k, bool), float("inf"))
    t0 = otsu_threshold(values)
    lo, hi = np.percentile(lum[stained], [1, 99])
    edges = np.linspace(lo, hi, k + 1) if hi > lo else np.linspace(0, 255, k + 1)
    idx = np.clip(np.digitize(lum, edges[1:-1]), 0, k - 1)
    thresholds = np.full(k, t0, dtype=np.float64)
    fitted = np.zeros(k, bool)
    for i in range(k):
        x = dab[stained & (idx == i)].astype(np.float64)
        if x.size < 2 * min_count:
            continue
        t = _interval_threshold(x, t0, min_count, min_separation)
        if t is not None:
            thresholds[i], fitted[i] = t, True
    if fitted.any():
        centres = (edges[:-1] + edges[1:]) / 2
        thresholds[~fitted] = np.interp(centres[~fitted], centres[fitted], thresholds[fitted])
    dab_mask = stained & (dab > thresholds[idx])
    edges_out = edges.copy()
    edges_out[0], edges_out[-1] = 0.0, 255.0
    logger.debug("LAMT: global %.3f, per-interval %s", t0, np.round(thresholds, 3).tolist())
    return LamtResult(dab_mask, stained, edges_out, thresholds, fitted, t0)


def stain_intensity_image(rgb: np.ndarray, dab_mask: np.ndarray | None = None, **lamt_kwargs: object) -> np.ndarray:
    """Stain-intensity image I_la, normalised to [0, 1].

    ``I_la = I_l`` where the pixel is DAB-positive and ``510 - I_l`` elsewhere, divided by 510.
    DAB-positive pixels therefore land in [0, 0.5] (darker brown -> lower), everything else in
    [0.5, 1] (white background 0.5, darker hematoxylin -> higher), so one channel carries both
    the stain class and its intensity.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        dab_mask: (H, W) bool DAB-positive pixels; default from :func:`lamt`.
        **lamt_kwargs: passed to :func:`lamt` when ``dab_mask`` is None.

    Returns:
        (H, W) float32 in [0, 1].
    """
    lum = luminance(rgb)
    if dab_mask is None:
        dab_mask = lamt(rgb, **lamt_kwargs).dab_mask  # type: ignore[arg-type]
    ila = np.where(dab_mask, lum, 510.0 - lum)
    return (ila / 510.0).astype(np.float32)
