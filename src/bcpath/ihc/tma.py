"""Tissue microarray (TMA) dearraying: find the cores on a low-res tissue mask and name them.

Steps: :func:`find_cores` takes connected components of the (hole-filled) tissue mask, splits
components much larger than one core by a distance-transform watershed, and keeps the ones of
core size (equivalent diameter within ±tolerance of the expected) and round shape
(circularity 4πA/P² ≥ 0.6). :func:`fit_grid` estimates the grid rotation (|angle| ≤ 10°) from
nearest-neighbour vectors, de-rotates the centroids, clusters y into rows and x into columns
(1-D gap clustering at half the spacing), fits a regular grid and labels cores "A1", "A2", ...
(row letter from the top, column number from the left; rows past Z are "AA", "AB", ...). Grid
positions without a core are returned as rows with ``missing=True``. :func:`read_core_map`
reads a user CSV that replaces detection; :func:`dearray` combines the steps.

Conventions: ``x``, ``y`` are pixel centroids (column, row) of the mask unless stated otherwise;
``row`` and ``col`` are 1-based (``row=1, col=1`` is "A1"). A row or column missing entirely at
the edge of the array cannot be detected (the fitted grid ends at the outermost core found).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bcpath.errors import BcpathError

logger = logging.getLogger(__name__)

MIN_CIRCULARITY = 0.6
MAX_ANGLE_DEG = 10.0
#: at least half the nearest-neighbour vectors must lie within this of the grid axes.
MAX_AXIS_SPREAD_DEG = 15.0
#: at least this fraction of the fitted grid positions must hold a core.
MIN_OCCUPANCY = 0.4
#: a core farther than this × spacing from its fitted grid position does not fit.
MAX_RESIDUAL_FRACTION = 0.35
_CORE_COLUMNS = ["x", "y", "diameter_um", "circularity", "area_px"]
_GRID_COLUMNS = ["core_id", "row", "col", "x", "y", "diameter_um", "residual_um", "missing"]
_CORE_ID = re.compile(r"^([A-Za-z]+)(\d+)$")


def row_label(index: int) -> str:
    """Row letter(s) of a 0-based row index: 0 → "A", 25 → "Z", 26 → "AA", 27 → "AB"."""
    if index < 0:
        raise ValueError(f"row index {index} is negative")
    label = ""
    n = index + 1
    while n > 0:
        n, rem = divmod(n - 1, 26)
        label = chr(ord("A") + rem) + label
    return label


def core_label(row: int, col: int) -> str:
    """Core id of 1-based ``row``, ``col``: (1, 1) → "A1", (27, 3) → "AA3"."""
    return f"{row_label(row - 1)}{col}"


def parse_core_id(core_id: str) -> tuple[int, int] | None:
    """1-based (row, col) of an id such as "B12" or "AA3"; None when it is not grid style."""
    match = _CORE_ID.match(core_id.strip())
    if match is None:
        return None
    row = 0
    for ch in match.group(1).upper():
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return row, int(match.group(2))


def _empty_cores(mpp: float) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=float) for c in _CORE_COLUMNS})
    df["area_px"] = df["area_px"].astype(int)
    df.attrs["mpp"] = mpp
    return df


def _split_touching(component: np.ndarray, radius_px: float) -> np.ndarray:
    """Watershed labels (0 = background) of a bool crop holding touching round cores."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from bcpath.images import h_maxima

    dist = ndimage.distance_transform_edt(component)
    h = max(1.0, 0.15 * radius_px)
    markers, count = ndimage.label(h_maxima(dist, h))
    if count < 2:
        return component.astype(np.int32)
    return np.asarray(watershed(-dist, markers, mask=component), dtype=np.int32)


def find_cores(
    mask: np.ndarray,
    mpp: float,
    core_diameter_um: float = 600.0,
    tolerance: float = 0.3,
) -> pd.DataFrame:
    """Candidate TMA cores of a low-res tissue mask.

    Args:
        mask: (H, W) bool tissue mask (e.g. :func:`bcpath.tissue.detect_tissue`).
        mpp: µm/px of the mask.
        core_diameter_um: expected core diameter (µm); TMA needles are 0.6, 1.0, 1.5 or 2 mm.
        tolerance: accepted relative deviation of a core's equivalent diameter (0.3 = ±30 %).

    Returns:
        DataFrame, one row per core: x, y (centroid, mask px), diameter_um (equivalent
        diameter), circularity (4πA/P²), area_px. ``attrs["mpp"]`` holds ``mpp``.

    Raises:
        BcpathError: mask not 2-D, bad mpp, diameter or tolerance.
    """
    from scipy import ndimage
    from skimage.measure import regionprops

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BcpathError(f"TMA mask: shape {mask.shape} is not (H, W); give a 2-D tissue mask")
    if not (math.isfinite(mpp) and mpp > 0):
        raise BcpathError(f"TMA mask: µm/px {mpp} must be a positive number; give the mask's µm/px, e.g. 8")
    if not (math.isfinite(core_diameter_um) and core_diameter_um > 0):
        raise BcpathError(f"TMA: core diameter {core_diameter_um} µm must be positive; give e.g. 600")
    if not 0 < tolerance < 1:
        raise BcpathError(f"TMA: diameter tolerance {tolerance} must lie in (0, 1); give e.g. 0.3")

    expected_px = core_diameter_um / mpp
    lo, hi = (1 - tolerance) * expected_px, (1 + tolerance) * expected_px
    filled = ndimage.binary_fill_holes(mask.astype(bool))
    labels, count = ndimage.label(filled)
    if count == 0:
        return _empty_cores(mpp)

    # Split components much larger than a core (touching cores) by watershed.
    next_label = count + 1
    for region in regionprops(labels):
        eq = math.sqrt(4.0 * region.area / math.pi)
        if eq <= hi:
            continue
        r0, c0, r1, c1 = region.bbox
        comp = region.image
        pieces = _split_touching(comp, expected_px / 2)
        n_pieces = int(pieces.max())
        if n_pieces < 2:
            continue
        crop = labels[r0:r1, c0:c1]
        for k in range(1, n_pieces + 1):
            crop[pieces == k] = next_label
            next_label += 1

    rows = []
    for region in regionprops(labels):
        area = float(region.area)
        eq = math.sqrt(4.0 * area / math.pi)
        if not lo <= eq <= hi:
            continue
        perimeter = float(region.perimeter)
        circularity = 4.0 * math.pi * area / (perimeter * perimeter) if perimeter > 0 else 0.0
        if circularity < MIN_CIRCULARITY:
            continue
        cy, cx = region.centroid
        rows.append((float(cx), float(cy), eq * mpp, min(circularity, 1.0), int(area)))
    if not rows:
        return _empty_cores(mpp)
    df = pd.DataFrame(rows, columns=_CORE_COLUMNS)
    df = df.sort_values(["y", "x"], ignore_index=True)
    df.attrs["mpp"] = mpp
    return df


def _no_grid(problem: str) -> BcpathError:
    return BcpathError(
        f"no TMA grid fits the detected cores: {problem}; check the core diameter and mask, "
        "or supply a core map CSV (columns core_id, x, y in level-0 px)"
    )


def _gap_clusters(values: np.ndarray, gap: float) -> np.ndarray:
    """0-based cluster index of each value, clusters ordered ascending, split at gaps > ``gap``."""
    order = np.argsort(values, kind="stable")
    breaks = np.diff(values[order]) > gap
    sorted_labels = np.concatenate([[0], np.cumsum(breaks)])
    labels = np.empty(len(values), dtype=int)
    labels[order] = sorted_labels
    return labels


def _grid_indices(values: np.ndarray, spacing: float) -> tuple[np.ndarray, float, float]:
    """Regular-grid index of each 1-D value, plus the fitted origin and pitch (px).

    Clusters separated by a gap of ~2 pitches (a whole row missing) get indices 2 apart.
    """
    clusters = _gap_clusters(values, 0.5 * spacing)
    n = int(clusters.max()) + 1
    centres = np.array([values[clusters == k].mean() for k in range(n)])
    if n == 1:
        return np.zeros(len(values), dtype=int), float(centres[0]), spacing
    pitch = float(np.median(np.diff(centres)))
    index = np.rint((centres - centres[0]) / pitch).astype(int)
    if len(np.unique(index)) > 1:
        slope, origin = np.polyfit(index.astype(float), centres, 1)
        pitch, base = float(slope), float(origin)
    else:
        base = float(centres[0])
    return index[clusters], base, pitch


def fit_grid(
    cores: pd.DataFrame,
    expected_spacing_um: float | None = None,
    *,
    mpp: float | None = None,
) -> pd.DataFrame:
    """Assign grid rows and columns to detected cores and label them "A1", "A2", ...

    Args:
        cores: :func:`find_cores` output (x, y in px; diameter_um optional).
        expected_spacing_um: centre-to-centre spacing (µm); None estimates it as the median
            nearest-neighbour distance.
        mpp: µm/px of ``x``, ``y``; defaults to ``cores.attrs["mpp"]``. Needed only with
            ``expected_spacing_um`` and for ``residual_um``.

    Returns:
        One DataFrame with columns core_id, row, col (1-based), x, y (px), diameter_um,
        residual_um (distance to the fitted grid position; NaN without an mpp) and missing
        (bool). Rows with ``missing=True`` are grid positions without a core: x, y there are
        the fitted position and diameter_um is NaN. Sorted by row, col. ``attrs`` hold
        ``angle_deg`` and ``spacing_px``.

    Raises:
        BcpathError: fewer than 4 cores, nearest-neighbour directions not along two
        perpendicular axes, rotation beyond ±10°, most cores off the grid, or under 40 %
        of the grid positions filled.
    """
    from scipy.spatial import cKDTree

    n = len(cores)
    if n < 4:
        raise _no_grid(f"only {n} core(s) found, at least 4 are needed")
    scale = mpp if mpp is not None else cores.attrs.get("mpp")
    pts = cores[["x", "y"]].to_numpy(dtype=float)
    dist, idx = cKDTree(pts).query(pts, k=2)
    if expected_spacing_um is None:
        spacing = float(np.median(dist[:, 1]))
    else:
        if scale is None:
            raise BcpathError("TMA grid: expected_spacing_um given without µm/px; pass mpp=")
        spacing = float(expected_spacing_um) / float(scale)
    if not spacing > 0:
        raise _no_grid("cores coincide (zero spacing)")

    vec = pts[idx[:, 1]] - pts
    theta = np.arctan2(vec[:, 1], vec[:, 0])
    angle = float(np.arctan2(np.sin(4 * theta).mean(), np.cos(4 * theta).mean()) / 4)
    off_axis = np.abs((theta - angle + math.pi / 4) % (math.pi / 2) - math.pi / 4)
    aligned = float(np.mean(off_axis <= math.radians(MAX_AXIS_SPREAD_DEG)))
    if aligned < 0.5:
        raise _no_grid(
            f"only {aligned:.0%} of nearest-neighbour directions lie within "
            f"{MAX_AXIS_SPREAD_DEG:.0f}° of a common row/column axis"
        )
    if abs(math.degrees(angle)) > MAX_ANGLE_DEG:
        raise _no_grid(f"grid rotation {math.degrees(angle):.1f}° exceeds ±{MAX_ANGLE_DEG:.0f}°")

    # De-rotate about the centroid: u = R(-angle) (p - c).
    centre = pts.mean(axis=0)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    rot = np.array([[cos_a, -sin_a], [sin_a, cos_a]])
    u = (pts - centre) @ rot  # row vectors: (R^T p^T)^T
    cols, x0, px = _grid_indices(u[:, 0], spacing)
    rows, y0, py = _grid_indices(u[:, 1], spacing)
    fitted_u = np.column_stack([x0 + cols * px, y0 + rows * py])
    residual = np.hypot(*(u - fitted_u).T)

    bad = residual > MAX_RESIDUAL_FRACTION * spacing
    keep = np.ones(n, dtype=bool)
    cells: dict[tuple[int, int], int] = {}
    for i in np.argsort(residual, kind="stable"):
        key = (int(rows[i]), int(cols[i]))
        if key in cells:
            keep[i] = False
            bad[i] = True
        else:
            cells[key] = int(i)
    n_rows, n_cols = int(rows.max()) + 1, int(cols.max()) + 1
    if bad.sum() > n / 2:
        raise _no_grid(
            f"{int(bad.sum())} of {n} cores lie more than {MAX_RESIDUAL_FRACTION} × spacing "
            "from a regular grid or share a grid position"
        )
    if len(cells) < MIN_OCCUPANCY * n_rows * n_cols:
        raise _no_grid(
            f"{len(cells)} cores fill under {MIN_OCCUPANCY:.0%} of the "
            f"{n_rows} × {n_cols} grid positions"
        )
    if (~keep).any():
        logger.warning("TMA grid: dropped %d detection(s) sharing a grid position", int((~keep).sum()))

    diam = cores["diameter_um"].to_numpy(dtype=float) if "diameter_um" in cores else np.full(n, np.nan)
    res_um = residual * float(scale) if scale is not None else np.full(n, np.nan)
    records = []
    for r in range(n_rows):
        for c in range(n_cols):
            i = cells.get((r, c))
            if i is not None:
                records.append((core_label(r + 1, c + 1), r + 1, c + 1, pts[i, 0], pts[i, 1],
                                diam[i], res_um[i], False))
            else:
                p = np.array([x0 + c * px, y0 + r * py]) @ rot.T + centre
                records.append((core_label(r + 1, c + 1), r + 1, c + 1, float(p[0]), float(p[1]),
                                math.nan, math.nan, True))
    out = pd.DataFrame(records, columns=_GRID_COLUMNS)
    out["missing"] = out["missing"].astype(bool)
    out.attrs.update(cores.attrs)
    out.attrs["angle_deg"] = math.degrees(angle)
    out.attrs["spacing_px"] = spacing
    return out


def read_core_map(path: str | Path) -> pd.DataFrame:
    """A user core map CSV that replaces detection.

    Columns (header required, any order, case-insensitive): core_id, x, y (level-0 px),
    optional diameter_um. Ids must be unique; coordinates finite and ≥ 0.

    Returns:
        DataFrame core_id, row, col (1-based, nullable Int64: parsed from ids such as "B3",
        <NA> otherwise), x, y, diameter_um (NaN where not given), missing (all False).

    Raises:
        BcpathError: unreadable file, missing columns, empty id, duplicate id, non-numeric or
        negative values (the message names the line).
    """
    path = Path(path)
    name = f"core map {path}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise BcpathError(f"{name}: file is empty; give a CSV with header core_id,x,y")
            columns = [h.strip().lower() for h in header]
            missing = [c for c in ("core_id", "x", "y") if c not in columns]
            if missing:
                raise BcpathError(
                    f"{name}: header {header} lacks {', '.join(missing)}; "
                    "give columns core_id, x, y (level-0 px) and optionally diameter_um"
                )
            pos = {c: columns.index(c) for c in ("core_id", "x", "y", "diameter_um") if c in columns}
            seen: dict[str, int] = {}
            records = []
            for values in reader:
                line = reader.line_num
                if not any(v.strip() for v in values):
                    continue
                values = values + [""] * (len(columns) - len(values))
                core_id = values[pos["core_id"]].strip()
                if not core_id:
                    raise BcpathError(f"{name} line {line}: empty core_id; give every core an id")
                if core_id in seen:
                    raise BcpathError(
                        f"{name} line {line}: core_id {core_id!r} already used on line {seen[core_id]}; "
                        "give each core a unique id"
                    )
                seen[core_id] = line
                coords = []
                for col in ("x", "y"):
                    raw = values[pos[col]].strip()
                    value = _number(raw)
                    if value is None or value < 0:
                        raise BcpathError(
                            f"{name} line {line}: {col}={raw!r} for core {core_id} is not a "
                            "non-negative number; give level-0 pixel coordinates"
                        )
                    coords.append(value)
                diameter = math.nan
                if "diameter_um" in pos and values[pos["diameter_um"]].strip():
                    raw = values[pos["diameter_um"]].strip()
                    value = _number(raw)
                    if value is None or value <= 0:
                        raise BcpathError(
                            f"{name} line {line}: diameter_um={raw!r} for core {core_id} is not a "
                            "positive number; give µm or leave it empty"
                        )
                    diameter = value
                rc = parse_core_id(core_id)
                records.append((core_id, rc[0] if rc else pd.NA, rc[1] if rc else pd.NA,
                                coords[0], coords[1], diameter))
    except FileNotFoundError:
        raise BcpathError(f"{name}: file not found; check the path") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BcpathError(f"{name}: not a readable CSV ({exc}); save it as UTF-8 CSV") from None
    if not records:
        raise BcpathError(f"{name}: no cores listed; add one line per core (core_id,x,y)")
    out = pd.DataFrame(records, columns=["core_id", "row", "col", "x", "y", "diameter_um"])
    out["row"] = out["row"].astype("Int64")
    out["col"] = out["col"].astype("Int64")
    out["missing"] = False
    out.attrs["coords"] = "level0"
    return out


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def dearray(
    mask: np.ndarray,
    mpp: float,
    core_diameter_um: float = 600.0,
    core_map: str | Path | None = None,
    *,
    slide_mpp: float | None = None,
    expected_spacing_um: float | None = None,
    tolerance: float = 0.3,
) -> pd.DataFrame:
    """Cores of a TMA slide: the user's core map when given, else detection + grid fit.

    Args:
        mask: (H, W) bool tissue mask at ``mpp`` µm/px.
        mpp: µm/px of the mask.
        core_diameter_um: expected core diameter (µm).
        core_map: optional CSV path (see :func:`read_core_map`); overrides detection.
        slide_mpp: µm/px of level 0. When given, detected x, y (mask pixel centres) are scaled
            to level-0 px.
        expected_spacing_um: grid spacing (µm); None estimates it.
        tolerance: accepted relative deviation of the core diameter.

    Returns:
        :func:`fit_grid`-style table (core_id, row, col, x, y, diameter_um, missing, ...).
        ``attrs["coords"]`` is "level0" (core map, or detection with ``slide_mpp``) or "mask".
    """
    if core_map is not None:
        return read_core_map(core_map)
    cores = find_cores(mask, mpp, core_diameter_um, tolerance)
    grid = fit_grid(cores, expected_spacing_um, mpp=mpp)
    if slide_mpp is not None:
        if not (math.isfinite(slide_mpp) and slide_mpp > 0):
            raise BcpathError(f"TMA: slide µm/px {slide_mpp} must be a positive number; give e.g. 0.25")
        factor = mpp / slide_mpp
        # Mask pixel (i, j) covers level-0 [i·f, (i+1)·f): its centre is at (i + 0.5)·f.
        grid["x"] = (grid["x"] + 0.5) * factor
        grid["y"] = (grid["y"] + 0.5) * factor
        grid.attrs["coords"] = "level0"
    else:
        grid.attrs["coords"] = "mask"
    return grid
