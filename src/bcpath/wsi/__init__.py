"""Whole-slide image reading: OpenSlide first, tifffile for TIFFs OpenSlide cannot open."""

from bcpath.wsi.reader import (
    SLIDE_EXTENSIONS,
    Slide,
    file_sha256,
    open_slide,
)

__all__ = ["SLIDE_EXTENSIONS", "Slide", "file_sha256", "open_slide"]
