"""Compose one synthetic H&E slide: tissue layout, regions, cells, rendering.

``paint_he_slide`` draws tissue pieces, tumor regions (painted by the phenotype's painter),
fat, normal lobules and ducts, fibrous stroma with fibroblasts, vessels and lymphocytes,
then renders RGB. It returns the image together with the region geometry and the ground
truth; ``bcpath.demo.writer`` turns that into files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely

from bcpath.demo.painting import (
    Canvas,
    blob_polygon,
    draw_polylines,
    grain,
    largest_polygon,
    orientation_field,
    polygon,
    polygons_of,
    rasterize,
    render_rgb,
    sample_points,
    smooth_noise,
    trace_fibers,
)
from bcpath.demo.phenotypes import (
    MITOSES_PER_MM2,
    TUMOR_PAINTERS,
    Phenotype,
    draw_vessel,
    paint_duct,
    paint_fat,
    paint_lobule,
    scatter_fibroblasts,
    scatter_lymphocytes,
)


@dataclass
class Layout:
    """Region geometry of one slide, shapely (Multi)Polygons in level-0 px."""

    tissue: shapely.Geometry
    tumor: list[shapely.Polygon]
    fat: list[shapely.Polygon]
    lobules: list[shapely.Polygon]

    @property
    def stroma(self) -> shapely.Geometry:
        """Tissue that is neither tumor, fat nor lobule."""
        return self.tissue.difference(shapely.union_all([*self.tumor, *self.fat, *self.lobules]))


@dataclass
class Scene:
    """One painted slide.

    Attributes:
        rgb: (H, W, 3) uint8 RGB at ``mpp`` µm/px.
        mpp: µm per pixel.
        layout: the region polygons (annotations are written from these).
        canvas: stain densities are dropped after rendering; ``canvas.nuclei`` is the truth.
        grade: Nottingham grade drawn.
        mitoses_per_mm2: mitotic figures drawn per mm² of tumor region.
    """

    rgb: np.ndarray
    mpp: float
    layout: Layout
    canvas: Canvas
    grade: int
    mitoses_per_mm2: float

    @property
    def tumor_area_mm2(self) -> float:
        return float(sum(p.area for p in self.layout.tumor) * self.mpp**2 * 1e-6)


def make_layout(rng: np.random.Generator, width: int, height: int, mpp: float) -> Layout:
    """Lay out one or two tissue pieces (~40-60 % of the slide) and the regions inside them."""
    frame = shapely.box(0.02 * width, 0.02 * height, 0.98 * width, 0.98 * height)
    target = rng.uniform(0.45, 0.6) * width * height
    n_pieces = 1 if rng.random() < 0.6 else 2
    pieces: list[shapely.Polygon] = []
    if n_pieces == 1:
        centres = [(width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55))]
        shares = [1.0]
        bounds = [frame]
    else:
        split = rng.uniform(0.45, 0.55)
        centres = [(width * split / 2, height / 2), (width * (1 + split) / 2, height / 2)]
        shares = [split, 1.0 - split]
        gap = 0.01 * width
        bounds = [
            frame.intersection(shapely.box(0, 0, width * split - gap, height)),
            frame.intersection(shapely.box(width * split + gap, 0, width, height)),
        ]
    for (cx, cy), share, bound in zip(centres, shares, bounds, strict=True):
        bx0, by0, bx1, by1 = bound.bounds
        rx, ry = (bx1 - bx0) / 2, (by1 - by0) / 2
        outline = blob_polygon(
            rng, cx, cy, rx, ry, roughness=0.22, n_vertices=1440, n_harmonics=12, rotation=0.0, jag=0.06
        )
        # Scale radially towards the piece's share of the target area, but never past the
        # frame (clipping would leave straight cut edges).
        ox0, oy0, ox1, oy1 = shapely.Polygon(outline).bounds
        fit = min(
            (cx - bx0) / max(cx - ox0, 1.0),
            (bx1 - cx) / max(ox1 - cx, 1.0),
            (cy - by0) / max(cy - oy0, 1.0),
            (by1 - cy) / max(oy1 - cy, 1.0),
        )
        area = polygon(outline).area
        scale = min(math.sqrt(share * target / max(area, 1.0)), fit)
        pts = np.stack([cx + (outline[:, 0] - cx) * scale, cy + (outline[:, 1] - cy) * scale], axis=1)
        piece = polygon(pts).intersection(bound)
        pieces.append(largest_polygon(piece))
    tissue = shapely.union_all(pieces)
    tissue_area = tissue.area
    px = 1.0 / mpp

    tumor = _place_tumor(rng, tissue, rng.uniform(0.25, 0.4) * tissue_area, px)

    occupied = shapely.union_all(tumor).buffer(60 * px)
    free = tissue.buffer(-30 * px).difference(occupied)
    fat_blobs = []
    for cx, cy in sample_points(rng, free, int(rng.integers(1, 4))):
        r = math.sqrt(rng.uniform(0.04, 0.09) * tissue_area / math.pi)
        fat_blobs.append(polygon(blob_polygon(rng, cx, cy, r, r * rng.uniform(0.6, 1.0), 0.3)))
    fat_geom = shapely.union_all(fat_blobs).intersection(tissue).difference(occupied) if fat_blobs else shapely.Polygon()
    fat = polygons_of(fat_geom, min_area=(150 * px) ** 2)

    occupied = shapely.union_all([occupied, *[f.buffer(40 * px) for f in fat]])
    free = tissue.buffer(-200 * px).difference(occupied)
    lobule_blobs = []
    for cx, cy in sample_points(rng, free, int(rng.integers(1, 4))):
        r = rng.uniform(140.0, 260.0) * px
        lobule_blobs.append(polygon(blob_polygon(rng, cx, cy, r, r * rng.uniform(0.6, 0.9), 0.25)))
    lobule_geom = (
        shapely.union_all(lobule_blobs).intersection(tissue).difference(occupied) if lobule_blobs else shapely.Polygon()
    )
    lobules = polygons_of(lobule_geom, min_area=(100 * px) ** 2)
    return Layout(tissue=tissue, tumor=tumor, fat=fat, lobules=lobules)


def _place_tumor(
    rng: np.random.Generator, tissue: shapely.Geometry, total: float, px: float
) -> list[shapely.Polygon]:
    """One or two irregular tumor regions of about ``total`` px² inside the tissue (never none)."""
    n_tumor = int(rng.integers(1, 3))
    for _ in range(8):
        r = math.sqrt(total / n_tumor / math.pi)
        inner = tissue.buffer(-0.6 * r)
        if inner.is_empty:
            inner = tissue.buffer(-0.2 * r)
        blobs = []
        for cx, cy in sample_points(rng, inner if not inner.is_empty else tissue, n_tumor):
            outline = blob_polygon(rng, cx, cy, r * 1.1, r * rng.uniform(0.75, 0.95), 0.3, 256, 10, jag=0.01)
            blobs.append(polygon(outline))
        if blobs:
            geom = shapely.union_all(blobs).intersection(tissue.buffer(-40 * px))
            tumor = polygons_of(geom, min_area=min((200 * px) ** 2, 0.5 * total))
            if tumor:
                return tumor
        total *= 0.7
    # Tiny tissue: a disc at the tissue's inner point.
    centre = tissue.representative_point()
    return polygons_of(centre.buffer(math.sqrt(total / math.pi)).intersection(tissue))[:1]


def paint_stroma(canvas: Canvas, rng: np.random.Generator, tissue: shapely.Geometry) -> tuple[np.ndarray, float]:
    """Fill the tissue with fibrous eosinophilic stroma; returns the fibre orientation field.

    Returns:
        theta: (h, w) float32 orientation (radians) at ``theta_scale`` × level-0 resolution.
        theta_scale: resolution factor of ``theta``.
    """
    h, w = canvas.shape
    px = canvas.px
    e_img = canvas.stains["E"]
    theta_scale = 1.0 / 16.0
    small = (int(math.ceil(h * theta_scale)), int(math.ceil(w * theta_scale)))
    theta = orientation_field(rng, small, cell=px(400.0) * theta_scale)
    # Base density varies slowly (denser and looser stroma); fibres are wavy collagen bundles
    # only a little denser than the base, so they read as texture rather than lines.
    base = smooth_noise(rng, (h // 8 + 1, w // 8 + 1), cell=px(150.0) / 8)
    base = (30 + 22 * base).astype(np.uint8)
    e_img[:] = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = tissue.bounds
    area_um2 = tissue.area * canvas.mpp**2
    n_fibers = int(area_um2 / 110.0)
    starts = np.stack([rng.uniform(x0, x1, n_fibers), rng.uniform(y0, y1, n_fibers)], axis=1)
    fibers = trace_fibers(rng, starts, theta, theta_scale, step=px(6.0), n_steps=int(rng.integers(12, 18)), wiggle=0.2)
    groups = np.array_split(np.arange(n_fibers), 6)
    for value, thick, idx in zip((42, 47, 52, 57, 62, 68), (5, 4, 3, 3, 2, 2), groups, strict=True):
        draw_polylines(e_img, fibers[idx], value, thick)
    # Retraction clefts: a few pale gaps between bundles.
    n_clefts = int(area_um2 / 40000.0)
    starts = np.stack([rng.uniform(x0, x1, n_clefts), rng.uniform(y0, y1, n_clefts)], axis=1)
    clefts = trace_fibers(rng, starts, theta, theta_scale, step=px(8.0), n_steps=8)
    draw_polylines(e_img, clefts, 10, 2)
    mask = rasterize(tissue, (h, w), value=255)
    cv2.bitwise_and(e_img, mask, dst=e_img)
    # faint hematoxylin tint of all tissue (cv2 stubs omit the scalar src2 that OpenCV accepts)
    cv2.bitwise_and(mask, 5, dst=canvas.stains["H"])  # type: ignore[call-overload]
    return theta, theta_scale


def paint_he_slide(
    rng: np.random.Generator, phenotype: Phenotype, grade: int, width: int, height: int, mpp: float
) -> Scene:
    """Paint one H&E slide of ``phenotype`` at ``grade``; (height, width, 3) uint8 RGB in the Scene."""
    canvas = Canvas.blank(width, height, mpp)
    layout = make_layout(rng, width, height, mpp)
    theta, theta_scale = paint_stroma(canvas, rng, layout.tissue)
    for region in layout.fat:
        paint_fat(canvas, rng, region)
    for region in layout.lobules:
        paint_lobule(canvas, rng, region)
    stroma = layout.stroma
    inner_stroma = stroma.buffer(-60.0 / mpp)
    for x, y in sample_points(rng, inner_stroma, int(rng.integers(1, 4))):
        paint_duct(canvas, rng, x, y)
    for x, y in sample_points(rng, stroma, int(rng.poisson(stroma.area * mpp**2 * 1e-6 * 25))):
        draw_vessel(canvas, rng, x, y)
    scatter_fibroblasts(canvas, rng, stroma, 900.0, theta, theta_scale)
    for region in layout.tumor:  # desmoplastic stroma between tumor cells
        scatter_fibroblasts(canvas, rng, region, 400.0, theta, theta_scale)

    rate = MITOSES_PER_MM2[grade] * float(rng.lognormal(0.0, 0.25))
    params = {"mitoses_per_mm2": rate, "til_per_mm2": phenotype.til_per_mm2}
    painter = TUMOR_PAINTERS[phenotype.painter]
    tumor_union = shapely.union_all(layout.tumor) if layout.tumor else shapely.Polygon()
    band = tumor_union.buffer(rng.uniform(60.0, 110.0) / mpp).intersection(stroma) if layout.tumor else tumor_union
    scatter_lymphocytes(canvas, rng, band, phenotype.til_per_mm2)
    scatter_lymphocytes(canvas, rng, stroma.difference(band), phenotype.stromal_lymphocytes_per_mm2)
    for region in layout.tumor:
        painter(canvas, rng, region, grade, params)

    # Chromatin / fibre grain, optical blur, then Beer-Lambert rendering with sensor noise.
    tex = grain(rng, canvas.shape, sigma=0.7, spread=70)
    cv2.multiply(canvas.stains["H"], tex, dst=canvas.stains["H"], scale=1.0 / 128.0)
    tex = grain(rng, canvas.shape, sigma=1.0, spread=40)
    cv2.multiply(canvas.stains["E"], tex, dst=canvas.stains["E"], scale=1.0 / 128.0)
    del tex
    for name in canvas.stains:
        cv2.GaussianBlur(canvas.stains[name], (0, 0), 0.7, dst=canvas.stains[name])
    noise = rng.integers(0, 5, size=canvas.shape, dtype=np.uint8)
    strength = {name: float(rng.uniform(0.9, 1.1)) for name in canvas.stains}
    rgb = render_rgb(canvas.stains, intensity=float(rng.uniform(240.0, 245.0)), strength=strength, noise=noise)
    canvas.stains.clear()
    mitoses = canvas.nuclei.count("mitosis")
    area = sum(p.area for p in layout.tumor) * mpp**2 * 1e-6
    return Scene(rgb, mpp, layout, canvas, grade, mitoses / area if area else 0.0)
