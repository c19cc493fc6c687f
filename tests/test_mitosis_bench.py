"""Smoke test of bench/mitosis.py in --quick mode (no timing asserted; the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("openslide")


def test_mitosis_benchmark_quick(tmp_path):
    out_json = tmp_path / "mitosis.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "mitosis.py"), "--quick", "--tmp", str(tmp_path), "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )
    assert proc.returncode == 0, f"bench/mitosis.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "ratio detection/classifier only:" in proc.stdout and "peak RSS:" in proc.stdout
    result = json.loads(out_json.read_text())
    assert result["n_candidates"] > 0 and result["ratio"] > 0 and result["peak_rss_mb"] > 0
    assert set(result["mp_per_s"]) == {"detection", "classifier only"}
    assert not any(p.name.startswith("bcpath-bench-") for p in tmp_path.iterdir())
