"""Leave-one-dataset-out validation of nuclei segmentation, and the mixed-set training sampler.

Validation that measures generalisation to unseen images: with three annotated sets (MoNuSeg
non-breast, CPM-15, CoNSeP train), each fold trains on two sets and scores the third, which the
model has never seen (:func:`lodo_folds`). Per held-out set (:func:`summarise_set`): AJI per
image, the mean over images, the pooled AJI (Σ C / Σ U over the set's images, as HoVer-Net
reports CoNSeP), and the worst image with its name. A setting (decoding threshold, training
length, variant) is chosen on the mean over the held-out sets (:func:`choose_threshold`), never
on one image or one set.

The sampler (:class:`MixedSampler`) draws a training crop so that no set dominates: a set
uniformly, then a source image uniformly within it (CoNSeP's 16 tiles of one image are one
source, :func:`bcpath.nuclei.datasets.source_image`), then one of that source's images
(tiles), then a crop position.

:func:`evaluate_by_set` scores a fixed segmenter (the classical baselines, a trained model)
per set: for a model trained on none of the sets, that is its leave-one-dataset-out row.
``bcpath nuclei lodo`` runs it; ``bcpath nuclei lodo --train`` trains the U-Net per fold
(:func:`run_lodo`, CPU-sized); bench/gpu_train_nuclei.py runs the full comparison on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bcpath.errors import BcpathError

__all__ = [
    "DEFAULT_SETS",
    "MixedSampler",
    "choose_threshold",
    "evaluate_by_set",
    "lodo_folds",
    "lodo_markdown",
    "run_lodo",
    "score_image",
    "summarise_set",
]

logger = logging.getLogger(__name__)

#: set key → folder name under ../shared/data/nuclei
DEFAULT_SETS: dict[str, str] = {
    "monuseg": "monuseg_nonbreast",
    "cpm15": "cpm15",
    "consep": "consep_train",
}


def lodo_folds(sets: Sequence[str]) -> list[tuple[str, list[str]]]:
    """[(held-out set, training sets)] for each set in order; needs at least 2 sets."""
    sets = list(sets)
    if len(sets) < 2 or len(set(sets)) != len(sets):
        raise BcpathError(f"leave-one-dataset-out needs ≥ 2 distinct sets, got {sets}")
    return [(held, [s for s in sets if s != held]) for held in sets]


class MixedSampler:
    """Draws (set index, image index) pairs: set uniform, source uniform within the set, image
    uniform within the source. ``groups[s][i]`` = source image of image ``i`` of set ``s``."""

    def __init__(self, groups: Sequence[Sequence[str]], seed: int = 0) -> None:
        if not groups or any(len(g) == 0 for g in groups):
            raise BcpathError("MixedSampler: every set needs at least one image")
        self.rng = np.random.default_rng(seed)
        self.sources: list[list[NDArray[np.int64]]] = []
        for g in groups:
            names = np.asarray(list(g))
            self.sources.append([np.flatnonzero(names == u) for u in sorted(set(names.tolist()))])

    def draw(self, n: int) -> list[tuple[int, int]]:
        out = []
        sets = self.rng.integers(len(self.sources), size=n)
        for s in sets:
            srcs = self.sources[int(s)]
            members = srcs[int(self.rng.integers(len(srcs)))]
            out.append((int(s), int(members[int(self.rng.integers(members.size))])))
        return out


def score_image(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> dict[str, float]:
    """AJI of one image with its components (px): {"aji", "inter", "union", "n_gt", "n_pred"}."""
    from bcpath.nuclei.metrics import aji_components, overlap

    ov = overlap(gt, pred)
    if ov.n_gt == 0 and ov.n_pred == 0:
        return {"aji": 1.0, "inter": 0.0, "union": 0.0, "n_gt": 0, "n_pred": 0}
    inter, union = aji_components(ov)
    return {"aji": inter / union if union > 0 else 0.0, "inter": inter, "union": union, "n_gt": ov.n_gt, "n_pred": ov.n_pred}


def summarise_set(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-set summary of :func:`score_image` rows (each with an "image" name): mean AJI over
    images, pooled AJI (Σ inter / Σ union), the worst image and its AJI, the number of images."""
    if not rows:
        raise BcpathError("summarise_set: no images")
    ajis = np.array([float(r["aji"]) for r in rows])
    inter = float(sum(float(r["inter"]) for r in rows))
    union = float(sum(float(r["union"]) for r in rows))
    worst = int(np.argmin(ajis))
    out: dict[str, Any] = {
        "mean_aji": float(ajis.mean()),
        "pooled_aji": inter / union if union > 0 else 0.0,
        "worst_image": str(rows[worst]["image"]),
        "worst_aji": float(ajis[worst]),
        "n_images": len(rows),
    }
    # tiles of one source image (CoNSeP's train_<image>_<tile>): the worst source, pooled over
    # its tiles (a 256 px tile with two nuclei says little on its own)
    from bcpath.nuclei.datasets import source_image

    sources: dict[str, list[float]] = {}
    for r in rows:
        acc = sources.setdefault(source_image(str(r["image"])), [0.0, 0.0])
        acc[0] += float(r["inter"])
        acc[1] += float(r["union"])
    if len(sources) < len(rows):
        pooled = {k: (c / u if u > 0 else 0.0) for k, (c, u) in sources.items()}
        name = min(pooled, key=lambda k: pooled[k])
        out.update(worst_source=name, worst_source_aji=pooled[name], n_sources=len(pooled))
    return out


def choose_threshold(per_set: Mapping[str, Mapping[float, dict[str, Any]]]) -> float:
    """The threshold maximising the mean over held-out sets of their mean AJI
    (``per_set[set][threshold]`` = :func:`summarise_set`); ties → the one nearest 0.5."""
    thresholds = sorted(set.intersection(*[set(v) for v in per_set.values()])) if per_set else []
    if not thresholds:
        raise BcpathError("choose_threshold: no threshold scored on every held-out set")
    return max(thresholds, key=lambda t: (float(np.mean([per_set[s][t]["mean_aji"] for s in per_set])), -abs(t - 0.5)))


def lodo_markdown(table: Mapping[str, Mapping[str, Mapping[str, Any]]], sets: Sequence[str]) -> str:
    """Markdown table: one row per variant, per held-out set "mean / pooled (worst: image AJI)",
    and the mean over sets. ``table[variant][set]`` = :func:`summarise_set`."""
    head = "| variant | " + " | ".join(f"{s} held out: mean / pooled AJI, worst image" for s in sets) + " | mean of set means |"
    lines = [head, "|---" * (len(sets) + 2) + "|"]
    for variant, per in table.items():
        cells = []
        for s in sets:
            r = per.get(s)
            if r is None:
                cells.append("—")
                continue
            worst = f"{r['worst_image']} {r['worst_aji']:.3f}"
            if "worst_source" in r:
                worst = f"source {r['worst_source']} {r['worst_source_aji']:.3f}; tile {worst}"
            cells.append(f"{r['mean_aji']:.3f} / {r['pooled_aji']:.3f} ({worst})")
        means = [per[s]["mean_aji"] for s in sets if s in per]
        overall = f"{np.mean(means):.3f}" if len(means) == len(sets) else "—"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {overall} |")
    return "\n".join(lines)


def evaluate_by_set(
    folders: Mapping[str, str | Path],
    segmenter: Callable[[NDArray[np.uint8], float], NDArray[np.integer]],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Score a fixed ``segmenter(rgb, mpp) -> labels`` on every image of each set folder:
    ({set: :func:`summarise_set`}, per-image rows)."""
    from bcpath.nuclei.datasets import list_nuclei_folder

    summary: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for key, folder in folders.items():
        set_rows = []
        for sample in list_nuclei_folder(folder):
            rgb, truth = sample.load()
            pred = np.asarray(segmenter(rgb, sample.mpp))
            if pred.shape != truth.shape:
                raise BcpathError(f"{sample.image}: segmenter returned shape {pred.shape}, expected {truth.shape}")
            set_rows.append({"set": key, "image": sample.name, **score_image(truth, pred)})
        summary[key] = summarise_set(set_rows)
        rows += set_rows
        logger.info("%s: mean AJI %.3f, pooled %.3f, worst %s %.3f", key, summary[key]["mean_aji"],
                    summary[key]["pooled_aji"], summary[key]["worst_image"], summary[key]["worst_aji"])
    return summary, rows


def run_lodo(
    folders: Mapping[str, str | Path],
    train_fold: Callable[[list[Path], Path], Callable[[NDArray[np.uint8], float], NDArray[np.integer]]],
    out_dir: str | Path,
    sets: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out with a training function: for each fold, ``train_fold(training
    folders, fold output folder)`` returns a segmenter, scored on the held-out set with
    :func:`evaluate_by_set`. Writes ``out_dir/lodo.json`` after every fold; returns it."""
    from bcpath.io import json_ready, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(sets) if sets is not None else list(folders)
    result: dict[str, Any] = {"folds": {}, "per_image": []}
    for held, train_sets in lodo_folds(keys):
        segmenter = train_fold([Path(folders[s]) for s in train_sets], out / f"fold_{held}")
        summary, rows = evaluate_by_set({held: folders[held]}, segmenter)
        result["folds"][held] = {"train": train_sets, **summary[held]}
        result["per_image"] += rows
        write_json(out / "lodo.json", json_ready(result))
    means = [f["mean_aji"] for f in result["folds"].values()]
    result["mean_of_set_means"] = float(np.mean(means))
    write_json(out / "lodo.json", json_ready(result))
    return result
