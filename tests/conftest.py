"""Shared fixtures. Real data lives in ../shared/data beside the checkout.

Under CI (CI=true) a missing ../shared/data is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BCPATH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require_shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"real test data missing: {path} (expected ../shared/data beside the checkout)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data() -> Path:
    """Root of ../shared/data; fails under CI when absent, skips otherwise."""
    return _require_shared("")


@pytest.fixture
def require_shared():
    """Call with a path relative to ../shared/data; returns the path or fails/skips as above."""
    return _require_shared


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def torch_one_thread():
    """One torch thread and seed 0 for the test (2-core machines: 2 threads oversubscribe)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A finished default run (`snakemake --cores 2`) of the demo cohort, made once per session.

    Shared by tests/test_workflow_demo.py (outputs against the planted truth) and
    tests/test_report.py (`snakemake --report` on the same run). ``BCPATH_DEMO_RUN=<folder of a
    finished default run>`` reuses an existing run instead of making one (about 15 min on 2 cores).
    """
    from tests.workflow_helpers import run_snakemake

    existing = os.environ.get("BCPATH_DEMO_RUN")
    if existing:
        return Path(existing)
    work = tmp_path_factory.mktemp("demo_run")
    result = run_snakemake(work, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return work
