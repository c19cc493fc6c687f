"""Patch-inference throughput: the full inference path against model-only forward.

What it measures, on one slide's tiles.zarr (a demo H&E slide tiled at the model's µm/px
exactly as the workflow's tile_slide rule does), with one model (the registry entry given by
--model, random weights: speed does not depend on the weights), one batch size and one device:

* ``full path``: ``bcpath.erpr.inference.predict_slide``, what rule predict_patches runs:
  Zarr chunk reads and decode (Blosc-zstd), patch cropping, DataLoader batching (workers and
  pinned memory on CUDA), host→device transfer, normalisation, forward (autocast bf16/fp16
  + channels_last on CUDA), softmax, copy back.
* ``model only``: the same model, the same number of patches in batches of the same size,
  forward + softmax on tensors already on the device (made once, normalised, outside the
  timing): the ceiling the data path can at best reach.

Runs are interleaved (one of each per rep, order alternating), after one untimed warm-up of
each, and the median is reported. The ratio full / model-only (patches/s) is the figure of
merit: target ≥ 0.90, i.e. the data path is never the bottleneck.

Peak RSS: the process's peak resident memory (ru_maxrss) after the runs (the slide is made
and tiled in a child process, so this is inference: torch, the model, the pre-loaded
model-only batches, the chunk cache), with the size of the slide's tiles.zarr beside it.

Output: a table, then lines "ratio full/model-only: X" and "peak RSS: N MB", and --json.

Examples:
    .venv/bin/python bench/inference.py                       # CPU here: resnet18, 128 px
    .venv/bin/python bench/inference.py --device cuda --architecture inception_v3 --patch-px 512 --batch-size 128
    .venv/bin/python bench/inference.py --quick --json /tmp/inference.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_tiles(out: Path, size: tuple[int, int], mpp: float, tile_px: int) -> tuple[Path, Path]:
    """A demo slide tiled like the workflow does: (tiles.zarr, grid.parquet)."""
    from bcpath.demo.cohort import make_demo_slide
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    record = make_demo_slide(out, seed=0, index=0, size=size)
    with open_slide(out / record["path"]) as slide:
        thumbnail = slide.thumbnail(8.0)
        mask = detect_tissue(thumbnail, 8.0, TissueParams())
        tile_slide(slide, mask, 8.0, out / "tiles.zarr", out / "grid.parquet", None, TilingParams(mpp=mpp, tile_px=tile_px), threads=2)
    return out / "tiles.zarr", out / "grid.parquet"


def model_only(model: Any, batches: list[Any], device: Any) -> None:
    import torch

    with torch.inference_mode():
        for inputs in batches:
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
                    output = model(inputs)
            else:
                output = model(inputs)
            torch.softmax(output.float(), dim=1).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="er_demo", help="registry entry whose architecture, classes, mpp and patch size are used")
    parser.add_argument("--architecture", help="override the entry's architecture (e.g. inception_v3)")
    parser.add_argument("--patch-px", type=int, help="override the entry's patch size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stride-px", type=int, default=None, help="patch stride (default: the patch size, as the workflow); smaller = overlapping patches, more of them per tile")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads / DataLoader budget (the rule's threads)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(12000, 9000), metavar=("W", "H"), help="demo slide level-0 px")
    parser.add_argument("--quick", action="store_true", help="small slide, 1 rep (smoke test)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temporary slide")
    parser.add_argument("--tiles", type=Path, default=None, help="a folder holding tiles.zarr + grid.parquet made earlier (at the model's µm/px) instead of a new demo slide: how bench/gpu_check.py measures on a machine without OpenSlide")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from bcpath.erpr.inference import PatchDataset, predict_slide
    from bcpath.models.registry import build_model, load_registry

    if args.quick:
        args.size, args.reps = (4000, 3000), 1
    spec = load_registry(Path(__file__).resolve().parents[1] / "models" / "registry.yaml")[args.model]
    changes = {k: v for k, v in (("architecture", args.architecture), ("patch_px", args.patch_px)) if v}
    spec = dataclasses.replace(spec, **changes)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in __import__('os').getloadavg())}")

    with tempfile.TemporaryDirectory(prefix="bcpath-bench-", dir=args.tmp) as tmp:
        if args.tiles is not None:
            tiles, grid = args.tiles / "tiles.zarr", args.tiles / "grid.parquet"
        else:
            # In a child process, so this process's peak RSS is inference's alone.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                tiles, grid = pool.submit(make_tiles, Path(tmp), tuple(args.size), spec.mpp, 512).result()
        dataset = PatchDataset(tiles, grid, spec.patch_px, args.stride_px)
        n = len(dataset)
        torch.manual_seed(0)
        model = build_model(spec).eval().to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
        generator = torch.Generator().manual_seed(0)
        batches = []
        for start in range(0, n, args.batch_size):
            size = min(args.batch_size, n - start)
            x = torch.randint(0, 256, (size, 3, spec.patch_px, spec.patch_px), dtype=torch.uint8, generator=generator)
            x = x.to(device).float().div_(255).sub_(mean).div_(std)
            batches.append(x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x)

        def full() -> None:
            predict_slide(model, spec, tiles, grid, stride_px=args.stride_px, batch_size=args.batch_size, device=device, progress=False, threads=args.threads)
            if device.type == "cuda":
                torch.cuda.synchronize()

        runs: dict[str, list[float]] = {"full path": [], "model only": []}
        methods = {"full path": full, "model only": lambda: model_only(model, batches, device)}
        for method in methods.values():  # warm-up: kernels, allocator, page cache
            method()
        for rep in range(args.reps):
            order = list(methods) if rep % 2 == 0 else list(reversed(methods))
            for name in order:
                start = time.perf_counter()
                methods[name]()
                runs[name].append(time.perf_counter() - start)
        zarr_mb = sum(p.stat().st_size for p in tiles.rglob("*") if p.is_file()) / 1e6

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rates = {name: n / statistics.median(times) for name, times in runs.items()}
    ratio = rates["full path"] / rates["model only"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    print(f"device: {device_name}; model {spec.model_id} ({spec.architecture}, {spec.patch_px} px at {spec.mpp} µm/px), batch {args.batch_size}")
    print(f"slide: {n} patches, tiles.zarr {zarr_mb:.1f} MB on disk")
    print(f"{'method':<12} {'median s':>9} {'patches/s':>10}   runs")
    for name, times in runs.items():
        print(f"{name:<12} {statistics.median(times):>9.3f} {rates[name]:>10.1f}   {' '.join(f'{t:.3f}' for t in times)}")
    print(f"ratio full/model-only: {ratio:.3f} (target >= 0.90)")
    print(f"peak RSS: {peak_mb:.0f} MB")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in __import__('os').getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device_name, "model": spec.model_id, "architecture": spec.architecture,
            "patch_px": spec.patch_px, "stride_px": args.stride_px or spec.patch_px, "batch_size": args.batch_size, "n_patches": n,
            "runs_s": runs, "patches_per_s": rates, "ratio": ratio, "peak_rss_mb": peak_mb,
            "tiles_zarr_mb": zarr_mb, "torch": torch.__version__, "python": sys.version.split()[0],
            "numpy": np.__version__,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
