"""Mitosis detection throughput: the detection path against the classifier alone.

What it measures, on one H&E image at the model's µm/px (a demo slide region by default, or
``--image`` with ``--mpp``):

* ``detection``: :func:`bcpath.proliferation.mitosis.detect_in_image` plus writing the
  ``.mitoses.csv`` as ``bcpath mitosis detect`` does: hematoxylin deconvolution and candidate
  peaks, crop extraction, the classifier on every candidate crop, non-maximum suppression,
  morphometry of the detections and the output table.
* ``classifier only``: :func:`predict_crops` on the same candidate crops, already extracted into
  memory outside the timing: the ceiling detection can at best reach.

Both are reported as megapixels of image per second at the model's µm/px, interleaved over
--reps repetitions (median). The ratio detection / classifier only is the figure of merit:
1.0 means candidates, crops, NMS and outputs cost nothing beside the classifier.

Peak RSS: the process's peak resident memory after the runs.

Examples:
    .venv/bin/python bench/mitosis.py                              # mitosis_amibr, CPU
    .venv/bin/python bench/mitosis.py --device cuda --size 8000 8000
    .venv/bin/python bench/mitosis.py --quick --json /tmp/mitosis.json
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


def demo_region(out: Path, size: tuple[int, int], mpp: float) -> np.ndarray:
    """(H, W, 3) uint8: the centre of a demo H&E slide read at ``mpp`` µm/px, ``size`` = (W, H)."""
    from bcpath.demo.cohort import make_demo_slide
    from bcpath.wsi import open_slide

    slide_size = (max(1200, int(size[0] * mpp / 0.5) + 200), max(1200, int(size[1] * mpp / 0.5) + 200))
    record = make_demo_slide(out, seed=0, index=0, size=slide_size)
    with open_slide(out / record["path"]) as slide:
        w0, h0 = slide.dimensions
        scale = mpp / slide.mpp
        x0, y0 = max(0, int(w0 / 2 - size[0] * scale / 2)), max(0, int(h0 / 2 - size[1] * scale / 2))
        return np.ascontiguousarray(slide.read_region(x0, y0, size[0], size[1], mpp))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mitosis_amibr", help="registry id or `bcpath mitosis train` folder (default mitosis_amibr)")
    parser.add_argument("--image", type=Path, help="H&E image to use instead of a demo slide region")
    parser.add_argument("--mpp", type=float, help="µm/px of --image (default: its TIFF tags)")
    parser.add_argument("--size", type=int, nargs=2, default=(3000, 3000), metavar=("W", "H"), help="demo region size in px at the model's µm/px")
    parser.add_argument("--threshold", type=float, help="default: the model's own")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small region, 1 rep (smoke test)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for temporary files")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.size, args.reps = (600, 500), 1

    import torch

    from bcpath.engine import choose_device
    from bcpath.proliferation.candidates import find_candidates
    from bcpath.proliferation.cli import detect_file, resolve_model
    from bcpath.proliferation.mitosis import (
        DetectionParams,
        detect_in_image,
        extract_crops,
        predict_crops,
    )

    torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    spec, model, own_threshold = resolve_model(args.model, device=str(device))
    threshold = own_threshold if args.threshold is None else args.threshold
    with tempfile.TemporaryDirectory(prefix="bcpath-bench-", dir=args.tmp) as tmp:
        tmp_dir = Path(tmp)
        if args.image is not None:
            from bcpath.images import image_mpp, read_uint8_image
            from bcpath.nuclei.predict import resample_rgb

            image_um = args.mpp or image_mpp(args.image)
            if image_um is None:
                parser.error(f"{args.image}: no µm/px in the file; give --mpp")
            rgb = resample_rgb(read_uint8_image(args.image), image_um, spec.mpp)
            source = f"{args.image} resampled to {spec.mpp} µm/px"
        else:
            rgb = demo_region(tmp_dir, tuple(args.size), spec.mpp)
            source = f"demo slide region at {spec.mpp} µm/px"
        megapixels = rgb.shape[0] * rgb.shape[1] / 1e6
        params = DetectionParams(threshold=threshold)
        candidates = find_candidates(rgb, spec.mpp, params.candidates)
        crops = extract_crops(rgb, candidates["x"].to_numpy(), candidates["y"].to_numpy(), spec.patch_px)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def detection(rep: int) -> float:
            started = time.perf_counter()
            found, _ = detect_in_image(rgb, model, spec, params)
            found[["x", "y", "probability", "atypical_probability"]].to_csv(tmp_dir / f"rep{rep}.mitoses.csv", index=False, float_format="%.4f")
            sync()
            detection.n_found = len(found)  # type: ignore[attr-defined]
            return time.perf_counter() - started

        def classifier_only(rep: int) -> float:
            started = time.perf_counter()
            predict_crops(model, crops, spec, device=device)
            sync()
            return time.perf_counter() - started

        classifier_only(-1)  # warm-up (imports, cuDNN autotuning)
        times: dict[str, list[float]] = {"detection": [], "classifier only": []}
        for rep in range(args.reps):
            order = [("detection", detection), ("classifier only", classifier_only)]
            for name, run in order if rep % 2 == 0 else order[::-1]:
                times[name].append(run(rep))
        if args.image is not None:  # the CLI path on the file itself (reading and resampling included)
            started = time.perf_counter()
            detect_file(args.image, spec, model, args.mpp, threshold)
            cli_seconds: float | None = time.perf_counter() - started
        else:
            cli_seconds = None
    rates = {name: megapixels / statistics.median(values) for name, values in times.items()}
    ratio = rates["detection"] / rates["classifier only"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mitosis detection, {spec.model_id} ({spec.patch_px} px at {spec.mpp} µm/px), {source}, "
          f"{rgb.shape[1]}x{rgb.shape[0]} px = {megapixels:.2f} MP, {len(crops)} candidates, device {device}, "
          f"threads {args.threads}, reps {args.reps}")
    print(f"{'method':<16} {'MP/s':>8} {'median s':>9}")
    for name in times:
        print(f"{name:<16} {rates[name]:>8.2f} {statistics.median(times[name]):>9.3f}")
    print(f"mitoses found: {detection.n_found}")  # type: ignore[attr-defined]
    if cli_seconds is not None:
        print(f"bcpath mitosis detect on the file: {cli_seconds:.2f} s")
    print(f"ratio detection/classifier only: {ratio:.2f}")
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.json:
        result: dict[str, Any] = {
            "model": spec.model_id, "size": [rgb.shape[1], rgb.shape[0]], "megapixels": megapixels, "n_candidates": len(crops),
            "n_found": detection.n_found,  # type: ignore[attr-defined]
            "mp_per_s": rates, "seconds": times, "ratio": ratio, "peak_rss_mb": peak_mb, "device": str(device),
            "threads": args.threads, "machine": platform.platform(),
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
