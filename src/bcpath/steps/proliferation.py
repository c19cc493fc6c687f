"""Steps of rules/proliferation.smk: tumour LocNet, mitosis model, mitosis detection and the
proliferation models and table. The work is in :mod:`bcpath.proliferation`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)


def _spec(registry: str, model_id: str) -> Any:
    from bcpath.models.registry import load_registry

    specs = load_registry(registry)
    if model_id not in specs:
        raise BcpathError(f"model {model_id} is not in the registry {registry} (entries: {', '.join(specs)})")
    return specs[model_id]


def _load(registry: str, model_id: str, weights: str, train_json: str | None, device: str | None = None) -> tuple[Any, Any]:
    """A registry model with its weights (registry sha256, or the training rule's train.json)."""
    from bcpath.models.registry import load_model

    spec = _spec(registry, model_id)
    if train_json:
        sha = json.loads(Path(train_json).read_text())["sha256"]
        return load_model(spec, weights=weights, sha256=sha, device=device), spec
    return load_model(spec, models_dir=Path(registry).parent, device=device), spec


def _sheet(path: str) -> pd.DataFrame:
    from bcpath.cohort import read_sample_sheet

    return read_sample_sheet(path, check_files=False)


def train_tumor_locnet_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule train_tumor_locnet: LocNet on the annotated train/tune slides' tiles."""
    from bcpath.proliferation.locnet import LocNetTrainConfig, load_loc_slide, train_locnet

    spec = _spec(params.registry, params.model_id)
    sheet = _sheet(input.samples)
    slides = []
    for tiles in input.tiles:
        slide_id = Path(tiles).parent.name
        row = sheet.loc[slide_id]
        if row.get("split") not in ("train", "tune") or not row.get("annotations"):
            continue
        slides.append(load_loc_slide(slide_id, row["split"], tiles, Path(tiles).parent / "grid.parquet", row["annotations"], params.tumor_classes))
    fields = set(LocNetTrainConfig.__dataclass_fields__)
    config = LocNetTrainConfig(**{k: v for k, v in dict(params.training).items() if k in fields}, threads=threads)
    record = train_locnet(spec, slides, Path(output.weights).parent, config)
    logger.info("LocNet: best from %s, sha256 %s", record["from_stage"], record["sha256"])


def locate_tumor_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule locate_tumor: tumor.zarr (p(tumour) per cell), tumor.png on the thumbnail, tumor.geojson."""
    import zarr

    from bcpath.engine import torch_threads
    from bcpath.erpr.heatmaps import (
        heatmap_geojson_features,
        heatmap_overlay_png,
        write_heatmap_zarr,
        write_png,
    )
    from bcpath.geojson import write_geojson
    from bcpath.tiling import open_tiles
    from bcpath.tissue import mask_mpp_from_qc

    attrs: Any = zarr.open_group(str(input.tiles), mode="r").attrs["bcpath"]
    meta = dict(attrs)
    info = json.loads(Path(input.info).read_text())
    level0_mpp = float(info["mpp"])
    analysis_mpp = float(meta["mpp"])
    origin = (float(meta["origin_x0"]), float(meta["origin_y0"]))
    if params.source == "erpr":
        from bcpath.erpr.heatmaps import heatmap_arrays
        from bcpath.erpr.inference import read_predictions

        predictions = read_predictions(input.predictions)
        pmeta = predictions.attrs.get("bcpath", {})
        patch_px = int(pmeta.get("patch_px", 128))
        stride = int(pmeta.get("stride_px", patch_px))
        array = open_tiles(input.tiles)
        maps = heatmap_arrays(predictions, (int(array.shape[1]), int(array.shape[2])), stride, patch_px)
        p_map = maps[0] + maps[1]
        stride_px, model_id = stride, f"erpr:{Path(input.predictions).stem}"
    else:

        from bcpath.proliferation.locnet import predict_tumor_map, written_tiles_mask

        model, spec = _load(params.registry, params.model_id, input.weights, input.get("train_json"), params.get("device"))
        array = open_tiles(input.tiles)
        tissue = written_tiles_mask(input.grid, (int(array.shape[1]), int(array.shape[2])), int(meta["tile_px"]))
        with torch_threads(threads, next(model.parameters()).device):
            p_map = predict_tumor_map(model, spec, array, tissue)
        stride_px, model_id = int(model.downsample), spec.model_id
    write_heatmap_zarr(output.zarr, p_map[None].astype(np.float32), ["tumor"], stride_px, analysis_mpp, origin, level0_mpp, model_id=model_id)
    thumbnail_mpp = mask_mpp_from_qc(json.loads(Path(input.qc).read_text()))
    from PIL import Image

    thumb = np.asarray(Image.open(input.thumbnail).convert("RGB"))
    cell_mpp = stride_px * analysis_mpp
    write_png(output.png, heatmap_overlay_png(thumb, thumbnail_mpp, p_map, cell_mpp, (origin[0] * level0_mpp, origin[1] * level0_mpp), alpha=0.6))
    features = heatmap_geojson_features(p_map, float(params.threshold), "Tumor", cell_mpp / level0_mpp, origin, color=[200, 0, 0])
    write_geojson(output.geojson, features)
    tumor_cells = int((np.nan_to_num(p_map, nan=0) >= params.threshold).sum())
    logger.info("tumour: %d cells (%.2f mm²) of %d tissue cells", tumor_cells, tumor_cells * (cell_mpp / 1000) ** 2, int(np.isfinite(p_map).sum()))


def train_mitosis_model_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule train_mitosis_model: MitosNet on slides with annotated mitoses (sheet column ``mitoses``)."""
    import shutil

    from bcpath.engine import choose_device
    from bcpath.io import atomic_path, write_json
    from bcpath.models.registry import build_model
    from bcpath.proliferation.cohort import slide_training_crops
    from bcpath.proliferation.mitosis import (
        THRESHOLD_GRID,
        CropSet,
        choose_threshold,
        config_from,
        predict_crops,
        train_mitosis_classifier,
    )
    from bcpath.wsi.reader import file_sha256

    spec = _spec(params.registry, params.model_id)
    sheet = _sheet(input.samples)
    training = dict(params.training)
    crop_px = int(round(spec.patch_px * 1.5))
    sets: dict[str, list[Any]] = {"train": [], "tune": []}
    pools: list[Any] = []
    tune_pools: list[Any] = []
    for index, (slide_id, row) in enumerate(sheet.iterrows()):
        if row.get("split") not in ("train", "tune") or not row.get("mitoses") or (row.get("stain") or "HE") != "HE":
            continue
        crops, pool = slide_training_crops(
            row["path"], str(slide_id), row["mitoses"], row.get("annotations"), spec, list(params.tumor_classes),
            int(training["negatives_per_slide"]), int(training["seed"]) * 1000 + index, crop_px,
        )
        sets[row["split"]].append(crops)
        (pools if row["split"] == "train" else tune_pools).append(pool)
    if not sets["train"] or not sets["tune"]:
        raise BcpathError(
            "train_mitosis_model: needs train and tune slides with a `mitoses` CSV (x, y level-0 px of annotated "
            "mitotic figures) in the sample sheet; or name a trained model in proliferation.mitosis_model"
        )
    train, tune = CropSet.concat(sets["train"]), CropSet.concat(sets["tune"])
    logger.info("mitosis training crops: train %d (%d mitoses), tune %d (%d mitoses)", len(train), int(train.labels.sum()), len(tune), int(tune.labels.sum()))
    config = config_from({**training, "threads": threads})
    out = Path(output.weights).parent
    record: dict[str, Any] = {"model_id": spec.model_id, "config": training, "n_train": len(train), "n_tune": len(tune)}
    record["stage1"] = train_mitosis_classifier(spec, train, tune, out / "stage1", config, stage="stage 1")
    final = out / "stage1" / "best.pt"
    if config.hard_negative_epochs > 0 and pools:
        model = build_model(spec, final).to(choose_device(config.device))
        pool = np.concatenate(pools)
        p, _ = predict_crops(model, pool, spec)
        hard = pool[p >= 0.5]
        record["hard_negatives"] = int(len(hard))
        logger.info("stage 2: %d hard negatives (stage-1 false positives) of %d candidates", len(hard), len(pool))
        if len(hard):
            extra = CropSet(hard, np.zeros(len(hard), np.int64), np.full(len(hard), -1, np.int64), np.full(len(hard), "hard"))
            stage2_config = config_from({**training, "threads": threads, "epochs": config.hard_negative_epochs})
            record["stage2"] = train_mitosis_classifier(spec, CropSet.concat([train, extra]), tune, out / "stage2", stage2_config, init_from=final, stage="stage 2")
            if record["stage2"]["best_value"] <= record["stage1"]["best_value"] * 1.1:
                final = out / "stage2" / "best.pt"
    # Detection threshold: best F1 over the tune slides' annotated figures and all their other candidates.
    model = build_model(spec, final).to(choose_device(config.device))
    p_mitoses, _ = predict_crops(model, tune.images[tune.labels == 1], spec)
    p_others, _ = predict_crops(model, np.concatenate(tune_pools), spec)
    threshold, f1 = choose_threshold(p_mitoses, p_others)
    record["threshold"] = threshold
    record["threshold_choice"] = {"tune_f1": f1, "tune_mitoses": int(len(p_mitoses)), "tune_candidates": int(len(p_others)), "grid": list(THRESHOLD_GRID)}
    logger.info("detection threshold %.2f (F1 %.3f on the tune slides' %d figures and %d other candidates)", threshold, f1, len(p_mitoses), len(p_others))
    with atomic_path(output.weights) as tmp:
        shutil.copyfile(final, tmp)
    record.update(weights="best.pt", from_stage=final.parent.name, sha256=file_sha256(output.weights))
    write_json(output.train_json, record)


def detect_mitoses_step(input: Any, output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    """Rule detect_mitoses: mitoses in the tumour → mitoses.parquet/geojson, hotspot.geojson, features.json."""
    from bcpath.engine import torch_threads
    from bcpath.erpr.heatmaps import read_heatmap_zarr
    from bcpath.geojson import write_geojson
    from bcpath.io import atomic_path, write_json
    from bcpath.pipeline import open_from_info
    from bcpath.proliferation.candidates import CandidateParams
    from bcpath.proliferation.cohort import EMBEDDING_PREFIX, detection_threshold
    from bcpath.proliferation.features import slide_features
    from bcpath.proliferation.hotspot import (
        TUPAC_CUTOFFS,
        elston_ellis_cutoffs,
        find_hotspot,
        hotspot_feature,
    )
    from bcpath.proliferation.mitosis import DetectionParams
    from bcpath.proliferation.slide import (
        detect_slide,
        mitosis_features_geojson,
        tumor_mask_from_map,
    )

    detection = dict(params.detection)
    model, spec = _load(params.registry, params.model_id, input.weights, input.get("train_json"), detection.get("device"))
    maps, meta = read_heatmap_zarr(input.tumor)
    tumor_mpp = 8.0
    with open_from_info(input.info, input.slide) as slide:
        tumor = tumor_mask_from_map(maps[0], meta, float(params.tumor_threshold), tumor_mpp, slide.mpp, slide.dimensions)
        det_params = DetectionParams(
            threshold=detection_threshold(detection["threshold"], input.weights, input.get("train_json")), nms_um=float(detection["nms_um"]),
            candidates=CandidateParams(min_od=float(detection["min_od"])),
        )
        with torch_threads(threads, next(model.parameters()).device):
            table, embeddings = detect_slide(slide, tumor, tumor_mpp, model, spec, det_params)
        level0_mpp = slide.mpp
    field = params.hotspot.get("field_diameter_mm")
    if field:
        c1, c2, area = elston_ellis_cutoffs(float(field))
        cutoffs: tuple[int, int] = (c1, c2)
    else:
        cutoffs, area = TUPAC_CUTOFFS, float(params.hotspot["area_mm2"])
    hotspot = find_hotspot(table["x0"].to_numpy(), table["y0"].to_numpy(), tumor, tumor_mpp, level0_mpp, area, cutoffs=cutoffs)
    feats, flags = slide_features(table, tumor, tumor_mpp, level0_mpp, hotspot.count if hotspot else 0, hotspot.score if hotspot else 1)
    emb = pd.DataFrame(embeddings, columns=[f"{EMBEDDING_PREFIX}{i}" for i in range(embeddings.shape[1])])
    out = pd.concat([table.reset_index(drop=True), emb], axis=1)
    out.insert(0, "mitosis_id", np.arange(1, len(out) + 1))
    with atomic_path(output.mitoses) as tmp:
        out.to_parquet(tmp, index=False)
    write_geojson(output.geojson, mitosis_features_geojson(table))
    write_geojson(output.hotspot, [hotspot_feature(hotspot)] if hotspot else [])
    write_json(
        output.features,
        {
            "slide_id": Path(input.info).parent.name, "model_id": spec.model_id, "features": feats, "flags": flags,
            "hotspot": hotspot.as_dict() if hotspot else None, "tumor_mpp": tumor_mpp,
        },
    )
    logger.info("mitoses: %d, hotspot %s, flags %s", len(table), hotspot.as_dict() if hotspot else None, flags)


def train_proliferation_models_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule train_proliferation_models: bag of words on train slides, grade + score models on
    train + tune (CV), and the cohort feature table (features.parquet)."""
    from bcpath.io import atomic_path, write_json
    from bcpath.proliferation.cohort import feature_table, mitosis_embeddings
    from bcpath.proliferation.features import BagOfWords
    from bcpath.proliferation.slide_models import (
        choose_feature_set,
        fit_grade_model,
        fit_score_model,
    )

    sheet = _sheet(input.samples)
    table = feature_table(list(input.features))
    slide_ids = list(table.index)
    mitoses = {Path(p).parent.parent.name: p for p in input.mitoses}
    split = sheet["split"].reindex(slide_ids)
    train_ids = [s for s in slide_ids if split.get(s) == "train"]
    fit_ids = [s for s in slide_ids if split.get(s) in ("train", "tune")]
    settings = dict(params.models)
    train_emb = [mitosis_embeddings(mitoses[s]) for s in train_ids]
    bow = BagOfWords.fit(np.concatenate(train_emb) if train_emb else np.zeros((0, 0)), int(settings["bow_k"]), int(settings["seed"]))
    if bow.note:
        logger.info("bag of words: %s", bow.note)
    hist = np.stack([bow.histogram(mitosis_embeddings(mitoses[s])) for s in slide_ids]) if bow.k else np.zeros((len(slide_ids), 0))
    words = [f"word_{i:03d}" for i in range(bow.k)]
    table = pd.concat([table, pd.DataFrame(hist, index=table.index, columns=words)], axis=1)
    handcrafted = [c for c in table.columns if c not in ("slide_id", "flags") and not c.startswith("word_")]
    counts = ["mitoses_per_mm2", "hotspot_count", "mitosis_count"]
    candidates = {"counts": counts, "handcrafted": handcrafted}
    if words:
        candidates["handcrafted+bow"] = handcrafted + words
    fit_table = table.loc[fit_ids]
    result: dict[str, Any] = {"bow": bow.to_json(), "fit_slides": fit_ids, "bow_slides": train_ids}
    grades = pd.to_numeric(sheet["grade"].reindex(fit_ids), errors="coerce")
    known = grades.notna()
    if known.sum() >= 2 and grades[known].nunique() >= 2:
        result["grade"] = choose_feature_set(candidates, fit_table[known.values], grades[known].to_numpy(dtype=np.int64), fit_grade_model, "cv_log_loss", int(settings["seed"]))[1]
    else:
        result["grade"] = None
        logger.warning("grade model not trained: the train/tune slides need grades of at least two classes in the sheet column grade")
    scores = pd.to_numeric(sheet["proliferation"].reindex(fit_ids), errors="coerce")
    known = scores.notna()
    if known.sum() >= 3:
        result["score"] = choose_feature_set(candidates, fit_table[known.values], scores[known].to_numpy(dtype=np.float64), fit_score_model, "cv_mse", int(settings["seed"]))[1]
    else:
        result["score"] = None
        logger.warning("score model not trained: fewer than 3 train/tune slides with a proliferation value in the sheet")
    for name in ("grade", "score", "bow"):
        write_json(getattr(output, name), result[name] if name != "bow" else {**result["bow"], "slides": train_ids})
    with atomic_path(output.table) as tmp:
        table.reset_index(drop=True).to_parquet(tmp, index=False)


def proliferation_table_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    """Rule proliferation_table: predictions for every slide, evaluation on the test slides,
    ROC and scatter figures, results/cohort/proliferation.csv."""
    from bcpath.io import atomic_path, write_json
    from bcpath.proliferation.cohort import proliferation_figures
    from bcpath.proliferation.slide_models import GRADES, evaluate, predict_grade, predict_score

    sheet = _sheet(input.samples)
    table = pd.read_parquet(input.table).set_index("slide_id", drop=False)
    grade_model = json.loads(Path(input.grade).read_text())
    score_model = json.loads(Path(input.score).read_text())
    out = pd.DataFrame({"slide_id": table.index, "split": sheet["split"].reindex(table.index).to_numpy()})
    if grade_model:
        proba = predict_grade(grade_model, table)
        out["predicted_grade"] = np.asarray(GRADES)[proba.argmax(1)]
        for i, g in enumerate(GRADES):
            out[f"p_grade_{g}"] = proba[:, i]
    if score_model:
        out["predicted_score"] = predict_score(score_model, table)
    out["hotspot_count"] = table["hotspot_count"].to_numpy()
    out["mitotic_score"] = table["mitotic_score"].astype(int).to_numpy()
    out["mitoses_per_mm2"] = table["mitoses_per_mm2"].to_numpy()
    out["mitosis_count"] = table["mitosis_count"].astype(int).to_numpy()
    out["atypical_fraction"] = table["atypical_fraction"].to_numpy()
    out["tumor_area_mm2"] = table["tumor_area_mm2"].to_numpy()
    out["flags"] = table["flags"].to_numpy()
    out["grade"] = pd.to_numeric(sheet["grade"].reindex(table.index), errors="coerce").to_numpy()
    out["proliferation"] = pd.to_numeric(sheet["proliferation"].reindex(table.index), errors="coerce").to_numpy()
    test = out[out["split"] == "test"]
    ev = dict(params.evaluation)
    g_ok = test["grade"].notna() if grade_model else pd.Series(False, index=test.index)
    s_ok = test["proliferation"].notna() if score_model else pd.Series(False, index=test.index)
    evaluation = evaluate(
        test.loc[g_ok, "grade"].to_numpy(dtype=np.int64) if g_ok.any() else None,
        test.loc[g_ok, [f"p_grade_{g}" for g in GRADES]].to_numpy() if g_ok.any() else None,
        test.loc[s_ok, "proliferation"].to_numpy(dtype=np.float64) if s_ok.any() else None,
        test.loc[s_ok, "predicted_score"].to_numpy(dtype=np.float64) if s_ok.any() else None,
        int(ev["n_bootstrap"]), int(ev["seed"]), float(ev["confidence"]),
    )
    evaluation["test_slides"] = test["slide_id"].tolist()
    write_json(output.evaluation, evaluation)
    with atomic_path(output.predictions) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(output.cohort) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6g")
    proliferation_figures(test, grade_model, score_model, output.roc, output.scatter)
    logger.info("proliferation evaluation: %s", json.dumps({k: v for k, v in evaluation.items() if k in ("grade", "score")}, default=str)[:600])
