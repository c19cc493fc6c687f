"""Vahadane stain normalisation (Vahadane et al. 2016) with staintools, fitted once and saved.

Lagree et al. 2021 normalise every H&E tile to one reference before the U-Nets. Here the
reference is fitted once (:meth:`StainNormaliser.fit`: staintools ``StainNormalizer("vahadane")``
on one RGB image) and its two numbers are saved as JSON (:meth:`StainNormaliser.save`):

- ``stain_matrix``: (2, 3) optical-density stain vectors, hematoxylin first, rows unit-norm;
- ``max_concentrations``: (2,) 99th percentiles of the reference's stain concentrations.

The algorithm is staintools' ``StainNormalizer(method="vahadane")``, with one change for
reproducibility: staintools calls ``spams.trainDL`` with ``iter=-1`` (run for one second of wall
time) from random initial atoms, so two fits of the same image differ. Here the stain matrix
(:func:`vahadane_stain_matrix`) is learnt for a fixed :data:`DL_ITERATIONS` iterations on one
thread from the Ruifrok-Johnston H&E vectors, with staintools' tissue mask, OD conversion,
regulariser (0.1), H-first ordering and row normalisation; concentrations are staintools'
``get_concentrations`` (spams lasso, deterministic).

Inference only loads them (:meth:`StainNormaliser.load`): the reference is never refitted.
:meth:`StainNormaliser.normalise` estimates the source image's own stain matrix (sparse NMF,
spams), rescales its concentrations to the reference maxima and recombines them with the
reference stain matrix. A tile with (almost) no tissue — fewer than ``min_tissue_px`` pixels
below staintools' luminosity threshold 0.8 — is returned unchanged; so is one whose
concentrations are all zero. Any other staintools / spams failure is a :class:`BcpathError`
naming the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.io import write_json

__all__ = ["StainNormaliser", "fit_stain_normaliser", "vahadane_stain_matrix"]

LUMINOSITY_THRESHOLD = 0.8  # staintools' default tissue threshold (L* / 255 below it = tissue)


DL_ITERATIONS = 1000
# Ruifrok & Johnston 2001 optical-density vectors (hematoxylin, eosin): the start of the fit.
RUIFROK_HE = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])


def vahadane_stain_matrix(rgb: NDArray[np.uint8], regularizer: float = 0.1) -> NDArray[np.float64]:
    """(2, 3) unit-norm OD stain matrix, hematoxylin first, of an (H, W, 3) uint8 image (tissue
    pixels only); staintools' VahadaneStainExtractor made deterministic (module docstring)."""
    import spams
    from staintools.miscellaneous.miscellaneous_functions import normalize_matrix_rows
    from staintools.miscellaneous.optical_density_conversion import convert_RGB_to_OD
    from staintools.tissue_masks.luminosity_threshold_tissue_locator import (
        LuminosityThresholdTissueLocator,
    )

    mask = LuminosityThresholdTissueLocator.get_tissue_mask(
        rgb, luminosity_threshold=LUMINOSITY_THRESHOLD
    )
    od = convert_RGB_to_OD(rgb).reshape((-1, 3))[mask.reshape(-1)]
    d0 = np.asfortranarray(RUIFROK_HE.T / np.linalg.norm(RUIFROK_HE, axis=1))
    dictionary = spams.trainDL(
        X=np.asfortranarray(od.T), D=d0, lambda1=regularizer, mode=2, modeD=0, posAlpha=True,
        posD=True, verbose=False, iter=DL_ITERATIONS, numThreads=1,
    ).T  # fmt: skip
    if dictionary[0, 0] < dictionary[1, 0]:
        dictionary = dictionary[[1, 0], :]
    return np.asarray(normalize_matrix_rows(dictionary), dtype=np.float64)


def _check_rgb(rgb: NDArray[Any], name: str) -> NDArray[np.uint8]:
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BcpathError(
            f"image {name}: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}"
        )
    return np.ascontiguousarray(image)


def _tissue_px(rgb: NDArray[np.uint8]) -> int:
    """Pixels staintools would count as tissue (L* below 0.8 of full scale)."""
    lum = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64) / 255.0
    return int((lum < LUMINOSITY_THRESHOLD).sum())


class StainNormaliser:
    """A fitted Vahadane normaliser: reference stain matrix (2, 3) and max concentrations (2,)."""

    def __init__(
        self,
        stain_matrix: NDArray[np.floating],
        max_concentrations: NDArray[np.floating],
        reference: str = "",
        min_tissue_px: int = 100,
    ) -> None:
        self.stain_matrix = np.asarray(stain_matrix, dtype=np.float64).reshape(2, 3)
        self.max_concentrations = np.asarray(max_concentrations, dtype=np.float64).reshape(2)
        if not (
            np.isfinite(self.stain_matrix).all() and np.isfinite(self.max_concentrations).all()
        ):
            raise BcpathError(
                f"stain normaliser {reference or '?'}: non-finite stain matrix or concentrations"
            )
        self.reference = reference
        self.min_tissue_px = int(min_tissue_px)

    @classmethod
    def fit(
        cls, rgb: NDArray[np.uint8], name: str = "reference", min_tissue_px: int = 100
    ) -> StainNormaliser:
        """Fit the Vahadane normaliser to one (H, W, 3) uint8 RGB reference image."""
        image = _check_rgb(rgb, name)
        if _tissue_px(image) < min_tissue_px:
            raise BcpathError(
                f"stain reference {name}: fewer than {min_tissue_px} tissue pixels; "
                "choose a reference image with stained tissue"
            )
        from staintools.miscellaneous.get_concentrations import get_concentrations

        try:
            matrix = vahadane_stain_matrix(image)
            conc = get_concentrations(image, matrix)
        except Exception as exc:  # staintools / spams raise plain exceptions
            raise BcpathError(
                f"stain reference {name}: Vahadane fit failed ({exc}); choose another reference image"
            ) from exc
        max_conc = np.percentile(conc, 99, axis=0)
        if not np.all(max_conc > 0):
            raise BcpathError(
                f"stain reference {name}: one stain is absent; choose an H&E reference image"
            )
        return cls(matrix, max_conc, name, min_tissue_px)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "vahadane",
            "library": "staintools",
            "reference": self.reference,
            "stain_matrix": self.stain_matrix.tolist(),
            "max_concentrations": self.max_concentrations.tolist(),
            "luminosity_threshold": LUMINOSITY_THRESHOLD,
            "min_tissue_px": self.min_tissue_px,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StainNormaliser:
        if data.get("method") != "vahadane":
            raise BcpathError(
                f"stain normaliser: method {data.get('method')!r}, expected 'vahadane'"
            )
        return cls(
            np.asarray(data["stain_matrix"]),
            np.asarray(data["max_concentrations"]),
            str(data.get("reference", "")),
            int(data.get("min_tissue_px", 100)),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fit as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StainNormaliser:
        """Read a fit written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BcpathError(
                f"stain normaliser {path}: cannot read it ({exc}); re-run the training"
            ) from exc
        try:
            return cls.from_dict(data)
        except (KeyError, ValueError, TypeError) as exc:
            raise BcpathError(
                f"stain normaliser {path}: malformed ({exc}); re-run the training"
            ) from exc

    def normalise(self, rgb: NDArray[np.uint8], name: str = "image") -> NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB → same shape, stains mapped onto the reference.

        Tiles without tissue are returned unchanged (a copy). Raises :class:`BcpathError`
        naming ``name`` when staintools fails.
        """
        image = _check_rgb(rgb, name)
        if image.size == 0 or _tissue_px(image) < self.min_tissue_px:
            return image.copy()
        from staintools.miscellaneous.get_concentrations import get_concentrations

        try:
            source_matrix = vahadane_stain_matrix(image)
            conc = get_concentrations(image, source_matrix)
        except Exception as exc:
            if type(exc).__name__ == "TissueMaskException":
                return image.copy()
            raise BcpathError(
                f"image {name}: Vahadane stain normalisation failed ({exc}); check the image is H&E"
            ) from exc
        max_source = np.percentile(conc, 99, axis=0).reshape(1, 2)
        if not np.all(max_source > 0):
            return image.copy()  # a stain absent: nothing to rescale against
        conc = conc * (self.max_concentrations.reshape(1, 2) / max_source)
        out = 255.0 * np.exp(-conc @ self.stain_matrix)
        if not np.isfinite(out).all():
            raise BcpathError(f"image {name}: Vahadane stain normalisation gave non-finite pixels")
        return np.clip(out, 0, 255).reshape(image.shape).astype(np.uint8)

    __call__ = normalise


def fit_stain_normaliser(rgb: NDArray[np.uint8], name: str = "reference") -> StainNormaliser:
    """Shorthand for :meth:`StainNormaliser.fit`."""
    return StainNormaliser.fit(rgb, name)
