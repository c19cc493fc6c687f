"""Slide reading on real slides (../shared/data/wsi) and on broken files."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from bcpath.errors import SlideError
from bcpath.pipeline import inspect_slide
from bcpath.wsi import file_sha256, open_slide


def test_cmu_svs_reads_mpp_from_file_and_resamples(require_shared):
    path = require_shared("wsi/CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        assert slide.reader == "openslide"
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "file"
        assert slide.dimensions == (2220, 2967)
        region = slide.read_region(400, 600, 256, 256, mpp=2 * 0.499)
        assert region.shape == (256, 256, 3) and region.dtype == np.uint8
        # Same pixels as reading level 0 and averaging 2x2 blocks.
        full = slide.read_level(0, 400, 600, 512, 512)
        expected = cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA)
        assert np.abs(region.astype(int) - expected.astype(int)).mean() < 0.5


def test_tcga_jpeg2000_without_mpp_needs_a_stated_value(require_shared):
    path = require_shared("wsi/tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(SlideError) as info:
        open_slide(path, slide_id="tcga")
    message = str(info.value)
    assert message.startswith("slide tcga: no µm/px")
    assert "mpp" in message and "default_mpp" in message
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp_source == "sample_sheet"
        assert slide.level_dimensions == [(4443, 3567), (2221, 1783)]
        assert slide.best_level_for_mpp(1.0) == 1  # stored downsample 2.0005 counts as 2
        assert slide.best_level_for_mpp(0.9) == 0
        tile = slide.read_region(1000, 1000, 128, 128, mpp=1.0)
        assert tile.shape == (128, 128, 3) and 80 < tile.mean() < 250
    with open_slide(path, default_mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "default_mpp"


def test_plain_tiff_falls_back_to_tifffile_and_pads_white(require_shared):
    path = require_shared("wsi/kidney-48-5.tif")
    with open_slide(path, mpp=1.0) as slide:
        assert slide.reader == "tifffile"
        assert slide.dimensions == (1493, 901)
        outside = slide.read_region(1400, 850, 200, 200, mpp=1.0)
        assert outside.shape == (200, 200, 3)
        assert (outside[150:, 150:] == 255).all()
        thumb = slide.thumbnail(8.0)
        assert thumb.shape == (113, 187, 3)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty (0 bytes)"),
        (os.urandom(4096), "is not a readable slide"),
    ],
)
def test_broken_files_give_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "broken.svs"
    path.write_bytes(content)
    with pytest.raises(SlideError) as info:
        open_slide(path, slide_id="broken")
    assert str(info.value).startswith("slide broken: ")
    assert expected in str(info.value)


def test_truncated_svs_is_reported_not_crashed(require_shared, tmp_path):
    source = require_shared("wsi/CMU-1-Small-Region.svs")
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(source.read_bytes()[:1_000_000])
    with pytest.raises(SlideError) as info:
        inspect_slide(truncated, "truncated", tmp_path / "info.json")
    assert "truncated" in str(info.value)
    assert not (tmp_path / "info.json").exists()


def test_inspect_writes_info_and_never_modifies_the_slide(require_shared, tmp_path):
    source = require_shared("wsi/CMU-1-Small-Region.svs")
    before = (file_sha256(source), os.stat(source).st_mtime_ns)
    info = inspect_slide(source, "CMU-1", tmp_path / "info.json")
    assert info["sha256"] == before[0]
    assert info["reader"] == "openslide" and info["vendor"] == "aperio"
    assert info["mpp"] == pytest.approx(0.499) and info["mpp_source"] == "file"
    assert info["level_dimensions"] == [[2220, 2967]]
    assert (file_sha256(source), os.stat(source).st_mtime_ns) == before


def test_slide_opened_read_only(require_shared, tmp_path):
    copy = tmp_path / "ro.svs"
    shutil.copy(require_shared("wsi/CMU-1-Small-Region.svs"), copy)
    copy.chmod(0o444)
    with open_slide(copy) as slide:
        assert slide.read_region(0, 0, 64, 64, 2.0).shape == (64, 64, 3)
