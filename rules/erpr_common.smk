# ER/PR/HER2 set-up shared by rules/erpr.smk: the model registry, which biomarkers run, and the
# input functions. Parse-time checks stop the run with one message before anything starts.
from pathlib import Path

from bcpath.labels import BIOMARKERS
from bcpath.models.registry import load_registry

ERPR = config["erpr"]
REGISTRY_PATH = str(Path(ERPR.get("registry") or Path(workflow.basedir) / "models" / "registry.yaml").resolve())
MODELS_DIR = str(Path(REGISTRY_PATH).parent)
try:
    REGISTRY = load_registry(REGISTRY_PATH)
except BcpathError as error:
    raise WorkflowError(str(error)) from None

ERPR_MODELS = {b: m for b, m in (ERPR.get("models") or {}).items() if m}
for _biomarker, _model_id in ERPR_MODELS.items():
    if _biomarker not in BIOMARKERS:
        raise WorkflowError(f"erpr.models: unknown biomarker {_biomarker}; use {', '.join(BIOMARKERS)}")
    if _model_id not in REGISTRY:
        raise WorkflowError(
            f"erpr.models.{_biomarker}: model {_model_id} is not in the model registry {REGISTRY_PATH} "
            f"(entries: {', '.join(REGISTRY)}); add an entry there or name an existing one"
        )
MODEL_BIOMARKER = {m: b for b, m in ERPR_MODELS.items()}


def samples_sheet():
    """The sample sheet file (labels, splits, annotations), or None for a plain cohort folder."""
    if IS_DEMO:
        return f"{DEMO_DIR}/samples.tsv"
    return config.get("samples")


def _sheet_has(column, values=None):
    if IS_DEMO:
        return True
    if column not in SAMPLES.columns:
        return False
    cells = SAMPLES[column].dropna()
    return bool(len(cells)) if values is None else bool(cells.isin(values).any())


CAN_TRAIN = _sheet_has("annotations") and _sheet_has("split", ["train"]) and _sheet_has("split", ["tune"])


def _model_available(model_id):
    return REGISTRY[model_id].weights is not None or CAN_TRAIN


ERPR_ACTIVE = {}
for _biomarker, _model_id in ERPR_MODELS.items():
    if ERPR["enabled"] is False:
        break
    if _model_available(_model_id):
        ERPR_ACTIVE[_biomarker] = _model_id
    elif ERPR["enabled"] is True:
        raise WorkflowError(
            f"erpr: model {_model_id} ({_biomarker}) has no weights in {REGISTRY_PATH} and the sample "
            "sheet cannot train it (needs annotations and train + tune splits); record weights in the "
            "registry, add annotated train/tune slides, or set erpr.enabled: auto"
        )
    else:
        logger.info(
            f"bcpath: {_biomarker} skipped: model {_model_id} has no weights and the sheet has no "
            "annotated train/tune slides to train it (erpr.enabled: auto)"
        )
# Only models that run read tiles.zarr: with erpr.enabled false (or a skipped model) tiling.mpp is free.
for _biomarker, _model_id in ERPR_ACTIVE.items():
    if abs(REGISTRY[_model_id].mpp - float(config["tiling"]["mpp"])) > 1e-3 * REGISTRY[_model_id].mpp:
        raise WorkflowError(
            f"erpr.models.{_biomarker}: model {_model_id} reads {REGISTRY[_model_id].mpp} µm/px but "
            f"tiling.mpp is {config['tiling']['mpp']}; set tiling.mpp to the model's resolution, "
            "or erpr.enabled: false to tile at another resolution without ER/PR/HER2"
        )
STAGE2_BIOMARKERS = [b for b in ERPR_ACTIVE if _sheet_has(b, ["positive", "negative"])]


def weights_inputs(model_id):
    """The registry's weights file, or the training rule's best.pt when the registry has none."""
    spec = REGISTRY[model_id]
    if spec.weights is not None:
        return {"weights": str(Path(MODELS_DIR) / spec.weights)}
    return {
        "weights": f"results/models/{model_id}/best.pt",
        "train_json": f"results/models/{model_id}/train.json",
    }


def stage1_weights_all(wildcards):
    """Rule predict_patches: weights_<k> (and train_json_<k>) of the k-th active model."""
    inputs = {}
    for k, model_id in enumerate(ERPR_ACTIVE.values()):
        inputs.update({f"{key}_{k}": path for key, path in weights_inputs(model_id).items()})
    return inputs


# Every active model's predictions of a slide: the outputs of its one predict_patches job.
ERPR_SLIDE_PREDICTIONS = [f"results/slides/{{slide}}/predictions/{m}.parquet" for m in ERPR_ACTIVE.values()]


def heatmap_outputs():
    """Rule render_heatmaps' outputs: zarr_<k>, png_<k> (in the report), geojson_<k> of the k-th model."""
    outputs = {}
    for k, model_id in enumerate(ERPR_ACTIVE.values()):
        outputs[f"zarr_{k}"] = directory(f"results/slides/{{slide}}/heatmaps/{model_id}.zarr")
        outputs[f"png_{k}"] = report(
            f"results/slides/{{slide}}/heatmaps/{model_id}.png",
            category="ER/PR/HER2",
            subcategory=f"heatmaps {model_id}",
            caption="../report/erpr_heatmap.rst",
            labels={"slide": "{slide}", "model": model_id},
        )
        outputs[f"geojson_{k}"] = f"results/slides/{{slide}}/heatmaps/{model_id}.geojson"
    return outputs


def erpr_targets():
    return [
        *[t for m in ERPR_ACTIVE.values() for t in he_slide_outputs(f"results/slides/{{slide}}/heatmaps/{m}.png")],
        *[f"results/cohort/stage2/{b}/evaluation.json" for b in STAGE2_BIOMARKERS],
    ]


def biomarker_weights(wildcards):
    return weights_inputs(ERPR_ACTIVE[wildcards.biomarker])


def model_predictions(model_id):
    return he_slide_outputs(f"results/slides/{{slide}}/predictions/{model_id}.parquet")


def interpret_targets():
    settings = ERPR["interpret"]
    targets = [f"results/cohort/interpret/{b}/smoothgrad.png" for b in ERPR_ACTIVE]
    if settings["embedding_biomarker"] in ERPR_ACTIVE:
        targets.append("results/cohort/interpret/clusters/hierarchy.json")
    if settings["concepts"]:
        targets += [f"results/cohort/interpret/{b}/tcav.json" for b in ERPR_ACTIVE]
    return targets
