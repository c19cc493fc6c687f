"""The demo IHC tissue microarray: round cores of DAB-stained tumor nests with planted H-Scores.

One slide, ``slides/{TMA_SLIDE_ID}.tiff`` (pyramidal JPEG TIFF, 0.5 µm/px), holds a grid of
cores (4 rows × 5 columns, one position left empty so dearraying meets a missing core). Each
core is a roughly round piece of tissue: tumor nests (the annotated tumor region) in a pale
stroma with fibroblasts and lymphocytes. Every tumor nucleus gets a nuclear DAB intensity class
(negative, 1+, 2+, 3+) drawn from core-specific proportions, so each core's true H-Score

    H = (1·n1 + 2·n2 + 3·n3) / (n_neg + n1 + n2 + n3) × 100    (tumor cells only)

is known exactly; stromal and immune nuclei are DAB-negative and are not part of the truth.
Planted H-Scores are spread evenly over 0–300 (the two ends included) in a shuffled order,
and one core has a tumor fraction under 15 % so the QC flag has something to find.

Pixels are painted as stain amounts (hematoxylin, DAB) in OD units and turned into RGB by
Beer-Lambert with Liu et al.'s DAB-H vectors (:func:`bcpath.stain.deconvolution.combine_stains`);
the nuclear DAB amounts of the classes (0.03 / 0.30 / 0.50 / 0.85 OD, ±0.03) sit inside the
QuPath bins (< 0.2, 0.2–0.4, 0.4–0.6, ≥ 0.6) that cell scoring uses.

Files written (under the cohort folder)::

    slides/tma_ihc_01.tiff
    annotations/tma_ihc_01.geojson      core outlines ("TMA core", name = core id) + tumor regions ("Tumor")
    truth/tma_ihc_01.cores.csv          core map of the present cores: core_id, x, y (level-0 px centre), diameter_um
    truth/tma_ihc_01.hscore.csv         per core: row, col (1-based), planted counts, h_score, tumor_fraction,
                                        reference_h_score (= h_score: the "reader" of the demo)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely

from bcpath.demo.painting import smooth_noise
from bcpath.demo.writer import _geometry, write_slide_tiff
from bcpath.geojson import feature, write_geojson
from bcpath.io import atomic_path

TMA_SLIDE_ID = "tma_ihc_01"
TMA_MPP = 0.5
TMA_ROWS = 4
TMA_COLS = 5
TMA_MISSING = ((1, 3),)  # (row, col) 0-based positions left empty: "B4"
CORE_DIAMETER_UM = 600.0
CORE_SPACING_UM = 1000.0
MARGIN_UM = 500.0
LOW_TUMOR_CORE_INDEX = 7  # k-th present core (0-based, row-major) gets a tumor fraction < 15 %

# Stain amounts (OD units) painted per compartment: (hematoxylin, DAB).
GLASS_WHITE = (242, 242, 240)
STROMA_STAIN = (0.12, 0.03)
CYTOPLASM_STAIN = (0.05, 0.02)
# Hematoxylin of tumor nuclei: DAB-negative ones take the full counterstain; in positive ones
# the brown DAB dominates and less hematoxylin shows.
TUMOR_NUCLEUS_H = (0.45, 0.25, 0.25, 0.25)
CLASS_DAB = (0.03, 0.30, 0.50, 0.85)
DAB_JITTER = 0.03
FIBROBLAST_STAIN = (0.55, 0.02)
LYMPHOCYTE_STAIN = (0.80, 0.02)
TUMOR_CELL_SPACING_UM = 13.0
TUMOR_NUCLEUS_RADIUS_UM = (3.5, 4.5)


def core_id(row: int, col: int) -> str:
    """"A1"-style id of a 0-based grid position (rows are letters, columns 1-based numbers)."""
    return f"{chr(ord('A') + row)}{col + 1}"


@dataclass(frozen=True)
class CorePlan:
    core_id: str
    row: int
    col: int
    x: float  # level-0 px, centre
    y: float
    target_h: float
    tumor_fraction: float
    dab_gain: float = 1.0  # staining intensity: every DAB amount of the core x this
    h_gain: float = 1.0  # counterstain strength: every hematoxylin amount x this


def class_proportions(target_h: float, spread: float = 0.8) -> np.ndarray:
    """(4,) proportions of negative/1+/2+/3+ whose H-Score is ``target_h`` (0–300).

    A discretised Gaussian over the class index, its centre moved by bisection until the mean
    class is ``target_h / 100``; the ends (0 and 300) are single classes.
    """
    mean_class = float(np.clip(target_h / 100.0, 0.0, 3.0))
    if mean_class <= 0.0 or mean_class >= 3.0:
        p = np.zeros(4)
        p[int(round(mean_class))] = 1.0
        return p
    k = np.arange(4.0)

    def probs(centre: float) -> np.ndarray:
        w = np.exp(-0.5 * ((k - centre) / spread) ** 2)
        return w / w.sum()

    lo, hi = -6.0, 9.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(probs(mid) @ k) < mean_class:
            lo = mid
        else:
            hi = mid
    return probs(0.5 * (lo + hi))


def plan_tma(
    seed: int,
    *,
    rows: int = TMA_ROWS,
    cols: int = TMA_COLS,
    missing: tuple[tuple[int, int], ...] = TMA_MISSING,
    targets: np.ndarray | None = None,
    fractions: np.ndarray | None = None,
    dab_gains: np.ndarray | None = None,
    h_gains: np.ndarray | None = None,
    rng_key: tuple[int, ...] = (9001,),
) -> tuple[list[CorePlan], tuple[int, int]]:
    """Core positions, planted H-Score targets and tumor fractions; (width, height) in px.

    With no keyword arguments: the demo TMA (4 × 5, B4 empty, targets evenly over 0–300 in a
    shuffled order, one low-tumor core). ``targets``, ``fractions``, ``dab_gains``,
    ``h_gains``: per present core (row-major), replacing the demo's choices (gains 1 = the
    demo's stain amounts); ``rng_key`` keys the position jitter (and the demo's draws).
    """
    rng = np.random.default_rng((seed, *rng_key))
    spacing = CORE_SPACING_UM / TMA_MPP
    margin = MARGIN_UM / TMA_MPP + CORE_DIAMETER_UM / TMA_MPP / 2
    positions = [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in missing]
    planted = targets is not None
    if targets is None:
        targets = np.linspace(0.0, 300.0, len(positions))
        rng.shuffle(targets)
    n = len(positions)
    for name, values in (("targets", targets), ("fractions", fractions), ("dab_gains", dab_gains), ("h_gains", h_gains)):
        if values is not None and len(values) != n:
            raise ValueError(f"plan_tma: {len(values)} {name} for {n} cores")
    plans = []
    for k, ((r, c), target) in enumerate(zip(positions, targets, strict=True)):
        jitter = rng.uniform(-0.04, 0.04, size=2) * spacing
        if fractions is not None:
            fraction = float(fractions[k])
        elif planted:
            fraction = float(rng.uniform(0.45, 0.75))
        else:
            fraction = 0.10 if k == LOW_TUMOR_CORE_INDEX else float(rng.uniform(0.45, 0.75))
        plans.append(
            CorePlan(
                core_id(r, c), r, c, margin + c * spacing + jitter[0], margin + r * spacing + jitter[1], float(target), fraction,
                1.0 if dab_gains is None else float(dab_gains[k]),
                1.0 if h_gains is None else float(h_gains[k]),
            )
        )
    width = int(round(2 * margin + (cols - 1) * spacing))
    height = int(round(2 * margin + (rows - 1) * spacing))
    return plans, (width, height)


def _core_shape(rng: np.random.Generator, radius: float, box: int) -> np.ndarray:
    """(box, box) bool: a round core with a gently irregular rim (±4 % of the radius)."""
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float32)
    c = (box - 1) / 2.0
    angle = np.arctan2(yy - c, xx - c)
    rim = np.ones_like(angle)
    for harmonic in (2, 3, 5):
        rim += rng.uniform(-0.015, 0.015) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(xx - c, yy - c) <= radius * rim


def _tumor_region(rng: np.random.Generator, core: np.ndarray, fraction: float) -> np.ndarray:
    """Tumor nests: the ``fraction`` of the core where smooth noise is highest (bool, core's shape)."""
    noise = smooth_noise(rng, core.shape, cell=120.0)
    threshold = float(np.quantile(noise[core], 1.0 - fraction))
    region = (noise >= threshold) & core
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < 400)
    region[np.isin(labels, small[small > 0])] = False
    return region


def _ellipse(img: np.ndarray, x: float, y: float, a: float, b: float, angle: float, value: float) -> None:
    cv2.ellipse(img, ((float(x), float(y)), (2 * a, 2 * b), float(angle)), float(value), -1, lineType=cv2.LINE_AA)


def paint_core(rng: np.random.Generator, plan: CorePlan, box: int) -> dict[str, Any]:
    """Stain amounts of one core in a (box, box) window centred on it.

    Returns:
        dict with ``stains`` (box, box, 3) float32 [H, DAB, residual] OD, ``core`` and ``tumor``
        (box, box) bool masks and ``counts`` (4,) int: tumor nuclei per intensity class.
    """
    px_um = 1.0 / TMA_MPP
    radius = CORE_DIAMETER_UM / 2 * px_um
    core = _core_shape(rng, radius, box)
    tumor = _tumor_region(rng, core, plan.tumor_fraction)
    h = np.zeros((box, box), np.float32)
    dab = np.zeros((box, box), np.float32)
    texture = 0.6 + 0.8 * smooth_noise(rng, (box, box), cell=25.0)
    h[core] = STROMA_STAIN[0] * texture[core]
    dab[core] = STROMA_STAIN[1]
    h[tumor] = CYTOPLASM_STAIN[0] * texture[tumor]
    dab[tumor] = CYTOPLASM_STAIN[1]

    # Stroma: spindle fibroblasts and small round lymphocytes (all DAB-negative).
    stroma = core & ~cv2.dilate(tumor.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    ys, xs = np.nonzero(stroma)
    area_mm2 = ys.size * (TMA_MPP / 1000) ** 2
    for kind, per_mm2, stain in (("fibroblast", 900, FIBROBLAST_STAIN), ("lymphocyte", 700, LYMPHOCYTE_STAIN)):
        n = rng.poisson(per_mm2 * area_mm2) if ys.size else 0
        pick = rng.integers(0, ys.size, size=n) if n else np.zeros(0, int)
        for i in pick:
            if kind == "fibroblast":
                a, b = rng.uniform(5.0, 7.0) * px_um, rng.uniform(1.2, 1.8) * px_um
            else:
                a = b = rng.uniform(2.5, 3.2) * px_um
            angle = rng.uniform(0, 180)
            _ellipse(h, xs[i], ys[i], a, b, angle, stain[0])
            _ellipse(dab, xs[i], ys[i], a, b, angle, stain[1])

    # Tumor cells on a jittered grid inside the nests, each with a planted class.
    p = class_proportions(plan.target_h)
    step = TUMOR_CELL_SPACING_UM * px_um
    gy, gx = np.mgrid[step / 2 : box : step, step / 2 : box : step]
    cx = gx.ravel() + rng.uniform(-0.2, 0.2, gx.size) * step
    cy = gy.ravel() + rng.uniform(-0.2, 0.2, gy.size) * step
    inside = tumor[np.clip(cy.astype(int), 0, box - 1), np.clip(cx.astype(int), 0, box - 1)]
    # Keep nuclei whole inside the nest (a nucleus cut by the nest edge would be half-painted).
    eroded = cv2.erode(tumor.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)
    inside &= eroded[np.clip(cy.astype(int), 0, box - 1), np.clip(cx.astype(int), 0, box - 1)]
    cx, cy = cx[inside], cy[inside]
    classes = rng.choice(4, size=cx.size, p=p)
    for x, y, cls in zip(cx, cy, classes, strict=True):
        a = rng.uniform(*TUMOR_NUCLEUS_RADIUS_UM) * px_um
        b = a * rng.uniform(0.75, 0.95)
        angle = rng.uniform(0, 180)
        _ellipse(h, x, y, a, b, angle, TUMOR_NUCLEUS_H[cls] + rng.uniform(-0.05, 0.05))
        _ellipse(dab, x, y, a, b, angle, CLASS_DAB[cls] + rng.uniform(-DAB_JITTER, DAB_JITTER))
    if plan.h_gain != 1.0:
        h *= np.float32(plan.h_gain)
    if plan.dab_gain != 1.0:
        dab *= np.float32(plan.dab_gain)
    stains = cv2.GaussianBlur(np.stack([h, dab, np.zeros_like(h)], axis=-1), (0, 0), 0.6)
    return {"stains": stains, "core": core, "tumor": tumor, "counts": np.bincount(classes, minlength=4)}


def _outline(mask: np.ndarray, ox: float, oy: float) -> shapely.Geometry:
    """Polygon(s) of a bool mask, holes included (stroma islands inside a nest), in level-0 px."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return shapely.Polygon()
    polygons = []
    for i, contour in enumerate(contours):
        if hierarchy[0][i][3] >= 0 or len(contour) < 4:  # a hole, or too small to be a ring
            continue
        holes = [contours[j][:, 0, :] + (ox, oy) for j in range(len(contours)) if hierarchy[0][j][3] == i and len(contours[j]) >= 4]
        polygon = shapely.Polygon(contour[:, 0, :] + (ox, oy), holes).buffer(0)
        if not polygon.is_empty and polygon.area > 50:
            polygons.append(polygon)
    return shapely.union_all(polygons) if polygons else shapely.Polygon()


TRUTH_COLUMNS = (
    "core_id", "row", "col", "x", "y", "n_neg", "n1", "n2", "n3", "n_tumor_cells",
    "h_score", "tumor_fraction", "reference_h_score",
)


def make_demo_tma(out_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Any]:
    """Paint and write the demo TMA slide, its annotations, core map and per-core truth.

    Returns:
        the slide's sample-sheet record (slide_id, path, mpp, stain "IHC", annotations,
        core_map, core_scores; paths relative to ``out_dir``).
    """
    plans, size = plan_tma(seed)
    return write_tma(out_dir, TMA_SLIDE_ID, plans, size, paint_key=(seed, 9002))


def write_tma(
    out_dir: str | os.PathLike[str],
    slide_id: str,
    plans: list[CorePlan],
    size: tuple[int, int],
    paint_key: tuple[int, ...],
    extra_columns: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Paint the cores of ``plans`` on one slide of ``size`` (width, height) px and write the
    slide, annotations, truth and core map (:func:`make_demo_tma`'s files, named by
    ``slide_id``). Each core's painting draws from ``default_rng((*paint_key, row, col))``.
    ``extra_columns``: CorePlan fields (e.g. ``dab_gain``) added to the truth table."""
    from bcpath.stain.deconvolution import combine_stains

    out = Path(out_dir)
    for sub in ("slides", "annotations", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    width, height = size
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS_WHITE
    box = int(math.ceil(CORE_DIAMETER_UM / TMA_MPP * 1.1)) | 1
    features: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    white = np.asarray(GLASS_WHITE, np.float64)
    for plan in plans:
        rng = np.random.default_rng((*paint_key, plan.row, plan.col))
        painted = paint_core(rng, plan, box)
        x0, y0 = int(round(plan.x)) - box // 2, int(round(plan.y)) - box // 2
        window = combine_stains(painted["stains"], i0=white)
        outside = ~cv2.dilate(painted["core"].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        window[outside] = GLASS_WHITE
        rgb[y0 : y0 + box, x0 : x0 + box] = window
        core_geom = _outline(painted["core"], x0, y0)
        tumor_geom = _outline(painted["tumor"], x0, y0)
        features.append(feature(_geometry(core_geom), "annotation", "TMA core", [80, 80, 80], plan.core_id))
        if not tumor_geom.is_empty:
            features.append(feature(_geometry(tumor_geom), "annotation", "Tumor", name=f"{plan.core_id} tumor"))
        counts = painted["counts"]
        n = int(counts.sum())
        h_score = float((counts[1] + 2 * counts[2] + 3 * counts[3]) / n * 100) if n else float("nan")
        rows.append(
            {
                "core_id": plan.core_id, "row": plan.row + 1, "col": plan.col + 1,
                "x": round(plan.x, 1), "y": round(plan.y, 1),
                "n_neg": int(counts[0]), "n1": int(counts[1]), "n2": int(counts[2]), "n3": int(counts[3]),
                "n_tumor_cells": n, "h_score": round(h_score, 2),
                "tumor_fraction": round(float(painted["tumor"].sum() / painted["core"].sum()), 4),
                "reference_h_score": round(h_score, 2),
                **{name: round(float(getattr(plan, name)), 4) for name in extra_columns},
            }
        )
    write_slide_tiff(out / "slides" / f"{slide_id}.tiff", rgb, TMA_MPP)
    write_geojson(out / "annotations" / f"{slide_id}.geojson", features)
    _write_csv(out / "truth" / f"{slide_id}.hscore.csv", (*TRUTH_COLUMNS, *extra_columns), rows)
    # A core map as a user would give it (present cores only; read by bcpath.ihc.tma.read_core_map).
    core_map = [{"core_id": p.core_id, "x": round(p.x, 1), "y": round(p.y, 1), "diameter_um": CORE_DIAMETER_UM} for p in plans]
    _write_csv(out / "truth" / f"{slide_id}.cores.csv", ("core_id", "x", "y", "diameter_um"), core_map)
    return {
        "slide_id": slide_id,
        "path": f"slides/{slide_id}.tiff",
        "mpp": TMA_MPP,
        "stain": "IHC",
        "annotations": f"annotations/{slide_id}.geojson",
        "core_scores": f"truth/{slide_id}.hscore.csv",
        "n_cores": len(plans),
        "width": width,
        "height": height,
    }


# ---------------------------------------------------------------------------------------------
# The large TMA (RAM-CNN at the paper's scale; not part of the default demo)

#: Ranges of the large TMA's per-core draws (uniform).
LARGE_TUMOR_FRACTION = (0.15, 0.85)
LARGE_DAB_GAIN = (0.85, 1.15)
LARGE_H_GAIN = (0.8, 1.25)
LARGE_EXTRA_COLUMNS = ("target_h", "dab_gain", "h_gain")


def large_tma_slide_id(index: int) -> str:
    """Slide id of the ``index``-th (0-based) slide of the large TMA: tma_large_01, ..."""
    return f"tma_large_{index + 1:02d}"


def plan_large_tma(seed: int = 0, n_cores: int = 120, rows: int = 4, cols: int = 5) -> list[tuple[str, list[CorePlan], tuple[int, int]]]:
    """Plans of the large TMA: ``n_cores`` cores on ceil(n_cores / (rows x cols)) slides.

    Planted H-Scores are spread evenly over 0–300 (both ends included) and shuffled over all
    slides; per core, uniform draws: tumor fraction in :data:`LARGE_TUMOR_FRACTION`, staining
    intensity (DAB gain) in :data:`LARGE_DAB_GAIN`, counterstain strength (hematoxylin gain) in
    :data:`LARGE_H_GAIN`. The last slide's grid is filled row-major; its empty positions are
    the ones after its last core.

    Returns:
        one (slide_id, plans, (width, height)) per slide.
    """
    if n_cores < 1 or rows < 1 or cols < 1:
        raise ValueError(f"large TMA: n_cores ({n_cores}), rows ({rows}) and cols ({cols}) must be positive")
    rng = np.random.default_rng((seed, 9101))
    targets = np.linspace(0.0, 300.0, n_cores)
    rng.shuffle(targets)
    fractions = rng.uniform(*LARGE_TUMOR_FRACTION, n_cores)
    dab_gains = rng.uniform(*LARGE_DAB_GAIN, n_cores)
    h_gains = rng.uniform(*LARGE_H_GAIN, n_cores)
    per_slide = rows * cols
    slides = []
    for s, start in enumerate(range(0, n_cores, per_slide)):
        take = slice(start, min(start + per_slide, n_cores))
        n = take.stop - take.start
        missing = tuple((k // cols, k % cols) for k in range(n, per_slide))
        plans, size = plan_tma(
            seed, rows=rows, cols=cols, missing=missing, targets=targets[take], fractions=fractions[take],
            dab_gains=dab_gains[take], h_gains=h_gains[take], rng_key=(9103, s),
        )
        slides.append((large_tma_slide_id(s), plans, size))
    return slides


def _paint_large_slide(job: tuple[str, int, int, list[CorePlan], tuple[int, int]]) -> dict[str, Any]:
    out, seed, s, plans, size = job
    return write_tma(out, large_tma_slide_id(s), plans, size, paint_key=(seed, 9102, s), extra_columns=LARGE_EXTRA_COLUMNS)


def make_large_tma(out_dir: str | os.PathLike[str], seed: int = 0, n_cores: int = 120, workers: int = 1) -> dict[str, Any]:
    """Write the large TMA (:func:`plan_large_tma`) and its sample sheet ``samples.tsv``.

    Each slide is a 4 × 5 TMA like the demo's (0.5 µm/px, 600 µm cores, QuPath annotations,
    truth and core map under ``truth/``); the truth tables add the planted target, DAB gain and
    hematoxylin gain of each core. Deterministic from ``seed``; ``workers`` > 1 paints slides in
    parallel processes (same files).

    Returns:
        {"samples": path of samples.tsv, "slides": the slides' records, "n_cores": ...}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, s, plans, size) for s, (_, plans, size) in enumerate(plan_large_tma(seed, n_cores))]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            records = list(pool.map(_paint_large_slide, jobs))
    else:
        records = [_paint_large_slide(job) for job in jobs]
    columns = ("slide_id", "path", "mpp", "stain", "annotations", "core_scores")
    sheet = out / "samples.tsv"
    with atomic_path(sheet) as tmp:
        lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in records]
        Path(tmp).write_text("\n".join(lines) + "\n")
    return {"samples": str(sheet), "slides": records, "n_cores": sum(r["n_cores"] for r in records)}


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m bcpath.demo.tma --large OUT [--cores N] [--seed S] [--workers W]``: write the
    large TMA and its samples.tsv (for ``snakemake --configfile config/large_tma.yaml``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bcpath.demo.tma", description=main.__doc__)
    parser.add_argument("--large", required=True, metavar="OUT", help="output folder (slides/, annotations/, truth/, samples.tsv)")
    parser.add_argument("--cores", type=int, default=120, help="number of cores (20 per slide; default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="slides painted in parallel")
    args = parser.parse_args(argv)
    record = make_large_tma(args.large, args.seed, args.cores, args.workers)
    print(f"{record['n_cores']} cores on {len(record['slides'])} slides; sample sheet {record['samples']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
