"""Annotation classes of ER/PR/HER2 region annotations (QuPath GeoJSON) and how to read them.

The classes training reads (:mod:`bcpath.erpr.sampling`) and the demo cohort writes
(:mod:`bcpath.demo`); production code imports them from here, not from the demo package.

In the demo cohort every tumor region is written once per biomarker, with class ``f"{B}-positive tumor"`` or
``f"{B}-negative tumor"`` (B in ``BIOMARKERS``); the three features of one region share the
geometry and the name ``"tumor {k}"``. Everything else in the tissue is written once with
class ``"non-tumor"`` and a name saying what it is (``"stroma"``, ``"fat"``,
``"normal lobule"``). Features never overlap within one biomarker, so a patch label is the
class of the feature that covers the patch centre: ``region_label(feature, B)``.

These are the three classes of Gamble et al. (biomarker-positive invasive carcinoma,
biomarker-negative invasive carcinoma, non-tumor).
"""

from __future__ import annotations

from typing import Any, Literal

from bcpath.geojson import classification_name

BIOMARKERS: tuple[str, ...] = ("ER", "PR", "HER2")
NON_TUMOR = "non-tumor"
POSITIVE_COLOR = [200, 50, 50]
NEGATIVE_COLOR = [112, 112, 225]

RegionLabel = Literal["positive", "negative", "non-tumor"]


def tumor_class(biomarker: str, status: str) -> str:
    """The class name of a tumor region: ``tumor_class("ER", "positive") == "ER-positive tumor"``."""
    if biomarker not in BIOMARKERS or status not in ("positive", "negative"):
        raise ValueError(
            f"tumor_class: expected biomarker in {BIOMARKERS} and status positive|negative, "
            f"got {biomarker!r}, {status!r}"
        )
    return f"{biomarker}-{status} tumor"


def region_label(feature: dict[str, Any], biomarker: str) -> RegionLabel | None:
    """The training label a region feature gives for ``biomarker`` ("ER", "PR" or "HER2").

    Returns:
        "positive" for class ``f"{biomarker}-positive tumor"``, "negative" for
        ``f"{biomarker}-negative tumor"``, "non-tumor" for class "non-tumor", and None for
        anything else (a tumor feature written for another biomarker, an unclassified or
        foreign class), which the caller should skip.
    """
    name = classification_name(feature)
    if name is None:
        return None
    if name == NON_TUMOR:
        return "non-tumor"
    if name == f"{biomarker}-positive tumor":
        return "positive"
    if name == f"{biomarker}-negative tumor":
        return "negative"
    return None
