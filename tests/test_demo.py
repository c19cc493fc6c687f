"""Synthetic demo cohort: readable slides, labels, annotations, planted truth, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bcpath.demo import DEMO_MPP, demo_slide_ids, make_demo_cohort, plan_slide
from bcpath.demo.cohort import SAMPLE_COLUMNS, make_demo_slide
from bcpath.geojson import classification_name, read_geojson
from bcpath.labels import BIOMARKERS, region_label, tumor_class

# Small slides keep the suite fast; the real default (8000-10000 × 6000-8000) is covered once.
SMALL = (2400, 1800)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo_cohort"
    make_demo_cohort(out, n_slides=8, seed=0, threads=1, size=SMALL)
    return out


def test_slide_ids() -> None:
    assert demo_slide_ids(3) == ["demo_01", "demo_02", "demo_03"]
    assert demo_slide_ids(8)[-1] == "demo_08"


def test_openslide_reads_small_slide_with_mpp(cohort: Path) -> None:
    openslide = pytest.importorskip("openslide")
    slide = openslide.OpenSlide(str(cohort / "slides" / "demo_01.tiff"))
    try:
        assert slide.dimensions == SMALL
        assert slide.level_count >= 3
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(DEMO_MPP, rel=1e-3)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(DEMO_MPP, rel=1e-3)
        assert slide.properties.get("tiff.Compression", "JPEG").upper().startswith("JPEG")
    finally:
        slide.close()


def test_full_size_slide_is_pyramidal_tiled_jpeg(tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    tifffile = pytest.importorskip("tifffile")
    record = make_demo_slide(tmp_path, seed=0, index=1)
    path = tmp_path / record["path"]
    slide = openslide.OpenSlide(str(path))
    try:
        width, height = slide.dimensions
        assert 8000 <= width <= 10000 and 6000 <= height <= 8000
        assert slide.level_count >= 3
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
    finally:
        slide.close()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.tilelength == 256
        assert page.compression == tifffile.COMPRESSION.JPEG
    rows = _read_csv(tmp_path / record["truth_nuclei"])
    tissue = [r for r in rows if r["kind"] != "mitosis"]
    assert len(tissue) > 3000  # a full slide carries thousands of planted nuclei


def test_sample_sheet_columns_labels_and_splits(cohort: Path) -> None:
    rows = _read_tsv(cohort / "samples.tsv")
    assert tuple(rows[0].keys()) == SAMPLE_COLUMNS
    assert [r["slide_id"] for r in rows] == demo_slide_ids(8)
    for r in rows:
        assert (cohort / r["path"]).is_file()
        assert (cohort / r["annotations"]).is_file()
        assert float(r["mpp"]) == DEMO_MPP and r["stain"] == "HE"
        assert {r["ER"], r["PR"], r["HER2"]} <= {"positive", "negative"}
        assert r["split"] in {"train", "tune", "test"}
        assert float(r["proliferation"]) >= 0
        assert r["grade"] in {"1", "2", "3"}
        assert (cohort / r["mitoses"]).is_file()
    phenotypes = [(r["ER"], r["PR"], r["HER2"]) for r in rows]
    assert phenotypes.count(("positive", "positive", "negative")) == 4
    assert phenotypes.count(("negative", "negative", "negative")) == 2
    assert phenotypes.count(("negative", "negative", "positive")) == 2
    # grade (and with it the planted mitoses) varies within each phenotype
    for phenotype in set(phenotypes):
        assert len({r["grade"] for r in rows if (r["ER"], r["PR"], r["HER2"]) == phenotype}) > 1
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("tune"), splits.count("test")) == (4, 2, 2)
    for split in ("train", "tune", "test"):
        assert {r["ER"] for r in rows if r["split"] == split} == {"positive", "negative"}
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["seed"] == 0 and meta["n_slides"] == 8 and meta["mpp"] == DEMO_MPP
    assert [s["slide_id"] for s in meta["slides"]] == demo_slide_ids(8)


def test_labels_balanced_for_larger_cohorts() -> None:
    plans = [plan_slide(seed=5, index=i) for i in range(16)]
    er = [p.phenotype in ("luminal", "luminal_pr_negative") for p in plans]
    assert sum(er) == 8
    for split in ("train", "tune", "test"):
        assert {e for p, e in zip(plans, er, strict=True) if p.split == split} == {True, False}
    assert any(p.phenotype == "luminal_pr_negative" for p in plans)


def test_annotations_parse_lie_in_slide_and_carry_labels(cohort: Path) -> None:
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    rows = {r["slide_id"]: r for r in _read_tsv(cohort / "samples.tsv")}
    width, height = SMALL
    for row in rows.values():
        features = read_geojson(cohort / row["annotations"])
        assert features
        tumor_names: dict[str, set[str]] = {b: set() for b in BIOMARKERS}
        for feat in features:
            assert feat["properties"]["objectType"] == "annotation"
            geom = shape(feat["geometry"])
            assert geom.is_valid and geom.area > 0
            x0, y0, x1, y1 = geom.bounds
            assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
            name = classification_name(feat)
            if name == "non-tumor":
                assert all(region_label(feat, b) == "non-tumor" for b in BIOMARKERS)
                continue
            labels = {b: region_label(feat, b) for b in BIOMARKERS}
            (biomarker,) = [b for b, v in labels.items() if v is not None]
            assert name == tumor_class(biomarker, row[biomarker])
            tumor_names[biomarker].add(feat["properties"]["name"])
        # every tumor region is labelled once per biomarker
        assert tumor_names["ER"] and tumor_names["ER"] == tumor_names["PR"] == tumor_names["HER2"]
        assert isinstance(shapely.__version__, str)


def test_region_label() -> None:
    def feat(name: str | None) -> dict:
        props = {"objectType": "annotation"}
        if name is not None:
            props["classification"] = {"name": name, "color": [0, 0, 0]}
        return {"type": "Feature", "geometry": None, "properties": props}

    assert region_label(feat("ER-positive tumor"), "ER") == "positive"
    assert region_label(feat("ER-negative tumor"), "ER") == "negative"
    assert region_label(feat("ER-positive tumor"), "PR") is None
    assert region_label(feat("HER2-negative tumor"), "HER2") == "negative"
    assert region_label(feat("non-tumor"), "PR") == "non-tumor"
    assert region_label(feat(None), "ER") is None
    with pytest.raises(ValueError):
        tumor_class("KI67", "positive")


def test_nuclei_truth_sits_on_hematoxylin(cohort: Path) -> None:
    openslide = pytest.importorskip("openslide")
    for slide_id in ("demo_01", "demo_02"):
        slide = openslide.OpenSlide(str(cohort / "slides" / f"{slide_id}.tiff"))
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")).astype(np.float32)
        slide.close()
        gray = rgb.mean(axis=2)
        tissue = gray < 225
        rows = _read_csv(cohort / "truth" / f"{slide_id}.nuclei.csv")
        xy = np.array([[float(r["x"]), float(r["y"])] for r in rows if r["kind"] in ("tumor", "lymphocyte")])
        assert len(xy) > 50
        at_nuclei = gray[xy[:, 1].astype(int), xy[:, 0].astype(int)]
        assert at_nuclei.mean() < gray[tissue].mean() - 40
        # hematoxylin is blue-purple: blue exceeds green at nuclei centres
        blue_minus_green = rgb[xy[:, 1].astype(int), xy[:, 0].astype(int), 2] - rgb[xy[:, 1].astype(int), xy[:, 0].astype(int), 1]
        assert blue_minus_green.mean() > 10


def test_mitoses_truth_matches_nuclei_and_proliferation(cohort: Path) -> None:
    meta = json.loads((cohort / "cohort.json").read_text())
    for record in meta["slides"]:
        nuclei = _read_csv(cohort / record["truth_nuclei"])
        mitoses = _read_csv(cohort / record["truth_mitoses"])
        assert len(mitoses) == sum(r["kind"] == "mitosis" for r in nuclei) == record["mitoses"]
        assert record["proliferation"] == pytest.approx(record["mitoses"] / record["tumor_area_mm2"], rel=0.01)


def test_er_status_is_visible_in_planted_morphology(cohort: Path) -> None:
    rows = _read_tsv(cohort / "samples.tsv")
    size: dict[str, list[float]] = {"positive": [], "negative": []}
    lymphocytes: dict[str, list[int]] = {"positive": [], "negative": []}
    for r in rows:
        nuclei = _read_csv(cohort / "truth" / f"{r['slide_id']}.nuclei.csv")
        size[r["ER"]] += [float(n["radius_um"]) for n in nuclei if n["kind"] == "tumor"]
        lymphocytes[r["ER"]].append(sum(n["kind"] == "lymphocyte" for n in nuclei))
    # ER- (high grade) tumor nuclei are larger
    assert np.mean(size["negative"]) > np.mean(size["positive"]) + 0.8
    # triple-negative slides carry dense TILs
    tn = [
        sum(n["kind"] == "lymphocyte" for n in _read_csv(cohort / "truth" / f"{r['slide_id']}.nuclei.csv"))
        for r in rows
        if r["ER"] == r["PR"] == r["HER2"] == "negative"
    ]
    assert min(tn) > 2 * np.mean(lymphocytes["positive"])


def test_same_seed_same_bytes_and_order_independent(cohort: Path, tmp_path: Path) -> None:
    # slide 3 made alone equals slide 3 made within the cohort
    record = make_demo_slide(tmp_path / "a", seed=0, index=2, size=SMALL)
    meta = json.loads((cohort / "cohort.json").read_text())
    assert record["sha256"] == meta["slides"][2]["sha256"]
    for rel in (record["path"], record["annotations"], record["truth_nuclei"], record["truth_mitoses"]):
        assert _sha256(tmp_path / "a" / rel) == _sha256(cohort / rel)
    other = make_demo_slide(tmp_path / "b", seed=1, index=2, size=SMALL)
    assert other["sha256"] != record["sha256"]


def test_parallel_matches_serial(cohort: Path, tmp_path: Path) -> None:
    make_demo_cohort(tmp_path, n_slides=2, seed=0, threads=2, size=SMALL)
    for slide_id in demo_slide_ids(2):
        assert _sha256(tmp_path / "slides" / f"{slide_id}.tiff") == _sha256(cohort / "slides" / f"{slide_id}.tiff")
    assert (tmp_path / "samples.tsv").read_text() == "".join(
        (cohort / "samples.tsv").read_text().splitlines(keepends=True)[:3]
    )


def test_rejects_empty_cohort(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_slides"):
        make_demo_cohort(tmp_path, n_slides=0)
