"""IHC nuclei from an H&E nuclei U-Net: the image as it is, plus a view with DAB counted as hematoxylin.

An H&E model finds blue (hematoxylin) nuclei on DAB + hematoxylin images, pale ones included,
but misses nuclei whose stain is almost all DAB (strongly positive 3+ nuclei: dark brown, little
blue; 9 of 10 such planted nuclei in tests/test_ihc_score.py). So the detector segments twice:

1. the RGB image as it is;
2. a *hematoxylin view*: colour deconvolution (:func:`bcpath.stain.deconvolution.separate_stains`,
   the image's own white level), hematoxylin + DAB amounts summed into the hematoxylin channel,
   re-rendered with no DAB, so every chromogen-laden nucleus looks blue;

and keeps every nucleus of (1) plus those of (2) that lie mostly off (1)'s nuclei (at most
``MAX_OVERLAP`` of their pixels on them). Nothing is fitted on IHC images. Validation on the
DeepLIIF tiles: README, IHC section. The view uses Liu et al.'s DAB-H vectors whatever stains
the scoring uses (``ihc.stains``): it only moves the brown into the blue channel, and the
scoring measures every cell with its own vectors afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bcpath.stain.deconvolution import (
    DAB_CHANNEL,
    H_CHANNEL,
    StainVectors,
    combine_stains,
    estimate_white,
    get_stain_vectors,
    separate_stains,
)

Segmenter = Callable[[np.ndarray, float], np.ndarray]
#: a nucleus of the hematoxylin view is added when at most this share of its pixels already
#: belongs to a nucleus of the plain image (set a priori, not fitted)
MAX_OVERLAP = 0.2


def hematoxylin_view(rgb: NDArray[np.uint8], stains: StainVectors | None = None) -> NDArray[np.uint8]:
    """(H, W, 3) uint8: the image re-rendered with its DAB amount added to its hematoxylin and no DAB."""
    stains = stains or get_stain_vectors("liu2019")
    white = estimate_white(rgb)
    amounts = separate_stains(rgb, stains, white)
    view = np.zeros_like(amounts)
    view[..., H_CHANNEL] = np.clip(amounts[..., H_CHANNEL], 0, None) + np.clip(amounts[..., DAB_CHANNEL], 0, None)
    return combine_stains(view, stains, white)


def add_missing_nuclei(base: NDArray[np.integer], extra: NDArray[np.integer], max_overlap: float = MAX_OVERLAP) -> NDArray[np.int32]:
    """(H, W) int32: ``base``'s labels plus ``extra``'s nuclei with at most ``max_overlap`` of their
    pixels on a ``base`` nucleus, numbered after ``base``'s, on pixels ``base`` leaves free."""
    out = np.asarray(base, dtype=np.int32).copy()
    extra = np.asarray(extra)
    n_extra = int(extra.max(initial=0))
    if n_extra == 0:
        return out
    area = np.bincount(extra.ravel(), minlength=n_extra + 1)
    on_base = np.bincount(extra[out > 0].ravel(), minlength=n_extra + 1)
    keep = (area > 0) & (on_base <= max_overlap * area)
    keep[0] = False
    new_id = np.zeros(n_extra + 1, dtype=np.int32)
    new_id[keep] = int(out.max(initial=0)) + np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    free = out == 0
    out[free] = new_id[extra[free]]
    return out


def ihc_unet_segmenter(he_segmenter: Segmenter, stains: StainVectors | None = None) -> Segmenter:
    """A ``(rgb, µm/px) -> labels`` IHC nucleus segmenter from an H&E one (module docstring)."""

    def segment(rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.int32]:
        image = np.ascontiguousarray(np.asarray(rgb)[..., :3])
        return add_missing_nuclei(he_segmenter(image, mpp), he_segmenter(hematoxylin_view(image, stains), mpp))

    return segment
