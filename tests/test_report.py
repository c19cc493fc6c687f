"""`snakemake --report`: one category per system, every figure with a caption.

The drawing functions are unit-tested on small arrays. The report itself is built on the demo
run that tests/test_workflow_demo.py makes: the session fixture ``demo_run`` is shared through
tests/conftest.py, so the report test adds only the report build (about 20 s) and no second
demo run. ``BCPATH_DEMO_RUN=<folder of a finished default run>`` points these tests at an
existing run instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcpath.overlays import (
    HOTSPOT_RGB,
    MITOSIS_RGB,
    NUCLEUS_RGB,
    TUMOR_RGB,
    densest_window,
    draw_nuclei_overlay,
    hotspot_thumbnail,
    html_table,
    label_boundaries,
)
from tests.workflow_helpers import run_snakemake

CATEGORIES = ("QC", "ER/PR/HER2", "Nuclei", "Proliferation", "IHC H-Score")

# ---------------------------------------------------------------------------- drawing


def test_label_boundaries_outline_each_instance_inside_it():
    labels = np.zeros((10, 12), np.uint32)
    labels[2:6, 2:6] = 1
    labels[2:6, 6:9] = 2  # touching: both keep their own outline
    edge = label_boundaries(labels)
    assert not edge[labels == 0].any()
    assert edge[2, 3] and edge[3, 2] and edge[3, 5] and edge[3, 6] and edge[5, 7]
    assert not edge[3, 3] and not edge[4, 4]  # interior
    assert label_boundaries(np.zeros((0, 0), np.uint32)).shape == (0, 0)


def test_densest_window_finds_the_cluster():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1000, 50), rng.uniform(700, 760, 200)])
    y = np.concatenate([rng.uniform(0, 800, 50), rng.uniform(100, 160, 200)])
    left, top = densest_window(x, y, 1000, 800, 128)
    assert left <= 700 and left + 128 >= 760 and top <= 100 and top + 128 >= 160
    assert densest_window(np.array([]), np.array([]), 1000, 800, 128) == (436, 336)  # centred
    left, top = densest_window(x, y, 100, 80, 128)  # the window shrinks to 80 px: inside the image
    assert 0 <= left <= 20 and top == 0


def test_nuclei_overlay_shows_region_and_outlines_side_by_side():
    rgb = np.full((64, 80, 3), 200, np.uint8)
    labels = np.zeros((64, 80), np.uint32)
    labels[20:30, 20:30] = 7
    panel = draw_nuclei_overlay(rgb, labels, 0.5, title="demo")
    assert panel.shape[0] > 64 and panel.shape[1] > 2 * 80  # two panels + a text strip
    right = panel[:64, 80 + 6 :]
    assert (right[20, 20:30] == NUCLEUS_RGB).all(axis=-1).all()
    assert (right[25, 25] == 200).all()  # the nucleus' interior is left as read
    with pytest.raises(ValueError):
        draw_nuclei_overlay(rgb, labels[:10], 0.5)


def test_hotspot_thumbnail_draws_tumour_hotspot_and_mitoses_in_level0_coordinates():
    thumb = np.full((100, 120, 3), 240, np.uint8)
    tumor = [{"geometry": {"type": "Polygon", "coordinates": [[[160, 160], [1600, 160], [1600, 1440], [160, 1440], [160, 160]]]}}]
    out = hotspot_thumbnail(thumb, 1 / 16, tumor, (320, 320, 960, 960), np.array([[640.0, 640.0]]))
    assert (out[40, 40] == MITOSIS_RGB).all()  # level-0 (640, 640) at 16 level-0 px per thumbnail px
    assert (out[20, 40] == HOTSPOT_RGB).all()  # hotspot square's top edge at y = 320 / 16
    assert np.abs(out[10, 40].astype(int) - TUMOR_RGB).sum() < 150  # tumour outline (anti-aliased) at y = 10
    assert (out[5, 5] == 240).all()


def test_html_table_shades_flagged_and_failed_rows():
    table = pd.DataFrame(
        {"slide_id": ["a", "b", "c"], "tissue_fraction": [0.5, 0.123456, np.nan], "flags": [None, "blurry", None], "status": ["ok", "ok", "failed"]}
    )
    page = html_table(table, "QC <cohort>", "a note")
    assert page.startswith("<!DOCTYPE html>") and "QC &lt;cohort&gt;" in page
    rows = re.findall(r"<tr( class=\"[^\"]+\")?>(.*?)</tr>", page)
    assert [r[0] for r in rows[1:]] == ["", ' class="flagged"', ' class="failed"']
    assert "0.123" in page and "nan" not in page.lower()


# ---------------------------------------------------------------------------- the demo run's report


def _embedded_json(html: str, name: str) -> dict:
    """A ``var <name> = {...}`` object of Snakemake's report page."""
    match = re.search(rf"var {name} = (?=\{{)", html)
    assert match, f"no `var {name}` in the report"
    value, _ = json.JSONDecoder().raw_decode(html, match.end())
    return value


@pytest.fixture(scope="session")
def demo_report(demo_run) -> dict:
    report = demo_run / "results" / "report.html"
    result = run_snakemake(demo_run, "--report", str(report), timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    html = report.read_text()
    return {"categories": _embedded_json(html, "categories"), "results": _embedded_json(html, "results"), "run": demo_run}


def _nuclei_slides(work: Path) -> list[str]:
    """The slides the run segmented nuclei on (the demo: its test slides, demo.nuclei_splits)."""
    return sorted(p.parent.parent.name for p in (work / "results/slides").glob("*/nuclei/features.parquet"))


def _he_slides(work: Path) -> list[str]:
    samples = pd.read_csv(work / "results/demo_cohort/samples.tsv", sep="\t")
    return sorted(samples.slide_id[samples.stain == "HE"])


@pytest.mark.slow
def test_report_has_a_category_for_every_system(demo_report):
    categories = demo_report["categories"]
    for name in CATEGORIES:
        assert name in categories and any(categories[name].values()), (name, list(categories))
    he = _he_slides(demo_report["run"])
    subs = {name: {sub: len(files) for sub, files in categories[name].items()} for name in CATEGORIES}
    assert subs["QC"]["tissue"] == len(he) + 1 and subs["QC"]["cohort table"] == 1  # + the IHC TMA slide
    nuclei = _nuclei_slides(demo_report["run"])
    assert 1 <= len(nuclei) <= len(he) and subs["Nuclei"]["overlays"] == len(nuclei) and subs["Nuclei"]["counts"] == 1
    assert subs["Proliferation"]["mitotic hotspots"] == len(he) and subs["Proliferation"]["slide models"] == 2
    assert subs["IHC H-Score"]["cohort table"] == 1


@pytest.mark.slow
def test_report_figures_of_this_issue_have_captions_and_tables_are_html(demo_report):
    results = demo_report["results"]
    ours = {"QC", "Nuclei", "Proliferation"}
    for path, entry in results.items():
        category = next((c for c, subs in demo_report["categories"].items() if any(path in files for files in subs.values())), None)
        if category in ours:
            assert entry["caption"].strip(), f"{path} has no caption"
        if path.endswith(".html"):
            assert entry["mime_type"] == "text/html", path  # shown as a page in the report, not a download
    slide = _he_slides(demo_report["run"])[0]
    assert slide in results[f"results/slides/{slide}/proliferation/hotspot.png"]["caption"]  # captions name their slide


@pytest.mark.slow
def test_report_tables_and_overlays_hold_the_run_numbers(demo_report):
    work = demo_report["run"]
    counts = pd.read_csv(work / "results/cohort/nuclei/counts.csv").set_index("slide_id")
    assert sorted(counts.index) == _nuclei_slides(work)
    for slide in counts.index:
        n = len(pd.read_parquet(work / "results/slides" / slide / "nuclei/features.parquet", columns=["nucleus_id"]))
        assert counts.at[slide, "n_nuclei"] == n and counts.at[slide, "nuclei_per_mm2"] > 0
    qc_page = (work / "results/cohort/qc.html").read_text()
    assert all(slide in qc_page for slide in _he_slides(work))


@pytest.mark.slow
def test_every_zarr_store_of_the_demo_run_has_the_one_ngff_version(demo_run):
    from bcpath.tiling import NGFF_VERSION, ngff_version

    stores = sorted((demo_run / "results/slides").glob("*/**/*.zarr"))
    kinds = {path.name if path.parent.name not in ("heatmaps",) else "heatmaps" for path in stores}
    assert {"tiles.zarr", "labels.zarr", "tumor.zarr", "heatmaps"} <= kinds, kinds
    assert {str(path.relative_to(demo_run)): ngff_version(path) for path in stores} == {
        str(path.relative_to(demo_run)): NGFF_VERSION for path in stores
    }
