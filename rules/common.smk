# Sample-sheet loading and helpers shared by the rule files.
import os
import time

import pandas as pd
from snakemake.exceptions import WorkflowError

from bcpath.cohort import load_cohort, optional_value
from bcpath.errors import BcpathError
from bcpath.wsi import IMAGE_FILE_SUFFIXES
from bcpath.workflow import (
    FinishedJob,
    clear_finished_jobs,
    collect_failures,
    gpu_request,
    half_the_cores,
    record_failed_jobs,
    step_code_version,
    write_partial_table,
)

DEMO_DIR = "results/demo_cohort"
DEMO_TMA_ID = "tma_ihc_01"  # bcpath.demo.tma.TMA_SLIDE_ID (that module imports numpy: not at parse time)
IS_DEMO = not (config.get("cohort") or config.get("samples"))


# Cores of a local run (None on clusters and inside cluster jobs): rules that take half the
# machine read it through bcpath.workflow.half_the_cores, so a job's threads are the same where
# it is scheduled and where it runs.
try:
    LOCAL_CORES = workflow.cores if workflow.is_main_process and workflow.local_exec else None
except WorkflowError:  # no --cores
    LOCAL_CORES = None


def step_code(script):
    """A rule's params entry `code`: the version of the bcpath code behind workflow_scripts/<script>.py
    (bcpath.workflow.step_code_version). Snakemake reruns jobs whose params changed, so upgrading
    bcpath reruns the rules whose code changed; unchanged code gives the same value every parse."""
    return step_code_version(os.path.join(workflow.basedir, "workflow_scripts", f"{script}.py"))


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
# IHC rows whose file is a PNG/JPEG are single-core images: no slide foundation (info.json) for
# them; the IHC steps open them with bcpath.wsi.open_slide's plain-image backend.
CORE_IMAGES = [
    s for s in SLIDES
    if SAMPLES.at[s, "stain"] == "IHC" and str(SAMPLES.at[s, "path"]).lower().endswith(IMAGE_FILE_SUFFIXES)
]
WSI_SLIDES = [s for s in SLIDES if s not in CORE_IMAGES]
HE_SLIDES = [s for s in SLIDES if (SAMPLES.at[s, "stain"] or "HE") == "HE"]
IHC_SLIDES = [s for s in SLIDES if SAMPLES.at[s, "stain"] == "IHC"]
IHC_SCORES = "results/slides/{slide}/ihc/scores.parquet"


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
    # ancient: a touched slide (content unchanged) is not recomputed; inspect_slide reruns when
    # the slide's content fingerprint changes (params), and everything else follows info.json.
    return ancient(SAMPLES.at[wildcards.slide, "path"])


def slide_fingerprint(wildcards):
    """Params of the rules that read a slide first: size + hash of its first and last MiB (the
    demo slides are made by the workflow itself, so they need none)."""
    from bcpath.io import file_fingerprint

    return "" if IS_DEMO else file_fingerprint(SAMPLES.at[wildcards.slide, "path"])


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


FAILURES_DIR = "results/cohort/failures"
RUN_STARTED = time.time()  # failure records older than this are not this run's
QC_INPUTS = {
    "qc": "results/slides/{slide}/tissue/qc.json",
    "info": "results/slides/{slide}/info.json",
    "grid": "results/slides/{slide}/grid.parquet",
}


def _job_states(jobs):
    """Snakemake jobs (group jobs unpacked) as bcpath.workflow.FinishedJob records."""
    states = []
    for job in jobs:
        for one in (job.jobs if job.is_group() else [job]):
            states.append(
                FinishedJob(
                    one.rule.name,
                    {k: str(v) for k, v in one.wildcards_dict.items()},
                    str(one.log[0]) if len(one.log) else None,
                    getattr(one.params, "failure_record", None),
                )
            )
    return states


def _write_partial_cohort_tables(rows):
    """Cohort tables from the slides that succeeded, failed ones listed (a failed run only)."""
    from bcpath.pipeline import partial_qc_table

    failed = {}
    for row in rows:
        failed.setdefault(row["slide_id"], row["error"])
    if any(not all(os.path.exists(p.format(slide=s)) for p in QC_INPUTS.values()) for s in WSI_SLIDES):
        table = partial_qc_table(WSI_SLIDES, QC_INPUTS, failed)
        inputs = [p.format(slide=s) for s in WSI_SLIDES for p in QC_INPUTS.values()]
        write_partial_table(table, "results/cohort/qc.csv", inputs)
        logger.warning(f"bcpath: results/cohort/qc.csv lists {int((table.status == 'ok').sum())} of {len(table)} slide(s); the others failed or did not run")
    if IHC_SLIDES and any(not os.path.exists(IHC_SCORES.format(slide=s)) for s in IHC_SLIDES):
        from bcpath.ihc.cores import partial_hscore_table

        sheets = {s: optional_value(SAMPLES, s, "core_scores") for s in IHC_SLIDES}
        table = partial_hscore_table(IHC_SLIDES, IHC_SCORES, sheets, failed)
        write_partial_table(table, "results/cohort/hscore.csv", [IHC_SCORES.format(slide=s) for s in IHC_SLIDES])
        logger.warning("bcpath: results/cohort/hscore.csv lists the IHC slides that were scored (no RAM-CNN); the others are marked failed or not_run")


def write_failures_report(failed_run=False):
    """onsuccess/onerror: failures.csv from the jobs' own records and Snakemake's job states
    (a job killed by SIGKILL writes no record), a one-line summary per failure, and on a failed
    run the cohort tables of the slides that succeeded."""
    finished = getattr(workflow.dag, "_finished", ())
    clear_finished_jobs(_job_states(finished), FAILURES_DIR)
    unwritten = record_failed_jobs(_job_states(getattr(workflow.scheduler, "failed", ())), FAILURES_DIR, RUN_STARTED)
    rows = collect_failures(FAILURES_DIR, "results/cohort/failures.csv", SLIDES, unwritten)
    if rows:
        logger.warning(f"bcpath: {len(rows)} step(s) failed; see results/cohort/failures.csv")
        for row in rows:
            logger.warning(f"bcpath: {row['error']}")
    if failed_run:
        try:
            _write_partial_cohort_tables(rows)
        except Exception as error:  # never hide the run's own failures behind this one
            logger.error(f"bcpath: could not write the partial cohort tables: {type(error).__name__}: {error}")
