# Nuclei set-up shared by rules/nuclei.smk: the model, the region, targets and input functions.
from pathlib import Path

from bcpath.models.registry import model_folder_inputs

NUCLEI = dict(config["nuclei"])
# A model path is read relative to the run folder, else to the workflow (models/nuclei_unet);
# its files (weights, train.json, stain.json) are inputs of the jobs that use it.
NUCLEI_MODEL_FILES = []
if NUCLEI["model"] not in ("otsu", "watershed", "fiji"):
    NUCLEI["model"] = run_or_workflow_path(NUCLEI["model"])
    if not Path(NUCLEI["model"]).exists() and NUCLEI["enabled"]:
        raise WorkflowError(
            f"nuclei.model: {NUCLEI['model']} is neither a classical baseline (otsu, watershed, fiji) "
            "nor an existing model folder; give e.g. models/nuclei_unet or a `bcpath nuclei train` output"
        )
    if Path(NUCLEI["model"]).exists():
        try:
            NUCLEI_MODEL_FILES = model_folder_inputs(
                NUCLEI["model"], "nuclei.model", "give e.g. models/nuclei_unet or a `bcpath nuclei train` output"
            )
        except BcpathError as error:
            if NUCLEI["enabled"]:
                raise WorkflowError(str(error)) from None
# The tumor region comes from the first active ER/PR/HER2 stage-1 model's patch predictions.
NUCLEI_REGION_MODEL = next(iter(ERPR_ACTIVE.values()), None)
if NUCLEI["region"] == "tumor" and NUCLEI_REGION_MODEL is None and NUCLEI["enabled"]:
    raise WorkflowError(
        "nuclei.region: tumor needs an ER/PR/HER2 stage-1 model (none runs: see erpr.enabled and "
        "the model registry); set nuclei.region to tissue or auto"
    )
NUCLEI_IN_TUMOR = NUCLEI["region"] != "tissue" and NUCLEI_REGION_MODEL is not None


def nuclei_targets():
    if not NUCLEI["enabled"]:
        return []
    return [
        *he_slide_outputs("results/slides/{slide}/nuclei/features.parquet"),
        *he_slide_outputs("results/slides/{slide}/nuclei/nuclei.geojson"),
    ]


def nuclei_region(wildcards):
    return {"region": f"results/slides/{wildcards.slide}/nuclei/region.png"} if NUCLEI_IN_TUMOR else {}
