"""Fault injection through the whole workflow: bad slides, killed jobs, a killed Snakemake,
config typos and file modes. Whatever goes wrong, the cohort tables are written from the slides
that succeeded, every failure is in failures.csv with its message, and a rerun after a kill
gives the same bytes as an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow_helpers import (
    REPO_ROOT,
    SNAKEMAKE,
    files_under,
    run_snakemake,
    write_grayscale_slide,
)

pytestmark = pytest.mark.slow

FOUNDATION = ("nuclei={enabled: false}",)  # no ER/PR/HER2 either: a plain folder cannot train them
BAD = {
    "empty": "is empty (0 bytes)",
    "random": "not a readable slide",
    "truncated": "truncated",
    "gray": "grayscale slide",
    "no_mpp": "no µm/px in the file",
}


def _mixed_folder(root: Path) -> Path:
    from tests.conftest import _require_shared

    wsi = _require_shared("wsi")
    folder = root / "slides"
    folder.mkdir()
    shutil.copy(wsi / "CMU-1-Small-Region.svs", folder / "good.svs")
    (folder / "empty.svs").write_bytes(b"")
    (folder / "random.svs").write_bytes(os.urandom(50_000))
    (folder / "truncated.svs").write_bytes((wsi / "CMU-1-Small-Region.svs").read_bytes()[:1_000_000])
    write_grayscale_slide(wsi / "CMU-1-Small-Region.svs", folder / "gray.tif")
    shutil.copy(wsi / "tcga-cr-7395-01a-01-ts1.svs", folder / "no_mpp.svs")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    folder = _mixed_folder(root)
    work = root / "work"
    work.mkdir()
    old = os.umask(0o022)
    try:
        result = run_snakemake(work, "--cores", "2", "--config", f"cohort={folder}", *FOUNDATION)
    finally:
        os.umask(old)
    return work, result


def test_mixed_folder_ends_with_qc_of_the_good_slide_and_every_failure_listed(mixed):
    work, result = mixed
    assert result.returncode != 0
    qc = pd.read_csv(work / "results/cohort/qc.csv").set_index("slide_id")
    assert set(qc.index) == {"good", *BAD}
    assert qc.at["good", "status"] == "ok" and qc.at["good", "n_tiles"] >= 1
    assert qc.at["good", "tissue_area_mm2"] == pytest.approx(0.61, abs=0.1)
    failures = pd.read_csv(work / "results/cohort/failures.csv").set_index("slide_id")
    assert set(failures.index) == set(BAD)
    for slide, text in BAD.items():
        assert qc.at[slide, "status"] == "failed"
        assert text in failures.at[slide, "error"] and failures.at[slide, "error"].startswith(f"slide {slide}: ")
        assert qc.at[slide, "error"] == failures.at[slide, "error"]
    assert failures.at["gray", "rule"] == "detect_tissue"
    # Each message reaches the console once, in the summary at the end.
    console = result.stdout + result.stderr
    assert f"bcpath: {len(BAD)} step(s) failed" in console
    for slide in BAD:
        assert console.count(f"bcpath: slide {slide}: ") == 1, slide


def test_outputs_are_group_and_other_readable_under_umask_022(mixed):
    work, _ = mixed
    paths = [work / "results" / p for p in files_under(work / "results")]
    paths += [p for p in (work / "results").rglob("*") if p.is_dir()]
    assert len(paths) > 20
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path} has mode {oct(mode)}"


def _digests(work: Path) -> dict[str, str]:
    """sha256 of every result file that should not depend on how the run went."""
    return {
        path: hashlib.sha256((work / "results" / path).read_bytes()).hexdigest()
        for path in sorted(files_under(work / "results"))
        if not path.startswith("cohort/failures")
    }


def _process_running(marker: str, timeout: float = 120) -> int:
    """pid of the first process whose command line contains ``marker`` (waits for it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmdline and state not in ("Z", "X"):
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no process running {marker} within {timeout} s")


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _start(work: Path, *args: str) -> subprocess.Popen[str]:
    command = [*SNAKEMAKE, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(REPO_ROOT / "config.yaml"), *args]
    return subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def good_only(tmp_path_factory):
    from tests.conftest import _require_shared

    root = tmp_path_factory.mktemp("good_only")
    folder = root / "slides"
    folder.mkdir()
    shutil.copy(_require_shared("wsi/CMU-1-Small-Region.svs"), folder / "good.svs")
    args = ("--cores", "2", "--config", f"cohort={folder}", *FOUNDATION)
    reference = root / "reference"
    reference.mkdir()
    result = run_snakemake(reference, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, args, _digests(reference)


def test_sigkill_of_a_job_is_listed_and_a_rerun_gives_identical_outputs(good_only):
    root, args, reference = good_only
    work = root / "job_killed"
    work.mkdir()
    run = _start(work, *args)
    job = _process_running(f"{work}/.snakemake/scripts/")
    os.kill(job, signal.SIGKILL)  # as the out-of-memory killer does: no chance to write a record
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0
    failures = pd.read_csv(work / "results/cohort/failures.csv")
    assert len(failures) == 1 and failures.at[0, "slide_id"] == "good"
    assert "was killed" in failures.at[0, "error"] and failures.at[0, "log"].startswith("logs/")
    assert "bcpath: 1 step(s) failed" in output
    result = run_snakemake(work, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _digests(work) == reference
    assert len(pd.read_csv(work / "results/cohort/failures.csv")) == 0


def test_sigkill_of_snakemake_then_unlock_and_rerun_gives_identical_outputs(good_only):
    root, args, reference = good_only
    work = root / "snakemake_killed"
    work.mkdir()
    run = _start(work, *args)
    job = _process_running(f"{work}/.snakemake/scripts/")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    deadline = time.time() + 10
    while _alive(job) and time.time() < deadline:  # the job dies with Snakemake
        time.sleep(0.05)
    assert not _alive(job)
    result = run_snakemake(work, *args)
    assert result.returncode != 0 and "cannot be locked" in result.stdout + result.stderr  # README: --unlock
    assert run_snakemake(work, "--unlock", *args).returncode == 0
    result = run_snakemake(work, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _digests(work) == reference


def test_a_touched_slide_is_not_recomputed_but_a_changed_one_is(good_only):
    root, args, _ = good_only
    reference, slide = root / "reference", root / "slides/good.svs"
    os.utime(slide)  # content unchanged, newer than every output (a copy that lost its times)
    result = run_snakemake(reference, "-n", *args)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-2000:]
    with open(slide, "ab") as handle:  # a changed file (here: one byte longer)
        handle.write(b"\0")
    result = run_snakemake(reference, "-n", *args)
    assert result.returncode == 0 and "inspect_slide" in result.stdout


def test_killed_demo_job_leaves_no_workers_and_no_half_built_cohort(tmp_path):
    run = _start(tmp_path, "--cores", "2", "--config", "demo={n_slides: 8, tma: false}", *FOUNDATION, "--", "results/demo_cohort/samples.tsv")
    _process_running("bcpath.demo._worker")
    job = _process_running(f"{tmp_path}/.snakemake/scripts/")
    time.sleep(1.0)
    os.kill(job, signal.SIGKILL)
    output, _ = run.communicate(timeout=120)
    assert run.returncode != 0
    time.sleep(2.0)  # a surviving worker would write a slide within this time
    workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _alive(int(p.name))
               and b"bcpath.demo._worker" in (p / "cmdline").read_bytes() and str(tmp_path).encode() in (p / "cmdline").read_bytes()]
    assert workers == []
    left = sorted(files_under(tmp_path / "results")) if (tmp_path / "results").exists() else []
    assert [p for p in left if p.startswith("demo_cohort/")] == []
    failures = pd.read_csv(tmp_path / "results/cohort/failures.csv")
    assert list(failures.rule) == ["make_demo_cohort"] and "was killed" in failures.at[0, "error"]
    assert "bcpath: 1 step(s) failed" in output


@pytest.mark.parametrize(
    "config, message",
    [
        ("tiling={mppp: 1}", "config: unknown key tiling.mppp (did you mean tiling.mpp?)"),
        ("tilling={mpp: 1}", "config: unknown key tilling (did you mean tiling?)"),
        ("tiling={tile_px: 100000000}", "config tiling.tile_px: 100000000 is not allowed; allowed: integer ≥ 16 and ≤ 8192"),
    ],
)
def test_config_typo_stops_before_any_job_with_one_line(tmp_path, config, message):
    result = run_snakemake(tmp_path, "--cores", "2", "--config", "demo={n_slides: 8, tma: false}", config)
    assert result.returncode != 0
    console = result.stdout + result.stderr
    assert console.count(message) == 1 and "TypeError" not in console
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
