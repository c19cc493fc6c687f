"""The package stays typed and lint-clean: mypy on src/bcpath, ruff on everything."""

from __future__ import annotations

import subprocess
import sys

from tests.workflow_helpers import REPO_ROOT


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "src", "tests", "bench", "workflow_scripts")
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_is_clean() -> None:
    result = _run("mypy", "src/bcpath")
    assert result.returncode == 0, result.stdout[-4000:]
