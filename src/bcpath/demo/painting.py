"""Drawing primitives for synthetic brightfield slides, painted in stain-density space.

A slide is painted as one uint8 density image per stain (``Canvas.stains``: "H" hematoxylin,
"E" eosin; an IHC painter adds "DAB"), each (H, W) uint8 holding optical density × 100
(value 100 = OD 1.0). ``render_rgb`` turns the densities into (H, W, 3) uint8 RGB with the
Beer-Lambert law, so colour deconvolution and stain normalisation see realistic colours.

Coordinates are level-0 pixels (x right, y down). Sizes given in µm are converted with
``Canvas.px``. Every nucleus that is drawn is also logged in ``Canvas.nuclei`` (ground truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import overload

import cv2
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

# Stain optical-density vectors (R, G, B), unit length: the Macenko reference H&E matrix and
# the DAB vector of Liu et al. (DESIGN.md, system 4).
STAIN_VECTORS: dict[str, tuple[float, float, float]] = {
    "H": (0.5626, 0.7201, 0.4062),
    "E": (0.2159, 0.8012, 0.5581),
    "DAB": (0.268, 0.570, 0.776),
}

# Nucleus kinds written to the ground-truth tables.
NUCLEUS_KINDS = ("tumor", "lymphocyte", "stromal", "normal_epithelial", "mitosis")

# Sub-pixel precision for cv2 drawing (coordinates are multiplied by 2**_SHIFT).
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass
class NucleusLog:
    """Ground truth of drawn nuclei: centre (level-0 px), semi-axes (px), angle (deg), kind."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    angle: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)

    def add(self, x: float, y: float, a: float, b: float, angle: float, kind: str) -> None:
        self.x.append(float(x))
        self.y.append(float(y))
        self.a.append(float(a))
        self.b.append(float(b))
        self.angle.append(float(angle))
        self.kind.append(kind)

    def __len__(self) -> int:
        return len(self.x)

    def count(self, kind: str) -> int:
        return sum(1 for k in self.kind if k == kind)


@dataclass
class Canvas:
    """Stain-density images of one slide plus the ground truth drawn into them.

    Attributes:
        width, height: level-0 size in pixels.
        mpp: µm per level-0 pixel.
        stains: name -> (height, width) uint8 density (OD × 100).
        nuclei: every nucleus drawn (including mitotic figures, kind "mitosis").
    """

    width: int
    height: int
    mpp: float
    stains: dict[str, np.ndarray]
    nuclei: NucleusLog = field(default_factory=NucleusLog)

    @classmethod
    def blank(cls, width: int, height: int, mpp: float, stains: tuple[str, ...] = ("H", "E")) -> Canvas:
        return cls(width, height, mpp, {s: np.zeros((height, width), np.uint8) for s in stains})

    @overload
    def px(self, um: float) -> float: ...

    @overload
    def px(self, um: np.ndarray) -> np.ndarray: ...

    def px(self, um: float | np.ndarray) -> float | np.ndarray:
        """Convert µm to level-0 pixels (a float for a float, an array for an array)."""
        return um / self.mpp

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


# --------------------------------------------------------------------------- geometry


def blob_polygon(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    roughness: float = 0.25,
    n_vertices: int = 96,
    n_harmonics: int = 6,
    rotation: float | None = None,
    jag: float = 0.0,
) -> np.ndarray:
    """An irregular closed outline around (cx, cy); returns (n_vertices, 2) float64 x, y.

    The radius is an ellipse (rx, ry) modulated by random Fourier harmonics whose amplitude
    falls as 1/k; ``roughness`` is the amplitude of the first harmonic; ``jag`` adds
    vertex-level radial noise (relative, lightly smoothed) for ragged edges.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, n_harmonics + 2):
        r += roughness * rng.uniform(0.3, 1.0) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if jag > 0:
        noise = rng.normal(0.0, jag, n_vertices)
        kernel = np.ones(15) / 15.0
        r += np.convolve(np.concatenate([noise[-7:], noise, noise[:7]]), kernel, mode="valid")
    r = np.clip(r, 0.35, None)
    rot = rng.uniform(0, np.pi) if rotation is None else rotation
    px = rx * r * np.cos(theta)
    py = ry * r * np.sin(theta)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * px - s * py, cy + s * px + c * py], axis=1)


def polygon(points: np.ndarray) -> shapely.Polygon:
    """A valid shapely polygon (largest part) from (N, 2) vertices."""
    geom = shapely.make_valid(shapely.Polygon(points))
    return largest_polygon(geom)


def largest_polygon(geom: BaseGeometry) -> shapely.Polygon:
    """The largest Polygon inside ``geom`` (empty Polygon when there is none)."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.Polygon)]
    if not parts:
        return shapely.Polygon()
    return max(parts, key=lambda g: g.area)


def polygons_of(geom: BaseGeometry, min_area: float = 0.0) -> list[shapely.Polygon]:
    """The Polygon parts of ``geom`` with area ≥ ``min_area``, largest first."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.Polygon)]
    return sorted((g for g in parts if g.area >= min_area and not g.is_empty), key=lambda g: -g.area)


def sample_points(
    rng: np.random.Generator, geom: BaseGeometry, n: int, max_tries: int = 20
) -> np.ndarray:
    """``n`` uniform random points inside ``geom``; (≤ n, 2) float64 x, y (rejection sampling)."""
    if n <= 0 or geom.is_empty:
        return np.zeros((0, 2))
    x0, y0, x1, y1 = geom.bounds
    fill = max(geom.area / max((x1 - x0) * (y1 - y0), 1e-9), 1e-3)
    out: list[np.ndarray] = []
    have = 0
    for _ in range(max_tries):
        m = int(min((n - have) / fill * 1.3 + 16, 2_000_000))
        pts = np.stack([rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)], axis=1)
        pts = pts[shapely.contains_xy(geom, pts[:, 0], pts[:, 1])]
        out.append(pts[: n - have])
        have += len(out[-1])
        if have >= n:
            break
    return np.concatenate(out) if out else np.zeros((0, 2))


def rasterize(
    geom: BaseGeometry,
    shape: tuple[int, int],
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    value: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fill polygon(s) into a (H, W) uint8 mask; pixel (i, j) covers level-0 ((j/scale)+ox, ...).

    Holes are cleared back to 0 in a fresh mask; when drawing into ``out`` holes are left as
    they were.
    """
    mask = np.zeros(shape, np.uint8) if out is None else out
    fresh = out is None
    ox, oy = origin
    for poly in polygons_of(geom):
        ext = _to_int(np.asarray(poly.exterior.coords), ox, oy, scale)
        cv2.fillPoly(mask, [ext], value, lineType=cv2.LINE_8, shift=_SHIFT)
        if fresh:
            holes = [_to_int(np.asarray(r.coords), ox, oy, scale) for r in poly.interiors]
            if holes:
                cv2.fillPoly(mask, holes, 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def _to_int(coords: np.ndarray, ox: float, oy: float, scale: float) -> np.ndarray:
    pts = (coords[:, :2] - (ox, oy)) * scale
    return np.round(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)


# --------------------------------------------------------------------------- textures


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: float, dtype: type = np.float32
) -> np.ndarray:
    """Low-frequency noise in [0, 1], (H, W) float32, with features about ``cell`` px wide."""
    h, w = shape
    gh, gw = max(2, int(math.ceil(h / cell)) + 2), max(2, int(math.ceil(w / cell)) + 2)
    grid: np.ndarray = rng.random((gh, gw), dtype=np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 0.8)
    grid = (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-6)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0.0, 1.0).astype(dtype)


def grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 0.8, spread: int = 60) -> np.ndarray:
    """Fine multiplicative grain centred on 128: (H, W) uint8 (use with ``cv2.multiply``, scale 1/128).

    Made at half resolution and upsampled (fast); ``spread`` is the ± range before blurring.
    """
    h, w = shape
    half: np.ndarray = rng.integers(128 - spread, 128 + spread + 1, size=((h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    half = cv2.GaussianBlur(half, (0, 0), sigma)
    return cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)


def orientation_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """A smooth field of angles (radians), (H, W) float32, varying over ``cell`` px."""
    return (smooth_noise(rng, shape, cell) * 2.0 * np.pi).astype(np.float32)


def trace_fibers(
    rng: np.random.Generator,
    starts: np.ndarray,
    theta: np.ndarray,
    theta_scale: float,
    step: float,
    n_steps: int,
    wiggle: float = 0.25,
) -> np.ndarray:
    """Follow an orientation field from ``starts`` ((F, 2) px); returns (F, n_steps+1, 2) float32.

    ``theta`` is sampled at (y, x) * ``theta_scale`` (it may be stored at lower resolution).
    """
    pts = np.empty((len(starts), n_steps + 1, 2), np.float32)
    pts[:, 0] = starts
    th_h, th_w = theta.shape
    phase = rng.uniform(0, 2 * np.pi, len(starts)).astype(np.float32)
    flip = np.where(rng.random(len(starts)) < 0.5, 0.0, np.pi).astype(np.float32)
    for i in range(n_steps):
        p = pts[:, i]
        ix = np.clip((p[:, 0] * theta_scale).astype(np.int64), 0, th_w - 1)
        iy = np.clip((p[:, 1] * theta_scale).astype(np.int64), 0, th_h - 1)
        ang = theta[iy, ix] + flip + wiggle * np.sin(phase + 0.7 * i)
        pts[:, i + 1, 0] = p[:, 0] + step * np.cos(ang)
        pts[:, i + 1, 1] = p[:, 1] + step * np.sin(ang)
    return pts


def draw_polylines(
    img: np.ndarray, lines: np.ndarray, value: int, thickness: int, antialias: bool = False
) -> None:
    """Draw open polylines ((F, N, 2) float px) into a (H, W) uint8 image.

    Aliased by default (3× faster); slides are blurred before rendering anyway.
    """
    if len(lines) == 0:
        return
    pts = list(np.round(lines * _ONE).astype(np.int32).reshape(len(lines), -1, 1, 2))
    line_type = cv2.LINE_AA if antialias else cv2.LINE_8
    cv2.polylines(img, pts, False, int(value), thickness=int(thickness), lineType=line_type, shift=_SHIFT)


# --------------------------------------------------------------------------- cells


def ellipse(
    img: np.ndarray, x: float, y: float, a: float, b: float, angle: float, value: int, thickness: int = -1
) -> None:
    """Draw an ellipse (semi-axes a, b px; angle deg) filled (thickness -1) or outlined."""
    cv2.ellipse(
        img,
        (int(round(x * _ONE)), int(round(y * _ONE))),
        (max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))),
        float(angle),
        0,
        360,
        int(value),
        thickness=thickness,
        lineType=cv2.LINE_8,
        shift=_SHIFT,
    )


@dataclass(frozen=True)
class NucleusStyle:
    """How a nucleus looks: hematoxylin densities of body, rim and nucleolus (OD × 100)."""

    body: int = 140
    rim: int = 0  # 0: no separate rim
    nucleolus: int = 0  # 0: no nucleolus
    nucleolus_um: float = 0.8
    jitter: int = 12  # ± random change of the body density per nucleus
    eosin: int = 8  # eosin density inside the nucleus


def draw_nucleus(
    canvas: Canvas,
    rng: np.random.Generator,
    x: float,
    y: float,
    a: float,
    b: float,
    angle: float,
    style: NucleusStyle,
    kind: str,
) -> None:
    """Draw one nucleus (semi-axes a, b px) into H and E and log it as ground truth."""
    h_img, e_img = canvas.stains["H"], canvas.stains["E"]
    body = int(np.clip(style.body + rng.integers(-style.jitter, style.jitter + 1), 20, 250))
    ellipse(e_img, x, y, a, b, angle, style.eosin)
    ellipse(h_img, x, y, a, b, angle, body)
    if style.rim:
        ellipse(h_img, x, y, a, b, angle, style.rim, thickness=max(1, int(round(0.2 * b))))
    if style.nucleolus:
        r = canvas.px(style.nucleolus_um)
        for _ in range(int(rng.integers(1, 3))):
            ox, oy = rng.uniform(-0.35, 0.35, 2) * (a, b)
            ellipse(h_img, x + ox, y + oy, r, r * rng.uniform(0.8, 1.0), 0, style.nucleolus)
    canvas.nuclei.add(x, y, a, b, angle, kind)


def draw_mitosis(canvas: Canvas, rng: np.random.Generator, x: float, y: float) -> str:
    """Draw a mitotic figure at (x, y): clumped chromatin, a metaphase plate or anaphase bands.

    A pale cytoplasmic halo surrounds the figure. Logged with kind "mitosis"; returns the phase.
    """
    h_img, e_img = canvas.stains["H"], canvas.stains["E"]
    px = canvas.px
    halo = px(rng.uniform(6.5, 8.5))
    shrink = rng.uniform(0.6, 0.85)  # the cell rounds up and its cytoplasm clears
    hx, hy = int(x), int(y)
    if 0 <= hx < canvas.width and 0 <= hy < canvas.height:
        e_halo, h_halo = int(e_img[hy, hx] * shrink), int(h_img[hy, hx] * shrink)
    else:
        e_halo, h_halo = 20, 10
    ellipse(e_img, x, y, halo, halo * rng.uniform(0.8, 1.0), rng.uniform(0, 180), max(e_halo, 12))
    ellipse(h_img, x, y, halo, halo, 0, max(h_halo, 6))
    phase = str(rng.choice(["prophase", "metaphase", "anaphase"], p=[0.35, 0.45, 0.2]))
    angle = rng.uniform(0, np.pi)
    ux, uy = math.cos(angle), math.sin(angle)  # along the plate
    nx, ny = -uy, ux  # across it
    dark = int(rng.integers(205, 240))
    if phase == "prophase":
        radius = px(rng.uniform(3.5, 4.5))
        n = int(rng.integers(8, 15))
        for _ in range(n):
            rr = radius * math.sqrt(rng.random())
            t = rng.uniform(0, 2 * np.pi)
            s = px(rng.uniform(0.8, 1.6))
            ellipse(h_img, x + rr * math.cos(t), y + rr * math.sin(t), s, s * rng.uniform(0.5, 1), rng.uniform(0, 180), dark)
        a = b = radius
    else:
        length = px(rng.uniform(8.0, 12.0))
        offsets = [0.0] if phase == "metaphase" else [-1.0, 1.0]
        gap = px(rng.uniform(3.0, 4.5))
        for o in offsets:
            cx, cy = x + o * gap * nx, y + o * gap * ny
            n = int(rng.integers(7, 12))
            for t in np.linspace(-0.5, 0.5, n):
                jitter = rng.normal(0, px(0.5))
                s = px(rng.uniform(0.9, 1.5))
                ellipse(
                    h_img,
                    cx + t * length * ux + jitter * nx,
                    cy + t * length * uy + jitter * ny,
                    s,
                    s * rng.uniform(0.6, 1.0),
                    rng.uniform(0, 180),
                    dark,
                )
            # a few chromosome arms sticking out of the plate
            for _ in range(int(rng.integers(2, 6))):
                t = rng.uniform(-0.45, 0.45)
                sx, sy = cx + t * length * ux, cy + t * length * uy
                sign = 1 if rng.random() < 0.5 else -1
                ex, ey = sx + sign * nx * px(rng.uniform(1.5, 2.5)), sy + sign * ny * px(rng.uniform(1.5, 2.5))
                cv2.line(h_img, _ip(sx, sy), _ip(ex, ey), dark, max(1, int(px(0.9))), cv2.LINE_AA, _SHIFT)
        a = length / 2
        b = px(1.5) + (gap if phase == "anaphase" else 0.0)
    canvas.nuclei.add(x, y, a, b, math.degrees(angle), "mitosis")
    return phase


def _ip(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def jittered_grid(
    rng: np.random.Generator, bounds: tuple[float, float, float, float], spacing: float, jitter: float
) -> np.ndarray:
    """Hexagonal grid points with uniform jitter inside ``bounds`` (x0, y0, x1, y1); (N, 2) float64."""
    x0, y0, x1, y1 = bounds
    rows = np.arange(y0, y1 + spacing, spacing * math.sqrt(3) / 2)
    cols = np.arange(x0, x1 + spacing, spacing)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows))[:, None] % 2) * spacing / 2
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return pts + rng.uniform(-jitter, jitter, pts.shape)


def points_in_mask(points: np.ndarray, mask: np.ndarray, origin: tuple[int, int] = (0, 0), scale: float = 1.0) -> np.ndarray:
    """Boolean (N,) whether each (x, y) point lands on a nonzero pixel of ``mask``."""
    if len(points) == 0:
        return np.zeros(0, bool)
    ix = np.floor((points[:, 0] - origin[0]) * scale).astype(np.int64)
    iy = np.floor((points[:, 1] - origin[1]) * scale).astype(np.int64)
    ok = (ix >= 0) & (iy >= 0) & (ix < mask.shape[1]) & (iy < mask.shape[0])
    out = np.zeros(len(points), bool)
    out[ok] = mask[iy[ok], ix[ok]] > 0
    return out


def fill_where(img: np.ndarray, mask: np.ndarray, value: np.ndarray | int, box: tuple[int, int, int, int]) -> None:
    """Set ``img[box]`` to ``value`` where ``mask`` (box-sized) is nonzero; box = x0, y0, x1, y1."""
    x0, y0, x1, y1 = box
    np.copyto(img[y0:y1, x0:x1], value, where=mask.astype(bool))


def clip_box(geom: BaseGeometry, width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """Integer bounding box of ``geom`` grown by ``margin`` px and clipped to the slide."""
    x0, y0, x1, y1 = geom.bounds
    return (
        max(0, int(math.floor(x0 - margin))),
        max(0, int(math.floor(y0 - margin))),
        min(width, int(math.ceil(x1 + margin)) + 1),
        min(height, int(math.ceil(y1 + margin)) + 1),
    )


# --------------------------------------------------------------------------- rendering


def render_rgb(
    stains: dict[str, np.ndarray],
    vectors: dict[str, tuple[float, float, float]] | None = None,
    intensity: float = 243.0,
    strength: dict[str, float] | None = None,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """Beer-Lambert rendering of stain densities to RGB.

    Args:
        stains: name -> (H, W) uint8 density (OD × 100).
        vectors: name -> unit OD vector (R, G, B); defaults to ``STAIN_VECTORS``.
        intensity: brightness of empty glass (0-255).
        strength: name -> multiplier on the density (slide-to-slide staining variation).
        noise: optional (H, W) uint8 sensor noise centred on 2, added to every channel.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    vectors = vectors or STAIN_VECTORS
    strength = strength or {}
    names = list(stains)
    h, w = stains[names[0]].shape
    rgb = np.empty((h, w, 3), np.uint8)
    levels = np.arange(256, dtype=np.float64) / 100.0
    for c in range(3):
        channel: np.ndarray | None = None
        for k, name in enumerate(names):
            od = vectors[name][c] * strength.get(name, 1.0) * levels
            top = intensity if k == 0 else 255.0  # glass brightness rides on the first factor
            lut = np.clip(np.round(top * np.exp(-od)), 0, 255).astype(np.uint8)
            factor = cv2.LUT(stains[name], lut)
            channel = factor if channel is None else cv2.multiply(channel, factor, scale=1.0 / 255.0)
        assert channel is not None
        if noise is not None:
            # cv2 stubs omit the scalar form of src2, which OpenCV accepts.
            channel = cv2.subtract(cv2.add(channel, noise), 2)  # type: ignore[call-overload]
        rgb[:, :, c] = channel
    return rgb
