"""Whole-slide nuclei segmentation throughput: the slide path against the segmenter alone.

What it measures, on one demo H&E slide (made on the fly at 0.5 µm/px) and its tissue mask:

* ``slide path``: ``bcpath.nuclei.slide.segment_slide``, what rule segment_nuclei runs: tile
  planning over the mask, region reads and decode, the segmenter on every tile, stitching
  (centroid ownership, duplicates), labels.zarr chunk writes, per-nucleus features
  (regionprops, hematoxylin OD) to parquet and outlines to GeoJSON.
* ``segmenter only``: the same segmenter on the same tiles (same windows, same µm/px),
  already read into memory outside the timing: the ceiling the slide path can at best reach.

Both are reported as megapixels of tissue-covering tiles per second at the model µm/px (the
tile windows the slide path segments, margins included, counted once per tile), interleaved
over --reps repetitions (median). The ratio slide path / segmenter only is the figure of
merit: 1.0 means reading, stitching and writing cost nothing beside the segmentation.

Peak RSS: the process's peak resident memory after the runs (the pre-loaded tiles of the
segmenter-only side included; the slide path itself streams).

Examples:
    .venv/bin/python bench/nuclei.py                                  # fiji baseline, CPU
    .venv/bin/python bench/nuclei.py --model models/nuclei_unet --size 3000 2400
    .venv/bin/python bench/nuclei.py --quick --json /tmp/nuclei.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_slide(out: Path, size: tuple[int, int]) -> tuple[Path, np.ndarray, float]:
    """A demo H&E slide and its tissue mask: (slide path, mask, mask µm/px)."""
    from bcpath.demo.cohort import make_demo_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    record = make_demo_slide(out, seed=0, index=0, size=size)
    path = out / record["path"]
    with open_slide(path) as slide:
        mask = detect_tissue(slide.thumbnail(8.0), 8.0, TissueParams())
    return path, mask, 8.0


def _segmenter(name: str, device: str | None, fold_bn: bool = True) -> Any:
    """get_segmenter, with trained models on ``device`` when given (or without batch-norm
    folding, ``fold_bn=False``)."""
    from bcpath.nuclei.slide import get_segmenter

    if (device is None and fold_bn) or not Path(name).exists():
        return get_segmenter(name)
    import functools

    from bcpath.nuclei.predict import load_nuclei_model, predict_instances

    return functools.partial(predict_instances, load_nuclei_model(name, device=device, fold_bn=fold_bn))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fiji", help="fiji | watershed | otsu | a trained U-Net folder (default fiji)")
    parser.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"), help="demo slide size in px at 0.5 µm/px")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small slide, 1 rep (smoke test)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temporary slide")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--baseline", default=None, help="also time this segmenter (e.g. models/nuclei_unet) on the same tiles and print the speed ratio --model / --baseline")
    parser.add_argument("--baseline-unfolded", action="store_true", help="load --baseline without folding batch norm into "
                        "the convs (e.g. --baseline models/nuclei_unet_v2 --baseline-unfolded: what the folding gains)")
    parser.add_argument("--device", default=None, help="device of trained models (cpu, cuda; default: CUDA when available)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.reps = (1600, 1200), 1

    from bcpath.nuclei.slide import plan_tiles, segment_slide
    from bcpath.wsi import open_slide

    segmenter = _segmenter(args.model, args.device)
    baseline = _segmenter(args.baseline, args.device, fold_bn=not args.baseline_unfolded) if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="bcpath-bench-", dir=args.tmp) as tmp:
        tmp_dir = Path(tmp)
        path, mask, mask_mpp = make_slide(tmp_dir, tuple(args.size))
        with open_slide(path) as slide:
            tiling = plan_tiles(mask, mask_mpp, slide.mpp, slide.dimensions, args.mpp, args.tile_px, args.overlap)
            windows = [tiling.window(int(r), int(c)) for r, c in zip(tiling.rows, tiling.cols, strict=True)]
            tiles = [slide.read_region(x0 * tiling.scale, y0 * tiling.scale, x1 - x0, y1 - y0, args.mpp) for y0, y1, x0, x1 in windows]
        megapixels = sum(t.shape[0] * t.shape[1] for t in tiles) / 1e6

        def slide_path(rep: int) -> float:
            out = tmp_dir / f"out{rep}"
            started = time.perf_counter()
            summary = segment_slide(path, mask, mask_mpp, out, segmenter, model_mpp=args.mpp, tile_px=args.tile_px, overlap=args.overlap)
            seconds = time.perf_counter() - started
            slide_path.n_nuclei = summary["n_nuclei"]  # type: ignore[attr-defined]
            return seconds

        def segmenter_only(rep: int) -> float:
            started = time.perf_counter()
            for tile in tiles:
                segmenter(tile, args.mpp)
            return time.perf_counter() - started

        segmenter_only(-1)  # warm-up (imports, caches)
        if baseline is not None:
            def baseline_only(rep: int) -> float:
                started = time.perf_counter()
                for tile in tiles:
                    baseline(tile, args.mpp)
                return time.perf_counter() - started

            baseline_only(-1)
        times: dict[str, list[float]] = {"slide path": [], "segmenter only": []}
        for rep in range(args.reps):
            order = [("slide path", slide_path), ("segmenter only", segmenter_only)]
            for name, run in order if rep % 2 == 0 else order[::-1]:
                times[name].append(run(rep))
    if baseline is not None:
        times["baseline only"] = []
        for rep in range(args.reps):
            pair = [("baseline only", baseline_only), ("segmenter only", segmenter_only)]
            for name, run in pair if rep % 2 == 0 else pair[::-1]:
                times[name].append(run(rep))
    rates = {name: megapixels / statistics.median(values) for name, values in times.items()}
    ratio = rates["slide path"] / rates["segmenter only"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"nuclei segmentation, {args.model}, slide {args.size[0]}x{args.size[1]} px at 0.5 µm/px, "
          f"{len(tiles)} tiles of {args.tile_px} px (overlap {args.overlap}), {megapixels:.1f} MP, reps {args.reps}")
    print(f"{'method':<16} {'MP/s':>8} {'median s':>9}")
    for name in times:
        print(f"{name:<16} {rates[name]:>8.2f} {statistics.median(times[name]):>9.2f}")
    print(f"nuclei found: {slide_path.n_nuclei}")  # type: ignore[attr-defined]
    print(f"ratio slide path/segmenter only: {ratio:.2f}")
    if baseline is not None:
        print(f"speed ratio {args.model} / {args.baseline}{' (BN unfolded)' if args.baseline_unfolded else ''} (segmenter only): {rates['segmenter only'] / rates['baseline only']:.2f}x")
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.json:
        result: dict[str, Any] = {
            "model": args.model, "size": list(args.size), "n_tiles": len(tiles), "megapixels": megapixels,
            "mp_per_s": rates, "seconds": times, "ratio": ratio, "peak_rss_mb": peak_mb,
            "n_nuclei": slide_path.n_nuclei,  # type: ignore[attr-defined]
            "machine": platform.platform(),
            "baseline": args.baseline,
            "speed_ratio_vs_baseline": (rates["segmenter only"] / rates["baseline only"]) if baseline is not None else None,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
