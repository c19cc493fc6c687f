"""IHC rows of a sample sheet that are single-core images (PNG/JPEG), through the workflow."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image
from skimage import data

from bcpath.ihc.score import score_core
from tests.workflow_helpers import run_snakemake

pytestmark = pytest.mark.slow


def test_single_core_images_are_scored_and_a_bad_one_is_named(tmp_path):
    ihc = data.immunohistochemistry()
    Image.fromarray(ihc).save(tmp_path / "core_a.png")
    Image.fromarray(ihc[..., 1]).save(tmp_path / "core_gray.png")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("slide_id\tpath\tstain\tmpp\ncore_a\tcore_a.png\tIHC\t0.5\ncore_gray\tcore_gray.png\tIHC\t0.5\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run_snakemake(work, "--cores", "2", "--keep-going", "--config", f"samples={sheet}")
    assert result.returncode != 0
    failures = pd.read_csv(work / "results/cohort/failures.csv").set_index("slide_id")
    assert list(failures.index) == ["core_gray"]
    assert "grayscale" in failures.at["core_gray", "error"] and "Traceback" not in failures.at["core_gray", "error"]
    assert (work / "results/slides/core_a/ihc/scores.parquet").is_file()
    assert not (work / "results/slides/core_a/info.json").exists()  # no slide foundation for a core image
    # The same run still writes hscore.csv from the scored slide, the failed one listed.
    partial = pd.read_csv(work / "results/cohort/hscore.csv", dtype={"flags": str}).set_index("slide_id")
    assert list(partial.status) == ["ok", "failed"] and partial.at["core_gray", "error"] == failures.at["core_gray", "error"]
    assert 0 <= partial.at["core_a", "h_score_cells"] <= 300 and pd.isna(partial.at["core_a", "h_score_ramcnn"])

    sheet.write_text("slide_id\tpath\tstain\tmpp\ncore_a\tcore_a.png\tIHC\t0.5\n")
    result = run_snakemake(work, "--cores", "2", "--config", f"samples={sheet}")
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(work / "results/cohort/hscore.csv", dtype={"flags": str})
    assert list(table.slide_id) == ["core_a"] and table.core_id.iloc[0] == "core"  # remade by its rule
    assert list(table.status) == ["ok"]
    expected = score_core(ihc, 0.5).summary
    row = table.iloc[0]
    assert row.n_cells == pytest.approx(expected["n_cells"], rel=0.02)
    assert row.h_score_cells == pytest.approx(expected["h_score_cells"], abs=3)
    assert "no_tumor_mask" in row["flags"] and pd.isna(row.h_score_ramcnn)
    assert (work / "results/slides/core_a/ihc/cores/core/overlay.png").is_file()


def test_nuclei_model_replaces_the_threshold_detector(tmp_path, repo_root):
    """ihc.nuclei_model: the workflow's nuclei come from a U-Net folder (read relative to the
    workflow, as nuclei.model); a folder that is not a model stops the run at parse time."""
    from bcpath.ihc.score import nuclei_model_segmenter

    ihc = data.immunohistochemistry()
    Image.fromarray(ihc).save(tmp_path / "core_a.png")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("slide_id\tpath\tstain\tmpp\ncore_a\tcore_a.png\tIHC\t0.5\n")
    work = tmp_path / "work"
    work.mkdir()
    bad = run_snakemake(work, "--cores", "1", "-n", "--config", f"samples={sheet}", "ihc={'nuclei_model': 'models/nope'}")
    assert bad.returncode != 0 and "ihc.nuclei_model: models/nope" in bad.stdout + bad.stderr
    result = run_snakemake(work, "--cores", "1", "--config", f"samples={sheet}", "ihc={'nuclei_model': 'models/nuclei_unet'}")
    assert result.returncode == 0, result.stderr[-4000:]
    row = pd.read_csv(work / "results/cohort/hscore.csv", dtype={"flags": str}).iloc[0]
    expected = score_core(ihc, 0.5, segmenter=nuclei_model_segmenter(repo_root / "models/nuclei_unet")).summary
    assert row.n_cells == expected["n_cells"]
    assert row.h_score_cells == pytest.approx(expected["h_score_cells"], abs=0.5)
    assert row.n_cells != score_core(ihc, 0.5).summary["n_cells"]  # not the threshold detector
