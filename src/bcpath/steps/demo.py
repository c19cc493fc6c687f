"""Step of rules/demo.smk: the synthetic demo cohort (the one step that imports bcpath.demo)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def make_demo_cohort_step(output: Any, params: Any, threads: int = 1, **_: Any) -> None:
    from bcpath.demo import make_demo_cohort

    make_demo_cohort(Path(output.samples).parent, n_slides=params.n_slides, seed=params.seed, threads=threads, tma=params.tma)
