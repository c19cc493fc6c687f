"""Interpretability targets of the ER/PR/HER2 system (optional: ``snakemake interpret``).

Gamble et al. 2021 explain their stage-1 models three ways; each is a cohort-level report here
(the methods themselves are in :mod:`bcpath.erpr.interpret`, the rules' steps in
:mod:`bcpath.steps.erpr`):

- :func:`smoothgrad_report`: the ``top_k`` highest-scoring patches of each class over the
  cohort, each beside its SmoothGrad map → ``smoothgrad.png`` (one column per class) and
  ``smoothgrad.csv`` (which patches).
- :func:`cluster_report`: embeddings (layer before the classifier) of up to
  ``max_patches_per_slide`` random patches per slide from one biomarker's model, k-means
  clusters, average-linkage hierarchy of clusters by the summed earth mover's distance of
  their ER/PR/HER2 p(positive) distributions → ``clusters.csv``, ``hierarchy.json``,
  ``dendrogram.png`` and one montage PNG per cluster.
- :func:`tcav_report`: TCAV of each configured concept folder for the positive class →
  ``tcav.json``.

Patches are read back from each slide's tiles.zarr at the positions of predictions/{model}.parquet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)


def _tiles_of(predictions_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    slide_dir = Path(predictions_path).parent.parent
    return slide_dir / "tiles.zarr", slide_dir / "grid.parquet"


def cohort_predictions(predictions: Sequence[str]) -> Any:
    """All slides' predictions in one table with a ``slide_id`` column (empty slides skipped)."""
    import pandas as pd

    from bcpath.erpr.cohort import slide_of
    from bcpath.erpr.inference import read_predictions

    frames = []
    for path in predictions:
        table = read_predictions(path)
        if len(table):
            table.insert(0, "slide_id", slide_of(path))
            table["source"] = str(path)
            frames.append(table)
    if not frames:
        raise BcpathError("no slide has any predicted patch; interpretability needs tissue patches")
    return pd.concat(frames, ignore_index=True)


def read_patches(table: Any, patch_px: int) -> np.ndarray:
    """(N, 3, P, P) uint8 patches at the rows' (slide, x, y), read from each slide's tiles.zarr."""
    from bcpath.erpr.inference import PatchDataset

    out = np.empty((len(table), 3, patch_px, patch_px), dtype=np.uint8)
    datasets: dict[str, Any] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        if row.source not in datasets:
            tiles, grid = _tiles_of(row.source)
            datasets[row.source] = PatchDataset(tiles, grid, patch_px)
        out[i] = datasets[row.source].read_patch(int(row.x), int(row.y))
    return out


def _hstack_white(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    height = max(image.shape[0] for image in images)
    parts = []
    for k, image in enumerate(images):
        padded = np.full((height, image.shape[1], 3), 255, dtype=np.uint8)
        padded[: image.shape[0]] = image
        parts.append(padded)
        if k < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def smoothgrad_report(
    model: Any, spec: Any, predictions: Sequence[str], out_png: str | os.PathLike[str], out_csv: str | os.PathLike[str],
    top_k: int = 8, n_samples: int = 8, sigma: float = 0.15, seed: int = 0,
) -> Any:
    """SmoothGrad maps of the top-scoring patches of each class (module docstring).

    Returns:
        The table of chosen patches: class, rank, slide_id, x, y, x0, y0, p.
    """
    import pandas as pd

    from bcpath.erpr.heatmaps import write_png
    from bcpath.erpr.interpret import saliency_montage, smoothgrad, top_patches
    from bcpath.io import atomic_path

    table = cohort_predictions(predictions)
    montages, rows = [], []
    for k, name in enumerate(spec.classes):
        top = top_patches(table, k, top_k)
        patches = read_patches(top, spec.patch_px)
        maps = smoothgrad(model, patches, spec, k, n_samples=n_samples, sigma=sigma, seed=seed)
        montages.append(saliency_montage(patches, maps))
        for rank, row in enumerate(top.itertuples(index=False), start=1):
            rows.append({"class": name, "rank": rank, "slide_id": row.slide_id, "x": row.x, "y": row.y,
                         "x0": row.x0, "y0": row.y0, "p": float(getattr(row, f"p_{k}"))})
    write_png(out_png, _hstack_white(montages))
    chosen = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        chosen.to_csv(tmp, index=False, float_format="%.6g")
    return chosen


def cluster_report(
    model: Any, spec: Any, predictions_by_biomarker: Mapping[str, Sequence[str]], embedding_biomarker: str,
    out_dir: str | os.PathLike[str], n_clusters: int = 25, max_patches_per_slide: int = 200,
    montage_patches: int = 16, seed: int = 0,
) -> dict[str, Any]:
    """k-means clusters of patch embeddings and their hierarchy (module docstring).

    Args:
        model, spec: the stage-1 model of ``embedding_biomarker`` (embeddings come from it).
        predictions_by_biomarker: biomarker → every slide's predictions parquet of its model;
            patches are matched across models by (slide, x, y), so the models must share patch
            size and stride (biomarkers whose patches do not match are left out, logged).
        out_dir: folder for clusters.csv, hierarchy.json, dendrogram.png, montages/.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from scipy.cluster.hierarchy import dendrogram

    from bcpath.erpr.heatmaps import write_png
    from bcpath.erpr.interpret import cluster_hierarchy, cluster_montage, cluster_patches, embed
    from bcpath.io import atomic_path, json_ready, write_json

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    base = cohort_predictions(predictions_by_biomarker[embedding_biomarker])
    sampled = []
    for _, group in base.groupby("slide_id", sort=True):
        take = min(len(group), max_patches_per_slide)
        sampled.append(group.iloc[np.sort(rng.choice(len(group), size=take, replace=False))])
    patches_table = pd.concat(sampled, ignore_index=True)
    embeddings = []
    for _, group in patches_table.groupby("source", sort=False):  # one slide's patches at a time
        embeddings.append(embed(model, spec, read_patches(group, spec.patch_px)))
    order = np.concatenate([g.index.to_numpy() for _, g in patches_table.groupby("source", sort=False)])
    features = np.empty((len(patches_table), embeddings[0].shape[1]), dtype=np.float32)
    features[order] = np.concatenate(embeddings)
    labels = cluster_patches(features, n_clusters=n_clusters, seed=seed)
    patches_table["cluster"] = labels

    probabilities: dict[str, np.ndarray] = {}
    keys = ["slide_id", "x", "y"]
    for biomarker, paths in predictions_by_biomarker.items():
        other = base if biomarker == embedding_biomarker else cohort_predictions(paths)
        merged = patches_table[keys].merge(other[[*keys, "p_0", "p_1", "p_2"]], on=keys, how="left")
        if merged["p_0"].isna().any():
            logger.warning("clusters: %s patches do not line up with %s's (patch size/stride differ); left out", biomarker, embedding_biomarker)
            continue
        probabilities[biomarker] = merged[["p_0", "p_1", "p_2"]].to_numpy()
        patches_table[f"p_positive_{biomarker}"] = probabilities[biomarker][:, 0]
    hierarchy = cluster_hierarchy(labels, probabilities)

    with atomic_path(out / "clusters.csv") as tmp:
        patches_table.drop(columns=["source"]).to_csv(tmp, index=False, float_format="%.6g")
    write_json(out / "hierarchy.json", json_ready({**hierarchy, "embedding_model": spec.model_id, "biomarkers": list(probabilities)}))
    montages = out / "montages"
    montages.mkdir(parents=True, exist_ok=True)
    members = patches_table.groupby("cluster", sort=False).head(montage_patches)  # one read pass
    member_patches = read_patches(members, spec.patch_px)
    member_labels = members["cluster"].to_numpy()
    for cluster in hierarchy["clusters"]:
        write_png(montages / f"cluster_{int(cluster):02d}.png",
                  cluster_montage(member_patches, member_labels, cluster, montage_patches))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    if len(hierarchy["clusters"]) > 1:
        dendrogram(np.asarray(hierarchy["linkage"]), labels=[str(c) for c in hierarchy["clusters"]], ax=ax)
    ax.set_title(f"clusters by summed EMD of p(positive): {', '.join(probabilities)}")
    ax.set_ylabel("average-linkage distance")
    fig.tight_layout()
    with atomic_path(out / "dendrogram.png") as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return hierarchy


def tcav_report(
    model: Any, spec: Any, predictions: Sequence[str], concepts: Mapping[str, str], out_json: str | os.PathLike[str],
    n_runs: int = 20, n_random: int = 200, n_class: int = 100, seed: int = 0,
) -> dict[str, Any]:
    """TCAV score of each concept folder for the positive class (class 0).

    Random patches: ``n_random`` tissue patches drawn at random over the cohort; class
    patches: the ``n_class`` patches with the highest p(positive).
    """
    from bcpath.erpr.interpret import concept_patches_from_folder, tcav, top_patches
    from bcpath.io import json_ready, write_json

    table = cohort_predictions(predictions)
    rng = np.random.default_rng(seed)
    random_rows = table.iloc[np.sort(rng.choice(len(table), size=min(n_random, len(table)), replace=False))]
    random_patches = read_patches(random_rows, spec.patch_px)
    class_patches = read_patches(top_patches(table, 0, n_class), spec.patch_px)
    results = {}
    for name, folder in concepts.items():
        concept = concept_patches_from_folder(folder, spec.patch_px)
        results[name] = tcav(model, spec, concept, random_patches, class_patches, 0, n_runs=n_runs, seed=seed)
        logger.info("TCAV %s: %s mean %.3f (p = %s)", spec.model_id, name, results[name]["mean"], results[name]["p_value"])
    report = {"model": spec.model_id, "class": spec.classes[0], "concepts": results}
    write_json(out_json, json_ready(report))
    return report


# --- rule adapters ----------------------------------------------------------------------------


