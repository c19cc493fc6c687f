"""Whole-slide image reading: OpenSlide first, tifffile for TIFFs OpenSlide cannot open, plain
images (PNG/JPEG) in memory; one :class:`Slide` interface, one :func:`open_slide`."""

from bcpath.wsi.reader import (
    IMAGE_FILE_SUFFIXES,
    SLIDE_EXTENSIONS,
    Slide,
    file_sha256,
    open_slide,
)

__all__ = ["IMAGE_FILE_SUFFIXES", "SLIDE_EXTENSIONS", "Slide", "file_sha256", "open_slide"]
