"""Cohort discovery, slide ids and sample-sheet validation."""

from __future__ import annotations

import pytest

from bcpath.cohort import discover_slides, read_sample_sheet, safe_slide_id
from bcpath.errors import SampleSheetError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Case 12 (HE).svs", "Case_12_HE"),
        ("slide.ome.tiff", "slide"),
        ("A-1.ndpi", "A-1"),
        ("weird#name!.mrxs", "weird_name"),
        ("ünïcode.tif", "n_code"),
    ],
)
def test_safe_slide_ids(name, expected):
    assert safe_slide_id(name) == expected


def test_discovers_every_supported_extension_recursively(tmp_path):
    for name in ["a.svs", "sub/b.tif", "sub/deeper/c.ndpi", "d.mrxs", "e.scn", "f.svslide", "g.bif", "h.ome.tiff", "i.tiff"]:
        _touch(tmp_path / name)
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.svs")
    table = discover_slides(tmp_path)
    assert list(table.index) == ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    assert table.at["c", "path"] == str(tmp_path / "sub/deeper/c.ndpi")
    assert (table.stain == "HE").all()


def test_colliding_ids_are_an_error_not_an_overwrite(tmp_path):
    _touch(tmp_path / "x/S1.svs")
    _touch(tmp_path / "y/S1.svs")
    with pytest.raises(SampleSheetError, match="both give slide id 'S1'"):
        discover_slides(tmp_path)


def test_folder_without_slides(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(SampleSheetError, match="no slide files found"):
        discover_slides(tmp_path)


def _sheet(tmp_path, text):
    _touch(tmp_path / "slides/S1.svs")
    _touch(tmp_path / "slides/S2.svs")
    path = tmp_path / "samples.tsv"
    path.write_text(text)
    return path


def test_sample_sheet_resolves_paths_and_normalises_values(tmp_path):
    sheet = _sheet(
        tmp_path,
        "slide_id\tpath\tmpp\tstain\tER\tPR\tHER2\tgrade\tsplit\n"
        "S1\tslides/S1.svs\t0.25\tH&E\tPositive\tneg\t\t2\tTrain\n"
        "S2\tslides/S2.svs\t\tHE\tnegative\tnegative\tpositive\t\ttest\n",
    )
    table = read_sample_sheet(sheet)
    assert table.at["S1", "path"] == str(tmp_path / "slides/S1.svs")
    assert table.at["S1", "mpp"] == 0.25 and table.at["S1", "stain"] == "HE"
    assert table.at["S1", "ER"] == "positive" and table.at["S1", "PR"] == "negative"
    assert table.at["S1", "HER2"] is None and table.at["S1", "grade"] == 2
    assert table.at["S1", "split"] == "train"
    assert table.at["S2", "mpp"] is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("slide_id\tmpp\nS1\t0.5\n", "missing column(s) path"),
        ("slide_id\tpath\nS1\tslides/S1.svs\nS1\tslides/S2.svs\n", "duplicate slide_id S1"),
        ("slide_id\tpath\tstain\nS1\tslides/S1.svs\tPAS\n", "line 2 (slide S1): column stain"),
        ("slide_id\tpath\tER\nS1\tslides/S1.svs\tmaybe\n", "column ER"),
        ("slide_id\tpath\tmpp\nS1\tslides/S1.svs\tfast\n", "column mpp must be a number"),
        ("slide_id\tpath\nS 1\tslides/S1.svs\n", "column slide_id"),
        ("slide_id\tpath\nS3\tslides/S3.svs\n", "slide file not found"),
    ],
)
def test_sample_sheet_errors_name_the_row_and_fix(tmp_path, text, message):
    with pytest.raises(SampleSheetError) as info:
        read_sample_sheet(_sheet(tmp_path, text))
    assert message in str(info.value)
    assert "samples.tsv" in str(info.value)


def test_unknown_stain_lists_allowed_values(tmp_path):
    with pytest.raises(SampleSheetError, match="allowed: HE, IHC"):
        read_sample_sheet(_sheet(tmp_path, "slide_id\tpath\tstain\nS1\tslides/S1.svs\tPAS\n"))


def test_readme_slide_id_examples_hold():
    import re

    from tests.workflow_helpers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    examples = re.findall(r"`([^`]+\.svs)` → `([^`]+)`", readme)
    assert ("Schnitt ä 1.svs", "Schnitt_1") in examples and len(examples) >= 2
    for name, expected in examples:
        assert safe_slide_id(name) == expected
