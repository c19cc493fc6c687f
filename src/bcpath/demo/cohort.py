"""The synthetic demo cohort: labels, slides, sample sheet.

Layout written under ``out_dir``::

    samples.tsv                       sample sheet (paths relative to out_dir)
    cohort.json                       seed, generator version, one record per slide
    slides/{slide_id}.tiff            pyramidal tiled JPEG TIFF, 0.5 µm/px, H&E
    annotations/{slide_id}.geojson    QuPath region annotations (see bcpath.labels)
    truth/{slide_id}.nuclei.csv       every planted nucleus (x, y, radius_um, kind, ...)
    truth/{slide_id}.mitoses.csv      planted mitotic figures (x, y)

and, with ``tma=True``, the IHC tissue microarray ``tma_ihc_01`` (see :mod:`bcpath.demo.tma`).

Importing this module is cheap (no numpy/OpenCV), so a Snakefile can call
``demo_slide_ids`` at parse time.

Slide i (0-based) depends only on (seed, i): its labels come from a fixed pattern over
blocks of 8 slides and its pixels from ``np.random.default_rng((seed, i))``, so slides can
be made in any order or in parallel, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bcpath.io import atomic_path, write_json
from bcpath.labels import BIOMARKERS

logger = logging.getLogger(__name__)

DEMO_MPP: float = 0.5
"""µm per pixel at level 0 of every demo slide (20× equivalent)."""

GENERATOR_VERSION = "2"
"""Bumped whenever the pixels, labels or truth of a given seed change."""

# Slide size range at level 0 in px (width, height), inclusive.
_WIDTH_RANGE = (8000, 10000)
_HEIGHT_RANGE = (6000, 8000)

# Labels of each block of 8 slides, in slide order: (phenotype, split). Within a block:
# 4 ER+/PR+/HER2- luminal, 2 triple negative, 2 HER2-enriched; train 4, tune 2, test 2, and
# every split holds both ER+ and ER- slides. Positions 3 and 5 swap TN/HER2 with the parity
# of (seed + block); position 6 is ER+/PR- in odd blocks so PR is not a copy of ER.
_BLOCK: tuple[tuple[str, str], ...] = (
    ("luminal", "train"),
    ("triple_negative", "train"),
    ("luminal", "tune"),
    ("her2_enriched", "tune"),
    ("luminal", "test"),
    ("triple_negative", "test"),
    ("luminal", "train"),
    ("her2_enriched", "train"),
)

# Nottingham grade of each block position, in even and odd blocks: grade (and with it the planted
# mitosis density and the proliferation score) varies within every phenotype and every split,
# so the proliferation models can only succeed by counting mitoses.
_GRADES: tuple[tuple[int, ...], tuple[int, ...]] = (
    (1, 3, 2, 3, 1, 2, 2, 2),
    (2, 2, 1, 3, 2, 3, 3, 3),
)

SAMPLE_COLUMNS = (
    "slide_id",
    "path",
    "mpp",
    "stain",
    "ER",
    "PR",
    "HER2",
    "grade",
    "proliferation",
    "split",
    "patient_id",
    "annotations",
    "core_map",
    "core_scores",
    "mitoses",
)


def demo_slide_ids(n_slides: int) -> list[str]:
    """Slide ids of a demo cohort of ``n_slides``: ``["demo_01", ..., f"demo_{n:02d}"]``."""
    return [f"demo_{i:02d}" for i in range(1, n_slides + 1)]


@dataclass(frozen=True)
class SlidePlan:
    """Labels of one demo slide, fixed by (seed, index) before any pixel is drawn."""

    index: int
    slide_id: str
    phenotype: str
    split: str
    patient_id: str
    grade: int


def plan_slide(seed: int, index: int) -> SlidePlan:
    """Phenotype and split of slide ``index`` (0-based) for ``seed`` (see ``_BLOCK``)."""
    block, position = divmod(index, len(_BLOCK))
    phenotype, split = _BLOCK[position]
    if position in (3, 5) and (seed + block) % 2 == 1:
        phenotype = "triple_negative" if phenotype == "her2_enriched" else "her2_enriched"
    if position == 6 and block % 2 == 1:
        phenotype = "luminal_pr_negative"
    return SlidePlan(
        index=index,
        slide_id=f"demo_{index + 1:02d}",
        phenotype=phenotype,
        split=split,
        patient_id=f"demo_patient_{index + 1:02d}",
        grade=_GRADES[block % 2][position],
    )


def make_demo_slide(
    out_dir: Path, seed: int, index: int, size: tuple[int, int] | None = None, threads: int = 1
) -> dict[str, Any]:
    """Paint and write slide ``index`` (0-based) with its annotations and truth.

    Args:
        out_dir: cohort folder; files go to slides/, annotations/ and truth/ below it.
        seed: cohort seed.
        index: slide index; the slide depends only on (seed, index).
        size: (width, height) in px to override the default 8000-10000 × 6000-8000 (tests).
        threads: threads OpenCV and libvips may use.

    Returns:
        The slide's cohort record (labels, paths relative to ``out_dir``, counts, sha256).
    """
    import cv2
    import numpy as np

    from bcpath.demo.phenotypes import PHENOTYPES
    from bcpath.demo.scene import paint_he_slide
    from bcpath.demo.writer import (
        write_annotations,
        write_mitoses_csv,
        write_nuclei_csv,
        write_slide_tiff,
    )
    from bcpath.wsi.reader import file_sha256

    started = time.perf_counter()
    plan = plan_slide(seed, index)
    phenotype = PHENOTYPES[plan.phenotype]
    rng = np.random.default_rng((seed, index))
    rng.choice(phenotype.grades)  # drawn and unused: keeps every later draw of (seed, index) as before
    grade = plan.grade
    width = int(rng.integers(_WIDTH_RANGE[0], _WIDTH_RANGE[1] + 1))
    height = int(rng.integers(_HEIGHT_RANGE[0], _HEIGHT_RANGE[1] + 1))
    if size is not None:
        width, height = int(size[0]), int(size[1])

    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(max(1, threads))
    try:
        scene = paint_he_slide(rng, phenotype, grade, width, height, DEMO_MPP)
        painted = time.perf_counter()
        slide_rel = Path("slides") / f"{plan.slide_id}.tiff"
        write_slide_tiff(out_dir / slide_rel, scene.rgb, DEMO_MPP, concurrency=max(1, threads))
    finally:
        cv2.setNumThreads(previous_threads)
    status = {b: phenotype.status(b) for b in BIOMARKERS}
    ann_rel = Path("annotations") / f"{plan.slide_id}.geojson"
    n_features = write_annotations(out_dir / ann_rel, scene.layout, status)
    nuclei_rel = Path("truth") / f"{plan.slide_id}.nuclei.csv"
    mitoses_rel = Path("truth") / f"{plan.slide_id}.mitoses.csv"
    write_nuclei_csv(out_dir / nuclei_rel, scene.canvas.nuclei, DEMO_MPP)
    write_mitoses_csv(out_dir / mitoses_rel, scene.canvas.nuclei)
    nuclei = scene.canvas.nuclei
    record: dict[str, Any] = {
        **asdict(plan),
        **status,
        "grade": grade,
        "proliferation": proliferation_score(scene.mitoses_per_mm2),
        "width": width,
        "height": height,
        "mpp": DEMO_MPP,
        "tumor_area_mm2": round(scene.tumor_area_mm2, 4),
        "mitoses": nuclei.count("mitosis"),
        "mitoses_per_mm2": round(scene.mitoses_per_mm2, 4),
        "nuclei": {kind: nuclei.count(kind) for kind in sorted(set(nuclei.kind))},
        "annotation_features": n_features,
        "path": slide_rel.as_posix(),
        "annotations": ann_rel.as_posix(),
        "truth_nuclei": nuclei_rel.as_posix(),
        "truth_mitoses": mitoses_rel.as_posix(),
        "sha256": file_sha256(out_dir / slide_rel),
    }
    done = time.perf_counter()
    logger.info(
        "%s: %s grade %d, %dx%d px, %d nuclei, %d mitoses; painted %.1fs, written %.1fs",
        plan.slide_id, plan.phenotype, grade, width, height, len(nuclei), record["mitoses"],
        painted - started, done - painted,
    )
    return record


def proliferation_score(mitoses_per_mm2: float) -> float:
    """The demo's proliferation label: planted mitoses per mm² of annotated tumor, 3 decimals.

    A continuous stand-in for the TUPAC16 RNA proliferation score; it is monotone in the
    mitosis density that the proliferation stage measures.
    """
    return round(float(mitoses_per_mm2), 3)


def make_demo_cohort(
    out_dir: Path,
    n_slides: int = 8,
    seed: int = 0,
    threads: int = 1,
    *,
    size: tuple[int, int] | None = None,
    tma: bool = False,
) -> None:
    """Write the synthetic H&E demo cohort under ``out_dir`` (layout in the module docstring).

    ``samples.tsv`` is tab-separated with columns ``SAMPLE_COLUMNS``; ``path`` and
    ``annotations`` are relative to the folder holding samples.tsv (``slides/demo_01.tiff``,
    ``annotations/demo_01.geojson``); ER/PR/HER2 are ``positive``/``negative``; split is
    train/tune/test; proliferation is ``proliferation_score``. samples.tsv and cohort.json
    are written last, so their presence means every slide is complete.

    Args:
        out_dir: output folder (created).
        n_slides: number of slides (≥ 1); 8 gives 4 luminal, 2 triple-negative, 2 HER2+.
        seed: all labels and pixels are a function of (seed, slide index).
        threads: slides painted in parallel (one process each) when > 1.
        size: (width, height) px override for every slide, for fast tests; default draws
            8000-10000 × 6000-8000 px per slide.
        tma: also write the IHC tissue microarray slide of :mod:`bcpath.demo.tma` (its row
            in samples.tsv has stain IHC, its annotations and its per-core reference H-Scores).
    """
    if n_slides < 1:
        raise ValueError(f"make_demo_cohort: n_slides must be ≥ 1, got {n_slides}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = max(1, min(int(threads), n_slides))
    if workers == 1:
        records = [make_demo_slide(out_dir, seed, i, size, threads=1) for i in range(n_slides)]
    else:
        # One fresh interpreter per slide (not multiprocessing): fork is unsafe once libvips or
        # OpenCV thread pools run, and spawn/forkserver re-execute the caller's __main__, which
        # is the rule script under Snakemake.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(lambda i: _run_worker(out_dir, seed, i, size), range(n_slides)))
    tma_record = None
    if tma:
        from bcpath.demo.tma import make_demo_tma

        tma_record = make_demo_tma(out_dir, seed)
    write_samples_tsv(out_dir / "samples.tsv", records, tma_record)
    write_json(
        out_dir / "cohort.json",
        {
            "generator": "bcpath.demo",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "n_slides": n_slides,
            "mpp": DEMO_MPP,
            "stain": "HE",
            "slides": records,
            "tma": tma_record,
        },
    )
    logger.info("demo cohort: %d slides in %s (%.1fs)", n_slides, out_dir, time.perf_counter() - started)


def write_samples_tsv(path: Path, records: list[dict[str, Any]], tma: dict[str, Any] | None = None) -> None:
    """Write the sample sheet (columns ``SAMPLE_COLUMNS``) from slide records, atomically.

    ``tma`` is the IHC TMA slide's record (:func:`bcpath.demo.tma.make_demo_tma`), written last.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(SAMPLE_COLUMNS)
        for r in records:
            out.writerow(
                [
                    r["slide_id"], r["path"], r["mpp"], "HE", r["ER"], r["PR"], r["HER2"],
                    r["grade"], r["proliferation"], r["split"], r["patient_id"], r["annotations"], "", "",
                    r["truth_mitoses"],
                ]
            )
        if tma is not None:
            out.writerow(
                [tma["slide_id"], tma["path"], tma["mpp"], "IHC", "", "", "", "", "", "", "", tma["annotations"], "", tma["core_scores"], ""]
            )


def _run_worker(out_dir: Path, seed: int, index: int, size: tuple[int, int] | None) -> dict[str, Any]:
    """Make one slide in a child interpreter (``python -m bcpath.demo._worker``); its record."""
    import bcpath

    cmd = [sys.executable, "-m", "bcpath.demo._worker", str(out_dir), str(seed), str(index)]
    if size is not None:
        cmd.append(f"{int(size[0])}x{int(size[1])}")
    env = dict(os.environ)
    src = str(Path(bcpath.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stderr.splitlines():
        logger.info("[worker %d] %s", index, line)
    if proc.returncode != 0:
        raise RuntimeError(
            f"demo slide {index + 1}: worker exited with status {proc.returncode}; its log is above. "
            "Rerun with threads=1 to debug in-process."
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
