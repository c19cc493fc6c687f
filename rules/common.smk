# Sample-sheet loading and helpers shared by the rule files.
import pandas as pd
from snakemake.exceptions import WorkflowError

from bcpath.cohort import load_cohort, optional_value
from bcpath.errors import BcpathError
from bcpath.workflow import collect_failures

DEMO_DIR = "results/demo_cohort"
DEMO_TMA_ID = "tma_ihc_01"  # bcpath.demo.tma.TMA_SLIDE_ID (that module imports numpy: not at parse time)
IS_DEMO = not (config.get("cohort") or config.get("samples"))


def _demo_table():
    from bcpath.demo import demo_slide_ids

    ids = demo_slide_ids(int(config["demo"]["n_slides"]))
    table = pd.DataFrame(
        {
            "slide_id": ids,
            "path": [f"{DEMO_DIR}/slides/{slide}.tiff" for slide in ids],
            "stain": "HE",
            "mpp": None,
            "tissue_mask": None,
            "annotations": None,
            "core_map": None,
            "core_scores": None,
        }
    )
    if config["demo"]["tma"]:
        tma = DEMO_TMA_ID
        row = {
            "slide_id": tma,
            "path": f"{DEMO_DIR}/slides/{tma}.tiff",
            "stain": "IHC",
            "mpp": None,
            "tissue_mask": None,
            "annotations": f"{DEMO_DIR}/annotations/{tma}.geojson",
            "core_map": None,
            "core_scores": f"{DEMO_DIR}/truth/{tma}.hscore.csv",
        }
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    return table.set_index("slide_id", drop=False)


if IS_DEMO:
    SAMPLES = _demo_table()
else:
    try:
        SAMPLES = load_cohort(config.get("cohort"), config.get("samples"))
    except BcpathError as error:
        raise WorkflowError(str(error)) from None

SLIDES = list(SAMPLES.index)
# H&E slides go to ER/PR/HER2 (and nuclei); IHC slides to TMA dearraying and H-Scores.
# IHC rows whose file is a PNG/JPEG are single-core images: no slide foundation (OpenSlide) for them.
CORE_IMAGES = [
    s for s in SLIDES
    if SAMPLES.at[s, "stain"] == "IHC" and str(SAMPLES.at[s, "path"]).lower().endswith((".png", ".jpg", ".jpeg"))
]
WSI_SLIDES = [s for s in SLIDES if s not in CORE_IMAGES]
HE_SLIDES = [s for s in SLIDES if (SAMPLES.at[s, "stain"] or "HE") == "HE"]
IHC_SLIDES = [s for s in SLIDES if SAMPLES.at[s, "stain"] == "IHC"]


wildcard_constraints:
    slide="[A-Za-z0-9][A-Za-z0-9._-]*",


def run_or_workflow_path(path):
    """A configured path as given when it exists from the run folder, else under the workflow
    (so models/nuclei_unet works from any run folder); unchanged when neither exists."""
    from pathlib import Path

    if not Path(path).exists() and (Path(workflow.basedir) / path).exists():
        return str(Path(workflow.basedir) / path)
    return str(path)


def slide_path(wildcards):
    return SAMPLES.at[wildcards.slide, "path"]


def sheet_value(column):
    """Input/params function: a sample-sheet cell for the job's slide (None when empty)."""
    return lambda wildcards: optional_value(SAMPLES, wildcards.slide, column)


def user_tissue_mask(wildcards):
    mask = optional_value(SAMPLES, wildcards.slide, "tissue_mask")
    return [mask] if mask else []


def failure_record(rule_name):
    return f"results/cohort/failures/{{slide}}.{rule_name}.json"


def slide_outputs(pattern):
    return expand(pattern, slide=WSI_SLIDES)


def he_slide_outputs(pattern):
    return expand(pattern, slide=HE_SLIDES)


def ihc_slide_outputs(pattern):
    return expand(pattern, slide=IHC_SLIDES)


def all_targets():
    return [
        *slide_outputs("results/slides/{slide}/tiles.zarr"),
        *slide_outputs("results/slides/{slide}/grid.parquet"),
        *slide_outputs("results/slides/{slide}/patches.h5"),
        *slide_outputs("results/slides/{slide}/tissue/tissue.geojson"),
        *slide_outputs("results/slides/{slide}/tissue/thumbnail.png"),
        "results/cohort/qc.csv",
    ]


def write_failures_report():
    rows = collect_failures("results/cohort/failures", "results/cohort/failures.csv", SLIDES)
    if rows:
        logger.warning(f"bcpath: {len(rows)} step(s) failed; see results/cohort/failures.csv")
        for row in rows:
            logger.warning(f"  {row['rule']}: {row['error']}")
