"""run_rule ends a job's log with its exact peak RSS; bench/wsi_scale.py reads it back."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wsi_scale():
    spec = importlib.util.spec_from_file_location("wsi_scale", REPO / "bench" / "wsi_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_job_log_ends_with_its_peak_rss_and_the_benchmark_reads_it(tmp_path):
    log = tmp_path / "logs" / "demo_rule" / "S1.log"
    log.parent.mkdir(parents=True)
    # A step that holds 300 MB for a moment: far less than Snakemake's 30 s sampling would see.
    script = textwrap.dedent(f"""
        import types, numpy as np
        from bcpath.workflow import run_rule

        class Wildcards(dict):
            pass

        def step(**_):
            block = np.ones(300 * 2**20, dtype=np.uint8)
            assert block.sum() == 300 * 2**20

        job = types.SimpleNamespace(log=[{str(log)!r}], rule="demo_rule", wildcards=Wildcards(slide="S1"),
                                    params=types.SimpleNamespace(failure_record=None), input=[], output=[], threads=1)
        run_rule(job, step)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    peak = _wsi_scale().logged_peak_rss(tmp_path / "logs" / "demo_rule" / "S1", "S1")
    assert peak is not None and 300 <= peak < 1500, log.read_text()
    assert _wsi_scale().logged_peak_rss(tmp_path / "logs" / "demo_rule" / "S1", "S2") is None  # another slide's line
    assert _wsi_scale().logged_peak_rss(tmp_path / "logs" / "missing" / "S1", "S1") is None
