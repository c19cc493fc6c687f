"""Peak memory of the slide steps on very large synthetic slides: streaming, not loading.

What it measures: for each slide size (default 20000² and 100000² px at 0.25 µm/px, i.e.
5 mm and 25 mm square at 40×), a synthetic pyramidal JPEG TIFF is written, then the
workflow's per-slide steps run on it, each in a fresh Python process, exactly as the
Snakemake rules call them (``bcpath.steps.slides``):

    baseline   import bcpath.pipeline and open the slide (interpreter, numpy, OpenSlide):
               what every step pays before doing any work
    inspect    inspect_slide: info.json, reads the coarsest level and sha256 of the file
    tissue     detect_tissue_step: thumbnail at 8 µm/px, mask, QC (blur fields), GeoJSON
    tile       tile_slide_step: tiles.zarr + grid.parquet + patches.h5 at 2.0 µm/px,
               --threads threads (the rule uses 2)

The peak resident set size (RSS) of each process is its VmHWM (/proc/self/status, read
by the child when the step is done: the kernel's high-water mark of this process image, all
threads included); RSS is also sampled from outside every 50 ms (median and sampled max in
the JSON). ru_maxrss (``os.wait4``/``getrusage``) is not used as the peak: Linux starts a
child's ru_maxrss at the parent's RSS at fork and keeps it across exec.

The rules reserve mem_mb=2000, so every step must peak below 2 GB (--limit-gb), and the
tile step's peak should not grow with slide size: the largest/smallest ratio must stay
under --max-growth (default 1.5, against a 25× larger slide area). What does grow is
whatever is sized like the tissue mask (8 µm/px: 3125² px at 100000² px and 0.25 µm/px).

Synthetic slides: no pixels are rendered at full size. A handful of 512×512 tiles
(H&E-like tissue textures and near-white glass) are JPEG-encoded once per pyramid level and
written as pre-compressed TIFF tiles (tifffile, iterator of bytes), chosen per tile by a
fixed tissue layout (ellipses, one with a hole; about a third of the area is tissue), so
white chunks are skipped by the tiler exactly as on a real slide. Pyramid levels are
downsampled by 4 (0.25, 1, 4, 16, ... µm/px); resolution tags in pixels/cm make OpenSlide
report openslide.mpp-x = 0.25. The 100000² slide is about 0.6 GB and is written in seconds.
--single-level-size N adds a flat (level 0 only) N² slide, the case where the reader has no
pyramid to fall back on (informational; not part of PASS/FAIL).

Reading the output: one row per (slide, step) with peak RSS in MB (1e6 bytes), the peak
above the baseline process, the median RSS while the step ran, and its wall time; then the
tile step's peak ratio largest/smallest slide and PASS/FAIL against the 2 GB limit and
the growth limit. The default run takes under a minute on 2 cores; temporary files go
under --tmp (system temp by default) and are removed unless --keep.

Examples:
    .venv/bin/python bench/tiling_memory.py
    .venv/bin/python bench/tiling_memory.py --sizes 20000,100000,200000 --json /tmp/mem.json
    .venv/bin/python bench/tiling_memory.py --single-level-size 20000
    .venv/bin/python bench/tiling_memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
TILE = 512
STEPS = ("baseline", "inspect", "tissue", "tile")
# Tissue layout in slide-relative coordinates: (cx, cy, rx, ry, is_hole).
ELLIPSES = (
    (0.32, 0.40, 0.22, 0.28, False),
    (0.32, 0.40, 0.07, 0.09, True),
    (0.72, 0.62, 0.17, 0.25, False),
    (0.75, 0.17, 0.10, 0.07, False),
)


# --------------------------------------------------------------------------- synthetic slide


def _tissue_texture(rng: np.random.Generator, level_mpp: float) -> np.ndarray:
    """One 512×512 RGB tile of pink stroma with purple nuclei at ``level_mpp`` µm/px.

    Nuclei are ~3.5 µm in radius and ~1 per 250 µm², so every pyramid level looks like the
    same tissue at its own scale (saturated enough for the Otsu tissue detector).
    """
    import cv2

    base = np.array([232, 168, 200], dtype=np.float32) + rng.normal(0, 6, 3)
    img = base + rng.normal(0, 9, (TILE, TILE, 1)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    radius = 3.5 / level_mpp
    count = min(6000, int((TILE * level_mpp) ** 2 / 250))
    for _ in range(count):
        centre = (int(rng.integers(0, TILE)), int(rng.integers(0, TILE)))
        axes = (max(1, int(round(radius * rng.uniform(0.7, 1.3)))), max(1, int(round(radius * rng.uniform(0.5, 0.9)))))
        color = (int(rng.integers(95, 140)), int(rng.integers(50, 80)), int(rng.integers(140, 175)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def tissue_mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Tissue at slide-relative coordinates (u, v in [0, 1]): inside an ellipse, outside holes."""
    tissue = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    holes = np.zeros_like(tissue)
    for cx, cy, rx, ry, hole in ELLIPSES:
        inside = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0
        if hole:
            holes |= inside
        else:
            tissue |= inside
    return tissue & ~holes


def _tile_classes(side: int, n: int, step: int = 16) -> np.ndarray:
    """(n, n) int8 per tile: 0 glass, 1 tissue, 2 both (rendered pixel by pixel)."""
    samples = np.arange(0, n * TILE, step) + step / 2
    coords = np.minimum(samples, side - 0.5) / side
    per_tile = TILE // step
    classes = np.zeros((n, n), dtype=np.int8)
    for ty in range(n):  # one row of tiles at a time keeps this small
        low = tissue_mask(coords[None, :], coords[ty * per_tile : (ty + 1) * per_tile, None])
        blocks = low.reshape(per_tile, n, per_tile)
        any_tissue, all_tissue = blocks.any(axis=(0, 2)), blocks.all(axis=(0, 2))
        classes[ty] = np.where(all_tissue, 1, np.where(any_tissue, 2, 0))
    return classes


def write_synthetic_slide(path: Path, size: int, mpp: float, pyramid: bool = True, quality: int = 80, seed: int = 0) -> dict[str, Any]:
    """Write a size×size px pyramidal (or flat) JPEG TIFF at ``mpp`` µm/px from pre-encoded tiles.

    Tiles wholly inside or outside the tissue layout are copies of a few JPEG tiles encoded
    once per level; only tiles on a tissue boundary are composited and encoded one by one.

    Returns a summary: levels (w, h, downsample), tissue tile fraction at level 0, bytes.
    """
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    levels = [1]
    while pyramid and math.ceil(size / (levels[-1] * 4)) >= TILE:
        levels.append(levels[-1] * 4)
    glass = np.full((TILE, TILE, 3), 243, dtype=np.uint8)
    white = imagecodecs.jpeg_encode(glass, level=quality)
    summary: dict[str, Any] = {"levels": [], "tissue_tile_fraction": None, "boundary_tiles": 0}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, ds in enumerate(levels):
            side = max(1, size // ds)
            level_mpp = mpp * size / side
            raw = [_tissue_texture(rng, level_mpp) for _ in range(6)]
            textures = [imagecodecs.jpeg_encode(t, level=quality) for t in raw]
            n = math.ceil(side / TILE)
            classes = _tile_classes(side, n)
            pixel = (np.arange(TILE) + 0.5) / side

            def tiles(n: int = n, side: int = side, textures: list[bytes] = textures, raw: list[np.ndarray] = raw, classes: np.ndarray = classes, pixel: np.ndarray = pixel) -> Iterator[bytes]:
                for ty in range(n):
                    for tx in range(n):
                        kind, variant = classes[ty, tx], (tx * 7 + ty * 3) % len(textures)
                        if kind == 0:
                            yield white
                        elif kind == 1:
                            yield textures[variant]
                        else:
                            inside = tissue_mask(pixel[None, :] + tx * TILE / side, pixel[:, None] + ty * TILE / side)
                            yield imagecodecs.jpeg_encode(np.where(inside[..., None], raw[variant], glass), level=quality)

            px_per_cm = 1e4 / level_mpp
            tif.write(
                tiles(),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if index == 0 else 1,
                metadata=None,
            )
            summary["levels"].append([side, side, size / side])
            if index == 0:
                summary["tissue_tile_fraction"] = float((classes > 0).mean())
                summary["boundary_tiles"] = int((classes == 2).sum())
    summary["bytes"] = path.stat().st_size
    return summary


# --------------------------------------------------------------------------- child process


def child(step: str, slide: Path, work: Path, threads: int) -> None:
    """Run one workflow step in this (fresh) process; print a JSON line with its results."""
    from dataclasses import asdict
    from types import SimpleNamespace

    started = time.perf_counter()
    result: dict[str, Any] = {"step": step}
    info, tissue_dir = work / "info.json", work / "tissue"
    if step == "baseline":
        from bcpath import pipeline  # noqa: F401
        from bcpath.wsi import open_slide

        with open_slide(slide) as s:
            s.read_level(len(s.level_dimensions) - 1, 0, 0, 256, 256)
            result["mpp"] = s.mpp
            result["level_dimensions"] = s.level_dimensions
    elif step == "inspect":
        from bcpath.pipeline import inspect_slide

        record = inspect_slide(slide, slide.stem, info)
        result["mpp"] = record["mpp"]
    elif step == "tissue":
        from bcpath.steps.slides import detect_tissue_step
        from bcpath.tissue import QcThresholds, TissueParams

        tissue_dir.mkdir(parents=True, exist_ok=True)
        detect_tissue_step(
            input=SimpleNamespace(info=str(info), slide=str(slide)),
            output=SimpleNamespace(qc=str(tissue_dir / "qc.json"), mask=str(tissue_dir / "mask.png")),
            params=SimpleNamespace(tissue=asdict(TissueParams()), qc=asdict(QcThresholds()), user_mask=None),
        )
        qc = json.loads((tissue_dir / "qc.json").read_text())
        from PIL import Image

        with Image.open(tissue_dir / "mask.png") as mask:
            result["mask_px"] = list(mask.size)
        result["tissue_area_mm2"] = qc["tissue_area_mm2"]
        result["flags"] = qc["flags"]
    elif step == "tile":
        from bcpath.steps.slides import tile_slide_step
        from bcpath.tiling import TilingParams

        tile_slide_step(
            input=SimpleNamespace(slide=str(slide), info=str(info), mask=str(tissue_dir / "mask.png"), qc=str(tissue_dir / "qc.json")),
            output=SimpleNamespace(zarr=str(work / "tiles.zarr"), grid=str(work / "grid.parquet"), h5=str(work / "patches.h5")),
            params=SimpleNamespace(tiling={k: v for k, v in asdict(TilingParams()).items() if k != "max_run_tiles"}),
            threads=threads,
        )
        import pandas as pd

        from bcpath.tiling import open_tiles

        result["n_tiles"] = len(pd.read_parquet(work / "grid.parquet", columns=["tile_id"]))
        result["zarr_shape"] = list(open_tiles(work / "tiles.zarr").shape)
    else:
        raise SystemExit(f"unknown step {step}")
    import resource

    result["seconds"] = time.perf_counter() - started
    status = _proc_status("self")
    # VmHWM: high-water RSS of this process image. ru_maxrss is not used: Linux carries the
    # parent's RSS at fork into the child's ru_maxrss, across exec.
    result["vm_hwm_mb"] = status.get("VmHWM", 0) / 1e6
    result["rss_anon_mb"] = status.get("RssAnon", 0) / 1e6
    result["rss_file_mb"] = status.get("RssFile", 0) / 1e6
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def _proc_status(pid: int | str) -> dict[str, int]:
    """Memory fields (bytes) of /proc/PID/status: VmHWM, VmRSS, RssAnon, RssFile, ..."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return fields


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def run_step(step: str, slide: Path, work: Path, threads: int, log: Path) -> dict[str, Any]:
    """Run ``child`` in a fresh interpreter; its peak RSS (wait4), RSS samples and result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--child-slide", str(slide), "--child-work", str(work), "--threads", str(threads)]
    samples: list[int] = []
    with open(log, "a") as log_handle, open(log.with_suffix(f".{step}.out"), "w+") as out:
        log_handle.write(f"$ {' '.join(cmd)}\n")
        log_handle.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=log_handle, env=env)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                rss = _rss_bytes(proc.pid)
                if rss:
                    samples.append(rss)
                done.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("RESULT ")]
    sampled = {
        "peak_sampled_mb": max(samples) / 1e6 if samples else None,
        "median_rss_mb": statistics.median(samples) / 1e6 if samples else None,
        "wall_s": wall,
    }
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return {"error": f"exit status {proc.returncode}{killed}", "log_tail": tail, **sampled}
    result = json.loads(lines[-1][len("RESULT ") :])
    result.update(
        {
            "peak_rss_mb": result["vm_hwm_mb"],
            "peak_sampled_mb": sampled["peak_sampled_mb"],
            "wait4_maxrss_mb": usage.ru_maxrss * 1024 / 1e6,
            "median_rss_mb": statistics.median(samples) / 1e6 if samples else None,
            "rss_samples": len(samples),
            "wall_s": wall,
        }
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="See the module docstring for how to read the output.")
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated slide edges in px (square slides; default 20000,100000)")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px of the synthetic slides (default 0.25, 40×)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the tile step (rule tile_slide: 2)")
    parser.add_argument("--limit-gb", type=float, default=2.0, help="peak RSS limit per step in GB (rules: mem_mb=2000)")
    parser.add_argument("--max-growth", type=float, default=1.5, help="largest/smallest slide tile-step peak ratio allowed")
    parser.add_argument("--single-level-size", type=int, default=0, help="also run a flat (no pyramid) slide of this edge (informational)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the synthetic tiles")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 8000,16000")
    parser.add_argument("--tmp", type=Path, help="parent folder for temporary files (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep slides and outputs")
    parser.add_argument("--json", type=Path, help="also write results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a check FAILs (default: report only)")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--child-slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "8000,16000"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        sys.path.insert(0, str(SRC))
        child(args.child, args.child_slide, args.child_work, args.threads)
        return 0
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bcpath-bench-memory-", dir=args.tmp))
    try:
        return _main(args, work, started)
    finally:
        if args.keep:
            print(f"temporary files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, work: Path, started: float) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    cases = [(size, True) for size in sizes]
    if args.single_level_size:
        cases.append((args.single_level_size, False))
    log = work / "steps.log"
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; temporary folder {work}", flush=True)
    results: list[dict[str, Any]] = []
    for size, pyramid in cases:
        name = f"synthetic_{size}{'' if pyramid else '_flat'}"
        case_dir = work / name
        case_dir.mkdir()
        slide = case_dir / f"{name}.tiff"
        t = time.perf_counter()
        summary = write_synthetic_slide(slide, size, args.mpp, pyramid=pyramid, quality=args.quality)
        gen_s = time.perf_counter() - t
        levels = " ".join(f"{w}" for w, _, _ in summary["levels"])
        print(
            f"{name}: {size}x{size} px at {args.mpp} µm/px, levels {levels} px, {summary['bytes'] / 1e9:.2f} GB, "
            f"{100 * summary['tissue_tile_fraction']:.0f}% tissue tiles, written in {gen_s:.1f} s",
            flush=True,
        )
        case: dict[str, Any] = {"name": name, "size": size, "pyramid": pyramid, "generation_s": gen_s, **summary, "steps": {}}
        for step in STEPS:
            res = run_step(step, slide, case_dir, args.threads, log)
            case["steps"][step] = res
            if "error" in res:
                sampled = res["peak_sampled_mb"] or 0
                print(f"  {step:8s} FAILED: {res['error']}, sampled peak RSS {sampled:.0f} MB; log tail:", flush=True)
                print("\n".join("    " + line for line in res["log_tail"]), flush=True)
                break
            extra = ""
            if step == "tissue":
                extra = f"mask {res['mask_px'][0]}x{res['mask_px'][1]} px, {res['tissue_area_mm2']:.1f} mm² tissue"
            elif step == "tile":
                extra = f"{res['n_tiles']} tiles, zarr {res['zarr_shape']}"
            print(f"  {step:8s} peak RSS {res['peak_rss_mb']:7.0f} MB  {res['wall_s']:6.1f} s  {extra}", flush=True)
        results.append(case)
        if not args.keep:
            slide.unlink(missing_ok=True)
            shutil.rmtree(case_dir / "tiles.zarr", ignore_errors=True)

    limit_mb = args.limit_gb * 1000
    print()
    header = f"{'slide':24s} {'step':9s} {'peak RSS MB':>11s} {'above base':>10s} {'median MB':>9s} {'wall s':>7s}  {'< ' + format(args.limit_gb, 'g') + ' GB':8s} notes"
    print(header)
    print("-" * len(header))
    all_ok = True
    for case in results:
        base = case["steps"].get("baseline", {}).get("peak_rss_mb")
        for step in STEPS:
            res = case["steps"].get(step)
            if res is None:
                continue
            if "error" in res:
                sampled = res["peak_sampled_mb"] or 0
                print(f"{case['name']:24s} {step:9s} {'FAILED':>11s}  {res['error']}, sampled peak ≥ {sampled:.0f} MB")
                all_ok = all_ok and not case["pyramid"]
                continue
            ok = res["peak_rss_mb"] < limit_mb
            if case["pyramid"]:
                all_ok = all_ok and ok
            above = f"{res['peak_rss_mb'] - base:10.0f}" if base is not None and step != "baseline" else f"{'':10s}"
            median = f"{res['median_rss_mb']:9.0f}" if res.get("median_rss_mb") else f"{'':9s}"
            note = ""
            if step == "tile":
                note = f"{res['n_tiles']} tiles"
            elif step == "tissue":
                note = f"mask {res['mask_px'][0]}x{res['mask_px'][1]}"
            if not case["pyramid"]:
                note += " (flat slide, informational)"
            print(f"{case['name']:24s} {step:9s} {res['peak_rss_mb']:11.0f} {above} {median} {res['wall_s']:7.1f}  {'PASS' if ok else 'FAIL':8s} {note}")

    pyramids = [c for c in results if c["pyramid"] and "peak_rss_mb" in c["steps"].get("tile", {})]
    growth = None
    if len(pyramids) >= 2:
        small, large = min(pyramids, key=lambda c: c["size"]), max(pyramids, key=lambda c: c["size"])
        growth = large["steps"]["tile"]["peak_rss_mb"] / small["steps"]["tile"]["peak_rss_mb"]
        tissue_growth = large["steps"]["tissue"]["peak_rss_mb"] / small["steps"]["tissue"]["peak_rss_mb"]
        area = (large["size"] / small["size"]) ** 2
        growth_ok = growth <= args.max_growth
        all_ok = all_ok and growth_ok
        print()
        print(
            f"tile step peak RSS: {small['size']}² {small['steps']['tile']['peak_rss_mb']:.0f} MB, "
            f"{large['size']}² {large['steps']['tile']['peak_rss_mb']:.0f} MB; ratio {growth:.2f} for {area:.0f}× the area "
            f"(limit {args.max_growth:g}) {'PASS' if growth_ok else 'FAIL'}"
        )
        print(f"tissue step peak RSS ratio {large['size']}²/{small['size']}²: {tissue_growth:.2f}")
    largest = max((c["steps"].get("tile", {}).get("peak_rss_mb", 0) for c in results if c["pyramid"]), default=0)
    print(f"largest tile-step peak {largest:.0f} MB vs limit {limit_mb:.0f} MB: {'PASS' if largest < limit_mb else 'FAIL'}")
    print(f"overall: {'PASS' if all_ok else 'FAIL'}")
    total_s = time.perf_counter() - started
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; total wall time {total_s:.1f} s")

    if args.json:
        import openslide
        import tifffile
        import zarr

        payload = {
            "benchmark": "bench/tiling_memory.py",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("child")},
            "cases": results,
            "tile_peak_ratio": growth,
            "limit_mb": limit_mb,
            "pass": all_ok,
            "total_s": total_s,
            "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                "openslide": openslide.__library_version__, "tifffile": tifffile.__version__, "zarr": zarr.__version__,
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"JSON written to {args.json}")
    return 1 if args.strict and not all_ok else 0


if __name__ == "__main__":
    sys.exit(main())
