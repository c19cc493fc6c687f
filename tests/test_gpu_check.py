"""bench/gpu_check.sh cannot rot: its CPU dry run goes through every section.

The dry run prepares a tiny demo slide (tiles.zarr at 2 µm/px, H&E regions at 0.5 and
0.25 µm/px), then runs each section in its own process exactly as on the GPU machine, with
ResNet-18 on 64 px patches instead of Inception-V3 on 512 px. No speed is asserted (a dry
run's numbers mean nothing); what is checked is that every section ran and reported, that
the stage-1 projection follows from the measured rate, and that the README table has a row
per measure. About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check"
    proc = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, f"gpu_check.sh --dry-run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    sections = report["sections"]
    expected = {"er_inference", "er_inference_dense", "stage1_real_size", "er_training", "nuclei", "mitosis"}
    assert expected <= set(sections), sorted(sections)
    errors = {name: s["error"] for name, s in sections.items() if "error" in s}
    assert not errors, errors

    er = sections["er_inference"]
    assert er["n_patches"] > 0 and er["patches_per_s"]["full path"] > 0 and er["patches_per_s"]["model only"] > 0
    assert abs(er["ratio"] - er["patches_per_s"]["full path"] / er["patches_per_s"]["model only"]) < 1e-9
    stage1 = sections["stage1_real_size"]
    prepared = report["prepared"]
    expected_patches = prepared["slide_patches"] * 300.0 / prepared["slide_area_mm2"]
    assert abs(stage1["seconds"] - expected_patches / er["patches_per_s"]["full path"]) < 1e-6 * stage1["seconds"]
    assert sections["er_training"]["patches_per_s"]["data path"] > 0
    assert sections["nuclei"]["n_nuclei"] > 0, "the shipped nuclei model found no nuclei in an H&E region"
    assert sections["mitosis"]["n_candidates"] > 0

    table = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in table
    for measure in ("patches/s full path", "ratio full / model only", "stage 1 of the real-size slide",
                    "patches/s with the DataLoader", "MP/s predict_instances", "MP/s detection"):
        assert measure in table, measure
