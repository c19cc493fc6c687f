"""Report figures and tables: pure drawing on arrays (numpy + OpenCV), no file reading.

The steps that read a slide's outputs and write the PNG/HTML files the Snakemake report
shows are in :mod:`bcpath.report`; everything here takes arrays and returns arrays (or an
HTML string), so it is testable without a workflow run.

Colours (RGB) used across the report figures:

* tissue contour: green (as ``tissue/thumbnail.png``);
* nuclei contours: yellow;
* tumour contour: cyan;
* mitotic hotspot: a magenta square; detected mitoses: red dots (thumbnail) or red circles
  (hotspot close-up).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

NUCLEUS_RGB = (255, 230, 0)
TUMOR_RGB = (0, 200, 255)
HOTSPOT_RGB = (230, 0, 230)
MITOSIS_RGB = (230, 0, 0)
TEXT_BAR_PX = 28


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of a nucleus (label > 0) that touch another label or background
    (4-neighbourhood), i.e. each instance's inner outline, one pixel wide."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    if labels.size == 0:
        return edge
    differs_y = labels[1:, :] != labels[:-1, :]
    differs_x = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= differs_y
    edge[:-1, :] |= differs_y
    edge[:, 1:] |= differs_x
    edge[:, :-1] |= differs_x
    return edge & (labels > 0)


def densest_window(x: np.ndarray, y: np.ndarray, width: int, height: int, window: int) -> tuple[int, int]:
    """Top-left (x, y) of the ``window``-px square inside a ``width`` × ``height`` image that
    holds the most points (x, y in the same px), on a grid of window/4 steps; the image's
    centre when there are no points. The square is clipped to the image."""
    window = int(max(1, min(window, width, height)))
    step = max(1, window // 4)
    if len(x) == 0:
        return max(0, (width - window) // 2), max(0, (height - window) // 2)
    n_x, n_y = max(1, -(-width // step)), max(1, -(-height // step))
    counts, _, _ = np.histogram2d(
        np.clip(np.asarray(y, float), 0, height - 1), np.clip(np.asarray(x, float), 0, width - 1),
        bins=(n_y, n_x), range=((0, n_y * step), (0, n_x * step)),
    )
    k = max(1, min(window // step, n_y, n_x))
    summed = np.cumsum(np.cumsum(np.pad(counts, ((1, 0), (1, 0))), axis=0), axis=1)
    sums = summed[k:, k:] - summed[:-k, k:] - summed[k:, :-k] + summed[:-k, :-k]
    row, col = (int(v) for v in np.unravel_index(int(np.argmax(sums)), sums.shape))
    return min(col * step, max(0, width - window)), min(row * step, max(0, height - window))


def with_text_bar(image: np.ndarray, text: str) -> np.ndarray:
    """The image with a white strip below it holding one line of black text."""
    import cv2

    bar = np.full((TEXT_BAR_PX, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, text, (6, TEXT_BAR_PX - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([image, bar], axis=0)


def scale_bar(image: np.ndarray, mpp: float, microns: float | None = None) -> np.ndarray:
    """Copy of ``image`` with a black scale bar (and its length in µm) at the bottom left.

    ``microns`` defaults to a round length near a fifth of the image width."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    if microns is None:
        target = width * mpp / 5
        magnitude = 10 ** np.floor(np.log10(max(target, 1e-6)))
        microns = float(min((m * magnitude for m in (1, 2, 5, 10)), key=lambda v: abs(v - target)))
    length = int(round(microns / mpp))
    x0, y0 = 8, height - 10
    cv2.rectangle(out, (x0 - 3, y0 - 20), (x0 + length + 3, y0 + 4), (255, 255, 255), -1)
    cv2.line(out, (x0, y0), (x0 + length, y0), (0, 0, 0), 3)
    label = f"{microns:g} um" if microns < 1000 else f"{microns / 1000:g} mm"
    cv2.putText(out, label, (x0, y0 - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two RGB images next to each other on white, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    out = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def draw_nuclei_overlay(rgb: np.ndarray, labels: np.ndarray, mpp: float, title: str = "") -> np.ndarray:
    """The region as read (left) and with every segmented nucleus outlined in yellow (right),
    each with a scale bar; ``title`` in a strip below."""
    import cv2

    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"region {rgb.shape[:2]} and labels {labels.shape} differ in size")
    edge = label_boundaries(labels)
    # 2-px outlines: visible at the report's zoom, still inside each nucleus
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool) & (labels > 0)
    outlined = rgb.copy()
    outlined[edge] = NUCLEUS_RGB
    panel = side_by_side(scale_bar(rgb, mpp), scale_bar(outlined, mpp))
    return with_text_bar(panel, title) if title else panel


def _polygon_rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    """Every ring (exterior and holes) of a GeoJSON Polygon / MultiPolygon."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return list(geometry["coordinates"])
    if kind == "MultiPolygon":
        return [ring for polygon in geometry["coordinates"] for ring in polygon]
    return []


def draw_geojson_contours(image: np.ndarray, features: Iterable[dict[str, Any]], px_per_level0: float, colour: Sequence[int], thickness: int = 1) -> np.ndarray:
    """Copy of ``image`` with the polygon outlines of GeoJSON features (level-0 px) drawn,
    scaled by ``px_per_level0`` image px per level-0 px."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    rings = [
        np.round(np.asarray(ring, dtype=float)[:, :2] * px_per_level0).astype(np.int32)
        for feature in features
        for ring in _polygon_rings(feature.get("geometry") or {})
        if len(ring) >= 3
    ]
    if rings:
        cv2.polylines(out, rings, True, tuple(int(c) for c in colour), thickness, cv2.LINE_AA)
    return out


def hotspot_thumbnail(
    thumbnail: np.ndarray,
    px_per_level0: float,
    tumor_features: Iterable[dict[str, Any]],
    hotspot_bounds: Sequence[float] | None,
    mitoses_xy: np.ndarray,
) -> np.ndarray:
    """The slide thumbnail with the tumour outline (cyan), the hotspot square (magenta) and
    one red dot per detected mitosis; coordinates in level-0 px, scaled by ``px_per_level0``."""
    import cv2

    thickness = max(1, int(round(max(thumbnail.shape[:2]) / 400)))
    out = draw_geojson_contours(thumbnail, tumor_features, px_per_level0, TUMOR_RGB, thickness)
    radius = max(2, thickness + 1)
    for x, y in np.asarray(mitoses_xy, dtype=float).reshape(-1, 2):
        cv2.circle(out, (int(round(x * px_per_level0)), int(round(y * px_per_level0))), radius, MITOSIS_RGB, -1, cv2.LINE_AA)
    if hotspot_bounds is not None:
        x0, y0, x1, y1 = (int(round(v * px_per_level0)) for v in hotspot_bounds)
        cv2.rectangle(out, (x0, y0), (x1, y1), HOTSPOT_RGB, thickness + 1)
    return out


def hotspot_closeup(region: np.ndarray, mpp: float, origin_level0: tuple[float, float], level0_mpp: float, mitoses_xy: np.ndarray, radius_um: float = 20.0) -> np.ndarray:
    """The hotspot window read at ``mpp`` (top-left at ``origin_level0``) with a red circle
    around each detected mitosis inside it, and a scale bar."""
    import cv2

    out = np.ascontiguousarray(region.copy())
    scale = level0_mpp / mpp  # region px per level-0 px
    radius = max(4, int(round(radius_um / mpp)))
    for x, y in np.asarray(mitoses_xy, dtype=float).reshape(-1, 2):
        centre = (int(round((x - origin_level0[0]) * scale)), int(round((y - origin_level0[1]) * scale)))
        if 0 <= centre[0] < out.shape[1] and 0 <= centre[1] < out.shape[0]:
            cv2.circle(out, centre, radius, MITOSIS_RGB, 2, cv2.LINE_AA)
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), HOTSPOT_RGB, 3)
    return scale_bar(out, mpp)


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """``image`` resized (area / linear) to ``height`` px, aspect kept."""
    import cv2

    if image.shape[0] == height:
        return image
    width = max(1, int(round(image.shape[1] * height / image.shape[0])))
    interpolation = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


TABLE_CSS = """
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 13px; margin: 12px; }
h3 { margin: 0 0 6px 0; }
p.note { color: #444; margin: 0 0 10px 0; max-width: 60em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; }
tr.flagged td { background: #fff3cd; }
tr.failed td { background: #f8d7da; }
"""


def html_table(table: Any, title: str, note: str = "", flag_column: str | None = "flags", status_column: str | None = "status", digits: int = 3) -> str:
    """A self-contained HTML page showing a pandas DataFrame as a table.

    Rows with a non-empty ``flag_column`` are shaded yellow, rows whose ``status_column`` is
    not ``ok`` red; floats are rounded to ``digits`` significant decimals; NaN shows empty."""
    import pandas as pd

    def cell(value: Any) -> tuple[str, bool]:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "", False
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.{digits}g}" if abs(float(value)) < 1e5 else f"{float(value):.0f}", False
        if isinstance(value, (int, np.integer, bool, np.bool_)):
            return str(value), False
        return html.escape(str(value)), True

    frame = pd.DataFrame(table)
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        classes = []
        if flag_column in frame.columns and str(row[flag_column] if pd.notna(row[flag_column]) else "").strip():
            classes.append("flagged")
        if status_column in frame.columns and pd.notna(row[status_column]) and str(row[status_column]) != "ok":
            classes.append("failed")
        cells = []
        for value in row:
            text, is_text = cell(value)
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        class_attr = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{class_attr}>{''.join(cells)}</tr>")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{TABLE_CSS}</style></head>\n<body>"
        f"<h3>{html.escape(title)}</h3>{note_html}\n<table><thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table></body></html>\n"
    )
