"""Organ-wise leave-one-out within MoNuSeg (issue 13, item 2), CPU-sized.

    PYTHONPATH=src python bench/nuclei_organ_lodo.py --out DIR --organs lung,kidney,colon --steps 2000
    PYTHONPATH=src python bench/nuclei_organ_lodo.py --out DIR --organs prostate,bladder,brain --steps 2000
    PYTHONPATH=src python bench/nuclei_organ_lodo.py --out DIR --table
    PYTHONPATH=src python bench/nuclei_organ_lodo.py --out /tmp/dry --dry-run

Per organ of the 21 MoNuSeg non-breast images (TCGA site code → organ,
:data:`bcpath.nuclei.datasets.TCGA_TSS_ORGAN`: lung 5, kidney 6, colon 2, prostate 4, bladder 2,
brain 2), models/nuclei_unet_v2's recipe (bench/gpu_train_nuclei.py's ``plain8_stainaug_dist``:
same crops, augmentation, sampler, optimiser) is trained from scratch for ``--steps`` steps on
everything else (the other organs' MoNuSeg images + CPM-15 + CoNSeP train) and scored on that
organ's images (AJI at their own size, every distance threshold of the grid).

Threshold: per held-out organ, the one with the best mean of the *other* organs' mean AJI (so
the images that choose and the images that measure differ); the fixed 0.4 of
models/nuclei_unet_v2 is reported beside it.

``--fiji`` scores the Fiji-like classical baseline (no training) on the same images at their own
size from ../shared (``fiji_monuseg.json``); the table gives its mean AJI per organ beside the U-Net's.

Outputs in ``--out``: ``organ_<organ>.json`` per organ, ``organ_lodo.json`` / ``organ_lodo.md``
with ``--table``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

import gpu_train_nuclei as g  # noqa: E402
import torch  # noqa: E402

from bcpath.nuclei.datasets import TCGA_TSS_ORGAN  # noqa: E402
from bcpath.nuclei.lodo import score_image, summarise_set  # noqa: E402
from bcpath.nuclei.maps import predict_maps  # noqa: E402
from bcpath.nuclei.targets import DISTANCE_THRESHOLDS  # noqa: E402

RECIPE = g.VARIANTS["plain8_stainaug_dist"]
V2_THRESHOLD = 0.4


def organ_of(name: str) -> str:
    """MoNuSeg image name (TCGA barcode) → organ."""
    return TCGA_TSS_ORGAN.get(name.split("-")[1], "unknown")


def _score(job: tuple[int, np.ndarray]) -> tuple[int, list[dict[str, float]]]:
    i, maps = job
    im = g.IMAGES["monuseg"][i]
    return i, [score_image(im.orig, g.decode_maps(maps.astype(np.float32), im.orig.shape, "distance", t, g.MIN_AREA_PX))
               for t in DISTANCE_THRESHOLDS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pack", type=Path, default=ROOT.parent / ".gpu_data" / "nuclei_pack.npz")
    p.add_argument("--organs", default=None, help="comma-separated organs to hold out (default: all)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="no training: merge organ_*.json into the table")
    p.add_argument("--fiji", action="store_true", help="no training: score the Fiji-like baseline on the MoNuSeg images")
    p.add_argument("--shared", type=Path, default=ROOT.parents[1] / "shared" / "data" / "nuclei")
    p.add_argument("--dry-run", action="store_true", help="cropped images, 3 steps, one organ")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(write_table(args.out))
        return 0
    if args.fiji:
        score_fiji(args.shared / "monuseg_nonbreast", args.out / "fiji_monuseg.json")
        return 0
    if args.dry_run:
        args.steps, args.batch, args.crop = 3, 2, 64
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    cv2.setNumThreads(1)
    torch.set_num_threads(args.threads)
    g.IMAGES.update(g.load_pack(args.pack, crop=128 if args.dry_run else None))
    if args.dry_run:
        for s in ("cpm15", "consep"):
            g.IMAGES[s] = g.IMAGES[s][:2]
    pool = mp.get_context("fork").Pool(1, initializer=g._worker_init)
    for name, i, extra in pool.imap_unordered(g._targets, [(s, i) for s in g.SETS for i in range(len(g.IMAGES[s]))], chunksize=4):
        g.IMAGES[name][i].extra = extra
    tensors = g.device_tensors(g.IMAGES, torch.device("cpu"))
    organs_all = sorted({organ_of(im.name) for im in g.IMAGES["monuseg"]})
    organs = [o for o in (args.organs.split(",") if args.organs else organs_all) if o]
    if set(organs) - set(organs_all):
        raise SystemExit(f"unknown organs {sorted(set(organs) - set(organs_all))}; the pack has {organs_all}")
    if args.dry_run:
        organs = organs[:1]
    for organ in organs:
        held = [i for i, im in enumerate(g.IMAGES["monuseg"]) if organ_of(im.name) == organ]
        keep = [i for i in range(len(g.IMAGES["monuseg"])) if i not in held]
        images = {**g.IMAGES, "monuseg": [g.IMAGES["monuseg"][i] for i in keep]}
        fold_tensors = {**tensors, "monuseg": [tensors["monuseg"][i] for i in keep]}
        log(f"{organ}: {len(held)} images held out, training on {len(keep)} other MoNuSeg + CPM-15 + CoNSeP")
        train_sets = [s for s in g.SETS if images[s]]  # (a tiny dry-run pack may hold one organ only)
        model, info = g.train_run(images, train_sets, RECIPE, 0.0, args, torch.device("cpu"), log, fold_tensors, max_steps=args.steps)
        maps = predict_maps(model, [g.IMAGES["monuseg"][i].raw for i in held], "cpu", batch_size=4, channels_last=True)
        scored = pool.map(_score, [(i, m.astype(np.float16)) for i, m in zip(held, maps, strict=True)])
        per_t = {str(t): [{"image": g.IMAGES["monuseg"][i].name, **rows[k]} for i, rows in sorted(scored)]
                 for k, t in enumerate(DISTANCE_THRESHOLDS)}
        res = {"organ": organ, "steps": args.steps, "batch": args.batch, "crop": args.crop, "dry_run": args.dry_run,
               "train_s": info["train_s"], "n_train_monuseg": len(keep), "per_image": per_t,
               "summary": {t: summarise_set(rows) for t, rows in per_t.items()}}  # fmt: skip
        (args.out / f"organ_{organ}.json").write_text(json.dumps(res, indent=1, default=float))
        log(f"  {organ}: mean AJI at {V2_THRESHOLD} {res['summary'][str(V2_THRESHOLD)]['mean_aji']:.3f}")
    pool.close()
    return 0


def score_fiji(folder: Path, out: Path) -> None:
    """Per-image AJI rows of the Fiji-like baseline on the MoNuSeg images in ``folder``."""
    from bcpath.nuclei.classical import classical_baseline
    from bcpath.nuclei.lodo import evaluate_by_set

    _, scored = evaluate_by_set({"monuseg": folder}, lambda rgb, mpp: classical_baseline("fiji", rgb, mpp))
    rows = [{"organ": organ_of(r["image"]), **r} for r in scored]
    out.write_text(json.dumps({"model": "fiji", "folder": str(folder), "per_image": rows}, indent=1, default=float))
    print(f"fiji on {len(rows)} images: mean AJI {np.mean([r['aji'] for r in rows]):.3f}")


def write_table(out: Path) -> str:
    """organ_lodo.md / .json: per held-out organ, AJI at the threshold chosen on the other organs."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("organ_*.json")) if p.name != "organ_lodo.json"]
    parts = {res["organ"]: res for res in results}
    if not parts:
        raise SystemExit(f"{out}: no organ_*.json")
    fiji_path = out / "fiji_monuseg.json"
    fiji = json.loads(fiji_path.read_text())["per_image"] if fiji_path.is_file() else []
    rows, table, images = [], {}, []
    for organ, res in parts.items():
        others = [r for o, r in parts.items() if o != organ]
        t = max(res["summary"], key=lambda k: np.mean([r["summary"][k]["mean_aji"] for r in others]) if others else 0.0)
        s, f = res["summary"][t], res["summary"][str(V2_THRESHOLD)]
        table[organ] = {"threshold_from_other_organs": float(t), "at_chosen": s, "at_v2_threshold": f, "steps": res["steps"],
                        "train_s": res["train_s"], "mean_aji_by_threshold": {k: v["mean_aji"] for k, v in res["summary"].items()}}
        images += [{"organ": organ, **r} for r in res["per_image"][t]]
        fiji_cell = "—"
        if fiji:
            fiji_rows = [r for r in fiji if r["organ"] == organ]
            table[organ]["fiji"] = summarise_set(fiji_rows)
            fiji_cell = f"{table[organ]['fiji']['mean_aji']:.3f}"
        rows.append(f"| {organ} | {s['n_images']} | {s['mean_aji']:.3f} / {s['pooled_aji']:.3f} (t {t}) | "
                    f"{s['worst_image']} {s['worst_aji']:.3f} | {f['mean_aji']:.3f} | {fiji_cell} |")
    ajis = np.array([r["aji"] for r in images])
    worst = images[int(np.argmin(ajis))]
    held_fiji = [r["aji"] for r in fiji if r["organ"] in table]
    rows.append(f"| all {len(images)} images | {len(images)} | {ajis.mean():.3f} (mean over images) | {worst['image']} {worst['aji']:.3f} | "
                f"{np.mean([table[o]['at_v2_threshold']['mean_aji'] for o in table]):.3f} (mean of organ means) | "
                f"{f'{np.mean(held_fiji):.3f} (mean over images)' if held_fiji else '—'} |")
    md = ("| held-out organ | images | mean / pooled AJI (threshold chosen on the other organs) | worst image | mean AJI at 0.4 | Fiji-like mean AJI |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(rows))
    record = {"organs": table, "per_image": images, "fiji_per_image": fiji, "table_markdown": md}
    (out / "organ_lodo.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "organ_lodo.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    raise SystemExit(main())
