"""Tiling throughput: bcpath's tiler against a naive CLAM-style loop and the decode limit.

What it measures, on one slide and one tile grid (the grid ``bcpath.tiling.plan_grid``
lays over the tissue mask, with the workflow's ``TilingParams``: 2.0 µm/px, 512 px tiles,
min tissue fraction 0.1, lossless Blosc-zstd chunks unless --compression jpeg):

* ``ours``: ``bcpath.tiling.tile_slide`` exactly as the ``tile_slide`` rule calls it
  (tiles.zarr + grid.parquet + patches.h5), with --threads threads (the rule uses 2), and
  again with 1 thread. The tissue mask is computed once beforehand and is not timed.
* ``naive``: a CLAM-style per-tile loop, sequential and single-threaded: for every tile
  ours writes, ``openslide.OpenSlide.read_region`` at level 0 (--naive-level 0, CLAM's
  default) or at OpenSlide's best level for the downsample (--naive-level best) of the
  tile's level-0 extent, RGBA→RGB with PIL (composited on white where transparent, so
  the output is the same), PIL resize to 512×512 (--naive-resample, PIL's default
  bicubic like CLAM), written into a Zarr array made by ``bcpath.tiling.create_tile_store``
  (same shape, chunks and compressor as ours: the same output).
* ``decode limit``: only decoding the source tiles that ours touches, each once, at the
  pyramid level ours reads from: raw tile bytes read from the TIFF and decoded with
  tifffile/imagecodecs in --threads threads. No resampling, no RGBA conversion, no output.
  Nothing that reads this slide can be faster, so this is a lower bound on time.
* ``openslide native``: the same touched tiles read one by one through OpenSlide at their
  own level (tile-aligned, no resampling), --threads threads: the decode limit plus
  OpenSlide's own overhead (ARGB conversion, cache). Informational.

Repetitions are interleaved (rep 1 of every method, then rep 2, ...; the order rotates
each rep), each rep opens the slide afresh, and the median is reported. The slide file is
in the OS page cache for all methods (it was just written or read), so this measures
decode + compute + write, not cold disk reads.

Reading the output:
    tiles/s   output tiles (512×512) per second of wall time.
    MB/s      output pixel megabytes per second, uncompressed RGB (tiles × 512·512·3 / 1e6).
    CPU s     process CPU time (all threads) per run; CPU s > wall s means parallelism.
    speed-up  naive median / ours median (target ≥ 3×).
    fraction of decode limit   decode-limit median / ours median: 1.0 would mean ours
              costs no more than decoding the source; the rest is resampling, RGBA
              handling, compression and Zarr writes.
    tile agreement   ours vs naive pixels over every written tile: max / p99.9 / mean
              absolute difference (0-255). They differ only by resampling filter and by
              which pyramid level is read (the pyramid levels are themselves resampled and
              JPEG re-encoded by the scanner/libvips), so small means, not 0, are expected
              with --naive-level 0; --naive-level best on a slide whose level matches
              2.0 µm/px exactly gives 0. "same output" PASSes when the mean is ≤ 3 and
              p99 ≤ 16 (--max-mean-diff, --max-p99-diff) and both wrote the same chunk files.
    load average   printed at start and end: the machine is shared, and other jobs slow
              every method (interleaving spreads that over all of them, medians damp it).

Exit status 0 unless --strict and a check FAILs (speed-up < --target, or not the same output).

Default slide: a demo H&E slide (``bcpath.demo``) of 20000×16000 px at 0.5 µm/px,
generated on the fly in a temporary folder (pyramidal JPEG TIFF, 256 px tiles, levels
at 0.5, 1, 2, 4, ... µm/px). Use --slide PATH [--mpp M] for a real slide (--mpp is only used
when the file has no µm/px). The default run takes about 2 minutes on 2 cores.

Examples:
    .venv/bin/python bench/tiling.py
    .venv/bin/python bench/tiling.py --slide ../shared/data/wsi/CMU-1-Small-Region.svs --tile-mpp 1.0
    .venv/bin/python bench/tiling.py --slide ../shared/data/wsi/tcga-cr-7395-01a-01-ts1.svs --mpp 0.25
    .venv/bin/python bench/tiling.py --quick --json /tmp/tiling.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import bcpath  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bcpath.tiling import (
    TileGrid,
    TilingParams,
    create_tile_store,
    open_tiles,
    plan_grid,
    tile_runs,
    tile_slide,
)
from bcpath.tissue import TissueParams, detect_tissue
from bcpath.wsi import Slide, open_slide
from bcpath.wsi.reader import _read_extent

PIL_FILTERS = ("bicubic", "bilinear", "box", "lanczos", "nearest", "hamming")


# --------------------------------------------------------------------------- setup


def make_demo_slide_file(out_dir: Path, size: tuple[int, int], seed: int, threads: int) -> Path:
    """Paint one demo H&E slide of ``size`` (w, h) px at 0.5 µm/px; returns its path."""
    from bcpath.demo.cohort import make_demo_slide

    record = make_demo_slide(out_dir, seed, 0, size=size, threads=threads)
    return out_dir / record["path"]


def tissue_mask(slide: Slide, tissue: TissueParams) -> tuple[np.ndarray, float]:
    """The workflow's tissue mask (detect_tissue on a thumbnail at mask_mpp)."""
    mask_mpp = max(tissue.mask_mpp, slide.mpp)
    return detect_tissue(slide.thumbnail(mask_mpp), mask_mpp, tissue), mask_mpp


def tiles_in_order(grid: TileGrid) -> list[tuple[int, int]]:
    order = np.lexsort((grid.cols, grid.rows))
    return [(int(r), int(c)) for r, c in zip(grid.rows[order], grid.cols[order], strict=True)]


def tiff_page_for_level(tif: Any, dims: tuple[int, int]) -> Any:
    """The tiled TIFF page whose (width, height) equals an OpenSlide level's dimensions."""
    for page in tif.pages:
        if page.is_tiled and (page.imagewidth, page.imagelength) == tuple(dims):
            return page
    raise LookupError(f"no tiled TIFF page of {dims[0]}x{dims[1]} px")


def touched_source_tiles(slide: Slide, grid: TileGrid, params: TilingParams, tile_wh: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    """(level, sorted (tx, ty)) of the source tiles ``write_tiles`` reads, each once.

    Mirrors ``Slide.read_region``: the level is ``best_level_for_mpp(params.mpp)`` and each
    run of tiles is one read whose size comes from the same rounding rule.
    """
    level = slide.best_level_for_mpp(params.mpp)
    ds = slide.level_downsamples[level]
    level_w, level_h = slide.level_dimensions[level]
    scale = params.mpp / slide.level_mpp(level)
    tw, th = tile_wh
    touched: set[tuple[int, int]] = set()
    for row, col, count in tile_runs(grid, params.max_run_tiles):
        x0, y0 = grid.level0_xy(row, col)
        width, height = count * params.tile_px, params.tile_px
        if math.isclose(scale, round(scale), rel_tol=1e-9, abs_tol=1e-9):
            read_w, read_h = int(round(width * scale)), int(round(height * scale))
        else:
            read_w, _ = _read_extent(width, scale)
            read_h, _ = _read_extent(height, scale)
        lx, ly = x0 / ds, y0 / ds
        x_lo, y_lo = max(0, math.floor(lx)), max(0, math.floor(ly))
        x_hi, y_hi = min(level_w, math.ceil(lx + read_w)), min(level_h, math.ceil(ly + read_h))
        if x_hi <= x_lo or y_hi <= y_lo:
            continue
        for ty in range(y_lo // th, (y_hi - 1) // th + 1):
            for tx in range(x_lo // tw, (x_hi - 1) // tw + 1):
                touched.add((tx, ty))
    return level, sorted(touched, key=lambda t: (t[1], t[0]))


# --------------------------------------------------------------------------- methods


def run_ours(ctx: dict[str, Any], out: Path, threads: int) -> None:
    with open_slide(ctx["slide_path"], mpp=ctx["mpp"]) as slide:
        tile_slide(
            slide, ctx["mask"], ctx["mask_mpp"], out / "tiles.zarr", out / "grid.parquet", out / "patches.h5",
            params=ctx["params"], threads=threads, progress=False,
        )


def run_naive(ctx: dict[str, Any], out: Path) -> None:
    """CLAM-style: one OpenSlide read + PIL resize + Zarr write per tile, one thread."""
    import openslide
    from PIL import Image

    params: TilingParams = ctx["params"]
    grid: TileGrid = ctx["grid"]
    tile_px = params.tile_px
    size0 = int(round(tile_px * grid.scale))  # the tile's extent in level-0 px
    resample = getattr(Image.Resampling, ctx["naive_resample"].upper())
    osr = openslide.OpenSlide(str(ctx["slide_path"]))
    try:
        if ctx["naive_level"] == "best":
            level = osr.get_best_level_for_downsample(grid.scale)
        else:
            level = int(ctx["naive_level"])
        ds = osr.level_downsamples[level]
        size = max(1, int(round(size0 / ds)))
        with open_slide(ctx["slide_path"], mpp=ctx["mpp"]) as slide:  # metadata for the store only
            array = create_tile_store(out / "tiles.zarr", slide, grid, params)
        white = None
        for row, col in tiles_in_order(grid):
            x0, y0 = grid.level0_xy(row, col)
            region = osr.read_region((x0, y0), level, (size, size))
            if region.getextrema()[3][0] < 255:  # outside the scan: white, as ours
                if white is None:
                    white = Image.new("RGBA", (size, size), (255, 255, 255, 255))
                region = Image.alpha_composite(white, region)
            rgb = region.convert("RGB")
            if rgb.size != (tile_px, tile_px):
                rgb = rgb.resize((tile_px, tile_px), resample=resample)
            chw = np.asarray(rgb).transpose(2, 0, 1)
            top, left = row * tile_px, col * tile_px
            array[:, top : top + tile_px, left : left + tile_px] = chw
    finally:
        osr.close()


def run_decode_limit(ctx: dict[str, Any], out: Path, threads: int) -> None:
    """Read and decode every touched source tile once (tifffile + imagecodecs)."""
    import tifffile

    with tifffile.TiffFile(str(ctx["slide_path"])) as tif:
        page = tiff_page_for_level(tif, ctx["level_dims"])
        n_across = math.ceil(page.imagewidth / page.tilewidth)
        offsets, counts = page.dataoffsets, page.databytecounts
        tables = page.jpegtables
        decode = page.decode
        fd = os.open(str(ctx["slide_path"]), os.O_RDONLY)
        try:

            def job(tile: tuple[int, int]) -> int:
                index = tile[1] * n_across + tile[0]
                data = os.pread(fd, counts[index], offsets[index])
                segment, _, _ = decode(data, index, jpegtables=tables)
                return int(segment.shape[-2])

            if threads <= 1:
                for tile in ctx["touched"]:
                    job(tile)
            else:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for _ in pool.map(job, ctx["touched"], chunksize=8):
                        pass
        finally:
            os.close(fd)


def run_openslide_native(ctx: dict[str, Any], out: Path, threads: int) -> None:
    """Every touched source tile through OpenSlide at its own level, tile-aligned."""
    import openslide

    osr = openslide.OpenSlide(str(ctx["slide_path"]))
    level, ds = ctx["level"], osr.level_downsamples[ctx["level"]]
    tw, th = ctx["source_tile"]

    def job(tile: tuple[int, int]) -> None:
        osr.read_region((int(round(tile[0] * tw * ds)), int(round(tile[1] * th * ds))), level, (tw, th))

    try:
        if threads <= 1:
            for tile in ctx["touched"]:
                job(tile)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for _ in pool.map(job, ctx["touched"], chunksize=8):
                    pass
    finally:
        osr.close()


# --------------------------------------------------------------------------- checks


def compare_tiles(ours: Path, naive: Path, grid: TileGrid, tile_px: int) -> dict[str, Any]:
    """Absolute pixel differences ours vs naive over every written tile."""
    a, b = open_tiles(ours), open_tiles(naive)
    if a.shape != b.shape or a.chunks != b.chunks:
        raise AssertionError(f"different arrays: ours {a.shape} {a.chunks}, naive {b.shape} {b.chunks}")
    hist = np.zeros(256, dtype=np.int64)
    worst_tile = (0, None)
    for row, col in tiles_in_order(grid):
        sl = (slice(None), slice(row * tile_px, (row + 1) * tile_px), slice(col * tile_px, (col + 1) * tile_px))
        diff = np.abs(np.asarray(a[sl], dtype=np.int16) - np.asarray(b[sl], dtype=np.int16)).astype(np.uint8)
        hist += np.bincount(diff.ravel(), minlength=256)
        tile_mean = float(diff.mean())
        if tile_mean > worst_tile[0]:
            worst_tile = (tile_mean, (row, col))
    total = int(hist.sum())
    if total == 0:
        return {"n_tiles": 0}
    cdf = np.cumsum(hist) / total
    return {
        "n_tiles": grid.n_tiles,
        "max_abs": int(np.nonzero(hist)[0].max()),
        "p99_abs": int(np.searchsorted(cdf, 0.99)),
        "p999_abs": int(np.searchsorted(cdf, 0.999)),
        "mean_abs": float((hist * np.arange(256)).sum() / total),
        "frac_gt_16": float(hist[17:].sum() / total),
        "worst_tile_mean_abs": worst_tile[0],
        "worst_tile_row_col": worst_tile[1],
    }


def chunk_keys(zarr_path: Path) -> set[str]:
    root = zarr_path / "0"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


# --------------------------------------------------------------------------- driver


def patch_clevel(clevel: int) -> None:
    """Make bcpath.tiling's lossless compressor Blosc zstd at ``clevel`` (what-if runs only)."""
    from zarr.codecs import BloscCodec

    import bcpath.tiling

    original = bcpath.tiling._codecs

    def codecs(params: TilingParams) -> tuple[dict[str, Any], tuple[int, int, int]]:
        if params.compression != "lossless":
            return original(params)
        return {"compressors": BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle")}, (3, params.tile_px, params.tile_px)

    bcpath.tiling._codecs = codecs


def preload() -> None:
    """Import what the methods import lazily, so no timed run pays for imports."""
    import h5py  # noqa: F401
    import imagecodecs  # noqa: F401
    import numcodecs  # noqa: F401
    import openslide  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tqdm  # noqa: F401
    import zarr  # noqa: F401
    from PIL import Image  # noqa: F401


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="See the module docstring for how to read the output.")
    parser.add_argument("--slide", type=Path, help="slide to tile (default: a demo slide made on the fly)")
    parser.add_argument("--mpp", type=float, help="level-0 µm/px when the file has none")
    parser.add_argument("--demo-size", default="20000x16000", help="WxH px of the generated demo slide (default 20000x16000)")
    parser.add_argument("--seed", type=int, default=0, help="demo slide seed")
    parser.add_argument("--tile-mpp", type=float, default=TilingParams.mpp, help="analysis µm/px (default 2.0, the workflow's)")
    parser.add_argument("--tile-px", type=int, default=TilingParams.tile_px)
    parser.add_argument("--min-tissue-fraction", type=float, default=TilingParams.min_tissue_fraction)
    parser.add_argument("--compression", choices=["lossless", "jpeg"], default=TilingParams.compression)
    parser.add_argument("--what-if-clevel", type=int, metavar="N", help="what-if: Blosc zstd level N instead of bcpath's (5) for ours and naive alike (patches bcpath.tiling._codecs in this process only)")
    parser.add_argument("--threads", type=int, default=2, help="threads for ours and the decode limit (rule tile_slide: 2)")
    parser.add_argument("--no-single-thread", action="store_true", help="skip the extra 'ours, 1 thread' row")
    parser.add_argument("--no-native", action="store_true", help="skip the 'openslide native tiles' row")
    parser.add_argument("--naive-level", default="0", help="level the naive loop reads: an integer or 'best' (default 0, like CLAM)")
    parser.add_argument("--naive-resample", choices=PIL_FILTERS, default="bicubic", help="PIL filter of the naive resize (default bicubic, PIL's and CLAM's default)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per method (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every method first (imports, thread pools, caches)")
    parser.add_argument("--target", type=float, default=3.0, help="speed-up over naive to call PASS (default 3)")
    parser.add_argument("--max-mean-diff", type=float, default=3.0, help="ours vs naive: largest mean abs pixel difference called the same output")
    parser.add_argument("--max-p99-diff", type=float, default=16.0, help="ours vs naive: largest 99th-percentile abs pixel difference called the same output")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 6000x4800 demo slide, 1 rep, no warm-up")
    parser.add_argument("--tmp", type=Path, help="parent folder for temporary files (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a check FAILs (default: report only)")
    args = parser.parse_args(argv)
    if args.quick:
        args.demo_size, args.reps, args.warmup = "6000x4800", 1, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import cv2

    started = time.perf_counter()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs; other work on the machine slows every method)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bcpath-bench-tiling-", dir=args.tmp))
    try:
        return _main(args, work, started, cv2, load)
    finally:
        if args.keep:
            print(f"temporary files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, work: Path, started: float, cv2: Any, load: tuple[float, float, float]) -> int:
    import openslide
    import tifffile

    preload()
    if args.what_if_clevel is not None:
        patch_clevel(args.what_if_clevel)
        print(f"WHAT-IF: lossless chunks use Blosc zstd clevel {args.what_if_clevel}, not bcpath's own setting", flush=True)
    gen_s = None
    if args.slide is None:
        w, h = (int(v) for v in args.demo_size.lower().split("x"))
        print(f"generating a {w}x{h} px demo slide at 0.5 µm/px in {work} ...", flush=True)
        t = time.perf_counter()
        slide_path = make_demo_slide_file(work / "demo", (w, h), args.seed, args.threads)
        gen_s = time.perf_counter() - t
        print(f"  done in {gen_s:.1f} s ({slide_path.stat().st_size / 1e6:.0f} MB)", flush=True)
    else:
        slide_path = args.slide.resolve()

    params = replace(TilingParams(), mpp=args.tile_mpp, tile_px=args.tile_px, min_tissue_fraction=args.min_tissue_fraction, compression=args.compression)
    with open_slide(slide_path, mpp=args.mpp) as slide:
        t = time.perf_counter()
        mask, mask_mpp = tissue_mask(slide, TissueParams())
        mask_s = time.perf_counter() - t
        grid = plan_grid(mask, mask_mpp, slide, params)
        if grid.n_tiles == 0:
            print("no tissue tiles on this slide: nothing to benchmark", file=sys.stderr)
            return 1
        level = slide.best_level_for_mpp(params.mpp)
        try:
            with tifffile.TiffFile(str(slide_path)) as tif:
                page = tiff_page_for_level(tif, slide.level_dimensions[level])
                source_tile = (int(page.tilewidth), int(page.tilelength))
                source_codec = page.compression.name
        except Exception as error:  # not a tiled TIFF (MRXS, NDPI strips, ...): no decode limit
            print(f"no decode limit for this file ({error}); only ours and naive are timed", file=sys.stderr)
            source_tile, source_codec = None, "unknown"
        touched = touched_source_tiles(slide, grid, params, source_tile)[1] if source_tile else []
        meta = {
            "slide": str(slide_path),
            "reader": slide.reader,
            "dimensions": list(slide.dimensions),
            "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": slide.level_downsamples,
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "read_level": level,
            "read_level_mpp": slide.level_mpp(level),
            "read_scale": params.mpp / slide.level_mpp(level),
            "source_tile": list(source_tile) if source_tile else None,
            "source_codec": source_codec,
            "source_tiles_touched": len(touched),
            "grid_rows_cols": [grid.n_rows, grid.n_cols],
            "n_tiles": grid.n_tiles,
            "tissue_mask_s": mask_s,
            "demo_generation_s": gen_s,
        }
        ctx: dict[str, Any] = {
            "slide_path": slide_path, "mpp": args.mpp, "mask": mask, "mask_mpp": mask_mpp, "params": params,
            "grid": grid, "level": level, "level_dims": slide.level_dimensions[level], "touched": touched,
            "source_tile": source_tile, "naive_level": args.naive_level, "naive_resample": args.naive_resample,
        }
    if slide.reader != "openslide":
        print(f"OpenSlide cannot open {slide_path}; the naive loop needs it", file=sys.stderr)
        return 1

    methods: list[tuple[str, str, int, Callable[[Path], None]]] = [
        ("ours", "ours: bcpath tile_slide", args.threads, lambda out: run_ours(ctx, out, args.threads)),
    ]
    if not args.no_single_thread and args.threads != 1:
        methods.append(("ours_1t", "ours: bcpath tile_slide", 1, lambda out: run_ours(ctx, out, 1)))
    naive_desc = f"naive CLAM loop (L{args.naive_level}, PIL {args.naive_resample})"
    methods.append(("naive", naive_desc, 1, lambda out: run_naive(ctx, out)))
    if source_tile:
        methods.append(("decode", "decode limit (tifffile)", args.threads, lambda out: run_decode_limit(ctx, out, args.threads)))
    if source_tile and not args.no_native:
        methods.append(("native", "openslide native tiles", args.threads, lambda out: run_openslide_native(ctx, out, args.threads)))

    print(
        f"slide {slide_path.name}: {meta['dimensions'][0]}x{meta['dimensions'][1]} px at {meta['mpp']:.3f} µm/px "
        f"({meta['mpp_source']}), {len(meta['level_dimensions'])} levels; ours reads level {level} "
        f"({meta['read_level_mpp']:.3f} µm/px, scale {meta['read_scale']:.3f}), {source_codec} tiles {source_tile or '?'}"
    )
    print(
        f"grid {grid.n_rows}x{grid.n_cols}, {grid.n_tiles} tissue tiles of {params.tile_px} px at {params.mpp} µm/px "
        f"({params.compression}); {len(touched)} source tiles touched; {args.warmup} warm-up + {args.reps} interleaved reps; "
        f"cv2 threads {cv2.getNumThreads()}, {os.cpu_count()} CPUs",
        flush=True,
    )

    for rep in range(args.warmup):
        for key, _, _, fn in methods:
            out = work / f"warmup{rep}-{key}"
            out.mkdir(parents=True)
            wall, _ = timed(lambda fn=fn, out=out: fn(out))
            print(f"  warm-up {key:8s} {wall:7.2f} s (not counted)", flush=True)
            shutil.rmtree(out)

    times: dict[str, list[float]] = {key: [] for key, *_ in methods}
    cpu: dict[str, list[float]] = {key: [] for key, *_ in methods}
    for rep in range(args.reps):
        shift = rep % len(methods)
        for key, _, _, fn in methods[shift:] + methods[:shift]:
            out = work / f"{key}-rep{rep}"
            out.mkdir(parents=True)
            wall, cpu_s = timed(lambda fn=fn, out=out: fn(out))
            times[key].append(wall)
            cpu[key].append(cpu_s)
            print(f"  rep {rep + 1}/{args.reps} {key:8s} {wall:7.2f} s wall {cpu_s:7.2f} s CPU", flush=True)
            if rep < args.reps - 1:
                shutil.rmtree(out)

    last = args.reps - 1
    ours_zarr, naive_zarr = work / f"ours-rep{last}" / "tiles.zarr", work / f"naive-rep{last}" / "tiles.zarr"
    agreement = compare_tiles(ours_zarr, naive_zarr, grid, params.tile_px)
    same_chunks = chunk_keys(ours_zarr) == chunk_keys(naive_zarr)

    mb_per_tile = params.tile_px * params.tile_px * 3 / 1e6
    rows = []
    for key, desc, threads, _ in methods:
        median = statistics.median(times[key])
        rows.append(
            {
                "method": key, "description": desc, "threads": threads, "median_s": median,
                "tiles_per_s": grid.n_tiles / median, "mb_per_s": grid.n_tiles * mb_per_tile / median,
                "cpu_s": statistics.median(cpu[key]), "runs_s": times[key],
            }
        )
    by_key = {r["method"]: r for r in rows}
    speedup = by_key["naive"]["median_s"] / by_key["ours"]["median_s"]
    fraction = by_key["decode"]["median_s"] / by_key["ours"]["median_s"] if "decode" in by_key else None

    print()
    header = f"{'method':44s} {'thr':>3s} {'median s':>9s} {'tiles/s':>9s} {'MB/s':>8s} {'CPU s':>7s}  runs (s)"
    print(header)
    print("-" * len(header))
    for r in rows:
        runs = " ".join(f"{v:.2f}" for v in r["runs_s"])
        print(f"{r['description']:44s} {r['threads']:3d} {r['median_s']:9.3f} {r['tiles_per_s']:9.1f} {r['mb_per_s']:8.1f} {r['cpu_s']:7.2f}  {runs}")
    print()
    print(f"tiles: {grid.n_tiles} × {params.tile_px}×{params.tile_px} RGB = {grid.n_tiles * mb_per_tile:.1f} MB of output pixels")
    ok = speedup >= args.target
    print(f"speed-up ours/naive: {speedup:.2f}× (target ≥ {args.target:g}×) {'PASS' if ok else 'FAIL'}")
    if "ours_1t" in by_key:
        print(f"speed-up ours 1 thread/naive: {by_key['naive']['median_s'] / by_key['ours_1t']['median_s']:.2f}×")
    if fraction is not None:
        print(f"fraction of decode limit: {fraction:.2f} (ours {by_key['ours']['tiles_per_s']:.1f} tiles/s vs limit {by_key['decode']['tiles_per_s']:.1f} tiles/s)")
    else:
        print("fraction of decode limit: n/a (not a tiled TIFF)")
    if agreement.get("n_tiles"):
        print(
            f"tile agreement ours vs naive over {agreement['n_tiles']} tiles: max {agreement['max_abs']}, "
            f"p99.9 {agreement['p999_abs']}, p99 {agreement['p99_abs']}, mean {agreement['mean_abs']:.2f} abs (0-255); "
            f"{100 * agreement['frac_gt_16']:.3f}% of values differ by > 16; same chunk files: {same_chunks}"
        )
    agree_ok = bool(agreement.get("n_tiles")) and same_chunks and agreement["mean_abs"] <= args.max_mean_diff and agreement["p99_abs"] <= args.max_p99_diff
    print(f"same output (mean ≤ {args.max_mean_diff:g}, p99 ≤ {args.max_p99_diff:g}, same chunks): {'PASS' if agree_ok else 'FAIL'}")
    ok = ok and agree_ok
    total_s = time.perf_counter() - started
    end_load = os.getloadavg()
    print(f"load average at end: {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}; total wall time {total_s:.1f} s")

    if args.json:
        import numcodecs
        import PIL
        import zarr

        result = {
            "benchmark": "bench/tiling.py",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "params": asdict(params),
            "meta": meta,
            "methods": rows,
            "speedup_ours_vs_naive": speedup,
            "target": args.target,
            "pass": ok,
            "load_average_start": list(load),
            "load_average_end": list(end_load),
            "fraction_of_decode_limit": fraction,
            "agreement": agreement,
            "same_chunk_files": same_chunks,
            "total_s": total_s,
            "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                "openslide": openslide.__library_version__, "openslide_python": openslide.__version__,
                "tifffile": tifffile.__version__, "zarr": zarr.__version__, "numcodecs": numcodecs.__version__,
                "pillow": PIL.__version__, "opencv": cv2.__version__,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"JSON written to {args.json}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
