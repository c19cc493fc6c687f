"""Peak RSS of one per-slide workflow step, run as its rule runs it, on a finished run's inputs.

Issue 15 item 1: every step's peak RSS must stay under 4 GB and grow less than 1.5x from the
demo slide to a real-size one. This driver calls the step function the rule's script names
(``bcpath.workflow.step_target`` of workflow_scripts/<step>.py) in a fresh Python process,
with input / output / params built like the rule's (rules/*.smk; params from config.yaml and
any --configfile), inputs taken from ``--run-dir`` (a finished run, read only) and outputs
written under ``--out``.

Measured (2 cores; demo_13 -> scale_01, its 25x real-size copy made by bench/wsi_scale.py):
detect_mitoses 918 -> 1123 MB (1.22x; 1005 -> 1764 MB before the per-tile heap trim),
segment_nuclei with fiji 318 -> 385 MB (1.21x; 330 -> 471 MB before the packed label band),
detect_tissue 129 -> 182 MB (1.41x; 132 -> 252 MB before the row-block passes and uncached
thumbnail read), tile_slide (2 threads, as on 4+ cores) 207 -> 243 MB, medians, 238-290 MB on scale_01 over 14
runs (1.17x; 222 -> 367 MB before the 8 MiB tile cache while tiling).

The peak is the child's VmHWM (/proc/self/status, read when the step returns: the kernel's
high-water mark of resident memory, all threads). ru_maxrss is not used: a forked child starts
with its parent's. Snakemake's benchmark max_rss (psutil, sampled) reads a little lower.

Steps: detect_mitoses, segment_nuclei, detect_tissue, tile_slide (its rule's 2 threads unless
--threads; the report gives wall and CPU seconds of the step). --trace N additionally reports tracemalloc's peak
of Python allocations and its N largest allocation sites at that peak (slower).

Examples:
    PYTHONPATH=src .venv/bin/python bench/step_rss.py detect_mitoses --run-dir /work/scale_run --slide demo_13 --out /tmp/dm
    PYTHONPATH=src .venv/bin/python bench/step_rss.py segment_nuclei --run-dir /work/scale_run --slide scale_01 --out /tmp/sn
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Steps this driver builds jobs for, with the threads their rule asks for on 4+ cores (rules/*.smk;
#: tile_slide gets 1 on 2 cores).
STEPS = {"detect_mitoses": 1, "segment_nuclei": 1, "detect_tissue": 1, "tile_slide": 2}


class _Named(dict):  # type: ignore[type-arg]
    """Snakemake's named lists as the steps use them: attributes and ``.get``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


def _slide_path(run_dir: Path, slide: str) -> str:
    path = Path(json.loads((run_dir / "results" / "slides" / slide / "info.json").read_text())["path"])
    return str(path if path.is_absolute() else run_dir / path)


def _tissue_inputs(run_dir: Path, slide: str) -> dict[str, str]:
    """The slide, its info.json and its tissue mask and QC: the inputs of the steps after detect_tissue."""
    tissue = run_dir / "results" / "slides" / slide / "tissue"
    return {
        "slide": _slide_path(run_dir, slide),
        "info": str(run_dir / "results" / "slides" / slide / "info.json"),
        "mask": str(tissue / "mask.png"),
        "qc": str(tissue / "qc.json"),
    }


def _target(step: str) -> str:
    """The ``module:function`` the rule's script runs (wherever the step function lives)."""
    from bcpath.workflow import step_target

    return step_target(ROOT / "workflow_scripts" / f"{step}.py")


def _job(step: str, run_dir: Path, slide: str, out: Path, config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(step target, input, output, params) as the rule builds them."""
    results = run_dir / "results" / "slides" / slide
    if step == "detect_mitoses":
        prolif = config["proliferation"]
        registry = ROOT / "models" / "registry.yaml"
        model_id = prolif["mitosis_model"]
        inputs = {
            "weights": str(run_dir / "results" / "models" / model_id / "best.pt"),
            "train_json": str(run_dir / "results" / "models" / model_id / "train.json"),
            "slide": _slide_path(run_dir, slide),
            "info": str(results / "info.json"),
            "tumor": str(results / "proliferation" / "tumor.zarr"),
        }
        names = {"mitoses": "mitoses.parquet", "geojson": "mitoses.geojson", "hotspot": "hotspot.geojson", "features": "features.json"}
        outputs = {name: str(out / file) for name, file in names.items()}
        params = {
            "registry": str(registry), "model_id": model_id, "tumor_threshold": prolif["tumor_threshold"],
            "detection": prolif["detection"], "hotspot": prolif["hotspot"],
        }
        return _target(step), inputs, outputs, params
    if step == "segment_nuclei":
        inputs = _tissue_inputs(run_dir, slide)
        if (results / "nuclei" / "region.png").exists():
            inputs["region"] = str(results / "nuclei" / "region.png")
        outputs = {"labels": str(out / "labels.zarr"), "geojson": str(out / "nuclei.geojson"), "features": str(out / "features.parquet")}
        return _target(step), inputs, outputs, {"nuclei": config["nuclei"]}
    if step == "detect_tissue":
        inputs = {"slide": _slide_path(run_dir, slide), "info": str(results / "info.json")}
        names = {"mask": "mask.png", "geojson": "tissue.geojson", "thumbnail": "thumbnail.png", "qc": "qc.json"}
        outputs = {name: str(out / file) for name, file in names.items()}
        return _target(step), inputs, outputs, {"tissue": config["tissue"], "qc": config["qc"], "user_mask": None}
    if step == "tile_slide":
        inputs = _tissue_inputs(run_dir, slide)
        outputs = {"zarr": str(out / "tiles.zarr"), "grid": str(out / "grid.parquet"), "h5": str(out / "patches.h5")}
        return _target(step), inputs, outputs, {"tiling": config["tiling"]}
    raise SystemExit(f"unknown step {step}; known: {', '.join(STEPS)}")


def _child(spec: dict[str, Any]) -> None:
    import importlib
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trace = int(spec["trace"])
    if trace:
        import tracemalloc

        tracemalloc.start(8)
    module, function = spec["target"].split(":")
    step = getattr(importlib.import_module(module), function)
    started, cpu_started = time.perf_counter(), time.process_time()
    step(
        input=_Named(spec["input"]), output=_Named(spec["output"]), params=_Named(spec["params"]),
        threads=int(spec["threads"]), wildcards=_Named(slide=spec["slide"]),
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    report: dict[str, Any] = {"vmhwm_mb": int(status["VmHWM"].split()[0]) * 1024 / 1e6, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        report["tracemalloc_peak_mb"] = peak / 1e6
        snapshot = tracemalloc.take_snapshot()
        report["top_now"] = [str(s) for s in snapshot.statistics("traceback")[:trace]]
    print("STEP_RSS " + json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished workflow run (read only)")
    parser.add_argument("--slide", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the step's outputs")
    parser.add_argument("--configfile", type=Path, action="append", default=[], help="config.yaml overrides, in order (default: the repo's)")
    parser.add_argument("--threads", type=int, help="threads the step gets (default: its rule's, e.g. tile_slide 2)")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc: report the N largest allocation sites")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    import yaml

    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in args.configfile:
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    target, inputs, outputs, params = _job(args.step, args.run_dir.resolve(), args.slide, args.out.resolve(), config)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = {"target": target, "input": inputs, "output": outputs, "params": params, "slide": args.slide, "trace": args.trace,
            "threads": args.threads or STEPS[args.step]}
    run = subprocess.run([sys.executable, __file__, args.step, "--run-dir", str(args.run_dir), "--slide", args.slide, "--out", str(args.out), "--child", json.dumps(spec)], capture_output=True, text=True)
    sys.stderr.write(run.stderr[-4000:])
    if run.returncode:
        return run.returncode
    report = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("STEP_RSS "))[len("STEP_RSS ") :])
    print(json.dumps({"step": args.step, "slide": args.slide, **report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
