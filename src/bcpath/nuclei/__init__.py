"""Nuclei segmentation: metrics, datasets and a classical baseline (Lagree et al. 2021)."""

from bcpath.nuclei.classical import segment_connected_components, segment_watershed
from bcpath.nuclei.datasets import (
    NucleiSample,
    list_cpm15,
    list_monuseg,
    read_cpm15,
    read_monuseg,
)
from bcpath.nuclei.metrics import (
    aji,
    aji_plus,
    evaluate,
    mean_average_precision,
    object_scores,
    pixel_dice,
)

__all__ = [
    "NucleiSample",
    "aji",
    "aji_plus",
    "evaluate",
    "list_cpm15",
    "list_monuseg",
    "mean_average_precision",
    "object_scores",
    "pixel_dice",
    "read_cpm15",
    "read_monuseg",
    "segment_connected_components",
    "segment_watershed",
]
