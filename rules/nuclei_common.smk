# Nuclei set-up shared by rules/nuclei.smk: the model, the region, targets and input functions.
from pathlib import Path

from bcpath.models.registry import model_folder_inputs

NUCLEI = dict(config["nuclei"])
# A model path is read relative to the run folder, else to the workflow (models/nuclei_unet_v2);
# its files (weights, train.json, stain.json) are inputs of the jobs that use it.
NUCLEI_MODEL_FILES = []
if NUCLEI["model"] not in ("otsu", "watershed", "fiji"):
    NUCLEI["model"] = run_or_workflow_path(NUCLEI["model"])
    if not Path(NUCLEI["model"]).exists() and NUCLEI["enabled"]:
        raise WorkflowError(
            f"nuclei.model: {NUCLEI['model']} is neither a classical baseline (otsu, watershed, fiji) "
            "nor an existing model folder; give e.g. models/nuclei_unet_v2 or a `bcpath nuclei train` output"
        )
    if Path(NUCLEI["model"]).exists():
        try:
            NUCLEI_MODEL_FILES = model_folder_inputs(
                NUCLEI["model"], "nuclei.model", "give e.g. models/nuclei_unet_v2 or a `bcpath nuclei train` output"
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


def _nuclei_slides():
    """H&E slides that get nuclei in a run: every one, except in the demo, where only the
    slides of demo.nuclei_splits (default its 4 test slides; null = all) do."""
    splits = config["demo"].get("nuclei_splits") if IS_DEMO else None
    if not splits:
        return list(HE_SLIDES)
    from bcpath.demo import plan_slide

    seed = int(config["demo"]["seed"])
    return [s for s in HE_SLIDES if plan_slide(seed, int(s.rsplit("_", 1)[1]) - 1).split in splits]


NUCLEI_SLIDES = _nuclei_slides()


def nuclei_slide_outputs(pattern):
    """``pattern`` for every slide that gets nuclei in a run (NUCLEI_SLIDES)."""
    return expand(pattern, slide=NUCLEI_SLIDES)


def nuclei_targets():
    if not NUCLEI["enabled"]:
        return []
    return [
        *nuclei_slide_outputs("results/slides/{slide}/nuclei/features.parquet"),
        *nuclei_slide_outputs("results/slides/{slide}/nuclei/nuclei.geojson"),
    ]


def nuclei_region(wildcards):
    return {"region": f"results/slides/{wildcards.slide}/nuclei/region.png"} if NUCLEI_IN_TUMOR else {}


def nuclei_model_param(wildcards, input):
    """nuclei.model as the step loads it: a baseline name, or the model's weights file / folder
    taken from the job's inputs (not a hard-coded path; Snakemake's lint asks for that)."""
    if not NUCLEI_MODEL_FILES:
        return NUCLEI["model"]
    weights = Path(input.model[0])
    return str(weights) if Path(NUCLEI["model"]).is_file() else str(weights.parent)
