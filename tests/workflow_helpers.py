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


def write_grayscale_slide(source: Path, path: Path, single_channel: bool = True) -> Path:
    """A tiled JPEG TIFF at 0.5 µm/px holding ``source``'s level 0 in gray (one channel, or RGB with R = G = B)."""
    import cv2
    import numpy as np
    import tifffile

    from bcpath.wsi import open_slide

    with open_slide(source) as slide:
        gray = cv2.cvtColor(slide.read_level(0, 0, 0, *slide.dimensions), cv2.COLOR_RGB2GRAY)
    pixels = gray if single_channel else np.repeat(gray[..., None], 3, axis=-1)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="minisblack" if single_channel else "rgb",
                     resolution=(20000, 20000), resolutionunit="CENTIMETER", compression="jpeg")
    return path
