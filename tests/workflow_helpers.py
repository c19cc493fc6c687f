"""Run the workflow in a scratch folder, as a user would from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """``snakemake -s REPO/Snakefile -d WORKDIR --configfile REPO/config.yaml ARGS``; output captured."""
    command = [
        *SNAKEMAKE,
        "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(REPO_ROOT / "config.yaml"),
        *args,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def files_under(root: Path) -> set[str]:
    """Relative paths of every file under root, ignoring Snakemake's own .snakemake folder."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and ".snakemake" not in path.relative_to(root).parts
    }
