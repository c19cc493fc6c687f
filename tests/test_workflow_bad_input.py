"""Bad input through the whole workflow: one clear message per slide, the rest finish."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from bcpath.wsi import file_sha256
from tests.workflow_helpers import files_under, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory):
    from tests.conftest import _require_shared

    wsi = _require_shared("wsi")
    root = tmp_path_factory.mktemp("bad_cohort")
    slides = root / "slides"
    slides.mkdir()
    shutil.copy(wsi / "CMU-1-Small-Region.svs", slides / "good.svs")
    shutil.copy(wsi / "kidney-48-5.tif", slides / "empty_glass.tif")
    shutil.copy(wsi / "tcga-cr-7395-01a-01-ts1.svs", slides / "no_mpp.svs")
    (slides / "zero.svs").write_bytes(b"")
    (slides / "random.svs").write_bytes(os.urandom(50_000))
    (slides / "truncated.svs").write_bytes((wsi / "CMU-1-Small-Region.svs").read_bytes()[:1_000_000])
    sheet = root / "samples.tsv"
    sheet.write_text(
        "slide_id\tpath\tmpp\n"
        "good\tslides/good.svs\t\n"
        "empty_glass\tslides/empty_glass.tif\t1.0\n"
        "no_mpp\tslides/no_mpp.svs\t\n"
        "zero\tslides/zero.svs\t\n"
        "random\tslides/random.svs\t\n"
        "truncated\tslides/truncated.svs\t\n"
    )
    checksums = {p.name: file_sha256(p) for p in slides.iterdir()}
    work = root / "work"
    work.mkdir()
    result = run_snakemake(work, "--cores", "2", "--keep-going", "--config", f"samples={sheet}")
    return root, work, result, checksums


def test_failures_are_listed_with_one_clear_message_each(bad_cohort):
    _, work, result, _ = bad_cohort
    assert result.returncode != 0
    failures = pd.read_csv(work / "results/cohort/failures.csv").set_index("slide_id")
    assert set(failures.index) == {"no_mpp", "zero", "random", "truncated"}
    assert (failures.rule == "inspect_slide").all()
    assert "no µm/px in the file" in failures.at["no_mpp", "error"]
    assert "add an `mpp` column" in failures.at["no_mpp", "error"]
    assert "is empty (0 bytes)" in failures.at["zero", "error"]
    assert "not a readable slide" in failures.at["random", "error"]
    assert "truncated" in failures.at["truncated", "error"]
    for slide, row in failures.iterrows():
        assert row.error.startswith(f"slide {slide}: ")
        assert "Traceback" not in row.error
    # The same message reaches the console.
    assert "bcpath: slide zero: " in result.stderr


def test_good_and_empty_slides_finish(bad_cohort):
    _, work, _, _ = bad_cohort
    good = work / "results/slides/good"
    for name in ("info.json", "tissue/mask.png", "tissue/tissue.geojson", "tissue/qc.json", "grid.parquet", "patches.h5"):
        assert (good / name).is_file()
    assert len(pd.read_parquet(good / "grid.parquet")) >= 1
    # nuclei over the whole tissue (no ER/PR/HER2 model runs here, so no tumor region)
    assert len(pd.read_parquet(good / "nuclei/features.parquet")) > 1000
    assert not (good / "nuclei/region.png").exists()
    empty = work / "results/slides/empty_glass"
    assert len(pd.read_parquet(empty / "grid.parquet")) == 0
    assert "no_tissue" in (empty / "tissue/qc.json").read_text()


def test_nothing_written_outside_results_logs_benchmarks_and_inputs_untouched(bad_cohort):
    root, work, _, checksums = bad_cohort
    top = {path.split("/")[0] for path in files_under(work)}
    assert top <= {"results", "logs", "benchmarks"}
    assert {p.name: file_sha256(p) for p in (root / "slides").iterdir()} == checksums
    # No half-written outputs of the failed slides.
    for slide in ("no_mpp", "zero", "random", "truncated"):
        assert not (work / "results/slides" / slide / "info.json").exists()


def test_rerun_after_fix_clears_the_failure(bad_cohort, tmp_path):
    root, work, _, _ = bad_cohort
    sheet = root / "fixed.tsv"
    sheet.write_text("slide_id\tpath\tmpp\ngood\tslides/good.svs\t\nno_mpp\tslides/no_mpp.svs\t2.0\n")
    # no_mpp's stated 2 µm/px is too coarse for nuclei (segment_nuclei would refuse it): foundation only
    result = run_snakemake(work, "--cores", "2", "--config", f"samples={sheet}", "nuclei={enabled: false}")
    assert result.returncode == 0, result.stderr[-3000:]
    failures = pd.read_csv(work / "results/cohort/failures.csv")
    assert len(failures) == 0
    qc = pd.read_csv(work / "results/cohort/qc.csv").set_index("slide_id")
    assert qc.at["no_mpp", "mpp_source"] == "sample_sheet"
    assert qc.at["no_mpp", "n_tiles"] > 0


@pytest.mark.parametrize(
    "sheet_text, config_key, message",
    [
        ("slide_id\tmpp\nS1\t0.5\n", "samples", "missing column(s) path"),
        ("slide_id\tpath\nS1\tslides/S1.svs\nS1\tslides/S1.svs\n", "samples", "duplicate slide_id S1"),
        ("slide_id\tpath\tstain\nS1\tslides/S1.svs\tPAS\n", "samples", "column stain"),
        (None, "cohort", "no slide files found"),
    ],
)
def test_cohort_level_errors_stop_before_running(tmp_path, sheet_text, config_key, message):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides/S1.svs").write_bytes(b"x")
    if sheet_text is None:
        target = tmp_path / "empty_folder"
        target.mkdir()
    else:
        target = tmp_path / "samples.tsv"
        target.write_text(sheet_text)
    work = tmp_path / "work"
    work.mkdir()
    result = run_snakemake(work, "-n", "--config", f"{config_key}={target}")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (work / "results").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        ("erpr={models: {ER: er_prod}}", "erpr.models.ER: model er_prod is not in the model registry"),
        ("erpr={enabled: true}", "model er_demo (ER) has no weights"),
    ],
)
def test_erpr_configuration_errors_stop_before_running(tmp_path, config, message):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides/S1.svs").write_bytes(b"x")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("slide_id\tpath\nS1\tslides/S1.svs\n")  # no annotations: nothing can train
    work = tmp_path / "work"
    work.mkdir()
    result = run_snakemake(work, "-n", "--config", f"samples={sheet}", config)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (work / "results").exists()


def test_tiling_mpp_must_match_only_models_that_run(tmp_path):
    # Demo cohort: er_demo trains (2 µm/px), so another tiling.mpp stops before anything runs ...
    work = tmp_path / "work"
    work.mkdir()
    result = run_snakemake(work, "-n", "--config", "tiling={mpp: 0.5}", "demo={n_slides: 8, tma: false}")
    assert result.returncode != 0
    assert "model er_demo reads 2.0 µm/px but tiling.mpp is 0.5" in result.stderr + result.stdout
    assert "erpr.enabled: false" in result.stderr + result.stdout
    # ... and with ER/PR/HER2 off (null given on the command line, too) any tiling.mpp is fine.
    result = run_snakemake(work, "-n", "--config", "tiling={mpp: 0.5}", "erpr={enabled: false, registry: null}", "demo={n_slides: 8, tma: false}", "samples=null")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tile_slide" in result.stdout and "train_patch_classifier" not in result.stdout
    assert not (work / "results").exists()


def test_erpr_is_skipped_with_a_note_when_nothing_can_train_it(bad_cohort):
    _, work, result, _ = bad_cohort
    assert "ER skipped: model er_demo has no weights" in result.stdout + result.stderr
    assert not (work / "results/cohort/stage2").exists()
