"""TMA dearraying (bcpath.ihc.tma) on synthetic masks drawn at 8 µm/px."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from bcpath.errors import BcpathError
from bcpath.ihc.tma import (
    core_label,
    dearray,
    find_cores,
    fit_grid,
    parse_core_id,
    read_core_map,
    row_label,
)

MPP = 8.0
DIAMETER_UM = 600.0
SPACING_UM = 1000.0
RADIUS_PX = int(round(DIAMETER_UM / MPP / 2))  # 37-38 px
SPACING_PX = SPACING_UM / MPP  # 125 px


def _draw(shape: tuple[int, int], centres: list[tuple[float, float]], radius: int = RADIUS_PX) -> np.ndarray:
    img = np.zeros(shape, dtype=np.uint8)
    for x, y in centres:
        cv2.circle(img, (int(round(x)), int(round(y))), radius, 255, -1)
    return img > 0


def _tma(n_rows: int = 4, n_cols: int = 6, angle_deg: float = 3.0, jitter: float = 0.05,
         missing: tuple[str, ...] = ("B3", "D5"), seed: int = 0):
    """Mask plus truth {core_id: (x, y)} for all grid positions, and the missing ids."""
    rng = np.random.default_rng(seed)
    a = math.radians(angle_deg)
    origin = np.array([150.0, 150.0])
    truth: dict[str, tuple[float, float]] = {}
    for r in range(n_rows):
        for c in range(n_cols):
            u = np.array([c, r]) * SPACING_PX + rng.uniform(-jitter, jitter, 2) * SPACING_PX
            p = origin + np.array([u[0] * math.cos(a) - u[1] * math.sin(a),
                                   u[0] * math.sin(a) + u[1] * math.cos(a)])
            truth[core_label(r + 1, c + 1)] = (float(p[0]), float(p[1]))
    shape = (int(origin[1] + n_rows * SPACING_PX + 200), int(origin[0] + n_cols * SPACING_PX + 150))
    present = [xy for cid, xy in truth.items() if cid not in missing]
    return _draw(shape, present), truth, set(missing)


def test_row_labels_past_z() -> None:
    assert [row_label(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]
    assert core_label(27, 3) == "AA3"
    assert parse_core_id("AA3") == (27, 3)
    assert parse_core_id("b12") == (2, 12)
    assert parse_core_id("core-7") is None


def test_grid_with_jitter_rotation_and_missing_cores() -> None:
    mask, truth, missing = _tma()
    cores = find_cores(mask, MPP, DIAMETER_UM)
    assert len(cores) == 22
    assert cores["diameter_um"].between(540, 660).all()
    grid = fit_grid(cores)
    assert set(grid["core_id"]) == set(truth)  # 4 x 6, A1..D6
    assert abs(grid.attrs["angle_deg"] - 3.0) < 1.0
    found = grid[~grid["missing"]]
    assert set(grid.loc[grid["missing"], "core_id"]) == missing
    assert len(found) == 22
    for row in grid.itertuples():
        tx, ty = truth[row.core_id]
        # found cores within 0.1 x spacing of their truth; missing positions near the truth too
        limit = 0.1 * SPACING_PX if not row.missing else 0.15 * SPACING_PX
        assert math.hypot(row.x - tx, row.y - ty) < limit, row.core_id
        assert row.core_id == core_label(row.row, row.col)
    assert found["residual_um"].max() < 0.35 * SPACING_UM
    assert grid["diameter_um"].isna().sum() == 2


def test_interior_row_missing_keeps_row_letters() -> None:
    row_c = tuple(f"C{c}" for c in range(1, 7))
    mask, truth, missing = _tma(n_rows=5, missing=row_c, seed=3)
    grid = fit_grid(find_cores(mask, MPP, DIAMETER_UM))
    assert set(grid["core_id"]) == set(truth)
    assert set(grid.loc[grid["missing"], "core_id"]) == set(row_c)
    for row in grid[~grid["missing"]].itertuples():
        tx, ty = truth[row.core_id]
        assert math.hypot(row.x - tx, row.y - ty) < 0.1 * SPACING_PX


def test_known_spacing_and_level0_coords() -> None:
    mask, truth, _ = _tma(angle_deg=-2.0, seed=1)
    grid = dearray(mask, MPP, DIAMETER_UM, slide_mpp=0.5, expected_spacing_um=SPACING_UM)
    assert grid.attrs["coords"] == "level0"
    a1 = grid.set_index("core_id").loc["A1"]
    assert math.hypot(a1.x / 16 - truth["A1"][0], a1.y / 16 - truth["A1"][1]) < 0.1 * SPACING_PX


def test_touching_cores_are_split() -> None:
    mask = _draw((300, 400), [(120, 150), (188, 150)])  # centres 68 px apart, radius 37-38 px
    from scipy import ndimage

    assert ndimage.label(mask)[1] == 1
    cores = find_cores(mask, MPP, DIAMETER_UM)
    assert len(cores) == 2
    xs = sorted(cores["x"])
    assert abs(xs[0] - 120) < 6 and abs(xs[1] - 188) < 6


def test_debris_and_non_round_pieces_are_dropped() -> None:
    mask = _draw((300, 500), [(100, 150)])
    mask |= _draw((300, 500), [(250, 60), (300, 240)], radius=6)  # debris
    mask[200:206, 200:480] = True  # thin strip of core-like area, not round
    cores = find_cores(mask, MPP, DIAMETER_UM)
    assert len(cores) == 1
    assert abs(cores.loc[0, "x"] - 100) < 2 and abs(cores.loc[0, "y"] - 150) < 2


def test_holes_are_filled_before_measuring() -> None:
    mask = _draw((200, 200), [(100, 100)])
    mask[90:110, 90:110] = False
    cores = find_cores(mask, MPP, DIAMETER_UM)
    assert len(cores) == 1
    assert cores.loc[0, "area_px"] > math.pi * RADIUS_PX**2 * 0.95


@pytest.mark.parametrize("seed", range(8))
def test_random_blobs_raise_clear_error(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres: list[tuple[float, float]] = []
    while len(centres) < 15:
        p = (float(rng.uniform(50, 950)), float(rng.uniform(50, 950)))
        if all(math.hypot(p[0] - q[0], p[1] - q[1]) > 2 * RADIUS_PX + 10 for q in centres):
            centres.append(p)
    cores = find_cores(_draw((1000, 1000), centres), MPP, DIAMETER_UM)
    assert len(cores) == 15
    with pytest.raises(BcpathError, match="no TMA grid fits.*core map CSV"):
        fit_grid(cores)


def test_too_few_cores_raise() -> None:
    cores = find_cores(_draw((300, 500), [(100, 100), (225, 100), (350, 100)]), MPP, DIAMETER_UM)
    with pytest.raises(BcpathError, match="only 3 core"):
        fit_grid(cores)


def test_bad_inputs() -> None:
    with pytest.raises(BcpathError, match="µm/px"):
        find_cores(np.zeros((10, 10), bool), 0.0)
    with pytest.raises(BcpathError, match="2-D"):
        find_cores(np.zeros((10, 10, 3), bool), 8.0)
    assert find_cores(np.zeros((10, 10), bool), 8.0).empty


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cores.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_core_map_parsing(tmp_path: Path) -> None:
    path = _write(tmp_path, "core_id,x,y,diameter_um\nA1,100,200,600\nB2, 1500.5 ,2400,\n\nctrl,7,8,\n")
    df = read_core_map(path)
    assert list(df["core_id"]) == ["A1", "B2", "ctrl"]
    assert df["x"].tolist() == [100.0, 1500.5, 7.0]
    assert df.loc[0, "diameter_um"] == 600.0 and np.isnan(df.loc[1, "diameter_um"])
    assert df.loc[1, "row"] == 2 and df.loc[1, "col"] == 2 and pd.isna(df.loc[2, "row"])
    assert not df["missing"].any()
    out = dearray(np.zeros((5, 5), bool), MPP, core_map=path)
    assert out.attrs["coords"] == "level0" and len(out) == 3


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("core_id,x,y\nA1,1,2\nA2,3,4\nA1,5,6\n", r"line 4: core_id 'A1' already used on line 2"),
        ("core_id,x,y\nA1,1,2\nA2,abc,4\n", r"line 3: x='abc'"),
        ("core_id,x,y\nA1,1,-2\n", r"line 2: y='-2'"),
        ("core_id,x,y,diameter_um\nA1,1,2,big\n", r"line 2: diameter_um='big'"),
        ("core_id,x,y\n,1,2\n", r"line 2: empty core_id"),
        ("id,x,y\nA1,1,2\n", r"lacks core_id"),
        ("core_id,x,y\n", r"no cores listed"),
        ("", r"file is empty"),
    ],
)
def test_core_map_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(BcpathError, match=pattern):
        read_core_map(_write(tmp_path, text))


def test_core_map_not_found(tmp_path: Path) -> None:
    with pytest.raises(BcpathError, match="not found"):
        read_core_map(tmp_path / "nope.csv")
