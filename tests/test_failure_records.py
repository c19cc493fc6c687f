"""Failure records from Snakemake's job states, and cohort tables of the slides that succeeded."""

from __future__ import annotations

import json
import os
import shutil
import time

import pandas as pd
import pytest

from bcpath.workflow import (
    FinishedJob,
    clear_finished_jobs,
    collect_failures,
    record_failed_jobs,
    write_failure_record,
    write_partial_table,
)


def test_a_killed_job_without_a_record_is_listed(tmp_path):
    records = tmp_path / "failures"
    started = time.time()
    # tile_slide of S1 was SIGKILLed (no record); inspect_slide of S2 wrote its own record in this run.
    write_failure_record(records / "S2.inspect_slide.json", "S2", "inspect_slide", "slide S2: is empty (0 bytes); copy it again", "logs/inspect_slide/S2.log")
    jobs = [
        FinishedJob("tile_slide", {"slide": "S1"}, "logs/tile_slide/S1.log", str(records / "S1.tile_slide.json")),
        FinishedJob("inspect_slide", {"slide": "S2"}, "logs/inspect_slide/S2.log", str(records / "S2.inspect_slide.json")),
        FinishedJob("train_ramcnn", {}, "logs/train_ramcnn/cohort.log", None),
    ]
    assert record_failed_jobs(jobs, records, started) == []
    rows = collect_failures(records, tmp_path / "failures.csv", ["S1", "S2"])
    by_rule = {row["rule"]: row for row in rows}
    assert set(by_rule) == {"tile_slide", "inspect_slide", "train_ramcnn"}
    assert by_rule["tile_slide"]["slide_id"] == "S1"
    assert by_rule["tile_slide"]["error"].startswith("slide S1: tile_slide stopped without reporting an error: the job was killed")
    assert "logs/tile_slide/S1.log" in by_rule["tile_slide"]["error"]
    assert by_rule["inspect_slide"]["error"] == "slide S2: is empty (0 bytes); copy it again"  # the job's own message is kept
    assert by_rule["train_ramcnn"]["slide_id"] == "cohort"
    assert len(pd.read_csv(tmp_path / "failures.csv")) == 3


def test_a_stale_record_of_an_earlier_run_is_replaced_and_a_success_clears_it(tmp_path):
    records = tmp_path / "failures"
    write_failure_record(records / "S1.tile_slide.json", "S1", "tile_slide", "slide S1: old message", None)
    old = time.time() - 3600
    os.utime(records / "S1.tile_slide.json", (old, old))
    job = FinishedJob("tile_slide", {"slide": "S1"}, "logs/tile_slide/S1.log", str(records / "S1.tile_slide.json"))
    record_failed_jobs([job], records, time.time() - 1)
    assert "was killed" in json.loads((records / "S1.tile_slide.json").read_text())["error"]
    clear_finished_jobs([job], records)
    assert collect_failures(records, tmp_path / "failures.csv", ["S1"]) == []


def test_failures_are_listed_when_no_record_can_be_written(tmp_path):
    blocked = tmp_path / "failures"
    blocked.write_text("a file where the records folder should be (as good as a full disk)")
    job = FinishedJob("detect_tissue", {"slide": "S1"}, "logs/detect_tissue/S1.log", str(blocked / "S1.detect_tissue.json"))
    unwritten = record_failed_jobs([job], blocked, time.time())
    rows = collect_failures(blocked, tmp_path / "failures.csv", ["S1"], unwritten)
    assert [(r["slide_id"], r["rule"]) for r in rows] == [("S1", "detect_tissue")]


def _slide_outputs(root, slide, n_tiles):
    folder = root / slide
    (folder / "tissue").mkdir(parents=True)
    (folder / "tissue/qc.json").write_text(json.dumps({
        "tissue_area_mm2": 1.5, "tissue_fraction": 0.4, "n_tissue_pieces": 2, "blur_score": 50.0,
        "pen_fraction": 0.0, "background_brightness": 240.0, "flags": [], "mask_mpp": 8.0,
    }))
    (folder / "info.json").write_text(json.dumps({"slide_id": slide, "reader": "openslide", "mpp": 0.5, "mpp_source": "file", "dimensions": [1000, 800]}))
    pd.DataFrame({"tile_id": range(n_tiles)}).to_parquet(folder / "grid.parquet")


def test_partial_qc_table_lists_succeeded_and_failed_slides(tmp_path):
    from bcpath.pipeline import QC_COLUMNS, partial_qc_table

    _slide_outputs(tmp_path, "good", 3)
    patterns = {"qc": f"{tmp_path}/{{slide}}/tissue/qc.json", "info": f"{tmp_path}/{{slide}}/info.json", "grid": f"{tmp_path}/{{slide}}/grid.parquet"}
    table = partial_qc_table(["bad", "good", "later"], patterns, {"bad": "slide bad: is empty (0 bytes); copy it again"})
    assert tuple(table.columns) == QC_COLUMNS
    assert list(table.slide_id) == ["bad", "good", "later"]
    assert list(table.status) == ["failed", "ok", "not_run"]
    assert table.at[0, "error"] == "slide bad: is empty (0 bytes); copy it again"
    assert table.at[1, "n_tiles"] == 3 and table.at[1, "width"] == 1000
    # A partial table is dated before its inputs, so Snakemake's rule reruns once it can.
    out = tmp_path / "qc.csv"
    write_partial_table(table, out, [patterns["qc"].format(slide="good")])
    assert out.stat().st_mtime < (tmp_path / "good/tissue/qc.json").stat().st_mtime
    assert pd.read_csv(out)["n_tiles"].tolist()[1] == 3


def _running(pid: int) -> bool:
    """True while pid is a live process (a killed child left unreaped by PID 1 is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_worker_processes_die_with_a_killed_job(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import subprocess, time\n"
        "from bcpath.workflow import guard_job_processes\n"
        "assert guard_job_processes()\n"
        "worker = subprocess.Popen(['sleep', '120'])\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(job.stdout.readline())
    assert _running(worker)
    job.send_signal(signal.SIGKILL)  # as the out-of-memory killer does
    job.wait()
    deadline = time.time() + 5
    while _running(worker) and time.time() < deadline:
        time.sleep(0.05)
    assert not _running(worker)


def test_a_job_that_finishes_leaves_its_exit_status(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text("import sys\nfrom bcpath.workflow import guard_job_processes\nguard_job_processes()\nsys.exit(3)\n")
    assert subprocess.run([sys.executable, str(script)], timeout=60).returncode == 3


def test_sheet_mpp_that_disagrees_with_the_file_is_flagged_in_qc(require_shared, tmp_path):
    from bcpath.pipeline import cohort_qc_table, inspect_slide

    info = inspect_slide(require_shared("wsi/CMU-1-Small-Region.svs"), "cmu", tmp_path / "cmu/info.json", mpp=0.25)
    assert info["mpp"] == pytest.approx(0.499) and info["mpp_source"] == "file" and info["mpp_sheet"] == 0.25
    _slide_outputs(tmp_path, "agrees", 1)
    (tmp_path / "cmu/tissue").mkdir()
    shutil.copy(tmp_path / "agrees/tissue/qc.json", tmp_path / "cmu/tissue/qc.json")
    shutil.copy(tmp_path / "agrees/grid.parquet", tmp_path / "cmu/grid.parquet")
    table = cohort_qc_table(*([str(tmp_path / s / f) for s in ("cmu", "agrees")] for f in ("tissue/qc.json", "info.json", "grid.parquet")))
    assert list(table["flags"]) == ["mpp_mismatch", ""]
    assert table.at[0, "mpp_sheet"] == 0.25 and pd.isna(table.at[1, "mpp_sheet"])
