"""The package stays typed and lint-clean: mypy on src/bcpath, ruff on everything, and its
imports point down the layers of .importlinter (ARCHITECTURE.md)."""

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


def test_imports_point_down_the_layers() -> None:
    import shutil
    from pathlib import Path

    import pytest

    pytest.importorskip("importlinter", reason="import-linter is a dev extra: pip install -e '.[dev]'")
    command = Path(sys.executable).with_name("lint-imports")
    lint_imports = str(command) if command.exists() else shutil.which("lint-imports")
    assert lint_imports, "lint-imports not found next to the Python or on PATH"
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:]
