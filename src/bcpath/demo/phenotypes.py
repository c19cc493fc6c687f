"""Phenotypes of the demo cohort and the painters that draw their tumor.

Signal is planted the way the seed papers describe it:

- ``luminal`` (ER+/PR+/HER2−, grade 1-2): gland-forming tumor, nuclei in rings around lumens,
  small uniform nuclei, few mitoses.
- ``luminal_pr_negative`` (ER+/PR−/HER2−, grade 2): as luminal, less differentiated.
- ``triple_negative`` (ER−/PR−/HER2−, grade 3): solid sheets of large pleomorphic nuclei,
  dense tumor-infiltrating lymphocytes around and inside them, many mitoses.
- ``her2_enriched`` (ER−/PR−/HER2+, grade 3): solid nests of large nucleolated nuclei with
  abundant, deeply eosinophilic cytoplasm, few lymphocytes.

``TUMOR_PAINTERS`` maps a painter name to a function ``(canvas, rng, region, grade, params)``
that draws one tumor region (a shapely Polygon in level-0 px) and returns nothing; every
nucleus it draws is logged on the canvas. New phenotypes register a ``Phenotype`` in
``PHENOTYPES`` and, if their morphology is new, a painter in ``TUMOR_PAINTERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import shapely

from bcpath.demo.painting import (
    Canvas,
    NucleusStyle,
    blob_polygon,
    clip_box,
    draw_mitosis,
    draw_nucleus,
    ellipse,
    fill_where,
    jittered_grid,
    points_in_mask,
    rasterize,
    sample_points,
)


@dataclass(frozen=True)
class Phenotype:
    """Receptor status, grade range and how the tumor looks.

    Attributes:
        name: registry key.
        er, pr, her2: receptor status (True = positive).
        grades: Nottingham grades this phenotype is drawn with (one picked per slide).
        painter: key in ``TUMOR_PAINTERS``.
        til_per_mm2: lymphocyte density in a band around the tumor (per mm² of band).
        stromal_lymphocytes_per_mm2: scattered lymphocytes in the remaining stroma.
        params: painter-specific settings.
    """

    name: str
    er: bool
    pr: bool
    her2: bool
    grades: tuple[int, ...]
    painter: str
    til_per_mm2: float
    stromal_lymphocytes_per_mm2: float
    params: dict[str, float] = field(default_factory=dict)

    def status(self, biomarker: str) -> str:
        """"positive" or "negative" for "ER", "PR" or "HER2"."""
        value = {"ER": self.er, "PR": self.pr, "HER2": self.her2}[biomarker]
        return "positive" if value else "negative"


PHENOTYPES: dict[str, Phenotype] = {
    "luminal": Phenotype("luminal", True, True, False, (1, 2), "glandular", 600.0, 40.0),
    "luminal_pr_negative": Phenotype("luminal_pr_negative", True, False, False, (2,), "glandular", 900.0, 60.0),
    "triple_negative": Phenotype("triple_negative", False, False, False, (3,), "solid_sheets", 9000.0, 500.0),
    "her2_enriched": Phenotype("her2_enriched", False, False, True, (3,), "solid_nests", 700.0, 50.0),
}
"""``grades`` are the typical grades of a phenotype; the demo cohort assigns each slide's grade by
its position (``bcpath.demo.cohort._GRADES``) so that grade varies within phenotypes."""

# Planted mitoses per mm² of annotated tumor, by grade (a slide draws a lognormal factor).
MITOSES_PER_MM2: dict[int, float] = {1: 2.5, 2: 6.0, 3: 14.0}


# --------------------------------------------------------------------------- styles

LYMPHOCYTE = NucleusStyle(body=185, jitter=12, eosin=4)
STROMAL = NucleusStyle(body=150, jitter=15, eosin=10)
NORMAL_EPITHELIAL = NucleusStyle(body=130, jitter=10, eosin=10)
LOW_GRADE = NucleusStyle(body=138, jitter=10, eosin=8)
INTERMEDIATE = NucleusStyle(body=135, rim=160, nucleolus=180, nucleolus_um=0.7, jitter=15, eosin=8)
HIGH_GRADE = NucleusStyle(body=112, rim=150, nucleolus=195, nucleolus_um=1.0, jitter=22, eosin=8)
HYPERCHROMATIC = NucleusStyle(body=168, rim=0, nucleolus=0, jitter=15, eosin=6)

# Nuclear semi-axes in µm (major range, minor/major ratio range) per grade.
_TUMOR_NUCLEI: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    1: ((3.6, 4.3), (0.75, 0.92)),
    2: ((4.2, 5.6), (0.7, 0.9)),
    3: ((4.8, 6.8), (0.62, 0.92)),
}


def tumor_nucleus_axes(rng: np.random.Generator, canvas: Canvas, grade: int) -> tuple[float, float]:
    """Random nuclear semi-axes (a ≥ b, px) for a tumor cell of ``grade``."""
    (lo, hi), (rlo, rhi) = _TUMOR_NUCLEI[grade]
    a = rng.uniform(lo, hi)
    if grade == 3 and rng.random() < 0.15:  # pleomorphism: occasional giant nucleus
        a *= rng.uniform(1.2, 1.45)
    b = a * rng.uniform(rlo, rhi)
    return float(canvas.px(a)), float(canvas.px(b))


def tumor_style(rng: np.random.Generator, grade: int) -> NucleusStyle:
    if grade == 1:
        return LOW_GRADE
    if grade == 2:
        return INTERMEDIATE if rng.random() < 0.5 else LOW_GRADE
    return HYPERCHROMATIC if rng.random() < 0.25 else HIGH_GRADE


def pick_mitoses(rng: np.random.Generator, n_cells: int, rate: float) -> np.ndarray:
    """Boolean (n_cells,) marking which cells are drawn as mitotic figures (Poisson count)."""
    flags = np.zeros(n_cells, bool)
    k = min(n_cells, int(rng.poisson(rate))) if n_cells else 0
    if k:
        flags[rng.choice(n_cells, size=k, replace=False)] = True
    return flags


# --------------------------------------------------------------------------- cell sheets


def fill_cells(
    canvas: Canvas,
    rng: np.random.Generator,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    grade: int,
    spacing_um: float,
    cytoplasm: tuple[int, int],
    mitosis_rate: float,
) -> int:
    """Fill the mask (box-sized uint8) with tumor cells on a jittered hexagonal grid.

    ``cytoplasm`` is the (H, E) density of the cytoplasm. ``mitosis_rate`` is the expected
    number of mitoses among these cells. Returns the number of cells drawn.
    """
    x0, y0, x1, y1 = box
    fill_where(canvas.stains["E"], mask, cytoplasm[1], box)
    fill_where(canvas.stains["H"], mask, cytoplasm[0], box)
    spacing = canvas.px(spacing_um)
    pts = jittered_grid(rng, (x0, y0, x1, y1), spacing, spacing * 0.22)
    pts = pts[points_in_mask(pts, mask, (x0, y0))]
    rng.shuffle(pts)
    mitotic = pick_mitoses(rng, len(pts), mitosis_rate)
    for (x, y), is_mitosis in zip(pts, mitotic, strict=True):
        if is_mitosis:
            draw_mitosis(canvas, rng, x, y)
            continue
        a, b = tumor_nucleus_axes(rng, canvas, grade)
        draw_nucleus(canvas, rng, x, y, a, b, rng.uniform(0, 180), tumor_style(rng, grade), "tumor")
    return len(pts)


def draw_gland(
    canvas: Canvas,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    lumen_um: float,
    kind: str,
    style_for: Callable[[], NucleusStyle],
    axes_for: Callable[[], tuple[float, float]],
    cytoplasm: tuple[int, int] = (16, 52),
    epithelium_um: float = 11.0,
    myoepithelium: bool = False,
    mitosis_p: float = 0.0,
) -> float:
    """Draw one gland: an irregular lumen ringed by epithelium with radially oriented nuclei.

    Returns the outer radius in px (for spacing). ``mitosis_p`` is the chance that a ring
    cell is drawn as a mitotic figure.
    """
    h_img, e_img = canvas.stains["H"], canvas.stains["E"]
    px = canvas.px
    rl = px(lumen_um)
    t = px(epithelium_um)
    aspect = rng.uniform(1.0, 1.6)
    rot = rng.uniform(0, np.pi)
    rough = rng.uniform(0.05, 0.22)
    shape = blob_polygon(rng, 0.0, 0.0, 1.0, 1.0 / aspect, roughness=rough, n_vertices=72, rotation=rot)
    radius = np.hypot(shape[:, 0], shape[:, 1])
    unit = shape / radius[:, None]

    def ring(r: float) -> np.ndarray:
        return np.stack([cx + unit[:, 0] * radius * r, cy + unit[:, 1] * radius * r], axis=1)

    outer = ring(rl + t + (px(3.0) if myoepithelium else 0.0))
    lumen = ring(rl)
    _fill_poly(e_img, outer, cytoplasm[1])
    _fill_poly(h_img, outer, cytoplasm[0])
    _fill_poly(e_img, lumen, int(rng.integers(0, 2)) * int(rng.integers(10, 24)))
    _fill_poly(h_img, lumen, 0)
    # Nuclei evenly spaced along the mid-epithelial ring, long axis pointing at the lumen.
    mid = ring(rl + 0.55 * t)
    seg = np.hypot(*np.diff(np.vstack([mid, mid[:1]]), axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    a0, b0 = axes_for()
    n = max(4, int(arc[-1] / (2.3 * b0)))
    where = np.sort(rng.uniform(0, arc[-1] / n, 1) + np.arange(n) * arc[-1] / n)
    idx = np.clip(np.searchsorted(arc, where) - 1, 0, len(mid) - 1)
    for i in idx:
        x, y = mid[i] + rng.normal(0, px(0.6), 2)
        if rng.random() < mitosis_p:
            draw_mitosis(canvas, rng, x, y)
            continue
        a, b = axes_for()
        ang = math.degrees(math.atan2(unit[i, 1], unit[i, 0])) + rng.normal(0, 12)
        draw_nucleus(canvas, rng, x, y, a, b, ang, style_for(), kind)
    if myoepithelium:
        out = ring(rl + t + px(1.8))
        seg = np.hypot(*np.diff(np.vstack([out, out[:1]]), axis=0).T)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        n = max(3, int(arc[-1] / px(16.0)))
        where = np.sort(rng.uniform(0, arc[-1] / n, 1) + np.arange(n) * arc[-1] / n)
        idx = np.clip(np.searchsorted(arc, where) - 1, 0, len(out) - 1)
        for i in idx:
            ang = math.degrees(math.atan2(unit[i, 1], unit[i, 0])) + 90.0
            ox, oy = out[i]
            draw_nucleus(canvas, rng, ox, oy, px(rng.uniform(3.5, 4.5)), px(rng.uniform(1.2, 1.6)), ang, STROMAL, kind)
    return float(rl + t)


def _fill_poly(img: np.ndarray, pts: np.ndarray, value: int) -> None:
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], int(value), cv2.LINE_8, 4)


# --------------------------------------------------------------------------- painters


def paint_glandular(
    canvas: Canvas, rng: np.random.Generator, region: shapely.Polygon, grade: int, params: dict[str, float]
) -> None:
    """Low/intermediate-grade invasive carcinoma: glands (grade 1 ~90 %, grade 2 ~55 %) and nests.

    Glands and nests are planned first so the planted mitoses (``params["mitoses_per_mm2"]``
    × region area) can be spread over all their cells.
    """
    box = clip_box(region, canvas.width, canvas.height)
    x0, y0, x1, y1 = box
    mask = rasterize(region, (y1 - y0, x1 - x0), origin=(x0, y0))
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    px = canvas.px
    gland_fraction = 0.9 if grade == 1 else 0.55
    centres = jittered_grid(rng, (x0, y0, x1, y1), px(95.0), px(22.0))
    rng.shuffle(centres)
    plan: list[tuple[str, float, float, float, float]] = []  # kind, x, y, size (µm), cells
    for cx, cy in centres:
        ix, iy = int(cx - x0), int(cy - y0)
        if not (0 <= ix < mask.shape[1] and 0 <= iy < mask.shape[0]):
            continue
        room = float(dist[iy, ix]) * canvas.mpp
        if room < 25.0:
            continue
        if rng.random() < gland_fraction:
            lumen = min(rng.uniform(8.0, 26.0), room - 16.0)
            if lumen >= 5.0:
                plan.append(("gland", cx, cy, lumen, 2 * math.pi * (lumen + 6.0) / 8.0))
        else:
            r_um = min(rng.uniform(22.0, 42.0), room - 4.0)
            plan.append(("nest", cx, cy, r_um, math.pi * r_um**2 * 0.7 / (12.0 * 12.0 * 0.866)))
    expected = params["mitoses_per_mm2"] * region.area * canvas.mpp**2 * 1e-6
    per_cell = expected / max(sum(p[4] for p in plan), 1.0)
    for kind, cx, cy, size, cells in plan:
        if kind == "gland":
            draw_gland(
                canvas,
                rng,
                cx,
                cy,
                size,
                "tumor",
                style_for=lambda: tumor_style(rng, grade),
                axes_for=lambda: tumor_nucleus_axes(rng, canvas, grade),
                mitosis_p=per_cell,
            )
        else:
            r = px(size)
            nest = shapely.Polygon(blob_polygon(rng, cx, cy, r, r * rng.uniform(0.6, 1.0), 0.2))
            nbox = clip_box(nest, canvas.width, canvas.height)
            nmask = rasterize(nest, (nbox[3] - nbox[1], nbox[2] - nbox[0]), origin=nbox[:2])
            fill_cells(canvas, rng, nmask, nbox, grade, 12.0, (22, 48), per_cell * cells)


def paint_solid_sheets(
    canvas: Canvas, rng: np.random.Generator, region: shapely.Polygon, grade: int, params: dict[str, float]
) -> None:
    """High-grade solid sheets with thin stromal septa carrying lymphocytes (triple negative)."""
    px = canvas.px
    # Septa: a few wavy bands of stroma cut through the sheet.
    septa = []
    x0, y0, x1, y1 = region.bounds
    for _ in range(int(rng.integers(2, 6))):
        length = 1.2 * max(x1 - x0, y1 - y0)
        n = 40
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, n))
        steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) * length / n
        pts = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]) + np.cumsum(steps, axis=0)
        pts -= steps.sum(axis=0) / 2
        septa.append(shapely.LineString(pts).buffer(px(rng.uniform(8.0, 20.0))))
    sheet = region.buffer(-px(8.0)).difference(shapely.union_all(septa)) if septa else region
    box = clip_box(region, canvas.width, canvas.height)
    mask = rasterize(sheet, (box[3] - box[1], box[2] - box[0]), origin=box[:2])
    expected = params["mitoses_per_mm2"] * region.area * canvas.mpp**2 * 1e-6
    fill_cells(canvas, rng, mask, box, grade, 16.5, (30, 40), expected)
    # Intratumoral lymphocytes in the septa and scattered in the sheet.
    septa_region = region.intersection(shapely.union_all(septa)) if septa else shapely.Polygon()
    scatter_lymphocytes(canvas, rng, septa_region, params["til_per_mm2"])
    scatter_lymphocytes(canvas, rng, sheet, params["til_per_mm2"] * 0.06)


def paint_solid_nests(
    canvas: Canvas, rng: np.random.Generator, region: shapely.Polygon, grade: int, params: dict[str, float]
) -> None:
    """High-grade solid nests with abundant deeply eosinophilic cytoplasm (HER2-enriched)."""
    px = canvas.px
    x0, y0, x1, y1 = region.bounds
    nests = []
    for cx, cy in jittered_grid(rng, (x0, y0, x1, y1), px(260.0), px(50.0)):
        r = px(rng.uniform(70.0, 125.0))
        nests.append(shapely.Polygon(blob_polygon(rng, cx, cy, r, r * rng.uniform(0.55, 1.0), 0.3)))
    centre = region.representative_point()  # at least one nest, even in a small region
    r = px(rng.uniform(60.0, 90.0))
    nests.append(shapely.Polygon(blob_polygon(rng, centre.x, centre.y, r, r * rng.uniform(0.6, 1.0), 0.3)))
    nest = region.intersection(shapely.union_all(nests))
    box = clip_box(region, canvas.width, canvas.height)
    mask = rasterize(nest, (box[3] - box[1], box[2] - box[0]), origin=box[:2])
    expected = params["mitoses_per_mm2"] * region.area * canvas.mpp**2 * 1e-6
    fill_cells(canvas, rng, mask, box, grade, 19.0, (14, 92), expected)


TumorPainter = Callable[[Canvas, np.random.Generator, shapely.Polygon, int, dict[str, float]], None]

TUMOR_PAINTERS: dict[str, TumorPainter] = {
    "glandular": paint_glandular,
    "solid_sheets": paint_solid_sheets,
    "solid_nests": paint_solid_nests,
}


# --------------------------------------------------------------------------- non-tumor


def scatter_lymphocytes(canvas: Canvas, rng: np.random.Generator, area: shapely.Geometry, per_mm2: float) -> None:
    """Draw lymphocytes (round, ~5 µm, very dark) uniformly inside ``area`` at ``per_mm2``."""
    if area.is_empty or per_mm2 <= 0:
        return
    n = int(rng.poisson(per_mm2 * area.area * canvas.mpp**2 * 1e-6))
    for x, y in sample_points(rng, area, n):
        r = canvas.px(rng.uniform(2.3, 2.9))
        draw_nucleus(canvas, rng, x, y, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, 180), LYMPHOCYTE, "lymphocyte")


def scatter_fibroblasts(
    canvas: Canvas, rng: np.random.Generator, area: shapely.Geometry, per_mm2: float, theta: np.ndarray, theta_scale: float
) -> None:
    """Draw spindle-shaped stromal nuclei in ``area``, aligned with the fibre orientation field."""
    if area.is_empty or per_mm2 <= 0:
        return
    n = int(rng.poisson(per_mm2 * area.area * canvas.mpp**2 * 1e-6))
    for x, y in sample_points(rng, area, n):
        iy = min(int(y * theta_scale), theta.shape[0] - 1)
        ix = min(int(x * theta_scale), theta.shape[1] - 1)
        ang = math.degrees(float(theta[iy, ix]))
        a = canvas.px(rng.uniform(4.5, 7.5))
        b = canvas.px(rng.uniform(1.1, 1.7))
        draw_nucleus(canvas, rng, x, y, a, b, ang, STROMAL, "stromal")


def paint_lobule(canvas: Canvas, rng: np.random.Generator, region: shapely.Polygon) -> None:
    """Normal terminal duct lobular unit: loose pale stroma with two-layered acini and a duct."""
    px = canvas.px
    box = clip_box(region, canvas.width, canvas.height)
    mask = rasterize(region, (box[3] - box[1], box[2] - box[0]), origin=box[:2])
    fill_where(canvas.stains["E"], mask, 24, box)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    x0, y0, x1, y1 = box

    def style() -> NucleusStyle:
        return NORMAL_EPITHELIAL

    def axes() -> tuple[float, float]:
        a = px(rng.uniform(3.0, 3.6))
        return float(a), float(a * rng.uniform(0.75, 0.9))

    for cx, cy in jittered_grid(rng, (x0, y0, x1, y1), px(55.0), px(10.0)):
        ix, iy = int(cx - x0), int(cy - y0)
        if not (0 <= ix < mask.shape[1] and 0 <= iy < mask.shape[0]) or dist[iy, ix] < px(25.0):
            continue
        draw_gland(canvas, rng, cx, cy, rng.uniform(4.0, 9.0), "normal_epithelial", style, axes,
                   cytoplasm=(14, 44), epithelium_um=9.0, myoepithelium=True)
    scatter_lymphocytes(canvas, rng, region, 250.0)


def paint_duct(canvas: Canvas, rng: np.random.Generator, x: float, y: float) -> None:
    """One larger normal duct with a two-layered lining."""
    px = canvas.px

    def style() -> NucleusStyle:
        return NORMAL_EPITHELIAL

    def axes() -> tuple[float, float]:
        a = px(rng.uniform(3.0, 3.8))
        return float(a), float(a * rng.uniform(0.7, 0.85))

    draw_gland(canvas, rng, x, y, rng.uniform(25.0, 45.0), "normal_epithelial", style, axes,
               cytoplasm=(14, 44), epithelium_um=10.0, myoepithelium=True)


def paint_fat(canvas: Canvas, rng: np.random.Generator, region: shapely.Polygon) -> None:
    """Adipose tissue: large empty polygonal cells with thin pink membranes and rare flat nuclei."""
    px = canvas.px
    box = clip_box(region, canvas.width, canvas.height)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    mask = rasterize(region, (h, w), origin=(x0, y0))
    membranes = np.zeros((h, w), np.uint8)
    pts = jittered_grid(rng, (0, 0, w, h), px(rng.uniform(70.0, 95.0)), px(25.0))
    pts = pts[(pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 0] < w - 1) & (pts[:, 1] < h - 1)]
    subdiv = cv2.Subdiv2D((0, 0, w, h))
    subdiv.insert([(float(x), float(y)) for x, y in pts])
    facets, _ = subdiv.getVoronoiFacetList([])
    polys = [np.round(np.asarray(f) * 16).astype(np.int32).reshape(-1, 1, 2) for f in facets]
    cv2.polylines(membranes, polys, True, 66, thickness=max(2, int(round(px(1.0)))), lineType=cv2.LINE_AA, shift=4)
    fill_where(canvas.stains["E"], mask, membranes, box)
    fill_where(canvas.stains["H"], mask, 0, box)
    # A few flattened nuclei sitting on membranes.
    for f in facets[:: max(1, int(rng.integers(6, 10)))]:
        i = int(rng.integers(len(f)))
        p, q = f[i], f[(i + 1) % len(f)]
        t = rng.uniform(0.3, 0.7)
        x, y = x0 + p[0] + t * (q[0] - p[0]), y0 + p[1] + t * (q[1] - p[1])
        if points_in_mask(np.array([[x, y]]), mask, (x0, y0))[0]:
            ang = math.degrees(math.atan2(q[1] - p[1], q[0] - p[0]))
            draw_nucleus(canvas, rng, x, y, px(4.0), px(1.3), ang, STROMAL, "stromal")


def draw_vessel(canvas: Canvas, rng: np.random.Generator, x: float, y: float) -> None:
    """A small vessel: thin wall with flat endothelial nuclei and red cells in the lumen."""
    px = canvas.px
    r = px(rng.uniform(8.0, 16.0))
    ang = rng.uniform(0, 180)
    asp = rng.uniform(0.5, 0.9)
    ellipse(canvas.stains["E"], x, y, r + px(3.0), (r + px(3.0)) * asp, ang, 70)
    ellipse(canvas.stains["E"], x, y, r, r * asp, ang, 4)
    ellipse(canvas.stains["H"], x, y, r + px(3.0), (r + px(3.0)) * asp, ang, 0)
    for _ in range(int(rng.integers(0, 8))):
        t = rng.uniform(0, 2 * np.pi)
        rr = rng.uniform(0, 0.7) * r
        rbc = px(3.6)
        ellipse(canvas.stains["E"], x + rr * math.cos(t), y + rr * math.sin(t) * asp, rbc, rbc, 0, 120)
