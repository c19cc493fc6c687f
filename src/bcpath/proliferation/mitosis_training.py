"""Train and validate the shipped mitosis classifier on real data (AMi-Br + nuclei sets).

:func:`train_mitosis_model` runs Shah et al.'s two stages on crops from
:mod:`bcpath.proliferation.datasets`:

1. AMi-Br mitotic figures (training slides) against annotated nuclei and hematoxylin-peak
   candidates of the training nuclei images;
2. the stage-1 false positives (detections on the training nuclei images, which hold about no
   mitoses) are added as hard negatives and training continues from stage 1's best weights.

The split is slide-wise for AMi-Br (whole slides held out, per source challenge) and image-wise
for the nuclei sets; epochs are chosen by the validation loss only. :func:`validation_report`
measures what the model card states on the held-out part: recall of mitoses at the detection
threshold (classifier on the centred crop, and the full detector on the crop with MIDOG's
7.5 µm matching), false positives per mm² of the held-out nuclei images (whole images through
:func:`detect_in_image`), and atypical-vs-normal balanced accuracy; worst slide / image beside
the pooled value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.proliferation.candidates import find_candidates
from bcpath.proliferation.datasets import (
    NucleiImage,
    image_area_mm2,
    list_nuclei_samples,
    load_nuclei_images,
    nuclei_negative_crops,
    read_amibr,
    split_groups,
)
from bcpath.proliferation.mitosis import (
    CropSet,
    DetectionParams,
    MitosisTrainConfig,
    detect_in_image,
    extract_crops,
    match_detections,
    predict_crops,
    train_mitosis_classifier,
)

if TYPE_CHECKING:
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

MIDOG_RADIUS_UM = 7.5
"""MIDOG's matching radius: a detection within 7.5 µm of a true figure is a hit."""
MITOSIS_CLASSES = ("non-mitosis", "mitotic figure")


@dataclass(frozen=True)
class MitosisDataConfig:
    """How crops are made and split.

    Attributes:
        model_mpp: µm/px of the model; patch_px: the model's input side at it (64 px at
            0.25 µm/px = 16 µm, Shah et al.'s 63 px at 40×); crop_px: stored crop side (margin
            for scale / shift augmentation).
        width, embed_dim: MitosNet arguments.
        val_fraction: share of AMi-Br figures (whole slides) and of nuclei images held out.
        nuclei_per_mm2, candidates_per_mm2: negatives drawn per mm² of nuclei image.
        hard_threshold: stage-1 candidates of the training nuclei images with p(mitosis) ≥ this
            are stage 2's hard negatives; hard_repeat: how often each is repeated there.
        target_fp_per_mm2: the shipped detection threshold is the lowest at which the final
            model finds at most this many figures per mm² of the *training* nuclei images
            (about mitosis-free); held-out data never choose it.
        seed: split and sampling seed.
    """

    model_mpp: float = 0.25
    patch_px: int = 64
    crop_px: int = 96
    width: int = 16
    embed_dim: int = 64
    val_fraction: float = 0.2
    nuclei_per_mm2: float = 1000.0
    candidates_per_mm2: float = 1500.0
    hard_threshold: float = 0.3
    hard_repeat: int = 3
    target_fp_per_mm2: float = 2.0
    seed: int = 0


def make_spec(
    model_id: str, data: MitosisDataConfig, mean: Sequence[float], std: Sequence[float], weights: str | None = None,
    sha256: str | None = None, training_command: str = "", licence: str = "research use only (see the model card)",
) -> ModelSpec:
    """The :class:`ModelSpec` of a MitosNet trained with ``data``'s settings."""
    from bcpath.models.registry import ModelSpec

    return ModelSpec(
        model_id=model_id, architecture="mitosnet", classes=MITOSIS_CLASSES, mpp=data.model_mpp, patch_px=data.patch_px,
        mean=(float(mean[0]), float(mean[1]), float(mean[2])), std=(float(std[0]), float(std[1]), float(std[2])),
        weights=weights, sha256=sha256, licence=licence, training_command=training_command,
        description="mitotic figure vs other nucleus on a nucleus-centred H&E crop, plus p(atypical)",
        kind="mitosis_classifier", arguments={"width": data.width, "embed_dim": data.embed_dim},
    )


def spec_fields(spec: ModelSpec) -> dict[str, Any]:
    """The registry fields of a spec (for train.json and registry.yaml)."""
    return {
        "kind": spec.kind, "architecture": spec.architecture, "arguments": dict(spec.arguments), "classes": list(spec.classes),
        "mpp": spec.mpp, "patch_px": spec.patch_px, "mean": list(spec.mean), "std": list(spec.std),
    }


def channel_stats(crops: NDArray[np.uint8], size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (inputs in [0, 1]) of the central ``size`` px of (N, S, S, 3) crops."""
    top = (crops.shape[1] - size) // 2
    centre = crops[:, top : top + size, top : top + size].reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in centre.mean(0)], [round(float(v), 4) for v in centre.std(0)]


def hard_negative_crops(
    images: Sequence[NucleiImage], model: torch.nn.Module, spec: ModelSpec, crop_px: int, threshold: float
) -> CropSet:
    """Crops of every candidate with p(mitosis) ≥ ``threshold`` on the (mitosis-free) nuclei
    images: label 0. Candidates whose crop would reach past the image border are left out (only
    negatives would carry reflected borders)."""
    parts, groups = [], []
    margin = crop_px / 2.0
    for image in images:
        peaks = find_candidates(image.rgb, spec.mpp)
        h, w = image.rgb.shape[:2]
        xy = peaks[["x", "y"]].to_numpy(np.float64)
        xy = xy[(xy[:, 0] >= margin) & (xy[:, 1] >= margin) & (xy[:, 0] < w - margin) & (xy[:, 1] < h - margin)]
        crops = extract_crops(image.rgb, xy[:, 0], xy[:, 1], crop_px)
        p, _ = predict_crops(model, crops, spec)
        if (p >= threshold).any():
            parts.append(crops[p >= threshold])
            groups += [image.group] * int((p >= threshold).sum())
    n = len(groups)
    if not n:
        return CropSet(np.zeros((0, crop_px, crop_px, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.str_))
    return CropSet(np.concatenate(parts), np.zeros(n, np.int64), np.full(n, -1, np.int64), np.asarray(groups, dtype=np.str_))


def choose_threshold(images: Sequence[NucleiImage], model: torch.nn.Module, spec: ModelSpec, target_fp_per_mm2: float) -> dict[str, float]:
    """The lowest p(mitosis) threshold at which detection on ``images`` (about mitosis-free)
    finds at most ``target_fp_per_mm2`` figures per mm² (greedy NMS keeps, above any threshold,
    the same points as NMS run at it, so one pass at a low threshold serves every threshold).

    Returns ``{"threshold", "fp_per_mm2"}`` (its false positives per mm² on ``images``)."""
    scores: list[NDArray[np.float64]] = []
    area = 0.0
    for image in images:
        found, _ = detect_in_image(image.rgb, model, spec, DetectionParams(threshold=0.05))
        scores.append(found["probability"].to_numpy(np.float64))
        area += image_area_mm2(image, spec.mpp)
    p = np.sort(np.concatenate(scores))[::-1] if scores else np.zeros(0)
    allowed = int(np.floor(target_fp_per_mm2 * area))
    # Keep the `allowed` highest; the threshold sits just above the next one.
    threshold = 0.5 if len(p) <= allowed else float(min(0.999, max(0.5, np.nextafter(p[allowed], 1.0))))
    threshold = float(np.ceil(threshold * 1000) / 1000)
    return {"threshold": threshold, "fp_per_mm2": float((p >= threshold).sum() / area) if area else float("nan")}


def _rate(values: NDArray[np.bool_]) -> float:
    return float(values.mean()) if len(values) else float("nan")


def crop_detection_hits(crops: NDArray[np.uint8], model: torch.nn.Module, spec: ModelSpec, threshold: float) -> NDArray[np.bool_]:
    """Per crop: does the full detector find a figure within 7.5 µm of the centre (truth)?"""
    radius_px = MIDOG_RADIUS_UM / spec.mpp
    hits = np.zeros(len(crops), bool)
    for i, crop in enumerate(crops):
        found, _ = detect_in_image(crop, model, spec, DetectionParams(threshold=threshold))
        centre = np.array([[crop.shape[1] / 2.0, crop.shape[0] / 2.0]])
        hits[i] = match_detections(found[["x", "y"]].to_numpy(), centre, radius_px)[0] == 1
    return hits


def balanced_accuracy(truth: NDArray[np.integer], predicted: NDArray[np.bool_]) -> float:
    """Mean of the recalls of class 1 and class 0 (NaN when one class is absent)."""
    positive = truth == 1
    if positive.all() or not positive.any():
        return float("nan")
    return float((predicted[positive].mean() + (~predicted[~positive]).mean()) / 2)


def validation_report(
    model: torch.nn.Module,
    spec: ModelSpec,
    mitoses: CropSet,
    nuclei_images: Sequence[NucleiImage],
    threshold: float,
    negatives: CropSet | None = None,
) -> dict[str, Any]:
    """The numbers of the model card on held-out data.

    Args:
        mitoses: held-out mitotic-figure crops (groups = slides; atypical 0/1).
        nuclei_images: held-out nuclei images (about mitosis-free), whole.
        threshold: detection threshold on p(mitosis).
        negatives: held-out negative crops (for crop-level specificity), optional.

    Returns:
        JSON-ready dict: ``mitoses`` (n, crop and detection recall pooled, mean / worst slide),
        ``atypical`` (balanced accuracy, recall of each class), ``nuclei_images`` (false
        positives per mm² pooled, mean / worst image, per image), ``specificity`` of negatives.
    """
    p, a = predict_crops(model, mitoses.images, spec)
    hit_crop = p >= threshold
    hit_detect = crop_detection_hits(mitoses.images, model, spec, threshold)
    per_slide = []
    for slide in sorted(set(mitoses.groups.tolist())):
        own = mitoses.groups == slide
        per_slide.append({"slide": slide, "n": int(own.sum()), "crop_recall": _rate(hit_crop[own]), "detection_recall": _rate(hit_detect[own])})
    counted = [row for row in per_slide if row["n"] >= 5]
    known = mitoses.atypical >= 0
    atyp_truth, atyp_pred = mitoses.atypical[known], a[known] >= 0.5
    detections_per_group: dict[str, int] = {}
    area_per_group: dict[str, float] = {}
    for image in nuclei_images:
        found, _ = detect_in_image(image.rgb, model, spec, DetectionParams(threshold=threshold))
        detections_per_group[image.group] = detections_per_group.get(image.group, 0) + len(found)
        area_per_group[image.group] = area_per_group.get(image.group, 0.0) + image_area_mm2(image, spec.mpp)
    fp_per_group = {g: detections_per_group[g] / area_per_group[g] for g in sorted(area_per_group)}
    total_area, total_detections = sum(area_per_group.values()), sum(detections_per_group.values())
    report: dict[str, Any] = {
        "threshold": threshold,
        "mitoses": {
            "n": len(mitoses), "n_slides": len(per_slide),
            "crop_recall": _rate(hit_crop), "detection_recall": _rate(hit_detect),
            "mean_slide_detection_recall": float(np.mean([r["detection_recall"] for r in counted])) if counted else None,
            "worst_slide": min(counted, key=lambda r: r["detection_recall"]) if counted else None,
            "per_slide": per_slide,
        },
        "atypical": {
            "n_atypical": int((atyp_truth == 1).sum()), "n_normal": int((atyp_truth == 0).sum()),
            "balanced_accuracy": balanced_accuracy(atyp_truth, atyp_pred),
            "atypical_recall": _rate(atyp_pred[atyp_truth == 1]), "normal_recall": _rate(~atyp_pred[atyp_truth == 0]),
        },
        "nuclei_images": {
            "n_images": len(nuclei_images), "n_groups": len(fp_per_group), "area_mm2": total_area,
            "detections": total_detections, "fp_per_mm2": total_detections / total_area if total_area else None,
            "mean_group_fp_per_mm2": float(np.mean(list(fp_per_group.values()))) if fp_per_group else None,
            "worst_group": max(fp_per_group.items(), key=lambda kv: kv[1]) if fp_per_group else None,
            "per_group_fp_per_mm2": fp_per_group,
        },
    }
    if negatives is not None and len(negatives):
        q, _ = predict_crops(model, negatives.images, spec)
        report["negative_crops"] = {"n": len(negatives), "specificity": _rate(q < threshold)}
    return report


def train_mitosis_model(
    amibr: str | Path,
    nuclei: Sequence[str | Path],
    out: str | os.PathLike[str],
    data: MitosisDataConfig | None = None,
    config: MitosisTrainConfig | None = None,
    model_id: str = "mitosis_amibr",
    command: str = "",
) -> dict[str, Any]:
    """Two-stage training and validation; writes ``out/`` best.pt, log.csv, log_stage1.csv,
    train.json (settings, split, sha256, both stages' summaries, :func:`validation_report`).

    Returns the train.json content.
    """
    from bcpath.io import json_ready, write_json
    from bcpath.models.registry import load_model

    data = data or MitosisDataConfig()
    config = config or MitosisTrainConfig()
    started = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = read_amibr(amibr, data.model_mpp, data.crop_px)
    val_slides = split_groups(figures.crops.groups, data.val_fraction, data.seed)
    is_val = np.isin(figures.crops.groups, sorted(val_slides))
    samples = list_nuclei_samples(nuclei, data.model_mpp)
    images = load_nuclei_images(samples, data.model_mpp)
    val_images_groups = split_groups([image.group for image in images], data.val_fraction, data.seed)
    train_images = [image for image in images if image.group not in val_images_groups]
    val_images = [image for image in images if image.group in val_images_groups]
    train_neg = nuclei_negative_crops(train_images, data.model_mpp, data.crop_px, data.nuclei_per_mm2, data.candidates_per_mm2, data.seed)
    val_neg = nuclei_negative_crops(val_images, data.model_mpp, data.crop_px, data.nuclei_per_mm2, data.candidates_per_mm2, data.seed + 1)
    train_pos, val_pos = figures.crops.subset(~is_val), figures.crops.subset(is_val)
    train = CropSet.concat([train_pos, train_neg])
    val = CropSet.concat([val_pos, val_neg])
    mean, std = channel_stats(train.images, data.patch_px)
    spec = make_spec(model_id, data, mean, std)
    logger.info(
        "mitosis data: train %d figures / %d other (%d nuclei images); val %d figures (%d slides) / %d other (%d images); %.0f s",
        len(train_pos), len(train_neg), len(train_images), len(val_pos), len(val_slides), len(val_neg), len(val_images),
        time.perf_counter() - started,
    )
    stage1_dir = out_dir / "stage1"
    stage1 = train_mitosis_classifier(spec, train, val, stage1_dir, config, stage="stage1")
    model = load_model(spec, weights=stage1_dir / "best.pt", sha256=stage1["sha256"], device=config.device or "cpu")
    hard = hard_negative_crops(train_images, model, spec, data.crop_px, data.hard_threshold)
    logger.info("stage 2: %d stage-1 candidates with p ≥ %.2f on the training nuclei images added as hard negatives (x%d)", len(hard), data.hard_threshold, data.hard_repeat)
    stage2: dict[str, Any] | None = None
    final_dir = stage1_dir
    if config.hard_negative_epochs > 0 and len(hard):
        stage2_config = dataclasses.replace(config, epochs=config.hard_negative_epochs, lr=config.lr / 3)
        stage2 = train_mitosis_classifier(spec, CropSet.concat([train] + [hard] * data.hard_repeat), val, out_dir / "stage2", stage2_config, init_from=stage1_dir / "best.pt", stage="stage2")
        final_dir = out_dir / "stage2"
    shutil.copyfile(final_dir / "best.pt", out_dir / "best.pt")
    shutil.copyfile(final_dir / "log.csv", out_dir / "log.csv")
    shutil.copyfile(stage1_dir / "log.csv", out_dir / "log_stage1.csv")
    final = stage2 or stage1
    model = load_model(spec, weights=out_dir / "best.pt", sha256=final["sha256"], device=config.device or "cpu")
    chosen = choose_threshold(train_images, model, spec, data.target_fp_per_mm2)
    logger.info("threshold %.3f: %.2f detections per mm² of the training nuclei images", chosen["threshold"], chosen["fp_per_mm2"])
    report = validation_report(model, spec, val_pos, val_images, chosen["threshold"], val_neg)
    report_at_half = validation_report(model, spec, val_pos, val_images, 0.5, val_neg)
    record = {
        "model_id": model_id,
        "command": command,
        "spec": spec_fields(spec),
        "best_sha256": final["sha256"],
        "data": dataclasses.asdict(data),
        "training": dataclasses.asdict(config),
        "amibr": str(amibr), "nuclei": [str(n) for n in nuclei],
        "counts": {
            "train_figures": len(train_pos), "train_atypical": int((train_pos.atypical == 1).sum()), "train_other": len(train_neg),
            "hard_negatives": len(hard), "val_figures": len(val_pos), "val_atypical": int((val_pos.atypical == 1).sum()),
            "val_other": len(val_neg), "skipped_crop_files": [str(p) for p in figures.skipped],
            "train_nuclei_images": len(train_images), "val_nuclei_images": len(val_images),
        },
        "split": {"val_slides": sorted(val_slides), "val_nuclei_groups": sorted(val_images_groups)},
        "stage1": stage1, "stage2": stage2,
        "threshold": chosen["threshold"], "threshold_choice": {**chosen, "target_fp_per_mm2": data.target_fp_per_mm2, "on": "training nuclei images"},
        "validation": report,
        "validation_at_0.5": {k: v for k, v in report_at_half.items() if k != "mitoses"} | {"mitoses": {k: v for k, v in report_at_half["mitoses"].items() if k != "per_slide"}},
        "minutes": round((time.perf_counter() - started) / 60.0, 1),
    }
    write_json(out_dir / "train.json", json_ready(record))
    return record


def load_trained(folder: str | os.PathLike[str], device: str | None = None) -> tuple[ModelSpec, torch.nn.Module]:
    """(spec, model) of a ``bcpath mitosis train`` output folder (train.json + best.pt, sha256 checked)."""
    import json

    from bcpath.models.registry import load_model

    folder = Path(folder)
    record_path = folder / "train.json"
    if not record_path.is_file():
        raise BcpathError(f"mitosis model {folder}: no train.json; give a `bcpath mitosis train` output folder or a registry id")
    record = json.loads(record_path.read_text())
    fields = record["spec"]
    data = MitosisDataConfig(model_mpp=float(fields["mpp"]), patch_px=int(fields["patch_px"]), **{k: int(v) for k, v in fields["arguments"].items() if k in ("width", "embed_dim")})
    spec = make_spec(str(record.get("model_id", folder.name)), data, fields["mean"], fields["std"], "best.pt", record["best_sha256"], str(record.get("command", "")))
    return spec, load_model(spec, weights=folder / "best.pt", sha256=record["best_sha256"], device=device)


__all__ = [
    "MIDOG_RADIUS_UM",
    "MitosisDataConfig",
    "balanced_accuracy",
    "channel_stats",
    "crop_detection_hits",
    "hard_negative_crops",
    "load_trained",
    "make_spec",
    "spec_fields",
    "train_mitosis_model",
    "validation_report",
]
