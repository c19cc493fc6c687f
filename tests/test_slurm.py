"""The demo DAG on a real SLURM cluster gives the same outputs as a local run.

Needs a running cluster with a partition `debug` (CI starts a single-node one with
`.ci/slurm/start.sh`, as root). Without one the tests are skipped; under CI=true they fail.

The DAG (make_demo_cohort → inspect_slide → detect_tissue → tile_slide → aggregate_qc on the
8-slide demo cohort, the smallest the config schema allows; ER/PR/HER2, nuclei and the IHC TMA
are switched off to keep the test within CI's time, test_workflow_demo covers them) runs once with
`--workflow-profile none --profile profiles/ci-slurm` (so profiles/default does not take
over) and, at the same time, once locally with `--cores 2` in another folder. Then:

- every rule log says "SLURM job N" and each N is a job SLURM knows (squeue/scontrol,
  MinJobAge=600 keeps finished jobs there), COMPLETED, with as many CPUs as the rule's
  threads, the job's mem_mb, in the partition and working directory the profile gives;
- SLURM's own per-job logs are under .snakemake/slurm_logs/rule_<rule>/;
- the outputs equal the local run's: qc.csv (numbers to 1e-9), grid.parquet, tiles.zarr
  arrays and attributes, mask.png and the demo cohort byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.workflow_helpers import REPO_ROOT, files_under, run_snakemake

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    # Snakemake's .snakemake_timestamp inside the directory output tiles.zarr
    pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp:UserWarning"),
]

PROFILE = REPO_ROOT / "profiles" / "ci-slurm"
PARTITION = "debug"  # must match default-resources: slurm_partition in PROFILE
SLURM_TOOLS = ("sbatch", "sinfo", "squeue", "scontrol")
USABLE_NODE_STATES = {"idle", "mix", "alloc", "comp"}  # sinfo %t; "idle*" = not responding
FOUNDATION_ONLY = (
    "--config", "demo={n_slides: 8, tma: false}", "erpr={enabled: false}", "nuclei={enabled: false}", "proliferation={enabled: false}",
)
PER_SLIDE_RULES = ("inspect_slide", "detect_tissue", "tile_slide")
RULES = ("make_demo_cohort", *PER_SLIDE_RULES, "aggregate_qc")
RUN_TIMEOUT_S = 900


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _cluster_problem() -> str | None:
    """Why no SLURM cluster can take jobs here, or None when one can."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"SLURM commands not on PATH: {', '.join(missing)}"
    try:
        answer = subprocess.run(
            ["sinfo", "--noheader", "--partition", PARTITION, "--format", "%t"],
            capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s (slurmctld down?)"
    if answer.returncode != 0:
        return f"sinfo failed: {(answer.stderr or answer.stdout).strip()}"
    states = answer.stdout.split()
    if not states:
        return f"no partition '{PARTITION}' (sinfo lists no node in it)"
    if not USABLE_NODE_STATES & set(states):
        return f"no usable node in partition '{PARTITION}' (node states: {', '.join(states)})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem:
        message = f"no SLURM cluster: {problem}. Start one with `sudo bash .ci/slurm/start.sh`."
        if _under_ci():
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Runs:
    slurm: Path
    local: Path
    stdout: str
    stderr: str
    # SLURM's view of every job of the run, read as soon as the run ended:
    scontrol: dict[str, dict[str, str]] = field(default_factory=dict)  # job id → fields
    squeue: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id → (state, name, partition)


def _scontrol_fields(text: str) -> dict[str, str]:
    """`scontrol show job N` → {Key: value}; values have no spaces except Comment's tail."""
    return dict(re.findall(r"(\S+?)=(\S*)", text))


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory) -> Runs:
    slurm_work = tmp_path_factory.mktemp("slurm_run")
    local_work = tmp_path_factory.mktemp("local_run")
    # The local run goes alongside: the SLURM run mostly waits for job starts and polls.
    with ThreadPoolExecutor(max_workers=1) as pool:
        local = pool.submit(run_snakemake, local_work, "--cores", "2", *FOUNDATION_ONLY, timeout=RUN_TIMEOUT_S)
        slurm = run_snakemake(
            slurm_work, "--workflow-profile", "none", "--profile", str(PROFILE), *FOUNDATION_ONLY,
            timeout=RUN_TIMEOUT_S,
        )
        found = Runs(slurm_work, local_work, slurm.stdout, slurm.stderr)
        job_ids = re.findall(r"submitted with SLURM jobid (\d+)", slurm.stderr)
        # Read SLURM's records at once (they expire MinJobAge = 600 s after each job ends).
        for job_id in job_ids:
            shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60)
            found.scontrol[job_id] = _scontrol_fields(shown.stdout) if shown.returncode == 0 else {}
        if job_ids:
            queue = subprocess.run(
                ["squeue", "--noheader", "--states=all", "--format=%i|%T|%j|%P", "--jobs", ",".join(job_ids)],
                capture_output=True, text=True, timeout=60,
            )
            for line in queue.stdout.splitlines():
                job_id, state, name, partition = line.strip().split("|")
                found.squeue[job_id] = (state, name, partition)
        local_result = local.result()
    assert slurm.returncode == 0, "SLURM run failed:\n" + slurm.stderr[-8000:]
    assert local_result.returncode == 0, "local run failed:\n" + local_result.stderr[-5000:]
    return found


def _slides(work: Path) -> list[str]:
    return sorted(pd.read_csv(work / "results/demo_cohort/samples.tsv", sep="\t").slide_id)


def _rule_logs(work: Path) -> dict[tuple[str, str], Path]:
    """(rule, slide or '') → rule log path, for every job of the demo DAG."""
    logs = {("make_demo_cohort", ""): work / "logs/make_demo_cohort/demo.log"}
    for rule in PER_SLIDE_RULES:
        for slide in _slides(work):
            logs[(rule, slide)] = work / "logs" / rule / f"{slide}.log"
    logs[("aggregate_qc", "")] = work / "logs/aggregate_qc/cohort.log"
    return logs


def _where(log: Path) -> tuple[str, int]:
    """The SLURM job id and thread count a rule log reports (bcpath.workflow.run_rule)."""
    text = log.read_text()
    found = re.findall(r": SLURM job (\d+) on \S+, (\d+) thread\(s\)", text)
    assert len(found) == 1, f"{log} does not name exactly one SLURM job:\n{text[:2000]}"
    assert "local process" not in text, log
    return found[0][0], int(found[0][1])


def test_slurm_run_used_squeue_for_job_states(runs):
    output = runs.stdout + runs.stderr
    assert "Using profile" in output and str(PROFILE) in output
    assert "workflow specific profile" not in output  # profiles/default stayed out
    assert "Falling back to 'sacct'" not in output


def test_every_rule_ran_as_its_own_slurm_job(runs):
    logs = _rule_logs(runs.slurm)
    assert len(logs) == 2 + len(PER_SLIDE_RULES) * len(_slides(runs.slurm))
    job_ids = [_where(log)[0] for log in logs.values()]
    assert len(set(job_ids)) == len(job_ids), "two steps claim the same SLURM job"
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", runs.stderr)
    assert sorted(submitted) == sorted(job_ids)
    assert set(job_ids) <= set(runs.scontrol)
    # SLURM's own logs, one folder per rule: .snakemake/slurm_logs/rule_<rule>/
    slurm_logs = runs.slurm / ".snakemake" / "slurm_logs"
    assert {path.name for path in slurm_logs.iterdir()} == {f"rule_{rule}" for rule in RULES}


def test_slurm_knows_every_job_as_completed_with_the_rule_resources(runs):
    run_ids = re.findall(r"SLURM run ID: (\S+)", runs.stderr)
    assert len(run_ids) == 1, "no 'SLURM run ID' in the log"
    slurm_logs = runs.slurm / ".snakemake" / "slurm_logs"
    for (rule, slide), log in _rule_logs(runs.slurm).items():
        job_id, threads = _where(log)
        job = runs.scontrol[job_id]
        assert job, f"scontrol does not know SLURM job {job_id} ({rule} {slide})"
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (rule, slide, job)
        assert job["JobName"] == run_ids[0]
        assert job["Partition"] == PARTITION
        assert Path(job["WorkDir"]) == runs.slurm
        # cpus_per_task = threads: SLURM gave the job as many CPUs as the rule saw threads
        assert int(job["NumCPUs"]) == threads, (rule, slide, job["NumCPUs"], threads)
        # SLURM's log of the job: .snakemake/slurm_logs/rule_<rule>/[<slide>/]<id>.log
        slurm_log = Path(job["StdOut"])
        expected = slurm_logs / f"rule_{rule}" / (slide or "") / f"{job_id}.log"
        assert slurm_log == expected and slurm_log.is_file(), (slurm_log, expected)
        text = slurm_log.read_text()
        assert f"rule {rule}:" in text and "1 of 1 steps (100%) done" in text, slurm_log
        mem_mb = re.search(r"\bmem_mb=(\d+)", text)
        assert mem_mb and job["MinMemoryNode"] == f"{mem_mb.group(1)}M", (rule, job["MinMemoryNode"])
        assert runs.squeue[job_id] == ("COMPLETED", run_ids[0], PARTITION)


def test_same_files_as_the_local_run(runs):
    def outputs(work: Path) -> set[str]:
        return {path for path in files_under(work) if path.split("/")[0] in {"results", "benchmarks"}}

    assert outputs(runs.slurm) == outputs(runs.local)
    assert pd.read_csv(runs.slurm / "results/cohort/failures.csv").empty


def test_demo_cohort_is_byte_identical(runs):
    folder = Path("results/demo_cohort")
    paths = sorted(p.relative_to(runs.local) for p in (runs.local / folder).rglob("*") if p.is_file())
    assert len(paths) > 8
    for path in paths:
        assert _sha256(runs.slurm / path) == _sha256(runs.local / path), path


def test_qc_table_matches_the_local_run(runs):
    slurm = pd.read_csv(runs.slurm / "results/cohort/qc.csv").sort_values("slide_id", ignore_index=True)
    local = pd.read_csv(runs.local / "results/cohort/qc.csv").sort_values("slide_id", ignore_index=True)
    assert list(slurm.columns) == list(local.columns)
    assert list(slurm.slide_id) == _slides(runs.local)
    numeric = local.select_dtypes("number").columns
    assert {"tissue_fraction", "blur_score", "n_tiles"} <= set(numeric)
    for column in numeric:
        np.testing.assert_allclose(slurm[column], local[column], rtol=0, atol=1e-9, err_msg=column)
    others = [c for c in local.columns if c not in numeric]
    pd.testing.assert_frame_equal(slurm[others].fillna(""), local[others].fillna(""))


def test_grids_tiles_and_masks_match_the_local_run(runs):
    import zarr

    for slide in _slides(runs.local):
        folder = Path("results/slides") / slide
        pd.testing.assert_frame_equal(
            pd.read_parquet(runs.slurm / folder / "grid.parquet"),
            pd.read_parquet(runs.local / folder / "grid.parquet"),
            check_exact=True,
        )
        assert (runs.slurm / folder / "tissue/mask.png").read_bytes() == (
            runs.local / folder / "tissue/mask.png"
        ).read_bytes(), slide
        groups = [zarr.open_group(str(work / folder / "tiles.zarr"), mode="r") for work in (runs.slurm, runs.local)]
        assert groups[0].attrs.asdict() == groups[1].attrs.asdict(), slide
        names = sorted(groups[1].array_keys())
        assert names and sorted(groups[0].array_keys()) == names, slide
        for name in names:
            ours, theirs = groups[0][name], groups[1][name]
            assert (ours.shape, ours.dtype, ours.chunks) == (theirs.shape, theirs.dtype, theirs.chunks)
            np.testing.assert_array_equal(ours[...], theirs[...], err_msg=f"{slide} tiles.zarr/{name}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
