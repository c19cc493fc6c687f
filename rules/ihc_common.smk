# IHC set-up shared by rules/ihc.smk: whether RAM-CNN trains, targets and input functions.
from pathlib import Path

import pandas as pd

from bcpath.models.registry import model_folder_inputs

IHC = dict(config["ihc"])
RAMCNN = IHC["ramcnn"]
# ihc.nuclei_model: a detector name (null = the default, unet) or a nuclei model folder
# (relative to the run folder, else to the workflow, as nuclei.model); the files of the model
# it loads are inputs of score_tma, so new weights rescore the cores.
from bcpath.ihc.nuclei_net import SHIPPED_DETECTOR as _SHIPPED_IHC_DETECTOR
from bcpath.ihc.score import DEFAULT_DETECTOR as _DEFAULT_IHC_DETECTOR
from bcpath.ihc.score import NUCLEI_DETECTORS as _IHC_DETECTOR_NAMES
from bcpath.ihc.score import SHIPPED_NUCLEI_UNET as _SHIPPED_NUCLEI_UNET
from bcpath.ihc.score import UNET_PREFIX as _UNET_PREFIX

# The shipped models are read from this workflow's models/ (the installed package may not
# hold them: --sdm conda) and passed to the step by path.
_detector = IHC.get("nuclei_model") or _DEFAULT_IHC_DETECTOR
_model = None
if _detector == "unet" or _detector.startswith(_UNET_PREFIX):
    _model = run_or_workflow_path(_detector[len(_UNET_PREFIX) :] or f"models/{_SHIPPED_NUCLEI_UNET.name}")
    IHC["nuclei_model"] = f"{_UNET_PREFIX}{_model}"
elif _detector == "learned":
    _model = run_or_workflow_path(f"models/{_SHIPPED_IHC_DETECTOR.name}")
    IHC["nuclei_model"] = str(_model)
elif _detector not in _IHC_DETECTOR_NAMES:
    _model = run_or_workflow_path(_detector)
    IHC["nuclei_model"] = _model
IHC_NUCLEI_MODEL_FILES = []
if _model is not None and IHC_SLIDES:
    try:
        IHC_NUCLEI_MODEL_FILES = model_folder_inputs(
            _model, "ihc.nuclei_model",
            "give one of " + ", ".join(_IHC_DETECTOR_NAMES) + ", a `bcpath nuclei train` output folder, or null for the default (unet)",
        )
    except BcpathError as error:
        raise WorkflowError(str(error)) from None


def _reference_core_count():
    """Cores with a reference H-Score in the sheet's core_scores files (parse time)."""
    if IS_DEMO:
        return 19 if config["demo"]["tma"] else 0  # bcpath.demo.tma: 19 cores, all with references
    total = 0
    for slide in IHC_SLIDES:
        path = optional_value(SAMPLES, slide, "core_scores") if "core_scores" in SAMPLES.columns else None
        if path and Path(path).is_file():
            table = pd.read_csv(path)
            column = "reference_h_score" if "reference_h_score" in table.columns else "h_score"
            total += int(table[column].notna().sum()) if column in table.columns else 0
    return total


_N_REFERENCE_CORES = _reference_core_count() if IHC_SLIDES else 0
RAMCNN_ACTIVE = bool(IHC_SLIDES) and (
    RAMCNN["enabled"] is True or (RAMCNN["enabled"] == "auto" and _N_REFERENCE_CORES >= 2 * RAMCNN["folds_k"])
)
if IHC_SLIDES and RAMCNN["enabled"] == "auto" and not RAMCNN_ACTIVE:
    logger.info(
        f"bcpath: RAM-CNN skipped: {_N_REFERENCE_CORES} core(s) with reference H-Scores, leave-{RAMCNN['folds_k']}-out "
        f"needs {2 * RAMCNN['folds_k']} (ihc.ramcnn.enabled: auto); cell scoring and NAP still run"
    )


def ihc_targets():
    if not IHC_SLIDES:
        return []
    return [
        *ihc_slide_outputs("results/slides/{slide}/ihc/cells.geojson"),
        "results/cohort/hscore.csv",
    ]


def ramcnn_inputs(wildcards):
    if not RAMCNN_ACTIVE:
        return {}
    return {"model": "results/models/ramcnn", "cv": "results/cohort/ihc/ramcnn_cv.csv"}




def core_map_input(wildcards):
    path = optional_value(SAMPLES, wildcards.slide, "core_map")
    return [path] if path else []


def annotations_input(wildcards):
    path = optional_value(SAMPLES, wildcards.slide, "annotations")
    return [path] if path else []


def ihc_slide_inputs(wildcards):
    """The slide, and its info.json unless it is a single-core image (read directly)."""
    inputs = {"slide": slide_path(wildcards)}
    if wildcards.slide not in CORE_IMAGES:
        inputs["info"] = f"results/slides/{wildcards.slide}/info.json"
    return inputs


