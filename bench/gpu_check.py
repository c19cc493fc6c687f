"""GPU check: the throughput of every GPU-bound step on one device, in one short run.

Two phases, so the GPU machine needs neither OpenSlide nor a demo slide writer:

``prepare DIR`` (here, on CPU): a demo H&E slide of the real-size resection's physical area
(20 × 15 mm; ``--dry-run``: a small one) tiled at 2 µm/px into ``DIR/er/{tiles.zarr,
grid.parquet}`` exactly as rule tile_slide does, and a 0.5 µm/px H&E region from it,
``DIR/he_region.jpg``, for the nuclei model, and a 0.25 µm/px one (upsampled),
``DIR/mitosis_region.jpg``, for the mitosis model (models/mitosis_amibr reads 40× scans).

``run DIR OUT`` (on the GPU machine): each section in its own process with its own time
limit, results written after every section to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``:

* ``er_inference``: bench/inference.py on DIR/er with Inception-V3, 512 px patches at 2 µm/px:
  patches/s of the full inference path (Zarr reads, DataLoader, transfer, bf16 forward) and of
  the model alone, and their ratio (target ≥ 0.90);
* ``er_inference_dense``: the same with a stride of a quarter patch (16× the patches, each
  chunk decoded once through the chunk cache): the steady-state ratio, start-up amortised;
* ``stage1_real_size``: the stage-1 (ER) time of the real-size slide (80,000 × 60,000 px at
  0.25 µm/px = 20 × 15 mm, bench/wsi_scale.py's geometry), the full path's time on DIR/er,
  which covers the same area (target ≤ 30 s);
* ``er_training``: one training epoch's throughput (Inception-V3, 512 px, AdamW, bf16
  autocast, channels_last): patches/s with the DataLoader over tiles.zarr and on batches
  already on the device;
* ``nuclei``: models/nuclei_unet on the H&E region: MP/s of ``predict_instances`` (resample,
  stain normalisation, tiled forward, decoding: what rule segment_nuclei runs per tile) and of
  the forward pass alone on 256 px tiles;
* ``mitosis``: bench/mitosis.py on the 0.25 µm/px region: MP/s of candidate detection + classifier.

``--dry-run``: CPU, tiny sizes, ResNet-18 on 64 px patches instead of Inception-V3 on 512 px;
tests/test_gpu_check.py runs it so the script cannot rot. Numbers from a dry run mean nothing.

Examples:
    .venv/bin/python bench/gpu_check.py prepare .gpu_check            # here, ~2 min
    bash bench/gpu_check.sh .gpu_check "$OUT"                          # GPU machine
    bash bench/gpu_check.sh --dry-run                                  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the real-size resection of issue 15 / bench/wsi_scale.py: 80,000 × 60,000 px at 0.25 µm/px
REAL_SIZE_PX, REAL_SIZE_MPP = (80_000, 60_000), 0.25
#: demo slides are written at 0.5 µm/px: the same physical area
DEMO_MPP = 0.5
#: the shipped mitosis model (models/mitosis_amibr) reads 40x scans
MITOSIS_MPP = 0.25
STAGE1_TARGET_S = 30.0
RATIO_TARGET = 0.90


def sizes(dry_run: bool) -> dict[str, Any]:
    """Slide, region and run sizes of a real run (GPU) and of a CPU dry run."""
    if dry_run:
        return {"slide_px": (3000, 2200), "region_px": 320, "mitosis_px": 400, "keep_tiles": 6, "architecture": "resnet18", "patch_px": 64,
                "dense_stride_px": 64,
                "batch": 8, "train_batch": 4, "train_steps": 2, "reps": 1, "threads": 2, "section_timeout_s": 240, "nuclei_px": 320}
    full = (int(REAL_SIZE_PX[0] * REAL_SIZE_MPP / DEMO_MPP), int(REAL_SIZE_PX[1] * REAL_SIZE_MPP / DEMO_MPP))
    return {"slide_px": full, "region_px": 4096, "mitosis_px": 2048, "keep_tiles": 32, "architecture": "inception_v3", "patch_px": 512,
            "dense_stride_px": 128,
            "batch": 128, "train_batch": 64, "train_steps": 20, "reps": 3, "threads": 16, "section_timeout_s": 120, "nuclei_px": 2048}


# --------------------------------------------------------------------------- prepare (CPU)


def prepare(folder: Path, dry_run: bool) -> None:
    """Writes DIR/er/{tiles.zarr, grid.parquet}, DIR/he_region.jpg and DIR/prepare.json."""
    import cv2

    from bcpath.demo.cohort import make_demo_slide
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    size = sizes(dry_run)
    folder.mkdir(parents=True, exist_ok=True)
    slide_dir = folder / "slide"
    started = time.perf_counter()
    record = make_demo_slide(slide_dir, seed=0, index=0, size=tuple(size["slide_px"]))
    with open_slide(slide_dir / record["path"]) as slide:
        thumbnail = slide.thumbnail(8.0)
        mask = detect_tissue(thumbnail, 8.0, TissueParams())
        tile_slide(slide, mask, 8.0, folder / "er" / "tiles.zarr", folder / "er" / "grid.parquet", None,
                   TilingParams(mpp=2.0, tile_px=512), threads=2)
        w0, h0 = slide.dimensions
        side = size["region_px"]
        scale = DEMO_MPP / slide.mpp
        x0, y0 = max(0, int(w0 / 2 - side * scale / 2)), max(0, int(h0 / 2 - side * scale / 2))
        region = np.ascontiguousarray(slide.read_region(x0, y0, side, side, DEMO_MPP))
        # the mitosis model (mitosis_amibr) reads 0.25 µm/px: the same centre, upsampled
        m_side = size["mitosis_px"]
        m_scale = MITOSIS_MPP / slide.mpp
        mx0, my0 = max(0, int(w0 / 2 - m_side * m_scale / 2)), max(0, int(h0 / 2 - m_side * m_scale / 2))
        mitosis_region = np.ascontiguousarray(slide.read_region(mx0, my0, m_side, m_side, MITOSIS_MPP))
    # JPEG as slides are scanned: the regions travel to the GPU machine (64 MiB in all)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 90]
    cv2.imwrite(str(folder / "he_region.jpg"), cv2.cvtColor(region, cv2.COLOR_RGB2BGR), jpeg)
    cv2.imwrite(str(folder / "mitosis_region.jpg"), cv2.cvtColor(mitosis_region, cv2.COLOR_RGB2BGR), jpeg)
    real_size_patches = keep_tiles(folder / "er", size["keep_tiles"])
    for path in sorted(slide_dir.rglob("*"), reverse=True):  # the slide itself is not needed there
        path.unlink() if path.is_file() else path.rmdir()
    slide_dir.rmdir()
    info = {"dry_run": dry_run, "slide_px_at_0.5": list(size["slide_px"]), "slide_area_mm2": size["slide_px"][0] * size["slide_px"][1] * DEMO_MPP**2 / 1e6,
            "region_px": side, "patches": min(real_size_patches, size["keep_tiles"]), "slide_patches": real_size_patches,
            "seconds": round(time.perf_counter() - started, 1),
            "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
    (folder / "prepare.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def keep_tiles(er_folder: Path, keep: int) -> int:
    """Keeps ``keep`` tissue tiles (a block from the middle, in (y, x) order) of a tiles.zarr.

    The dropped tiles' chunks are overwritten with the fill value, which Zarr stores as no
    chunk at all, and their rows leave grid.parquet: the kept patches read exactly as before
    (same chunks, same codec), and the store shrinks enough to travel. Returns the slide's
    number of tissue tiles before.
    """
    import pandas as pd
    import zarr

    grid_path = er_folder / "grid.parquet"
    grid = pd.read_parquet(grid_path).sort_values(["y", "x"]).reset_index(drop=True)
    n = len(grid)
    if n <= keep:
        return n
    start = (n - keep) // 2
    dropped = pd.concat([grid.iloc[:start], grid.iloc[start + keep:]])
    array = zarr.open_group(str(er_folder / "tiles.zarr"), mode="r+")["0"]
    tile = array.chunks[-1]
    for x, y in zip(dropped["x"], dropped["y"], strict=True):
        array[:, y:y + tile, x:x + tile] = array.fill_value
    grid.iloc[start:start + keep].to_parquet(grid_path)
    return n


# --------------------------------------------------------------------------- sections (device)


def _device(dry_run: bool) -> Any:
    import torch

    return torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def section_er_training(folder: Path, dry_run: bool) -> dict[str, Any]:
    """Training throughput of the stage-1 model: patches/s, data path vs batches on the device."""
    import dataclasses

    import torch
    from torch.utils.data import DataLoader

    from bcpath.engine import supervised_epoch
    from bcpath.erpr.inference import PatchDataset
    from bcpath.models.registry import build_model, load_registry

    size = sizes(dry_run)
    device = _device(dry_run)
    torch.set_num_threads(size["threads"])
    spec = load_registry(REPO / "models" / "registry.yaml")["er_demo"]
    spec = dataclasses.replace(spec, architecture=size["architecture"], patch_px=size["patch_px"])
    dataset = PatchDataset(folder / "er" / "tiles.zarr", folder / "er" / "grid.parquet", spec.patch_px)
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    batch, steps = size["train_batch"], size["train_steps"]
    n = batch * steps
    workers = 0 if device.type == "cpu" else min(8, size["threads"] - 1)
    labels = torch.randint(0, 3, (len(dataset),), generator=torch.Generator().manual_seed(0))

    def normalised(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    def loader_batches() -> Any:
        indices = torch.randint(0, len(dataset), (n,), generator=torch.Generator().manual_seed(1)).tolist()
        subset = torch.utils.data.Subset(dataset, indices)
        loader = DataLoader(subset, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        for patches, rows in loader:
            yield normalised(patches), labels[rows]

    resident = [(normalised(torch.randint(0, 256, (batch, 3, spec.patch_px, spec.patch_px), dtype=torch.uint8)),
                 torch.randint(0, 3, (batch,))) for _ in range(min(steps, 8))]

    def on_device() -> Any:
        for step in range(steps):
            yield resident[step % len(resident)]

    loss = torch.nn.CrossEntropyLoss()
    results: dict[str, list[float]] = {"data path": [], "on device": []}
    supervised_epoch(model, iter(resident[:1]), loss, device, optimizer)  # warm-up
    for rep in range(max(1, size["reps"] // 2)):
        for name, batches in (("data path", loader_batches), ("on device", on_device))[:: 1 if rep % 2 == 0 else -1]:
            started = time.perf_counter()
            supervised_epoch(model, batches(), loss, device, optimizer)
            _sync(device)
            results[name].append(time.perf_counter() - started)
    rates = {name: n / statistics.median(times) for name, times in results.items()}
    return {"architecture": spec.architecture, "patch_px": spec.patch_px, "batch": batch, "patches_per_epoch_run": n,
            "patches_per_s": rates, "ratio": rates["data path"] / rates["on device"], "seconds": results,
            "dataset_patches": len(dataset), "device": str(device)}


def section_nuclei(folder: Path, dry_run: bool) -> dict[str, Any]:
    """models/nuclei_unet on the H&E region: MP/s of the full prediction and of the forward pass."""
    import cv2
    import torch

    from bcpath.nuclei.predict import load_nuclei_model, predict_instances

    size = sizes(dry_run)
    device = _device(dry_run)
    torch.set_num_threads(size["threads"])
    bundle = load_nuclei_model(REPO / "models" / "nuclei_unet", device=str(device))
    rgb = cv2.cvtColor(cv2.imread(str(folder / "he_region.jpg")), cv2.COLOR_BGR2RGB)
    side = size["nuclei_px"]  # Vahadane normalisation of the whole region runs on the CPU: keep it short
    top, left = max(0, (rgb.shape[0] - side) // 2), max(0, (rgb.shape[1] - side) // 2)
    rgb = np.ascontiguousarray(rgb[top:top + side, left:left + side])
    megapixels = rgb.shape[0] * rgb.shape[1] / 1e6
    tile = bundle.tile
    batch = 64 if device.type == "cuda" else 2
    x = torch.rand(batch, 3, tile, tile, device=device)

    def forward() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in range(4):
                torch.softmax(bundle.model(x), dim=1)
        _sync(device)
        return time.perf_counter() - started

    def full() -> float:
        started = time.perf_counter()
        labels = predict_instances(bundle, rgb, DEMO_MPP)
        full.n_nuclei = int(labels.max())  # type: ignore[attr-defined]
        _sync(device)
        return time.perf_counter() - started

    forward(), full()  # warm-up
    times: dict[str, list[float]] = {"predict_instances": [], "forward only": []}
    for rep in range(size["reps"]):
        for name, run in (("predict_instances", full), ("forward only", forward))[:: 1 if rep % 2 == 0 else -1]:
            times[name].append(run())
    forward_mp = 4 * batch * tile * tile / 1e6
    rates = {"predict_instances": megapixels / statistics.median(times["predict_instances"]),
             "forward only": forward_mp / statistics.median(times["forward only"])}
    return {"model": "models/nuclei_unet", "region_px": list(rgb.shape[:2]), "megapixels": megapixels,
            "mp_per_s": rates, "seconds": times, "n_nuclei": full.n_nuclei, "device": str(device),  # type: ignore[attr-defined]
            "note": "forward only counts the pixels of 256 px tiles fed once; predict_instances counts image pixels (50 % tile overlap: ~4 tile passes per pixel)"}


def run_subprocess(command: list[str], timeout_s: float, json_path: Path) -> dict[str, Any]:
    """Runs a bench script; its --json output, or the tail of its log on failure."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    log = (completed.stdout + completed.stderr)[-3000:]
    if completed.returncode != 0 or not json_path.exists():
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}:\n{log}")
    result = json.loads(json_path.read_text())
    result["log_tail"] = completed.stdout[-1500:]
    return result


def run(folder: Path, out: Path, dry_run: bool, budget_s: float) -> int:
    """Runs every section (own process, own time limit); OUT/gpu_check.{json,md} after each."""
    out.mkdir(parents=True, exist_ok=True)
    size = sizes(dry_run)
    started = time.perf_counter()
    python = sys.executable
    device = "cpu" if dry_run else "cuda"
    report: dict[str, Any] = {"dry_run": dry_run, "machine": platform.platform(), "python": sys.version.split()[0],
                              "prepared": json.loads((folder / "prepare.json").read_text()), "sections": {}}
    try:
        import torch

        report["torch"] = torch.__version__
        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry_run else "cpu"
    except Exception as error:  # noqa: BLE001 - recorded, the sections will fail with it too
        report["device"] = f"torch does not load: {error}"
    er_json, dense_json, mitosis_json = out / "er_inference.json", out / "er_inference_dense.json", out / "mitosis.json"
    sections = {
        "er_inference": lambda: run_subprocess(
            [python, "bench/inference.py", "--tiles", str(folder / "er"), "--architecture", size["architecture"],
             "--patch-px", str(size["patch_px"]), "--batch-size", str(size["batch"]), "--threads", str(size["threads"]),
             "--reps", str(size["reps"]), "--device", device, "--json", str(er_json)], size["section_timeout_s"], er_json),
        "er_inference_dense": lambda: run_subprocess(
            [python, "bench/inference.py", "--tiles", str(folder / "er"), "--architecture", size["architecture"],
             "--patch-px", str(size["patch_px"]), "--stride-px", str(size["dense_stride_px"]), "--batch-size", str(size["batch"]),
             "--threads", str(size["threads"]), "--reps", str(size["reps"]), "--device", device, "--json", str(dense_json)],
            size["section_timeout_s"], dense_json),
        "er_training": lambda: _in_child("er_training", folder, dry_run, size["section_timeout_s"], out),
        "nuclei": lambda: _in_child("nuclei", folder, dry_run, size["section_timeout_s"], out),
        "mitosis": lambda: run_subprocess(
            [python, "bench/mitosis.py", "--image", str(folder / "mitosis_region.jpg"), "--mpp", str(MITOSIS_MPP),
             "--device", device, "--threads", str(size["threads"]), "--reps", str(size["reps"]), "--json", str(mitosis_json)],
            size["section_timeout_s"], mitosis_json),
    }
    for name, section in sections.items():
        left = budget_s - (time.perf_counter() - started)
        if left < 20:
            report["sections"][name] = {"error": f"skipped: {left:.0f} s of the {budget_s:.0f} s budget left"}
            continue
        section_started = time.perf_counter()
        try:
            result = section()
        except Exception as error:  # noqa: BLE001 - one failed section must not cost the others
            result = {"error": f"{type(error).__name__}: {error}"[-3000:]}
        result["section_s"] = round(time.perf_counter() - section_started, 1)
        report["sections"][name] = result
        if name == "er_inference" and "error" not in result:
            report["sections"]["stage1_real_size"] = stage1_real_size(result, report["prepared"])
        write_report(report, out)
        print(f"[gpu_check] {name}: {result.get('error', 'ok')} ({result['section_s']} s)", flush=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    write_report(report, out)
    print((out / "gpu_check.md").read_text())
    failed = [name for name, result in report["sections"].items() if "error" in result]
    return 1 if failed else 0


def _in_child(name: str, folder: Path, dry_run: bool, timeout_s: float, out: Path) -> dict[str, Any]:
    json_path = out / f"{name}.json"
    command = [sys.executable, __file__, "section", name, str(folder), str(json_path)] + (["--dry-run"] if dry_run else [])
    return run_subprocess(command, timeout_s, json_path)


def stage1_real_size(er: dict[str, Any], prepared: dict[str, Any]) -> dict[str, Any]:
    """Stage-1 seconds of the real-size slide: its tissue patches / the full path's patches/s.

    A real run (not --dry-run) prepares a demo slide of the real-size slide's area (300 mm²:
    141 tissue patches of 512 px at 2 µm/px) and measures on a block of 32 of them (what
    travels); the per-pass start-up (DataLoader workers) is in the rate, so the projection
    errs long. A dry run's small slide is scaled by area.
    """
    real_mm2 = REAL_SIZE_PX[0] * REAL_SIZE_PX[1] * REAL_SIZE_MPP**2 / 1e6
    n_real = prepared["slide_patches"] * real_mm2 / prepared["slide_area_mm2"]
    seconds = n_real / er["patches_per_s"]["full path"]
    return {"real_size_mm2": real_mm2, "prepared_mm2": prepared["slide_area_mm2"], "n_patches": round(n_real),
            "measured_on_patches": er["n_patches"], "seconds": seconds, "target_s": STAGE1_TARGET_S,
            "meets_target": seconds <= STAGE1_TARGET_S,
            "what": "patch inference (rule predict_patches) for one biomarker model; tiling is separate (CPU)"}


def write_report(report: dict[str, Any], out: Path) -> None:
    """OUT/gpu_check.json (everything) and OUT/gpu_check.md (the README table)."""
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    s = report["sections"]
    rows = [f"GPU check on {report.get('device')} (torch {report.get('torch')}, Python {report.get('python')})" + (" — DRY RUN, numbers mean nothing" if report["dry_run"] else ""), "",
            "| step | measure | value | target |", "| --- | --- | --- | --- |"]

    def ok(name: str) -> bool:
        return name in s and "error" not in s[name]

    for name, what in (("er_inference", "one pass, stride = patch, as the workflow"), ("er_inference_dense", "stride {stride} px: steady state")):
        if ok(name):
            r = s[name]
            what = what.format(stride=r.get("stride_px"))
            rows += [f"| ER/PR/HER2 inference ({r['architecture']}, {r['patch_px']} px at 2 µm/px, batch {r['batch_size']}; {r['n_patches']} patches, {what}) | patches/s full path | {r['patches_per_s']['full path']:.0f} | |",
                     f"| | patches/s model only | {r['patches_per_s']['model only']:.0f} | |",
                     f"| | ratio full / model only | {r['ratio']:.2f} | ≥ {RATIO_TARGET} |"]
    if ok("stage1_real_size"):
        r = s["stage1_real_size"]
        rows.append(f"| stage 1 of the real-size slide ({r['real_size_mm2']:.0f} mm², {r['n_patches']} patches; projected from the full path's rate) | seconds, one model | {r['seconds']:.1f} | ≤ {STAGE1_TARGET_S:.0f} |")
    if ok("er_training"):
        r = s["er_training"]
        rows += [f"| stage-1 training ({r['architecture']}, {r['patch_px']} px, batch {r['batch']}, AdamW, bf16) | patches/s with the DataLoader | {r['patches_per_s']['data path']:.0f} | |",
                 f"| | patches/s on-device batches | {r['patches_per_s']['on device']:.0f} | |"]
    if ok("nuclei"):
        r = s["nuclei"]
        rows += [f"| nuclei U-Net (models/nuclei_unet, {r['region_px'][1]}×{r['region_px'][0]} px at 0.5 µm/px) | MP/s predict_instances | {r['mp_per_s']['predict_instances']:.2f} | |",
                 f"| | MP/s forward only | {r['mp_per_s']['forward only']:.1f} | |"]
    if ok("mitosis"):
        r = s["mitosis"]
        rows += [f"| mitosis detection ({r['model']}, {r['size'][0]}×{r['size'][1]} px, {r['n_candidates']} candidates) | MP/s detection | {r['mp_per_s']['detection']:.2f} | |",
                 f"| | MP/s classifier only | {r['mp_per_s']['classifier only']:.2f} | |"]
    for name, r in s.items():
        if "error" in r:
            rows.append(f"| {name} | failed | {r['error'].splitlines()[0][:120]} | |")
    if "total_s" in report:
        rows += ["", f"total {report['total_s']:.0f} s"]
    (out / "gpu_check.md").write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="make the inputs (CPU, here)")
    p.add_argument("folder", type=Path)
    p.add_argument("--dry-run", action="store_true")
    r = sub.add_parser("run", help="measure (GPU machine)")
    r.add_argument("folder", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--budget-s", type=float, default=300.0, help="sections not started by then are skipped")
    s = sub.add_parser("section", help="one in-process section (run calls this)")
    s.add_argument("name", choices=["er_training", "nuclei"])
    s.add_argument("folder", type=Path)
    s.add_argument("json", type=Path)
    s.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.folder, args.dry_run)
        return 0
    if args.command == "run":
        return run(args.folder, args.out, args.dry_run, args.budget_s)
    try:
        result = {"er_training": section_er_training, "nuclei": section_nuclei}[args.name](args.folder, args.dry_run)
    except Exception:
        traceback.print_exc()
        return 1
    args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
