"""Real-size slide: what one 40× resection costs in every stage of the DAG (not part of CI).

The demo slides are about 8,800 × 6,400 px at 0.5 µm/px (14 mm²); users bring 40× resections
of 80–150k px. This script makes one such slide and runs it through the workflow beside a
finished demo run, then reads Snakemake's benchmark files of every rule for that slide and for
the demo slide it was made from:

1. the slide (cached; ``--slide-dir``): a demo test slide (``--source``, default demo_13)
   upsampled to 0.25 µm/px (2×: the scanner's 40× grid) and tiled ``--across × --down`` times
   (default 5 × 5: 88,470 × 63,660 px, 352 mm²) into a pyramidal JPEG TIFF with its µm/px;
   libvips streams it (resize → arrayjoin → tiffsave), the whole slide is never in memory.
   Its annotations (GeoJSON, for the tumour region and LocNet) and mitosis truth are
   transformed with it; its labels (ER/PR/HER2, grade, score) are the source slide's.
2. the run: ``--run-dir`` holds a finished default demo run (``snakemake --cores 2`` there;
   made first if missing); the sample sheet gets one more test slide, ``scale_01``, and
   Snakemake runs the new slide's per-slide outputs (those the source slide has) with only the
   per-slide rules allowed, so the trained models and cohort tables of the demo run are used
   as they are.
3. the table: per rule, the new slide's wall time, CPU time and peak RSS (exact, from the job log's last line; else benchmarks/, which samples every 30 s) beside
   the source slide's, the RSS growth, and the whole; checks every step's peak RSS < 4 GB and
   growth < 1.5×; ``--json`` writes it all. With ``--cores`` and ``--nodes`` it projects what
   1,000 such slides cost on a cluster (per-slide jobs spread over nodes; stated as a
   projection from these figures, not a measurement).

A full-size run takes hours on 2 cores (nuclei and mitosis detection over the tumour region
at 0.5 µm/px dominate): use ``--across 1 --down 1`` (a 2× upsampled demo slide, 4× the
pixels) to try the script.

Examples:
    .venv/bin/python bench/wsi_scale.py --run-dir /data/bcpath-demo --json scale.json
    .venv/bin/python bench/wsi_scale.py --run-dir /tmp/demo --across 1 --down 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCALE_ID = "scale_01"
RSS_LIMIT_MB = 4096.0
RSS_GROWTH_LIMIT = 1.5


def snakemake(run_dir: Path, *args: str, log: Path) -> float:
    """Runs Snakemake on the workflow in ``run_dir``; seconds; raises with the log's tail on failure."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(run_dir),
               "--configfile", str(REPO / "config.yaml"), *args]
    started = time.perf_counter()
    with open(log, "w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=run_dir, check=False)
    if completed.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"snakemake {' '.join(args)} failed (log {log}):\n{tail}")
    return time.perf_counter() - started


def make_scale_slide(source: Path, out: Path, across: int, down: int, upsample: float) -> dict[str, Any]:
    """The real-size slide: ``source`` upsampled and tiled, streamed by libvips. Cached by ``out``.json."""
    import pyvips

    sidecar = out.with_suffix(".json")
    wanted = {"source": str(source), "source_bytes": source.stat().st_size, "across": across, "down": down, "upsample": upsample}
    if out.exists() and sidecar.exists() and {k: v for k, v in json.loads(sidecar.read_text()).items() if k in wanted} == wanted:
        return json.loads(sidecar.read_text())
    image = pyvips.Image.new_from_file(str(source))  # level 0 of the pyramidal TIFF
    source_mpp = 1000.0 / image.xres  # libvips xres: px per mm
    mpp = source_mpp / upsample
    scaled = image.resize(upsample, kernel="linear")
    mosaic = pyvips.Image.arrayjoin([scaled] * (across * down), across=across)
    started = time.perf_counter()
    px_per_mm = 1000.0 / mpp
    tmp = out.with_suffix(".part.tiff")
    mosaic.tiffsave(str(tmp), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90,
                    xres=px_per_mm, yres=px_per_mm, resunit="cm", bigtiff=True)
    os.replace(tmp, out)
    info = {**wanted, "width": mosaic.width, "height": mosaic.height, "mpp": mpp, "tile_w": scaled.width, "tile_h": scaled.height,
            "area_mm2": mosaic.width * mosaic.height * mpp * mpp / 1e6, "bytes": out.stat().st_size,
            "write_s": round(time.perf_counter() - started, 1)}
    sidecar.write_text(json.dumps(info, indent=2))
    return info


def copies(info: dict[str, Any]) -> list[tuple[float, float]]:
    """Level-0 offsets (x, y) of each copy of the source in the mosaic."""
    return [(col * info["tile_w"], row * info["tile_h"]) for row in range(info["down"]) for col in range(info["across"])]


def transform_annotations(source: Path, out: Path, info: dict[str, Any]) -> None:
    """The source's GeoJSON scaled by the upsampling and repeated at each copy's offset."""
    data = json.loads(source.read_text())
    factor = info["upsample"]

    def moved(coords: Any, dx: float, dy: float) -> Any:
        if isinstance(coords[0], (int, float)):
            return [round(coords[0] * factor + dx, 1), round(coords[1] * factor + dy, 1), *coords[2:]]
        return [moved(c, dx, dy) for c in coords]

    features = []
    for dx, dy in copies(info):
        for feature in data["features"]:
            geometry = dict(feature["geometry"], coordinates=moved(feature["geometry"]["coordinates"], dx, dy))
            features.append(dict(feature, geometry=geometry))
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def transform_points(source: Path, out: Path, info: dict[str, Any]) -> None:
    """The source's x,y CSV (mitosis truth) scaled and repeated like the annotations."""
    with open(source) as handle:
        rows = list(csv.DictReader(handle))
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y"])
        for dx, dy in copies(info):
            for row in rows:
                writer.writerow([round(float(row["x"]) * info["upsample"] + dx, 1), round(float(row["y"]) * info["upsample"] + dy, 1)])


def sample_sheet(run_dir: Path, source_id: str, slide: Path, info: dict[str, Any]) -> Path:
    """The demo sheet plus the real-size slide (split test, the source's labels, absolute paths)."""
    demo = run_dir / "results" / "demo_cohort"
    with open(demo / "samples.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    fields = list(rows[0])
    for row in rows:  # absolute paths: the sheet lives outside the demo folder
        for column in ("path", "annotations", "core_map", "core_scores", "mitoses"):
            if row.get(column):
                row[column] = str((demo / row[column]).resolve())
    source = next(row for row in rows if row["slide_id"] == source_id)
    folder = slide.parent
    transform_annotations(demo / f"annotations/{source_id}.geojson", folder / f"{SCALE_ID}.geojson", info)
    new = dict(source, slide_id=SCALE_ID, path=str(slide.resolve()), mpp=str(info["mpp"]), split="test",
               patient_id=f"{SCALE_ID}_patient", annotations=str((folder / f"{SCALE_ID}.geojson").resolve()))
    if source.get("mitoses"):
        transform_points(demo / f"truth/{source_id}.mitoses.csv", folder / f"{SCALE_ID}.mitoses.csv", info)
        new["mitoses"] = str((folder / f"{SCALE_ID}.mitoses.csv").resolve())
        if source.get("proliferation"):  # the score is a rate per area: unchanged by tiling
            new["proliferation"] = source["proliferation"]
    sheet = run_dir / "samples_scale.tsv"
    with open(sheet, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, delimiter="\t")
        writer.writeheader()
        writer.writerows([*rows, new])
    return sheet


def per_slide_targets(run_dir: Path, source_id: str) -> list[str]:
    """The source slide's outputs (files, .zarr stores) under results/slides/, renamed to the new slide."""
    root = run_dir / "results" / "slides" / source_id
    targets = []
    for entry in sorted(root.iterdir()):
        inner = [entry] if entry.is_file() or entry.suffix == ".zarr" else sorted(entry.iterdir())
        targets += [str(p.relative_to(run_dir)).replace(source_id, SCALE_ID) for p in inner if p.is_file() or p.suffix == ".zarr"]
    return targets


def per_slide_rules() -> list[str]:
    """Rules whose outputs, log or benchmark carry the {slide} wildcard (read from rules/*.smk): the only ones allowed
    to run, so the cohort steps and the trained models of the demo run are used as they are."""
    import re

    names = []
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule )", path.read_text(), flags=re.MULTILINE):
            match = re.match(r"rule (\w+):", block)
            sections = re.findall(r"^    (?:output|log|benchmark):\n(.*?)(?=^    \w+:)", block, flags=re.MULTILINE | re.DOTALL)
            if match and match.group(1) != "make_demo_cohort" and any("{slide}" in section for section in sections):
                names.append(match.group(1))
    return names


def _number(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return math.nan


def read_benchmarks(run_dir: Path, slide_id: str) -> dict[str, dict[str, float]]:
    """rule (and wildcard rest) → {s, cpu_time, max_rss} from benchmarks/ files naming the slide."""
    table: dict[str, dict[str, float]] = {}
    for path in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        name = path.relative_to(run_dir / "benchmarks").as_posix()
        if slide_id not in Path(name).stem.split(".") and slide_id not in name.split("/"):
            continue
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        key = name.replace(slide_id, "{slide}").removesuffix(".tsv")
        table[key] = {measure: _number(rows[-1], measure) for measure in ("s", "cpu_time", "max_rss")}
        table[key]["benchmark_max_rss"] = table[key]["max_rss"]
        logged = logged_peak_rss(run_dir / "logs" / name.removesuffix(".tsv"), slide_id)
        if logged is not None:  # exact; Snakemake samples every 30 s after a job's first 15 s
            table[key]["max_rss"] = max(logged, table[key]["max_rss"]) if not math.isnan(table[key]["max_rss"]) else logged
    return table


def logged_peak_rss(log_stem: Path, slide_id: str) -> float | None:
    """The job's exact peak RSS (MB) from the last "done for <slide>; peak RSS N MB" line of its log."""
    import re

    from bcpath.workflow import PEAK_RSS_PATTERN

    path = log_stem.with_suffix(".log")
    if not path.is_file():
        return None
    found = [m for m in re.finditer(PEAK_RSS_PATTERN, path.read_text(errors="replace")) if m.group("slide") == slide_id]
    return float(found[-1].group("mb")) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished default demo run (made first if missing)")
    parser.add_argument("--slide-dir", type=Path, default=None, help="where the real-size slide is cached (default RUN_DIR/scale_slide)")
    parser.add_argument("--source", default="demo_13", help="demo test slide to enlarge")
    parser.add_argument("--across", type=int, default=5)
    parser.add_argument("--down", type=int, default=5)
    parser.add_argument("--upsample", type=float, default=2.0, help="0.5 µm/px demo → 0.25 µm/px")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=10, help="cluster nodes for the 1,000-slide projection")
    parser.add_argument("--node-cores", type=int, default=32, help="cores per node for the projection")
    parser.add_argument("--configfile", type=Path, default=None,
                        help="extra config overrides for the slide's run (e.g. nuclei.model: models/nuclei_unet for the deep models)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "scale_logs"
    logs.mkdir(exist_ok=True)
    result: dict[str, Any] = {}
    if not (run_dir / "results" / "demo_cohort" / "samples.tsv").exists() or not (run_dir / "results" / "cohort").exists():
        print(f"[wsi_scale] default demo run in {run_dir} ...", flush=True)
        result["demo_run_s"] = snakemake(run_dir, "--cores", str(args.cores), log=logs / "demo.log")
    slide_dir = (args.slide_dir or run_dir / "scale_slide").resolve()
    slide_dir.mkdir(parents=True, exist_ok=True)
    source = run_dir / "results" / "demo_cohort" / "slides" / f"{args.source}.tiff"
    print(f"[wsi_scale] writing the real-size slide from {source.name} ({args.across}x{args.down}, x{args.upsample}) ...", flush=True)
    info = make_scale_slide(source, slide_dir / f"{SCALE_ID}.tiff", args.across, args.down, args.upsample)
    result["slide"] = info
    print(f"[wsi_scale] {info['width']} x {info['height']} px at {info['mpp']} µm/px, {info['area_mm2']:.0f} mm², "
          f"{info['bytes'] / 1e9:.2f} GB", flush=True)
    sheet = sample_sheet(run_dir, args.source, slide_dir / f"{SCALE_ID}.tiff", info)
    print("[wsi_scale] running the workflow on it ...", flush=True)
    extra = ["--configfile", str(REPO / "config.yaml"), str(args.configfile.resolve())] if args.configfile else []
    result["run_s"] = snakemake(run_dir, "--cores", str(args.cores), *extra, "--config", f"samples={sheet}",
                                "--rerun-triggers", "mtime", "--allowed-rules", *per_slide_rules(),
                                "--", *per_slide_targets(run_dir, args.source), log=logs / "scale.log")

    scale, demo = read_benchmarks(run_dir, SCALE_ID), read_benchmarks(run_dir, args.source)
    rows = []
    for key, measures in sorted(scale.items(), key=lambda item: -item[1]["s"]):
        before = demo.get(key, {})
        growth = measures["max_rss"] / before["max_rss"] if before.get("max_rss") else math.nan
        rows.append({"step": key, **measures, "demo_s": before.get("s", math.nan), "demo_max_rss": before.get("max_rss", math.nan),
                     "rss_growth": growth, "rss_ok": measures["max_rss"] < RSS_LIMIT_MB,
                     "growth_ok": not growth > RSS_GROWTH_LIMIT})
    total_s = sum(row["s"] for row in rows)
    total_cpu = sum(row["cpu_time"] for row in rows if not math.isnan(row["cpu_time"]))
    result.update(steps=rows, total_s=total_s, total_cpu_s=total_cpu,
                  all_rss_ok=all(row["rss_ok"] for row in rows), all_growth_ok=all(row["growth_ok"] for row in rows))
    # Projection: per-slide CPU seconds spread over the cluster's cores (jobs of one slide are
    # independent of other slides'; cohort steps are excluded: they are minutes per cohort).
    cluster_cores = args.nodes * args.node_cores
    result["projection_1000_slides"] = {"nodes": args.nodes, "cores_per_node": args.node_cores,
                                        "cpu_hours": total_cpu * 1000 / 3600,
                                        "wall_hours_if_cpu_bound": total_cpu * 1000 / cluster_cores / 3600}
    print(f"\n{'step':<48} {'wall s':>8} {'CPU s':>8} {'RSS MB':>8} {'demo RSS':>9} {'growth':>7}")
    for row in rows:
        flag = "" if row["rss_ok"] and row["growth_ok"] else "  <-- over"
        print(f"{row['step']:<48} {row['s']:>8.0f} {row['cpu_time']:>8.0f} {row['max_rss']:>8.0f} {row['demo_max_rss']:>9.0f} {row['rss_growth']:>7.2f}{flag}")
    print(f"{'whole slide':<48} {total_s:>8.0f} {total_cpu:>8.0f}")
    p = result["projection_1000_slides"]
    print(f"projection: 1,000 such slides = {p['cpu_hours']:.1f} CPU hours; on {args.nodes} nodes x {args.node_cores} cores "
          f"about {p['wall_hours_if_cpu_bound'] * 60:.1f} min if CPU-bound and perfectly spread (a projection from these figures)")
    print("CPU s is the job's own CPU time (benchmarks/ cpu_time): on a shared machine wall time is inflated, CPU time is not")
    print(f"every step's peak RSS < {RSS_LIMIT_MB / 1024:.0f} GB: {result['all_rss_ok']}; growth < {RSS_GROWTH_LIMIT}x: {result['all_growth_ok']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["all_rss_ok"] and result["all_growth_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
