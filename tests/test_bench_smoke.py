"""Smoke test of the benchmarks in bench/: they run end to end in --quick mode.

No timing is asserted (the machine may be busy); only that each script finishes, prints
its table and ratio lines, and writes valid JSON. Both together take about 20-30 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"

pytest.importorskip("openslide")
pytest.importorskip("tifffile")


def _run(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out_json = tmp_path / f"{Path(script).stem}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--tmp", str(tmp_path), "--json", str(out_json), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(out_json.read_text())


def test_tiling_benchmark_quick(tmp_path):
    stdout, result = _run("tiling.py", tmp_path, "--no-native")
    assert "speed-up ours/naive:" in stdout
    assert "fraction of decode limit:" in stdout
    assert "tile agreement ours vs naive" in stdout
    methods = {m["method"] for m in result["methods"]}
    assert {"ours", "naive", "decode"} <= methods
    assert result["meta"]["n_tiles"] > 0
    assert result["speedup_ours_vs_naive"] > 0
    # Same grid, same store: both wrote the same chunk files, pixels close.
    assert result["same_chunk_files"] is True
    assert result["agreement"]["mean_abs"] < 10


def test_tiling_memory_benchmark_quick(tmp_path):
    stdout, result = _run("tiling_memory.py", tmp_path)
    assert "tile step peak RSS:" in stdout and "ratio" in stdout
    assert "overall:" in stdout
    assert result["tile_peak_ratio"] is not None
    for case in result["cases"]:
        assert set(case["steps"]) == {"baseline", "inspect", "tissue", "tile"}
        assert case["steps"]["tile"]["n_tiles"] > 0
        assert case["steps"]["tile"]["peak_rss_mb"] > 0
    # Temporary files are cleaned up.
    assert not any(p.name.startswith("bcpath-bench-") for p in tmp_path.iterdir())


def test_inference_benchmark_quick(tmp_path):
    stdout, result = _run("inference.py", tmp_path)
    assert "ratio full/model-only:" in stdout and "peak RSS:" in stdout
    assert result["n_patches"] > 0 and result["ratio"] > 0
    assert set(result["patches_per_s"]) == {"full path", "model only"}
    assert not any(p.name.startswith("bcpath-bench-") for p in tmp_path.iterdir())


def test_nuclei_benchmark_quick(tmp_path):
    stdout, result = _run("nuclei.py", tmp_path)
    assert "ratio slide path/segmenter only:" in stdout and "peak RSS:" in stdout
    assert result["n_tiles"] > 0 and result["n_nuclei"] > 0 and result["ratio"] > 0
    assert set(result["mp_per_s"]) == {"slide path", "segmenter only"}
    assert not any(p.name.startswith("bcpath-bench-") for p in tmp_path.iterdir())


def test_step_rss_builds_the_rules_jobs(tmp_path):
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("step_rss", BENCH / "step_rss.py")
    step_rss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_rss)
    slide = tmp_path / "run" / "results" / "slides" / "s1"
    slide.mkdir(parents=True)
    (slide / "info.json").write_text('{"path": "slides/s1.tiff"}')
    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    target, inputs, outputs, params = step_rss._job("segment_nuclei", tmp_path / "run", "s1", tmp_path / "out", config)
    assert target.endswith(":segment_nuclei_step") and inputs["slide"] == str(tmp_path / "run" / "slides" / "s1.tiff")
    assert set(outputs) == {"labels", "geojson", "features"} and params["nuclei"]["model"] == config["nuclei"]["model"]
    target, inputs, outputs, params = step_rss._job("detect_mitoses", tmp_path / "run", "s1", tmp_path / "out", config)
    assert target.endswith(":detect_mitoses_step") and set(outputs) == {"mitoses", "geojson", "hotspot", "features"}
    assert params["detection"] == config["proliferation"]["detection"] and "train_json" in inputs
    target, inputs, outputs, params = step_rss._job("detect_tissue", tmp_path / "run", "s1", tmp_path / "out", config)
    assert target.endswith(":detect_tissue_step") and set(outputs) == {"mask", "geojson", "thumbnail", "qc"}
    assert params["tissue"] == config["tissue"] and params["qc"] == config["qc"] and not params["user_mask"]
    target, inputs, outputs, params = step_rss._job("tile_slide", tmp_path / "run", "s1", tmp_path / "out", config)
    assert target.endswith(":tile_slide_step") and set(outputs) == {"zarr", "grid", "h5"}
    assert {"mask", "qc"} <= set(inputs) and params["tiling"] == config["tiling"] and step_rss.STEPS["tile_slide"] == 2
