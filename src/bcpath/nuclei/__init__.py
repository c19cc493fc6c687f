"""Nuclei segmentation: metrics, datasets, classical baselines (Lagree et al. 2021).

The deep models (``bcpath.nuclei.unet``), their targets (``bcpath.nuclei.targets``) and losses
(``bcpath.nuclei.losses``) import torch; import them from their modules.
"""

from bcpath.nuclei.classical import (
    classical_baseline,
    segment_connected_components,
    segment_fiji,
    segment_watershed,
)
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
    panoptic_quality,
    pixel_dice,
)

__all__ = [
    "NucleiSample",
    "aji",
    "aji_plus",
    "classical_baseline",
    "evaluate",
    "list_cpm15",
    "list_monuseg",
    "mean_average_precision",
    "object_scores",
    "panoptic_quality",
    "pixel_dice",
    "read_cpm15",
    "read_monuseg",
    "segment_connected_components",
    "segment_fiji",
    "segment_watershed",
]
