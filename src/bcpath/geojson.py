"""QuPath-dialect GeoJSON: FeatureCollections in level-0 pixel coordinates.

QuPath reads ``properties.objectType`` ("annotation" or "detection") and
``properties.classification = {"name": str, "color": [r, g, b]}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bcpath.io import write_json

# Colours QuPath users know for the classes bcpath writes; anything else gets grey.
CLASS_COLORS: dict[str, list[int]] = {
    "Tissue": [0, 160, 0],
    "Tumor": [200, 0, 0],
    "Stroma": [150, 200, 150],
    "Immune cells": [160, 90, 160],
    "Necrosis": [50, 50, 50],
    "Other": [255, 200, 0],
    "non-tumor": [0, 160, 0],
    "Positive": [200, 50, 50],
    "Negative": [112, 112, 225],
    "Mitosis": [255, 0, 255],
}


def feature(
    geometry: dict[str, Any],
    object_type: str = "annotation",
    classification: str | None = None,
    color: list[int] | None = None,
    name: str | None = None,
    measurements: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One QuPath GeoJSON Feature. ``geometry`` is a GeoJSON geometry in level-0 pixels."""
    properties: dict[str, Any] = {"objectType": object_type}
    if classification is not None:
        properties["classification"] = {
            "name": classification,
            "color": color or CLASS_COLORS.get(classification, [128, 128, 128]),
        }
    if name is not None:
        properties["name"] = name
    if measurements:
        properties["measurements"] = {k: float(v) for k, v in measurements.items()}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], features: list[dict[str, Any]]) -> None:
    """Write a FeatureCollection atomically."""
    write_json(path, feature_collection(features))


def read_geojson(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the features of a GeoJSON file (FeatureCollection, Feature list or single Feature).

    QuPath exports either a FeatureCollection or a bare list of features; both are accepted.
    """
    with open(path) as handle:
        data = json.load(handle)
    if isinstance(data, list):
        return data
    if data.get("type") == "FeatureCollection":
        return list(data.get("features", []))
    if data.get("type") == "Feature":
        return [data]
    raise ValueError(f"{path}: not a GeoJSON FeatureCollection or Feature (type={data.get('type')!r})")


def classification_name(feat: dict[str, Any]) -> str | None:
    """The class name of a QuPath feature, or None when unclassified."""
    cls = (feat.get("properties") or {}).get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return None


def polygon_rings(feat: dict[str, Any]) -> list[list[Any]]:
    """The polygons of a feature's Polygon or MultiPolygon geometry, each a list of rings
    (exterior first, then holes; each ring a list of [x, y]); [] for other geometries."""
    geometry = feat.get("geometry") or {}
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry.get("coordinates", []))
    return []
