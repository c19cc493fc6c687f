"""Lagree et al.'s model comparison on one leave-one-dataset-out fold, CPU-sized (issue 13, item 8).

    PYTHONPATH=src python bench/nuclei_paper_comparison.py --out DIR --models plain,ensemble,gb_unet --steps 3000
    PYTHONPATH=src python bench/nuclei_paper_comparison.py --out DIR --models resnet34,mask_rcnn --steps 3000
    PYTHONPATH=src python bench/nuclei_paper_comparison.py --out DIR --table      # the merged table
    PYTHONPATH=src python bench/nuclei_paper_comparison.py --out /tmp/dry --dry-run

Same data pack, fold, crops (``--crop`` px at 0.5 µm/px, batch ``--batch``), augmentation
(geometry + H&E stain / intensity / blur / JPEG), optimiser (AdamW, 20-step warm-up, cosine) and
number of steps for every trained model, as bench/gpu_train_nuclei.py (whose functions it uses):

- ``plain``: models/nuclei_unet_v2's architecture (plain U-Net, depth 4, base 8, background /
  interior / boundary + distance-to-centre), seeds 0, 1, 2 (seed 0 is the row; 1 and 2 show the
  seed spread and are the ensemble's other members);
- ``resnet34``: U-Net with a torchvision ResNet-34 encoder, from scratch (no pretrained weights
  can be downloaded), same four outputs;
- ``ensemble``: the three plain U-Nets, their softmax / distance maps averaged;
- ``gb_unet``: the paper's GB U-Net: a second-stage plain U-Net (base 8) on the three frozen
  members' pre-softmax maps (4 channels each) and the image, trained for the same steps;
- ``mask_rcnn``: torchvision Mask R-CNN with a ResNet-18 FPN backbone from scratch (batch norm,
  not frozen: frozen statistics of an untrained network would be the identity), anchors of
  8-128 px for nuclei at 0.5 µm/px, instance targets = the augmented crop's interior components
  grown by one pixel into the boundary class; ranked by detection score, masks at 0.5;
- ``fiji``: the Fiji-like classical baseline (no training), run on the held-out set's images at
  their own size and µm/px from ../shared, as ``bcpath nuclei lodo --model fiji`` does.

Every model's output is decoded at each threshold of its grid (distance markers 0.3-0.7 for the
U-Nets; detection score 0.3-0.7 for Mask R-CNN) and scored per held-out image (AJI at the image's
own size). The table gives each model at a fixed threshold declared before the run (distance
0.4 = models/nuclei_unet_v2's, chosen on its other folds too; Mask R-CNN score 0.5) and, for
information, at its best threshold on this fold (optimistic: chosen on the images it measures).

Outputs in ``--out``: ``<model>.json`` per model (summary per threshold, per-image rows, steps,
times), ``members/seed{0,1,2}.pt`` (the plain U-Nets, for the ensemble and GB U-Net, which wait
for them), ``comparison.json`` / ``comparison.md`` with ``--table``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

import gpu_train_nuclei as g  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from bcpath.nuclei.lodo import score_image, summarise_set  # noqa: E402
from bcpath.nuclei.maps import predict_maps  # noqa: E402
from bcpath.nuclei.targets import DISTANCE_THRESHOLDS  # noqa: E402
from bcpath.nuclei.unet import GBUNet, PlainUNet, UNet  # noqa: E402
from bcpath.stain.augment import StainAugment  # noqa: E402

MODELS = ("plain", "resnet34", "ensemble", "gb_unet", "mask_rcnn", "fiji")
RECIPE = g.VARIANTS["plain8_stainaug_dist"]  # models/nuclei_unet_v2's recipe
FIXED_THRESHOLD = {"unet": 0.4, "mask_rcnn": 0.5}
SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
N_MEMBERS = 3
LR = {"plain": RECIPE["lr"], "resnet34": g.VARIANTS["resnet34_stainaug_dist"]["lr"], "gb_unet": RECIPE["lr"], "mask_rcnn": 1e-3}


# ----------------------------------------------------------------------------- scoring (forked workers)


def _score_maps(job: tuple[str, int, np.ndarray]) -> tuple[int, list[dict[str, float]]]:
    s, i, maps = job
    im = g.IMAGES[s][i]
    return i, [score_image(im.orig, g.decode_maps(maps.astype(np.float32), im.orig.shape, "distance", t, g.MIN_AREA_PX))
               for t in DISTANCE_THRESHOLDS]


def _score_instances(job: tuple[str, int, np.ndarray, np.ndarray]) -> tuple[int, list[dict[str, float]]]:
    """Mask R-CNN detections (scores (K,), masks (K, h, w) probabilities at 0.5 µm/px) → label
    map per score threshold: highest score first, each pixel to the first mask > 0.5 covering it."""
    s, i, scores, masks = job
    im = g.IMAGES[s][i]
    rows = []
    order = np.argsort(-scores, kind="stable")
    for t in SCORE_THRESHOLDS:
        lab = np.zeros(masks.shape[1:], np.int32)
        k = 0
        for j in order:
            if scores[j] < t:
                break
            free = (masks[j] > 0.5) & (lab == 0)
            if free.sum() >= g.MIN_AREA_PX:
                k += 1
                lab[free] = k
        pred = cv2.resize(lab, im.orig.shape[::-1], interpolation=cv2.INTER_NEAREST) if lab.shape != im.orig.shape else lab
        rows.append(score_image(im.orig, pred))
    return i, rows


def summarise(held: str, thresholds: tuple[float, ...], scored: list[tuple[int, list[dict[str, float]]]]) -> dict[str, Any]:
    per_t: dict[str, list[dict[str, Any]]] = {str(t): [] for t in thresholds}
    for i, rows in sorted(scored):
        for t, r in zip(thresholds, rows, strict=True):
            per_t[str(t)].append({"image": g.IMAGES[held][i].name, **r})
    return {"summary": {t: summarise_set(rows) for t, rows in per_t.items()}, "per_image": per_t}


# ----------------------------------------------------------------------------- Mask R-CNN


def build_mask_rcnn(crop: int) -> torch.nn.Module:
    """Mask R-CNN, CPU-sized: ResNet-18 FPN backbone from scratch with 64-channel pyramid
    (torchvision's default 256 costs ~26 s per batch of 8 crops here), box head 2 x 256, mask head
    4 convs of 64, anchors for nuclei at 0.5 µm/px."""
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    width = 64
    backbone = BackboneWithFPN(
        resnet18(weights=None), return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512], out_channels=width,
    )
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors, min_size=crop, max_size=4 * crop,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        box_head=TwoMLPHead(width * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 2),
        mask_head=MaskRCNNHeads(width, (width,) * 4, 1), mask_predictor=MaskRCNNPredictor(width, width, 2),
        rpn_batch_size_per_image=256, box_batch_size_per_image=128, box_detections_per_img=600,
        rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000, rpn_pre_nms_top_n_test=2000, rpn_post_nms_top_n_test=1000,
    )  # fmt: skip


def instance_targets(cls: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """(N, H, W) class maps (0 background, 1 interior, 2 boundary) → Mask R-CNN targets: one
    instance per 4-connected interior component (≥ 4 px), grown by one pixel into the boundary."""
    out = []
    for c in cls.cpu().numpy():
        comp, n = ndi.label(c == 1)
        grown = ndi.grey_dilation(comp, size=3)
        comp = np.where((comp == 0) & (c == 2), grown, comp)
        boxes, masks = [], []
        for k, sl in enumerate(ndi.find_objects(comp), start=1):
            if sl is None:
                continue
            m = comp == k
            if m.sum() < 4:
                continue
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            masks.append(m)
        h, w = c.shape
        out.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
        })  # fmt: skip
    return out


def train_mask_rcnn(sets: list[str], args: argparse.Namespace, tensors: Any, log: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(args.seed)
    ds = g.DeviceSet(g.IMAGES, sets, tensors)
    sampler = g.MixedSampler(ds.groups, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_mask_rcnn(args.crop)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR["mask_rcnn"], weight_decay=1e-4)
    aug = StainAugment()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    total, warm, losses, skipped = args.steps, 20, [], 0
    t0 = time.perf_counter()
    model.train()
    for step in range(total):
        scale = min(1.0, (step + 1) / warm) * (0.5 * (1 + math.cos(math.pi * step / total)) if step >= warm else 1.0)
        for group in opt.param_groups:
            group["lr"] = LR["mask_rcnn"] * scale
        x, cls, _, _ = g.make_batch(ds, sampler, args.batch, args.crop, gen, rng, RECIPE, aug, torch.device("cpu"))
        rgb = (x * std + mean).clamp(0, 1).contiguous()
        loss_dict = model(list(rgb), instance_targets(cls))
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            skipped += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == total:
            losses.append((step + 1, float(loss.detach()), {k: round(float(v.detach()), 4) for k, v in loss_dict.items()}))
            if (step + 1) % 500 == 0:
                log(f"  mask_rcnn step {step + 1}: loss {float(loss):.3f} ({time.perf_counter() - t0:.0f} s)")
    info = {"steps": total, "non_finite_skipped": skipped, "train_s": time.perf_counter() - t0, "loss_curve": losses}
    log(f"  trained mask_rcnn: {total} steps in {info['train_s']:.0f} s")
    return model, info


@torch.inference_mode()
def predict_instances(model: torch.nn.Module, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per (h, w, 3) uint8 image at 0.5 µm/px: detection scores (K,) and mask probabilities (K, h, w)."""
    model.eval()
    out = []
    for rgb in images:
        h, w = rgb.shape[:2]
        model.transform.min_size = (min(h, w),)
        model.transform.max_size = max(h, w)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        det = model([x])[0]
        out.append((det["scores"].numpy().astype(np.float32), det["masks"][:, 0].numpy().astype(np.float16)))
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pack", type=Path, default=ROOT.parent / ".gpu_data" / "nuclei_pack.npz")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--held-out", default="consep", choices=g.SETS)
    p.add_argument("--shared", type=Path, default=ROOT.parents[1] / "shared" / "data" / "nuclei",
                   help="the annotated sets (for the fiji row, which reads the held-out images at their own size)")
    p.add_argument("--steps", type=int, default=3000, help="training steps of every model (the GB U-Net's second stage too)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="scoring processes")
    p.add_argument("--table", action="store_true", help="no training: merge the <model>.json files into the table")
    p.add_argument("--dry-run", action="store_true", help="2 images per set, 64 px crops, 3 steps")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(write_table(args.out))
        return 0
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS):
        raise SystemExit(f"unknown models {sorted(set(models) - set(MODELS))}; choose from {MODELS}")
    if args.dry_run:
        args.steps, args.batch, args.crop = 3, 2, 64
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    cv2.setNumThreads(1)
    torch.set_num_threads(args.threads)
    g.IMAGES.update(g.load_pack(args.pack, limit=2 if args.dry_run else None, crop=128 if args.dry_run else None))
    pool = mp.get_context("fork").Pool(args.workers, initializer=g._worker_init)
    for name, i, extra in pool.imap_unordered(g._targets, [(s, i) for s in g.SETS for i in range(len(g.IMAGES[s]))], chunksize=4):
        g.IMAGES[name][i].extra = extra
    tensors = g.device_tensors(g.IMAGES, torch.device("cpu"))
    train = [s for s in g.SETS if s != args.held_out]
    held_images = g.IMAGES[args.held_out]
    held_rgb = [im.raw for im in held_images]
    log(f"fold: train {'+'.join(train)}, held out {args.held_out} ({len(held_rgb)} images); models {models}; {args.steps} steps each")
    members_dir = args.out / "members"
    members_dir.mkdir(exist_ok=True)

    def save(name: str, thresholds: tuple[float, ...], scored: Any, info: dict[str, Any]) -> None:
        res = {"model": name, "held_out": args.held_out, "train": train, "steps": args.steps, "batch": args.batch,
               "crop": args.crop, "thresholds": list(thresholds), "dry_run": args.dry_run, **info,
               **summarise(args.held_out, thresholds, scored)}  # fmt: skip
        tmp = args.out / f"{name}.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=float))
        tmp.replace(args.out / f"{name}.json")
        best = max(res["summary"].values(), key=lambda r: r["mean_aji"])
        log(f"  {name}: best mean AJI on this fold {best['mean_aji']:.3f} / pooled {best['pooled_aji']:.3f}")

    def score_maps(maps: list[np.ndarray]) -> list[tuple[int, list[dict[str, float]]]]:
        return pool.map(_score_maps, [(args.held_out, i, m.astype(np.float16)) for i, m in enumerate(maps)], chunksize=8)

    def unet_maps(model: torch.nn.Module) -> list[np.ndarray]:
        return predict_maps(model, held_rgb, "cpu", batch_size=4, channels_last=True)

    def member(k: int) -> PlainUNet:
        path = members_dir / f"seed{k}.pt"
        while not path.is_file():  # trained by another process of this comparison
            time.sleep(30)
        model = g.build(g.architecture_of(RECIPE))
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    member_maps: dict[int, list[np.ndarray]] = {}
    for name in models:
        t0 = time.perf_counter()
        if name == "plain":
            for k in range(N_MEMBERS):
                margs = copy.copy(args)
                margs.seed = args.seed + k
                model, info = g.train_run(g.IMAGES, train, RECIPE, 0.0, margs, torch.device("cpu"), log, tensors, max_steps=args.steps)
                torch.save(model.state_dict(), members_dir / f"seed{k}.pt.tmp")
                (members_dir / f"seed{k}.pt.tmp").replace(members_dir / f"seed{k}.pt")
                member_maps[k] = unet_maps(model)
                info["predict_s"] = time.perf_counter() - t0 - info["train_s"] - info["setup_s"]
                save("plain" if k == 0 else f"plain_seed{k}", DISTANCE_THRESHOLDS, score_maps(member_maps[k]), info)
                t0 = time.perf_counter()
        elif name == "resnet34":
            torch.manual_seed(args.seed)
            model = UNet("resnet34", 4, 3)
            variant = {**RECIPE, "lr": LR["resnet34"]}
            model, info = g.train_run(g.IMAGES, train, variant, 0.0, args, torch.device("cpu"), log, tensors, max_steps=args.steps, model=model)
            save("resnet34", DISTANCE_THRESHOLDS, score_maps(unet_maps(model)), info)
        elif name == "ensemble":
            maps = [member_maps[k] if k in member_maps else unet_maps(member(k)) for k in range(N_MEMBERS)]
            mean_maps = [np.mean([m[i] for m in maps], axis=0) for i in range(len(held_rgb))]
            save("ensemble", DISTANCE_THRESHOLDS, score_maps(mean_maps), {"members": N_MEMBERS, "train_s": 0.0})
        elif name == "gb_unet":
            torch.manual_seed(args.seed)
            gb = GBUNet([member(k) for k in range(N_MEMBERS)], n_classes=4, freeze_first_stage=True, depth=4, base=8, dropout=0.1)
            model, info = g.train_run(g.IMAGES, train, RECIPE, 0.0, args, torch.device("cpu"), log, tensors, max_steps=args.steps, model=gb)
            save("gb_unet", DISTANCE_THRESHOLDS, score_maps(unet_maps(model)), info)
        elif name == "fiji":
            from gpu_nuclei_pack import SETS as PACK_FOLDERS

            from bcpath.nuclei.classical import classical_baseline
            from bcpath.nuclei.datasets import list_nuclei_folder

            folder = args.shared / PACK_FOLDERS[args.held_out]
            names = {im.name for im in held_images}  # all of the set, or the dry run's first 2
            rows = []
            for sample in list_nuclei_folder(folder):
                if sample.name in names:
                    rgb, truth = sample.load()
                    rows.append({"set": args.held_out, "image": sample.name, **score_image(truth, classical_baseline("fiji", rgb, sample.mpp))})
            if len(rows) != len(names):
                raise SystemExit(f"{folder}: found {len(rows)} of the pack's {len(names)} {args.held_out} images")
            summary = summarise_set(rows)
            res = {"model": "fiji", "held_out": args.held_out, "train": [], "steps": 0, "thresholds": [], "dry_run": args.dry_run,
                   "train_s": 0.0, "predict_s": time.perf_counter() - t0, "folder": str(folder),
                   "summary": {"none": summary}, "per_image": {"none": rows}}  # fmt: skip
            (args.out / "fiji.json").write_text(json.dumps(res, indent=1, default=float))
            log(f"  fiji: mean AJI {summary['mean_aji']:.3f} / pooled {summary['pooled_aji']:.3f}")
        else:  # mask_rcnn
            model, info = train_mask_rcnn(train, args, tensors, log)
            t1 = time.perf_counter()
            dets = predict_instances(model, held_rgb)
            info["predict_s"] = time.perf_counter() - t1
            scored = pool.map(_score_instances, [(args.held_out, i, s, m) for i, (s, m) in enumerate(dets)], chunksize=8)
            save("mask_rcnn", SCORE_THRESHOLDS, scored, info)
        log(f"{name} done in {time.perf_counter() - t0:.0f} s")
    pool.close()
    return 0


def gflop_per_megapixel() -> dict[str, float]:
    """Inference cost of each model: GFLOP per megapixel at 0.5 µm/px (torch's FLOP counter on
    one 512 px tile, the size models/nuclei_unet_v2 predicts). Mask R-CNN is counted untrained
    (almost no detections), so its figure is a floor: each detection adds box and mask heads."""
    from torch.utils.flop_counter import FlopCounterMode

    def plain() -> torch.nn.Module:
        return g.build(g.architecture_of(RECIPE)).eval()

    mask_rcnn = build_mask_rcnn(512).eval()
    models: dict[str, Any] = {
        "plain": plain(), "resnet34": UNet("resnet34", 4, 3).eval(), "mask_rcnn": lambda x: mask_rcnn(list(x)),
        "gb_unet": GBUNet([plain() for _ in range(N_MEMBERS)], n_classes=4, freeze_first_stage=True, depth=4, base=8, dropout=0.1).eval(),
    }  # fmt: skip
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, model in models.items():
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
        out[name] = counter.get_total_flops() / (512 * 512 / 1e6) / 1e9
    out.update(plain_seed1=out["plain"], plain_seed2=out["plain"], ensemble=N_MEMBERS * out["plain"], fiji=float("nan"))
    return out


LABELS = {
    "plain": "plain U-Net (v2 recipe, base 8), seed 0",
    "plain_seed1": "plain U-Net, seed 1",
    "plain_seed2": "plain U-Net, seed 2",
    "resnet34": "U-Net, ResNet-34 encoder (from scratch)",
    "ensemble": "U-Net ensemble (the 3 plain U-Nets)",
    "gb_unet": "GB U-Net (2nd stage on the 3 U-Nets' maps + image)",
    "mask_rcnn": "Mask R-CNN (ResNet-18 FPN, from scratch)",
    "fiji": "Fiji-like baseline (no training)",
}


def write_table(out: Path) -> str:
    """comparison.md / comparison.json from the <model>.json files in ``out``: per model the
    summary at its fixed threshold and at its best one on this fold, and the per-image rows
    (image, AJI, intersection, union) at the fixed threshold that the summary comes from."""
    rows, table, fold = [], {}, {}
    gflop = gflop_per_megapixel()
    for name in LABELS:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        if res["train"]:
            fold = {"held_out": res["held_out"], "train": res["train"], "batch": res.get("batch"), "crop": res.get("crop")}
        fixed = "none" if name == "fiji" else str(FIXED_THRESHOLD["mask_rcnn" if name == "mask_rcnn" else "unet"])
        best_t = max(res["summary"], key=lambda t: res["summary"][t]["mean_aji"])
        f, b = res["summary"][fixed], res["summary"][best_t]
        worst = f.get("worst_source", f["worst_image"]), f.get("worst_source_aji", f["worst_aji"])
        table[name] = {
            "label": LABELS[name], "fixed_threshold": None if fixed == "none" else float(fixed), "at_fixed": f,
            "best_threshold": None if best_t == "none" else float(best_t), "at_best": b, "steps": res["steps"],
            "train_s": res.get("train_s"), "predict_s": res.get("predict_s"), "gflop_per_mp": None if name == "fiji" else gflop[name],
            "per_image_at_fixed": [[r["image"], r["aji"], r["inter"], r["union"]] for r in res["per_image"][fixed]],
        }
        at_fixed = f"{f['mean_aji']:.3f} / {f['pooled_aji']:.3f}" + ("" if fixed == "none" else f" (t {fixed})")
        at_best = "—" if best_t == "none" else f"{b['mean_aji']:.3f} / {b['pooled_aji']:.3f} (t {best_t})"
        cost = "—" if name == "fiji" else f"{gflop[name]:.0f}" + (" (floor)" if name == "mask_rcnn" else "")
        train_min = {"ensemble": "its members'", "fiji": "—"}.get(name, f"{(res.get('train_s') or 0) / 60:.0f}")
        rows.append(f"| {LABELS[name]} | {at_fixed} | {worst[0]} {worst[1]:.3f} | {at_best} | {res['steps']} | {train_min} | {cost} |")
    if not table:
        raise SystemExit(f"{out}: no <model>.json to merge")
    md = ("| model | mean / pooled AJI at the fixed threshold | worst source image | at its best threshold on this fold | steps | "
          "train min | GFLOP per MP |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    record = {**fold, "per_image_columns": ["image", "aji", "inter", "union"], "models": table, "table_markdown": md}
    (out / "comparison.json").write_text(json.dumps(record, default=float))
    (out / "comparison.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    raise SystemExit(main())
