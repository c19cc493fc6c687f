"""Read whole-slide images at any target resolution (µm/px).

``open_slide`` chooses the backend by file suffix: a plain image (:data:`IMAGE_FILE_SUFFIXES`:
PNG, JPEG; e.g. a single TMA core) is held in memory as one level; anything else is tried with
OpenSlide first, then tifffile for plain or single-level TIFFs that OpenSlide cannot open. All
backends give the same ``Slide`` interface: ``read_region(x0, y0, width, height, mpp)`` returns
an (height, width, 3) uint8 RGB array at the requested µm/px, read from the best pyramid level
and resampled with area averaging (a plain image: one affine warp of the whole image).

µm/px comes from the file, else from the caller (sample sheet), else from an explicit
``default_mpp`` fallback; otherwise ``SlideError`` says how to fix it. Slides are opened
read-only and never modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bcpath.errors import SlideError
from bcpath.images import IMAGE_SUFFIXES
from bcpath.io import release_free_memory

logger = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif")
#: Files read whole into memory by the plain-image backend: the image suffixes that are not
#: slide extensions (.png, .jpg, .jpeg).
IMAGE_FILE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in SLIDE_EXTENSIONS)

# Resolution tags in inch/cm that equal these dpi values are scanner-software defaults,
# not a measurement; treating them as µm/px would be a silent guess.
_PLACEHOLDER_DPI = (72.0, 96.0, 300.0)
# A level may be used for a target resolution when its µm/px is at most this much coarser
# (tolerates rounding in the stored downsample factors, e.g. 2.0005 instead of 2).
_LEVEL_TOLERANCE = 1.01


class _Backend(Protocol):
    name: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]

    def read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray: ...

    def properties(self) -> dict[str, str]: ...

    def file_mpp(self) -> float | None: ...

    def close(self) -> None: ...


# TIFF compressions whose tiles tifffile/imagecodecs decode to the same pixels as OpenSlide
# (JPEG: libjpeg-turbo in both; lossless codecs: exact). JPEG 2000 (Aperio 33003/33005)
# and everything else stay on OpenSlide.
_FAST_COMPRESSIONS = {1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate", 50000: "zstd"}
#: Decoded-tile cache of the direct TIFF reads, and OpenSlide's own (its default), in bytes.
FAST_TIFF_CACHE_BYTES = 64 << 20
OPENSLIDE_CACHE_BYTES = 32 << 20
# Set BCPATH_FAST_TIFF=0 to read every pixel through OpenSlide (for comparisons).
_FAST_TIFF_ENV = "BCPATH_FAST_TIFF"


class _FastTiffReader:
    """Direct tile reads from a tiled TIFF for the OpenSlide levels that map 1:1 to a page.

    A level qualifies when exactly one tiled page has its dimensions and that page is
    8-bit RGB (3 samples, contiguous) compressed with a codec in ``_FAST_COMPRESSIONS``
    (JPEG may be RGB or YCbCr). Tile bytes are read with ``os.pread`` on one descriptor
    (thread-safe, no shared file position) and decoded by tifffile/imagecodecs, which
    release the GIL. Decoded tiles are kept in a small LRU (bounded by bytes), since
    adjacent requests share edge tiles. Everything else is left to OpenSlide.
    """

    def __init__(self, path: Path, level_dimensions: list[tuple[int, int]], cache_bytes: int = FAST_TIFF_CACHE_BYTES) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        self._fd: int | None = None
        try:
            size = path.stat().st_size
            by_dims: dict[tuple[int, int], list[Any]] = {}
            for page in self._tif.pages:
                if not isinstance(page, tifffile.TiffPage):
                    continue  # frames share a keyframe's structure; levels are full pages
                by_dims.setdefault((int(page.imagewidth), int(page.imagelength)), []).append(page)
            self._levels: dict[int, dict[str, Any]] = {}
            for level, dims in enumerate(level_dimensions):
                pages = by_dims.get((int(dims[0]), int(dims[1])), [])
                if len(pages) != 1 or not self._qualifies(pages[0]):
                    continue
                page = pages[0]
                offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
                tw, th = int(page.tilewidth), int(page.tilelength)
                across = -(-int(page.imagewidth) // tw)
                down = -(-int(page.imagelength) // th)
                if len(offsets) != across * down or len(counts) != len(offsets):
                    continue
                if any(o + c > size for o, c in zip(offsets, counts, strict=True)):
                    continue  # truncated file: let OpenSlide report it
                self._levels[level] = {
                    "page": page,
                    "decode": page.decode,
                    "jpegtables": page.jpegtables,
                    "offsets": offsets,
                    "counts": counts,
                    "tile": (tw, th),
                    "across": across,
                    "dims": (int(page.imagewidth), int(page.imagelength)),
                }
            if self._levels:
                self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except Exception:
            self._tif.close()
            raise
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(cache_bytes)
        self._lock = threading.Lock()

    @staticmethod
    def _qualifies(page: Any) -> bool:
        compression = int(page.compression)
        photometric = int(page.photometric)
        if not page.is_tiled or compression not in _FAST_COMPRESSIONS:
            return False
        if int(page.samplesperpixel) != 3 or int(page.planarconfig) != 1 or int(getattr(page, "imagedepth", 1)) != 1:
            return False
        if page.bitspersample != 8 or int(page.sampleformat) != 1:
            return False
        if int(getattr(page, "tiledepth", 1)) != 1 or int(getattr(page, "fillorder", 1)) != 1:
            return False
        if compression == 7:
            return photometric in (2, 6)  # RGB or YCbCr: libjpeg converts both to RGB
        if photometric != 2:
            return False
        predictor = int(getattr(page, "predictor", 1))
        return predictor in (1, 2)

    @property
    def levels(self) -> set[int]:
        return set(self._levels)

    def _tile(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        info = self._levels[level]
        count, offset = info["counts"][index], info["offsets"][index]
        tw, th = info["tile"]
        if count == 0:  # missing tile: OpenSlide leaves it transparent, white here
            tile = np.full((th, tw, 3), 255, dtype=np.uint8)
        else:
            assert self._fd is not None
            data = os.pread(self._fd, count, offset)
            if len(data) != count:
                raise OSError(f"short read of tile {index} at level {level} ({len(data)} of {count} bytes); the file is truncated")
            segment, _, _ = info["decode"](data, index, jpegtables=info["jpegtables"])
            tile = np.asarray(segment).reshape(segment.shape[-3:])
            if tile.shape != (th, tw, 3) or tile.dtype != np.uint8:
                raise ValueError(f"tile {index} at level {level} decoded to {tile.shape} {tile.dtype}")
        with self._lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
                self._evict(keep=1)
        return tile

    def _evict(self, keep: int) -> None:
        """Drop least recently used tiles until the cache fits its bound (at least ``keep``
        tiles stay); the caller holds the lock."""
        while self._cache_bytes > self._cache_limit and len(self._cache) > keep:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes

    def set_cache_limit(self, max_bytes: int) -> None:
        """Bound the decoded-tile cache to ``max_bytes``, dropping the oldest tiles (0: empty it
        now; later reads keep only the last tile)."""
        with self._lock:
            self._cache_limit = int(max_bytes)
            self._evict(keep=0)

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 at level pixel (lx, ly); white outside the level."""
        info = self._levels[level]
        level_w, level_h = info["dims"]
        tw, th = info["tile"]
        across = info["across"]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        sx0, sy0 = max(lx, 0), max(ly, 0)
        sx1, sy1 = min(lx + width, level_w), min(ly + height, level_h)
        if sx1 <= sx0 or sy1 <= sy0:
            return out
        for ty in range(sy0 // th, (sy1 - 1) // th + 1):
            y_lo, y_hi = max(sy0, ty * th), min(sy1, (ty + 1) * th)
            for tx in range(sx0 // tw, (sx1 - 1) // tw + 1):
                x_lo, x_hi = max(sx0, tx * tw), min(sx1, (tx + 1) * tw)
                tile = self._tile(level, ty * across + tx)
                out[y_lo - ly : y_hi - ly, x_lo - lx : x_hi - lx] = tile[y_lo - ty * th : y_hi - ty * th, x_lo - tx * tw : x_hi - tx * tw]
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.set_cache_limit(0)
        self._tif.close()


def _fast_tiff_enabled(fast_tiff: bool | None) -> bool:
    if fast_tiff is not None:
        return bool(fast_tiff)
    return os.environ.get(_FAST_TIFF_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path, fast_tiff: bool = True) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions: list[tuple[int, int]] = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self._fast: _FastTiffReader | None = None
        vendor = self._slide.properties.get("openslide.vendor")
        if fast_tiff and vendor in ("generic-tiff", "aperio"):
            try:
                fast = _FastTiffReader(path, self.level_dimensions)
            except Exception as error:  # not a TIFF tifffile can parse: OpenSlide reads it all
                logger.debug("%s: no direct TIFF tile reads (%s)", path, error)
            else:
                if fast.levels:
                    self._fast = fast
                else:
                    fast.close()

    @property
    def fast_levels(self) -> list[int]:
        """Levels whose pixels are read directly from the TIFF tiles (not through OpenSlide)."""
        return sorted(self._fast.levels) if self._fast is not None else []

    def read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        fast = self._fast
        if fast is not None and level in fast.levels:
            # OpenSlide places level pixels at x0 / downsample; only whole-pixel positions
            # are copied directly (fractional ones are interpolated by OpenSlide).
            ds = self.level_downsamples[level]
            lx, ly = x0 / ds, y0 / ds
            if lx == int(lx) and ly == int(ly):
                return fast.read(level, int(lx), int(ly), width, height)
        region = self._slide.read_region((x0, y0), level, (width, height))
        return _rgba_to_rgb_on_white(np.asarray(region))

    def set_tile_cache(self, max_bytes: int | None) -> None:
        """Bound both decoded-tile caches, the direct TIFF reads' and OpenSlide's, to ``max_bytes``
        (None: their sizes at open, 64 MiB and OpenSlide's 32 MiB); tiles cached so far are
        dropped."""
        import openslide

        if self._fast is not None:
            self._fast.set_cache_limit(0)
            self._fast.set_cache_limit(FAST_TIFF_CACHE_BYTES if max_bytes is None else max_bytes)
        if hasattr(self._slide, "set_cache"):  # OpenSlide >= 4 and openslide-python >= 1.3
            self._slide.set_cache(openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES if max_bytes is None else max_bytes))

    def properties(self) -> dict[str, str]:
        return dict(self._slide.properties)

    def file_mpp(self) -> float | None:
        value = self._slide.properties.get("openslide.mpp-x")
        try:
            mpp = float(value) if value is not None else None
        except ValueError:
            return None
        return mpp if mpp and mpp > 0 else None

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._slide.close()


class _TiffBackend:
    """Plain or single-level TIFF via tifffile's Zarr view (strips/tiles decoded on demand)."""

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(str(path))
        series = self._tif.series[0]
        levels = series.levels if series.is_pyramidal else [series]
        self._axes = series.axes
        self._arrays = []
        self.level_dimensions = []
        for index, level in enumerate(levels):
            shape = dict(zip(series.axes, level.shape, strict=False))
            if "S" not in shape and "C" not in shape:
                raise ValueError(f"not an RGB image (axes {series.axes})")
            self.level_dimensions.append((int(shape["X"]), int(shape["Y"])))
            store = self._tif.aszarr(series=0, level=index)
            self._arrays.append(zarr.open_array(store, mode="r"))
        width0 = self.level_dimensions[0][0]
        self.level_downsamples = [width0 / w for w, _ in self.level_dimensions]
        # The first level's keyframe is a full TiffPage (a TiffFrame carries no tags of its own).
        self._page: tifffile.TiffPage = (
            levels[0].keyframe if hasattr(levels[0], "keyframe") else self._tif.pages.first
        )

    def read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        array = self._arrays[level]
        level_w, level_h = self.level_dimensions[level]
        # x0, y0 are level-0 coordinates, as in OpenSlide.
        ds = self.level_downsamples[level]
        lx, ly = int(round(x0 / ds)), int(round(y0 / ds))
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        sx0, sy0 = max(lx, 0), max(ly, 0)
        sx1, sy1 = min(lx + width, level_w), min(ly + height, level_h)
        if sx1 > sx0 and sy1 > sy0:
            if self._axes.endswith("S") or self._axes.endswith("C"):
                block = np.asarray(array[sy0:sy1, sx0:sx1])
            else:  # channel-first (C, Y, X)
                block = np.moveaxis(np.asarray(array[:, sy0:sy1, sx0:sx1]), 0, -1)
            block = _to_rgb_uint8(block)
            out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = block
        return out

    def properties(self) -> dict[str, str]:
        page = self._page
        props = {"tiff.Compression": _compression_name(page.compression), "tiff.Tiled": str(page.is_tiled)}
        if page.description:
            props["tiff.ImageDescription"] = page.description[:500]
        return props

    def file_mpp(self) -> float | None:
        tags = self._page.tags
        resolution, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if resolution is None or unit is None:
            return None
        numerator, denominator = resolution.value
        if not numerator or not denominator:
            return None
        per_unit = numerator / denominator
        unit_value = int(unit.value)
        if unit_value == 2:  # inch
            if any(math.isclose(per_unit, dpi) for dpi in _PLACEHOLDER_DPI):
                return None
            return 25400.0 / per_unit
        if unit_value == 3:  # centimetre
            return 10000.0 / per_unit
        return None

    def close(self) -> None:
        self._tif.close()


class _ImageBackend:
    """A plain image file (PNG/JPEG, e.g. one TMA core) held in memory: one level, level 0 = the
    image's pixels. RGBA is composited on white and 16-bit scaled to 0-255
    (:func:`bcpath.images.read_uint8_image`); a grayscale image is refused. Regions are resampled
    in one affine warp of the image (:meth:`warp_region`), which :meth:`Slide.read_region` uses
    instead of reading a level and resizing it."""

    name = "image"

    def __init__(self, path: Path, slide_id: str) -> None:
        from bcpath.images import read_uint8_image

        image = read_uint8_image(path)
        if image.ndim != 3:
            raise SlideError(slide_id, f"{path} is a grayscale image", "IHC scoring needs the RGB scan of the core")
        self._image = np.ascontiguousarray(image[..., :3])
        self.level_dimensions = [(int(self._image.shape[1]), int(self._image.shape[0]))]
        self.level_downsamples = [1.0]

    def read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        image_h, image_w = self._image.shape[:2]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + width, image_w), min(y0 + height, image_h)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = self._image[sy0:sy1, sx0:sx1]
        return out

    def warp_region(self, x0: float, y0: float, width: int, height: int, scale: float) -> np.ndarray:
        """(height, width, 3) uint8 from level-0 (x0, y0) at ``scale`` output px per image px;
        outside the image is white."""
        import cv2

        matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float32)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(self._image, matrix, (int(width), int(height)), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))

    def properties(self) -> dict[str, str]:
        return {}

    def file_mpp(self) -> float | None:
        return None  # PNG and JPEG carry no µm/px that bcpath reads

    def close(self) -> None:
        pass


def _rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA → (H, W, 3) uint8 RGB composited on white.

    OpenSlide returns transparent pixels outside the scanned area; white is what a
    pathologist sees there (glass), and what tissue detection treats as background.
    """
    if rgba[..., 3].min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    out = np.empty((*rgba.shape[:2], 3), dtype=np.uint8)
    for top in range(0, rgba.shape[0], _BLEND_ROWS):  # uint16 temporaries of a block of rows only
        block = rgba[top : top + _BLEND_ROWS]
        a = block[..., 3:4].astype(np.uint16)
        out[top : top + _BLEND_ROWS] = (block[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out


_BLEND_ROWS = 256


def _to_rgb_uint8(block: np.ndarray) -> np.ndarray:
    if block.shape[-1] == 4:
        block = _rgba_to_rgb_on_white(block.astype(np.uint8))
    elif block.shape[-1] != 3:
        raise ValueError(f"expected 3 or 4 channels, found {block.shape[-1]}")
    if block.dtype != np.uint8:
        if np.issubdtype(block.dtype, np.integer) and block.max(initial=0) > 255:
            block = (block.astype(np.float32) / np.iinfo(block.dtype).max * 255).round()
        block = np.clip(block, 0, 255).astype(np.uint8)
    return block


def _read_extent(size: int, scale: float) -> tuple[int, int]:
    """(source px to read, px to resample to) covering ``size`` output px at ``scale``.

    Among the first few candidates at least ``size`` long, pick the pair whose ratio is
    closest to ``scale``; the caller crops the resampled block to ``size``.
    """
    first = max(1, int(math.ceil(size * scale - 1e-6)))
    best = (first, max(size, int(round(first / scale))))
    for read in range(first, first + 4):
        full = max(size, int(round(read / scale)))
        if abs(read / full - scale) < abs(best[0] / best[1] - scale):
            best = (read, full)
    return best


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 8 << 20) -> str:
    """sha256 of a file, read in chunks (memory independent of file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Slide:
    """An open slide with a known level-0 resolution.

    Attributes:
        slide_id: name used in messages and outputs.
        path: the slide file.
        mpp: level-0 µm/px.
        mpp_source: "file", "sample_sheet" or "default_mpp".
    """

    slide_id: str
    path: Path
    mpp: float
    mpp_source: str
    _backend: Any = field(repr=False)
    _tile_cache_bytes: int | None = field(default=None, repr=False)  # None: the caches' sizes at open

    @property
    def reader(self) -> str:
        return str(self._backend.name)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self._backend.level_dimensions[0]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._backend.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._backend.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return self._backend.properties()

    def level_mpp(self, level: int) -> float:
        return self.mpp * self._backend.level_downsamples[level]

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose µm/px is still at least as fine as ``mpp``.

        Reading there and downsampling is cheaper than reading level 0, and never upsamples
        unless the requested µm/px is finer than level 0.
        """
        best = 0
        for level in range(len(self._backend.level_downsamples)):
            if self.level_mpp(level) <= mpp * _LEVEL_TOLERANCE:
                best = level
        return best

    def read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB at ``level``; (x0, y0) in level-0 pixels."""
        try:
            return self._backend.read_level(level, int(x0), int(y0), int(width), int(height))
        except (SlideError, MemoryError):
            raise  # an out-of-memory read is not a corrupt file
        except Exception as error:  # openslide.OpenSlideError, tifffile/zarr decode errors
            raise SlideError(
                self.slide_id,
                f"could not read level {level} at ({x0}, {y0}) from {self.path} ({error})",
                "the file is probably truncated or corrupt; copy it again from the scanner or archive",
            ) from error

    @contextlib.contextmanager
    def tile_cache(self, max_bytes: int) -> Iterator[None]:
        """Bound the reader's caches of decoded tiles (OpenSlide's and the direct TIFF reads')
        to ``max_bytes`` inside the block (0: keep none), for reads that seldom revisit a tile;
        the previous bound is restored after it. Cached tiles are dropped on entry and exit.
        A no-op for backends without such caches."""
        setter = getattr(self._backend, "set_tile_cache", None)
        if setter is None:
            yield
            return
        previous, self._tile_cache_bytes = self._tile_cache_bytes, int(max_bytes)
        setter(self._tile_cache_bytes)
        try:
            yield
        finally:
            self._tile_cache_bytes = previous
            setter(previous)

    def read_region(self, x0: float, y0: float, width: int, height: int, mpp: float) -> np.ndarray:
        """Read a region at a target resolution.

        Args:
            x0, y0: top-left corner in level-0 pixels.
            width, height: output size in pixels at ``mpp``.
            mpp: target µm/px.

        Returns:
            (height, width, 3) uint8 RGB. Pixels outside the slide are white.
        """
        return np.ascontiguousarray(self._region(x0, y0, width, height, mpp))

    def _region(self, x0: float, y0: float, width: int, height: int, mpp: float) -> np.ndarray:
        """:meth:`read_region`'s pixels, possibly a view cropped from a larger resampled block
        (not contiguous): callers that copy them anyway skip one copy."""
        import cv2

        warp = getattr(self._backend, "warp_region", None)
        if warp is not None:  # a plain image in memory (_ImageBackend)
            return np.asarray(warp(x0, y0, width, height, self.mpp / mpp))
        level = self.best_level_for_mpp(mpp)
        scale = mpp / self.level_mpp(level)  # level pixels per output pixel (>= ~1)
        if math.isclose(scale, round(scale), rel_tol=1e-9, abs_tol=1e-9):
            read_w, read_h = int(round(width * scale)), int(round(height * scale))
            full_w, full_h = width, height
        else:
            # Read a little more and resample by (nearly) the exact scale, then crop, so
            # tiles read one by one and tiles cut from a long strip agree to a fraction
            # of a pixel instead of drifting by the rounding of the read size.
            read_w, full_w = _read_extent(width, scale)
            read_h, full_h = _read_extent(height, scale)
        block = self.read_level(level, int(round(x0)), int(round(y0)), read_w, read_h)
        if (read_w, read_h) == (width, height):
            return block
        interpolation = cv2.INTER_AREA if scale >= 1 else cv2.INTER_LINEAR
        resized = cv2.resize(block, (full_w, full_h), interpolation=interpolation)
        return resized[:height, :width]

    def thumbnail(self, mpp: float, band_px: int = 1024, band_source_px: int = 32_000_000) -> np.ndarray:
        """Whole slide at ``mpp`` (coarser than level 0), read in horizontal bands.

        A band is at most ``band_px`` output rows and at most ``band_source_px`` pixels of
        the source level, so memory stays bounded even for a slide without a pyramid.

        Returns:
            (H, W, 3) uint8 RGB with H = ceil(height0 * mpp0 / mpp).
        """
        width0, height0 = self.dimensions
        factor = mpp / self.mpp  # level-0 px per output px
        out_w = max(1, int(math.ceil(width0 / factor)))
        out_h = max(1, int(math.ceil(height0 / factor)))
        source_per_out = mpp / self.level_mpp(self.best_level_for_mpp(mpp))
        rows_per_band = max(1, min(band_px, int(band_source_px // (out_w * source_per_out**2))))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        # Each band reads its tiles once (a band's edge row of tiles twice): no tile cache,
        # which would otherwise keep the whole level resident after the read.
        with self.tile_cache(0):
            for row in range(0, out_h, rows_per_band):
                rows = min(rows_per_band, out_h - row)
                out[row : row + rows] = self._region(0, row * factor, out_w, rows, mpp)
        release_free_memory()  # the bands' freed blocks, kept resident by glibc otherwise
        return out

    def info(self) -> dict[str, Any]:
        """Metadata for info.json (without the sha256, which needs a full file read)."""
        props = self.properties
        return {
            "slide_id": self.slide_id,
            "path": str(self.path),
            "reader": self.reader,
            "vendor": props.get("openslide.vendor", "generic-tiff" if self.reader == "tifffile" else None),
            "dimensions": list(self.dimensions),
            "level_count": len(self.level_dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": self.level_downsamples,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": props.get("openslide.objective-power"),
            "file_bytes": self.path.stat().st_size,
        }

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compression_name(code: int) -> str:
    """Name of a TIFF compression code, e.g. "JPEG"; the number for codes tifffile has no name for.

    tifffile stores known codes as ``COMPRESSION`` members but keeps vendor-specific codes
    (and the default when the tag is missing) as plain ints, which have no ``.name``.
    """
    import tifffile

    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return str(int(code))


def _open_backend(path: Path, slide_id: str, fast_tiff: bool = True) -> _Backend:
    size = path.stat().st_size
    if size == 0:
        raise SlideError(slide_id, f"{path} is empty (0 bytes)", "copy the slide again; the transfer or export did not finish")
    if path.suffix.lower() in IMAGE_FILE_SUFFIXES:
        return _ImageBackend(path, slide_id)
    errors: list[str] = []
    try:
        return _OpenSlideBackend(path, fast_tiff=fast_tiff)
    except Exception as error:  # OpenSlideUnsupportedFormatError, OpenSlideError
        errors.append(f"OpenSlide: {error}")
    if path.suffix.lower() in (".tif", ".tiff", ".svs"):
        try:
            return _TiffBackend(path)
        except Exception as error:
            errors.append(f"tifffile: {error}")
    raise SlideError(
        slide_id,
        f"{path} is not a readable slide ({'; '.join(errors)})",
        "check that the file is a complete whole-slide image in a supported format "
        f"({', '.join(SLIDE_EXTENSIONS)}); a truncated copy or a renamed file gives this error",
    )


def open_slide(
    path: str | os.PathLike[str],
    slide_id: str | None = None,
    mpp: float | None = None,
    default_mpp: float | None = None,
    fast_tiff: bool | None = None,
) -> Slide:
    """Open a slide read-only and settle its level-0 µm/px.

    Args:
        path: slide file, or a plain image (:data:`IMAGE_FILE_SUFFIXES`), which has no µm/px of
            its own: give ``mpp`` (or ``default_mpp``).
        slide_id: name for messages; defaults to the file stem.
        mpp: µm/px from the sample sheet, used only when the file has none.
        default_mpp: explicit config fallback, used when neither file nor sheet has one.
        fast_tiff: read tiles of TIFF-based slides (generic tiled TIFF, Aperio SVS with
            JPEG or lossless tiles) directly with tifffile/imagecodecs instead of through
            OpenSlide, for the levels where that gives OpenSlide's pixels (see
            ``_FastTiffReader``); metadata always comes from OpenSlide. None: on unless
            the environment variable BCPATH_FAST_TIFF is 0/false/no/off.

    Raises:
        SlideError: unreadable file (or grayscale plain image), or no µm/px anywhere.
    """
    path = Path(path)
    slide_id = slide_id or path.stem
    if not path.exists():
        raise SlideError(slide_id, f"file not found: {path}", "fix the path in the sample sheet or cohort directory")
    backend = _open_backend(path, slide_id, fast_tiff=_fast_tiff_enabled(fast_tiff))
    file_mpp = backend.file_mpp()
    if file_mpp is not None:
        if mpp is not None and not math.isclose(mpp, file_mpp, rel_tol=0.05):
            logger.warning("slide %s: sample sheet mpp %.4f differs from the file's %.4f; using the file's", slide_id, mpp, file_mpp)
        resolved, source = file_mpp, "file"
    elif mpp is not None:
        resolved, source = float(mpp), "sample_sheet"
    elif default_mpp is not None:
        logger.warning("slide %s: no µm/px in the file or sample sheet; using default_mpp=%s from config", slide_id, default_mpp)
        resolved, source = float(default_mpp), "default_mpp"
    else:
        backend.close()
        if backend.name == "image":
            raise SlideError(
                slide_id,
                f"no µm/px for the image {path} (PNG and JPEG files carry none)",
                "add an `mpp` column to the sample sheet, e.g. 0.5 for 20x",
            )
        raise SlideError(
            slide_id,
            f"no µm/px in the file {path}",
            "add an `mpp` column to the sample sheet (e.g. 0.25 for 40x, 0.5 for 20x) "
            "or set `default_mpp` in config.yaml",
        )
    return Slide(slide_id=slide_id, path=path, mpp=resolved, mpp_source=source, _backend=backend)
