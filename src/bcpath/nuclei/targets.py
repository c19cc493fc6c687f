"""Training targets for nuclei U-Nets and the way back to instances (Lagree et al. 2021).

A semantic network cannot say that two touching nuclei are two objects: with a plain
foreground / background target they merge into one blob. So each nucleus is split into its
**interior** and a **boundary** band (:func:`encode_targets`), and the network predicts three
classes: 0 = background, 1 = nucleus interior, 2 = nucleus boundary. Where two nuclei touch,
both their bands lie between their interiors, so the interiors of distinct nuclei never share
an edge (and, for ``boundary_px`` ≥ 2, not even a corner): 4-connected components of the
interior are single nuclei.
Instances are then recovered (:func:`instances_from_probabilities`) as the connected components
of the predicted interior, each grown back into the predicted boundary pixels around it.

:func:`unet_weight_map` is the pixel weight map of Ronneberger et al. 2015 (U-Net, MICCAI),
which stresses the thin background gaps between close nuclei.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from bcpath.errors import BcpathError

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "DISTANCE_THRESHOLDS",
    "INTERIOR",
    "class_balance_weights",
    "distance_target",
    "encode_targets",
    "instances_from_distance",
    "instances_from_probabilities",
    "unet_weight_map",
]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def _disk(radius: int) -> NDArray[np.bool_]:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def _as_labels(instance_labels: NDArray[np.integer]) -> NDArray[np.int64]:
    labels = np.asarray(instance_labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise BcpathError(
            f"instance labels must be a 2-D integer image (0 = background), got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise BcpathError("instance labels must be non-negative (0 = background)")
    return labels


def encode_targets(instance_labels: NDArray[np.integer], boundary_px: int = 2) -> NDArray[np.int64]:
    """Three-class target (H, W) int64: 0 background, 1 interior, 2 boundary.

    A pixel of an instance is boundary when some pixel within ``boundary_px`` px (Euclidean,
    centre to centre) carries another label (background or another nucleus); the tile edge
    does not count (nuclei cut by the edge keep their interior there). An instance that would
    be all boundary (thinner than ~2·``boundary_px``) keeps its innermost pixels (maximal
    distance to the outside) as interior, so every nucleus has a seed for
    :func:`instances_from_probabilities`.

    Args:
        instance_labels: (H, W) non-negative integer labels, 0 = background.
        boundary_px: boundary band width in px, ≥ 1.
    """
    labels = _as_labels(instance_labels)
    if int(boundary_px) != boundary_px or boundary_px < 1:
        raise BcpathError(f"boundary_px must be an integer ≥ 1, got {boundary_px}")
    footprint = _disk(int(boundary_px))
    hi = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
    lo = ndi.minimum_filter(labels, footprint=footprint, mode="nearest")
    fg = labels > 0
    edge = fg & ((hi != labels) | (lo != labels))
    target = np.where(fg, np.where(edge, BOUNDARY, INTERIOR), BACKGROUND).astype(np.int64)
    # Seeds for instances with no interior pixel.
    n = int(labels.max()) if labels.size else 0
    has_interior = np.bincount(labels[target == INTERIOR], minlength=n + 1) > 0
    has_pixels = np.bincount(labels.ravel(), minlength=n + 1) > 0
    for lab in np.flatnonzero(has_pixels & ~has_interior):
        if lab == 0:
            continue
        rows, cols = np.nonzero(labels == lab)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        own = np.pad(labels[r0:r1, c0:c1] == lab, 1)
        dist = np.asarray(ndi.distance_transform_edt(own))[1:-1, 1:-1]
        core = own[1:-1, 1:-1] & (dist == dist.max())
        target[r0:r1, c0:c1][core] = INTERIOR
    return target


def instances_from_probabilities(
    probs: NDArray[np.floating], threshold: float = 0.5, min_area_px: int = 10
) -> NDArray[np.int32]:
    """Instance labels (H, W) int32 (0 = background, 1..n) from 3-class probabilities.

    1. interior mask: ``probs[1] > threshold``; holes filled; components under ``min_area_px``
       px removed; the rest labelled (4-connectivity) — one marker per nucleus;
    2. foreground: ``probs[1] + probs[2] > threshold`` (interior or boundary) or a marker;
    3. marker-controlled watershed of the distance to the nearest marker pixel, restricted to
       the foreground: every foreground pixel joins the nucleus whose interior it reaches
       first, so the boundary band between two touching nuclei is split between them.
       Foreground components with no marker (boundary-only fragments) are dropped.

    Args:
        probs: (3, H, W) softmax output (background, interior, boundary).
        threshold: probability threshold for both masks.
        min_area_px: smallest interior component kept, in px.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] != 3:
        raise BcpathError(
            f"probabilities must have shape (3, H, W) (background, interior, boundary), got {p.shape}"
        )
    interior = np.asarray(ndi.binary_fill_holes(p[INTERIOR] > threshold), dtype=bool)
    markers, n = ndi.label(interior)
    if n:
        keep = np.bincount(markers.ravel(), minlength=n + 1) >= max(int(min_area_px), 1)
        keep[0] = False
        markers, n = ndi.label(keep[markers])
    if n == 0:
        return np.zeros(p.shape[1:], dtype=np.int32)
    foreground = ((p[INTERIOR] + p[BOUNDARY]) > threshold) | (markers > 0)
    elevation = np.asarray(ndi.distance_transform_edt(markers == 0))
    labels = watershed(elevation, markers, mask=foreground)
    return np.asarray(labels, dtype=np.int32)


def class_balance_weights(target: NDArray[np.integer], n_classes: int = 3) -> NDArray[np.float64]:
    """Per-class weights (n_classes,) = n_pixels / (K · n_pixels_of_class), K = classes present.

    The "balanced" rule (as scikit-learn's ``compute_class_weight``): every present class gets
    the same total weight, and the mean pixel weight is 1. Absent classes get weight 0.
    """
    counts = np.bincount(np.asarray(target).ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def unet_weight_map(
    instance_labels: NDArray[np.integer],
    w0: float = 10.0,
    sigma: float = 5.0,
    boundary_px: int = 2,
) -> NDArray[np.float32]:
    """Ronneberger et al. 2015 pixel weights (H, W) float32.

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²)) on background pixels, w_c(x) elsewhere,
    with w_c the class-balancing weight (:func:`class_balance_weights`) of x's class in the
    3-class target (:func:`encode_targets` with ``boundary_px``), and d1, d2 the Euclidean
    distances (px, pixel centre to the nearest pixel of a nucleus) to the nearest and
    second-nearest nucleus. With fewer than two nuclei the second term is 0.

    Distances are computed per nucleus in its bounding box grown by ceil(4σ) + 1 px; beyond that
    the term is dropped (it is then below w0·e^{-8} ≈ 3e-4·w0).

    Args:
        instance_labels: (H, W) non-negative integer labels, 0 = background.
        w0: weight of the gap term.
        sigma: its width, in px.
        boundary_px: boundary width of the target the class weights refer to.
    """
    labels = _as_labels(instance_labels)
    if not (sigma > 0 and np.isfinite(sigma)):
        raise BcpathError(f"sigma must be a positive number of px, got {sigma}")
    target = encode_targets(labels, boundary_px)
    weights = class_balance_weights(target)[target]
    background = labels == 0
    if w0 == 0 or not background.any():
        return weights.astype(np.float32)
    margin = int(math.ceil(4 * sigma)) + 1
    h, w = labels.shape
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for lab, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        r0, r1 = max(box[0].start - margin, 0), min(box[0].stop + margin, h)
        c0, c1 = max(box[1].start - margin, 0), min(box[1].stop + margin, w)
        d = np.asarray(ndi.distance_transform_edt(labels[r0:r1, c0:c1] != lab))
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        b[...] = np.minimum(b, np.maximum(a, d))  # second-nearest
        a[...] = np.minimum(a, d)
    gap = np.where(background & np.isfinite(d2), w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0.0)
    return (weights + gap).astype(np.float32)


# --------------------------------------------------------------------------- distance decoding
#
# The interior/boundary target separates touching nuclei only where the network draws a
# boundary band between them; in crowded tissue (CoNSeP, lymphocyte sheets) it often draws
# none and the nuclei merge. The distance target (Naylor et al. 2018, IEEE TMI 38:448) asks
# instead for each nucleus pixel's distance to the nucleus edge, normalised to 1 at the
# nucleus' own centre: every nucleus then has its own peak, whether or not its neighbour
# touches it, and the watershed of the predicted distance splits at the saddle between peaks.
# The map is a scalar per pixel, so rotations and flips of a tile leave it valid.

DISTANCE_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)


def distance_target(instance_labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """(H, W) float32 in [0, 1]: per nucleus, the Euclidean distance to the nearest pixel not
    of that nucleus, divided by the nucleus' largest such distance (1 at its centre); 0 on
    background. The tile edge does not count as outside (as :func:`encode_targets`)."""
    labels = _as_labels(instance_labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    for lab, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, labels.shape[0])
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, labels.shape[1])
        own = labels[r0:r1, c0:c1] == lab
        # pad with "own" at the image edge, "other" elsewhere: a nucleus cut by the tile edge
        # keeps its distance growing towards the edge
        pad = np.pad(own, 1, mode="edge")
        d = np.asarray(ndi.distance_transform_edt(pad))[1:-1, 1:-1]
        peak = float(d[own].max()) if own.any() else 0.0
        if peak > 0:
            region = out[r0:r1, c0:c1]
            region[own] = (d[own] / peak).astype(np.float32)
    return out


def instances_from_distance(
    probs: NDArray[np.floating],
    distance: NDArray[np.floating],
    marker_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    min_area_px: int = 10,
) -> NDArray[np.int32]:
    """Instance labels (H, W) int32 from 3-class probabilities and a predicted distance map.

    1. foreground: ``probs[1] + probs[2] > foreground_threshold``, holes filled;
    2. markers: 4-connected components of ``distance > marker_threshold`` inside the
       foreground (one per nucleus centre), those under ``min_area_px`` / 4 px dropped;
    3. marker-controlled watershed of ``-distance`` inside the foreground: each pixel joins
       the centre it climbs to, so touching nuclei split at the saddle of the distance map.
       Foreground components with no marker whose area is ≥ ``min_area_px`` keep one label of
       their own (a small, pale nucleus whose peak stayed under the marker threshold).
    """
    p = np.asarray(probs, dtype=np.float32)
    dist = np.asarray(distance, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 3 or dist.shape != p.shape[1:]:
        raise BcpathError(
            f"expected (3, H, W) probabilities and an (H, W) distance map, got {p.shape} and {dist.shape}"
        )
    fg = np.asarray(ndi.binary_fill_holes((p[INTERIOR] + p[BOUNDARY]) > foreground_threshold), dtype=bool)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    markers, n = ndi.label((dist > marker_threshold) & fg)
    min_marker = max(int(min_area_px) // 4, 1)
    if n:
        keep = np.bincount(markers.ravel(), minlength=n + 1) >= min_marker
        keep[0] = False
        markers, n = ndi.label(keep[markers])
    # foreground components without a marker: one marker each (their own pixels) if big enough
    comps, m = ndi.label(fg)
    if m:
        has_marker = np.zeros(m + 1, dtype=bool)
        has_marker[np.unique(comps[markers > 0])] = True
        area = np.bincount(comps.ravel(), minlength=m + 1)
        orphan = ~has_marker & (area >= max(int(min_area_px), 1))
        orphan[0] = False
        if orphan.any():
            extra = np.zeros(m + 1, dtype=np.int64)
            extra[orphan] = n + np.arange(1, int(orphan.sum()) + 1)
            add = extra[comps]
            markers = np.where(add > 0, add, markers)
            n += int(orphan.sum())
    if n == 0:
        return np.zeros(fg.shape, dtype=np.int32)
    labels = watershed(-dist, markers, mask=fg)
    # drop fragments under min_area_px
    area = np.bincount(labels.ravel())
    small = area < max(int(min_area_px), 1)
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return np.asarray(labels, dtype=np.int32)
