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


def _compare_fast_and_openslide(path, windows_per_level=12, seed=0, **kwargs):
    """Max and mean abs difference between direct TIFF tile reads and OpenSlide, per level."""
    rng = np.random.default_rng(seed)
    diffs = []
    with (
        open_slide(path, fast_tiff=True, **kwargs) as fast,
        open_slide(path, fast_tiff=False, **kwargs) as slow,
    ):
        assert slow._backend.fast_levels == []
        assert fast.info() == slow.info()
        fast_levels = fast._backend.fast_levels
        for level in fast_levels:
            ds = fast.level_downsamples[level]
            level_w, level_h = fast.level_dimensions[level]
            windows = [
                (0, 0, level_w, level_h),
                (level_w - 70, level_h - 50, 200, 150),
                (-20, -30, 90, 80),
            ]
            for _ in range(windows_per_level):
                w, h = int(rng.integers(1, 400)), int(rng.integers(1, 400))
                windows.append(
                    (
                        int(rng.integers(-50, level_w + 20)),
                        int(rng.integers(-50, level_h + 20)),
                        w,
                        h,
                    )
                )
            for lx, ly, w, h in windows:
                x0, y0 = int(round(lx * ds)), int(round(ly * ds))
                a = fast.read_level(level, x0, y0, w, h)
                b = slow.read_level(level, x0, y0, w, h)
                assert a.shape == b.shape == (h, w, 3) and a.dtype == np.uint8
                diffs.append(np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel())
    d = np.concatenate(diffs)
    return fast_levels, int(d.max()), float(d.mean())


def test_fast_tiff_reads_match_openslide_on_pyramidal_jpeg_tiff(tmp_path):
    from bcpath.demo.writer import write_slide_tiff

    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (1000, 1500, 3), dtype=np.uint8), (0, 0), 3)
    rgb = np.clip(noise.astype(int) * 3 - 200, 0, 255).astype(np.uint8)
    path = tmp_path / "pyramid.tiff"
    write_slide_tiff(path, rgb, mpp=0.5, tile=256)
    levels, max_diff, mean_diff = _compare_fast_and_openslide(path)
    assert levels[:3] == [0, 1, 2]  # every level whose downsample is exact is read directly
    assert max_diff <= 2 and mean_diff <= 0.2
    with open_slide(path) as slide:
        # A position that is not a whole pixel of the level goes through OpenSlide.
        ds = slide.level_downsamples[1]
        assert slide.read_level(1, 3, 5, 40, 30).shape == (30, 40, 3) and ds == 2.0
        # Beyond the right/bottom edge is white.
        w1, h1 = slide.level_dimensions[1]
        outside = slide.read_level(1, 2 * (w1 - 10), 2 * (h1 - 10), 40, 40)
        assert (outside[10:] == 255).all() and (outside[:, 10:] == 255).all()


def test_tile_cache_bounds_the_decoded_tiles_not_the_pixels(tmp_path):
    from bcpath.demo.writer import write_slide_tiff
    from bcpath.wsi.reader import FAST_TIFF_CACHE_BYTES

    rng = np.random.default_rng(2)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (900, 1300, 3), dtype=np.uint8), (0, 0), 2)
    path = tmp_path / "pyramid.tiff"
    write_slide_tiff(path, rgb, mpp=0.5, tile=256)
    with open_slide(path) as slide:
        fast = slide._backend._fast
        corners = [(0, 36), (211, 37)]  # level 1 (2x): read directly, and by OpenSlide (odd px)
        expected = [slide.read_region(x, y, 700, 300, 1.3) for x, y in corners]
        assert fast._cache_bytes > 0
        with slide.tile_cache(0):
            assert fast._cache_bytes == 0
            for (x, y), pixels in zip(corners, expected, strict=True):
                np.testing.assert_array_equal(slide.read_region(x, y, 700, 300, 1.3), pixels)
            assert fast._cache_bytes <= 256 * 256 * 3  # the last tile only
        assert fast._cache_limit == FAST_TIFF_CACHE_BYTES
        np.testing.assert_array_equal(slide.thumbnail(8.0), slide.thumbnail(8.0))
        assert fast._cache_bytes == 0 and fast._cache_limit == FAST_TIFF_CACHE_BYTES


def test_rgba_on_white_in_row_blocks_matches_the_whole_image_formula():
    from bcpath.wsi.reader import _rgba_to_rgb_on_white

    rgba = np.random.default_rng(4).integers(0, 256, (700, 90, 4), dtype=np.uint8)
    a = rgba[..., 3:4].astype(np.uint16)
    expected = ((rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    np.testing.assert_array_equal(_rgba_to_rgb_on_white(rgba), expected)


def test_fast_tiff_reads_match_openslide_on_aperio_jpeg(require_shared):
    path = require_shared("wsi/CMU-1-Small-Region.svs")
    levels, max_diff, mean_diff = _compare_fast_and_openslide(path, windows_per_level=20)
    assert levels == [0]
    assert max_diff <= 2 and mean_diff <= 0.2


def test_fast_tiff_leaves_jpeg2000_to_openslide_and_can_be_switched_off(
    require_shared, monkeypatch
):
    with open_slide(require_shared("wsi/tcga-cr-7395-01a-01-ts1.svs"), mpp=0.5) as slide:
        assert slide._backend.fast_levels == []
    monkeypatch.setenv("BCPATH_FAST_TIFF", "0")
    with open_slide(require_shared("wsi/CMU-1-Small-Region.svs")) as slide:
        assert slide._backend.fast_levels == []


def test_png_and_jpeg_open_as_one_level_image_slides(tmp_path):
    """open_slide picks the plain-image backend by suffix: one level, µm/px from the caller, white
    outside the image, a grayscale image and a missing µm/px refused naming the file."""
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "core.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "core.jpg"), rgb[..., ::-1])
    with open_slide(tmp_path / "core.png", "core", mpp=0.5) as slide:
        assert slide.reader == "image" and slide.level_dimensions == [(80, 60)] and slide.mpp_source == "sample_sheet"
        assert (slide.read_region(10, 5, 30, 20, mpp=0.5) == rgb[5:25, 10:40]).all()
        assert (slide.read_level(0, 70, 50, 20, 20)[:10, :10] == rgb[50:, 70:]).all()
        assert (slide.read_region(70, 50, 20, 20, mpp=0.5)[10:] == 255).all()
        assert slide.thumbnail(1.0).shape == (30, 40, 3)
    assert open_slide(tmp_path / "core.jpg", "core", mpp=0.5).dimensions == (80, 60)
    with pytest.raises(SlideError, match=r"no µm/px for the image .*core\.png"):
        open_slide(tmp_path / "core.png", "core")
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[..., 0])
    with pytest.raises(SlideError, match=r"gray\.png is a grayscale image"):
        open_slide(tmp_path / "gray.png", "gray", mpp=0.5)
