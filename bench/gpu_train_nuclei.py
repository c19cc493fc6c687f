"""Leave-one-dataset-out comparison of nuclei U-Net variants on one GPU, then the chosen
variant trained on all three sets (issue 13, items 2-4, 7, 8 in part).

    PYTHONPATH=src python bench/gpu_train_nuclei.py --out $OUT --budget-s 400
    PYTHONPATH=src python bench/gpu_train_nuclei.py --out /tmp/dry --dry-run     # CPU, < 60 s

Data: ``.gpu_data/nuclei_pack.npz`` (bench/gpu_nuclei_pack.py: MoNuSeg non-breast, CPM-15,
CoNSeP train at 0.5 µm/px, raw and Vahadane-normalised, labels at 0.5 µm/px and at the images'
own size), so the machine needs neither ../shared nor staintools.

Per variant (``--variants``), per fold (train on two sets, score the third):

- training crops of ``--crop`` px from :class:`bcpath.nuclei.lodo.MixedSampler` (set uniform,
  source image uniform, tile uniform, position uniform), augmented on the device: any rotation,
  flip, scale 0.85-1.15, shear, smooth elastic displacement (``grid_sample``; targets by nearest
  neighbour, the U-Net weight map and the distance map bilinearly); for ``stainaug`` variants
  the stain/intensity augmentation of :class:`bcpath.stain.augment.StainAugment` on the raw
  image (or, with probability 0.3, on a JPEG-recompressed copy), for ``vahadane`` variants the
  Vahadane-normalised image as it is (the shipped model's input);
- AdamW, one-cycle-like schedule (linear warm-up, cosine decay) over as many steps as the
  variant's time share allows (measured after a warm-up: equal GPU time per run, not equal
  steps; the steps are recorded), bf16 autocast, channels_last;
- the held-out set predicted at 0.5 µm/px (256 px tiles, 50 % overlap, Hann blending; tiles
  smaller than 256 px reflect-padded, as ``bcpath nuclei predict`` does), maps resampled to
  each image's own size and decoded there at every threshold of the decoding's grid, scored
  (AJI per image, pooled AJI, worst image) in a pool of CPU workers while the next fold trains.

The threshold of a variant is the one with the best mean over the three held-out sets of the
per-set mean AJI (one threshold for all folds: never chosen on one image or one set); the
variant with the best such mean is then trained on all three sets for the rest of the budget
and written as a model folder (``best.pt``, ``train.json``, ``stain.json`` for Vahadane input)
loadable by :func:`bcpath.nuclei.predict.load_nuclei_model`.

Outputs in ``--out`` (at most 6 files, each under 16 MB, written as they come, so a timeout
still leaves them): ``lodo.json`` (every fold's summary and per-image scores at every threshold,
the chosen thresholds, the table as markdown, timings; rewritten after every fold),
``final_model.tar`` (the model folder, weights in float16), split into
``final_model.tar.00``, ``.01``, ... of 15 MB when larger (``cat final_model.tar.* >
final_model.tar``), and the shell wrapper's ``run.log``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# One OpenCV thread in this process: the scoring workers are forked from it, and a forked child
# deadlocks in OpenCV's parallel_for when the parent had started OpenCV's thread pool.
cv2.setNumThreads(1)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bcpath.nuclei.lodo import (  # noqa: E402
    MixedSampler,
    choose_threshold,
    lodo_folds,
    lodo_markdown,
    score_image,
    summarise_set,
)
from bcpath.nuclei.maps import decode_maps, n_outputs, predict_maps  # noqa: E402
from bcpath.nuclei.targets import (  # noqa: E402
    DISTANCE_THRESHOLDS,
    distance_target,
    encode_targets,
    unet_weight_map,
)

SETS = ("monuseg", "cpm15", "consep")
IB_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
MODEL_MPP = 0.5
MIN_AREA_PX = 10
PAD = 48  # reflect margin around each image for rotated crops
PART_BYTES = 15_000_000  # returned files must stay under 16 MB
DIST_WEIGHT = 5.0  # weight of the distance map's MSE beside CE + Dice

#: name → (encoder, base width, input, decoding, lr)
VARIANTS: dict[str, dict[str, Any]] = {
    "plain16_vahadane_ib": {"encoder": "plain", "base": 16, "input": "vahadane", "decoding": "interior_boundary", "lr": 2e-3},
    "plain16_stainaug_ib": {"encoder": "plain", "base": 16, "input": "stainaug", "decoding": "interior_boundary", "lr": 2e-3},
    "plain16_stainaug_dist": {"encoder": "plain", "base": 16, "input": "stainaug", "decoding": "distance", "lr": 2e-3},
    "plain8_stainaug_dist": {"encoder": "plain", "base": 8, "input": "stainaug", "decoding": "distance", "lr": 3e-3},
    "plain32_stainaug_dist": {"encoder": "plain", "base": 32, "input": "stainaug", "decoding": "distance", "lr": 1.5e-3},
    "resnet34_stainaug_dist": {"encoder": "resnet34", "base": None, "input": "stainaug", "decoding": "distance", "lr": 1e-3},
    # CPU-sized comparisons with models/nuclei_unet_v2's recipe (plain8_stainaug_dist): one change each
    "plain8_stainaug_ib": {"encoder": "plain", "base": 8, "input": "stainaug", "decoding": "interior_boundary", "lr": 3e-3},
    "plain8_vahadane_dist": {"encoder": "plain", "base": 8, "input": "vahadane", "decoding": "distance", "lr": 3e-3},
}
#: the GPU run's variants (the CPU-sized plain8 comparisons are asked for by name)
DEFAULT_VARIANTS = ",".join(v for v in VARIANTS if v not in ("plain8_stainaug_ib", "plain8_vahadane_dist"))

# ----------------------------------------------------------------------------- data


@dataclass
class Img:
    set: str
    name: str
    group: str
    mpp: float
    raw: np.ndarray  # (h, w, 3) uint8 at 0.5 µm/px
    vah: np.ndarray | None
    lab: np.ndarray  # (h, w) int32 at 0.5 µm/px
    orig: np.ndarray  # (H, W) int32 at the image's own size
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _decode_jpeg(buf: np.ndarray) -> np.ndarray:
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("pack: undecodable JPEG")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def load_pack(path: Path, limit: int | None = None, crop: int | None = None) -> dict[str, list[Img]]:
    if not path.is_file():
        raise SystemExit(f"{path}: no data pack; make it with bench/gpu_nuclei_pack.py (needs ../shared/data/nuclei)")
    z = np.load(path)
    out: dict[str, list[Img]] = {}
    for s in SETS:
        names = z[f"{s}_names"]
        raw_off, vah_off = z[f"{s}_raw_off"], z[f"{s}_vah_off"]
        raw, vah = z[f"{s}_raw"], z[f"{s}_vah"]
        lab, lab_shape = z[f"{s}_lab"], z[f"{s}_lab_shape"]
        orig, orig_shape = z[f"{s}_orig"], z[f"{s}_orig_shape"]
        lo = oo = 0
        items = []
        for i, name in enumerate(names):
            lh, lw = (int(v) for v in lab_shape[i])
            oh, ow = (int(v) for v in orig_shape[i])
            items.append(Img(
                s, str(name), str(z[f"{s}_groups"][i]), float(z[f"{s}_mpp"][i]),
                _decode_jpeg(raw[raw_off[i]:raw_off[i + 1]]), _decode_jpeg(vah[vah_off[i]:vah_off[i + 1]]),
                lab[lo:lo + lh * lw].reshape(lh, lw).astype(np.int32),
                orig[oo:oo + oh * ow].reshape(oh, ow).astype(np.int32),
            ))  # fmt: skip
            lo += lh * lw
            oo += oh * ow
        out[s] = [_crop(im, crop) for im in items[:limit]] if limit else items
    return out


def _crop(im: Img, size: int | None) -> Img:
    """The top-left ``size`` px (at 0.5 µm/px) of an image, its original labels cut to match
    (dry runs only)."""
    if not size:
        return im
    h, w = min(size, im.lab.shape[0]), min(size, im.lab.shape[1])
    oh = int(round(h * im.orig.shape[0] / im.lab.shape[0]))
    ow = int(round(w * im.orig.shape[1] / im.lab.shape[1]))
    vah = im.vah[:h, :w].copy() if im.vah is not None else None
    return Img(im.set, im.name, im.group, im.mpp, im.raw[:h, :w].copy(), vah, im.lab[:h, :w].copy(), im.orig[:oh, :ow].copy())


IMAGES: dict[str, list[Img]] = {}  # global, inherited by the forked workers


def _targets(key: tuple[str, int]) -> tuple[str, int, dict[str, np.ndarray]]:
    s, i = key
    im = IMAGES[s][i]
    rng = np.random.default_rng(zlib.crc32(f"{s}/{im.name}".encode()))
    q = int(rng.integers(30, 91))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(im.raw, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    jpg = _decode_jpeg(buf) if ok else im.raw
    return s, i, {
        "cls": encode_targets(im.lab).astype(np.uint8),
        "weight": unet_weight_map(im.lab, w0=10.0, sigma=5.0).astype(np.float32),
        "dist": distance_target(im.lab),
        "jpg": jpg,
    }


def _worker_init() -> None:
    cv2.setNumThreads(1)  # (no torch call here: torch's thread pool after fork can deadlock)


def _score(job: tuple[str, int, np.ndarray, str, tuple[float, ...]]) -> tuple[str, int, list[dict[str, float]]]:
    s, i, maps, decoding, thresholds = job
    im = IMAGES[s][i]
    rows = []
    for t in thresholds:
        pred = decode_maps(maps.astype(np.float32), im.orig.shape, decoding, t, MIN_AREA_PX)
        rows.append(score_image(im.orig, pred))
    return s, i, rows


# ----------------------------------------------------------------------------- device data


def device_tensors(images: dict[str, list[Img]], device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Every image on the device as a (12, H+2P, W+2P) float16 tensor (reflect-padded):
    channels 0-2 raw RGB, 3-5 Vahadane RGB, 6-8 JPEG RGB (all /255), 9 U-Net weight,
    10 distance, 11 class. Made once; the folds pick their sets from it."""
    out: dict[str, list[torch.Tensor]] = {}
    for s, ims in images.items():
        ts = []
        for im in ims:
            e = im.extra
            vah = im.vah if im.vah is not None else im.raw
            stack = np.concatenate([
                im.raw.astype(np.float32) / 255, vah.astype(np.float32) / 255, e["jpg"].astype(np.float32) / 255,
                e["weight"][..., None], e["dist"][..., None], e["cls"][..., None].astype(np.float32),
            ], axis=2)  # fmt: skip
            stack = np.pad(stack, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
            ts.append(torch.from_numpy(stack).permute(2, 0, 1).to(device=device, dtype=torch.float16))
        out[s] = ts
    return out


class DeviceSet:
    """The device tensors and source-image groups of the training sets of one run."""

    def __init__(self, images: dict[str, list[Img]], sets: list[str], tensors: dict[str, list[torch.Tensor]]) -> None:
        self.sets = sets
        self.tensors = [tensors[s] for s in sets]
        self.groups = [[im.group for im in images[s]] for s in sets]


def make_batch(
    ds: DeviceSet, sampler: MixedSampler, n: int, crop: int, gen: torch.Generator, rng: np.random.Generator,
    variant: dict[str, Any], aug: Any, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    big = crop + 2 * PAD
    pieces = []
    for s, i in sampler.draw(n):
        t = ds.tensors[s][i]
        H, W = t.shape[1:]
        r = int(rng.integers(0, H - big + 1))
        c = int(rng.integers(0, W - big + 1))
        pieces.append(t[:, r : r + big, c : c + big])
    x = torch.stack(pieces).float()  # (n, 12, big, big)
    # random affine: rotation, flip, scale, shear; output = the central crop region
    ang = torch.rand(n, device=device, generator=gen) * 2 * math.pi
    scale = 0.85 + 0.3 * torch.rand(n, device=device, generator=gen)
    shear = (torch.rand(n, device=device, generator=gen) * 2 - 1) * 0.15
    flip = torch.where(torch.rand(n, device=device, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    a = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    sh = torch.zeros(n, 2, 2, device=device)
    sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1, shear, 1
    fl = torch.zeros(n, 2, 2, device=device)
    fl[:, 0, 0], fl[:, 1, 1] = flip, 1
    a = a @ sh @ fl * (scale * crop / big).view(n, 1, 1)
    theta = torch.cat([a, torch.zeros(n, 2, 1, device=device)], 2)
    grid = F.affine_grid(theta, (n, 1, crop, crop), align_corners=False)
    # smooth elastic displacement, up to ~3 px
    coarse = torch.randn(n, 2, 6, 6, device=device, generator=gen) * (3.0 / big)
    grid = grid + F.interpolate(coarse, size=(crop, crop), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    cont = F.grid_sample(x[:, :11], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    cls = F.grid_sample(x[:, 11:12], grid, mode="nearest", padding_mode="reflection", align_corners=False)[:, 0]
    if variant["input"] == "vahadane":
        rgb = cont[:, 3:6]
    else:
        use_jpg = (torch.rand(n, device=device, generator=gen) < 0.3).view(n, 1, 1, 1)
        rgb = torch.where(use_jpg, cont[:, 6:9], cont[:, 0:3])
        rgb = aug(rgb.clamp(0, 1), gen)
    mean = torch.tensor((0.485, 0.456, 0.406), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=device).view(1, 3, 1, 1)
    xin = ((rgb - mean) / std).contiguous(memory_format=torch.channels_last)
    return xin, cls.round().long(), cont[:, 9], cont[:, 10].clamp(0, 1)


# ----------------------------------------------------------------------------- model / training


def architecture_of(variant: dict[str, Any]) -> dict[str, Any]:
    arch: dict[str, Any] = {"encoder": variant["encoder"], "n_classes": n_outputs(variant["decoding"]), "in_channels": 3,
                            "decoding": variant["decoding"]}
    if variant["encoder"] == "plain":
        arch.update(depth=4, base=int(variant["base"]), dropout=0.1)
    return arch


def build(arch: dict[str, Any]) -> torch.nn.Module:
    from bcpath.nuclei.unet import PlainUNet, UNet

    if arch["encoder"] == "plain":
        return PlainUNet(3, arch["n_classes"], depth=arch["depth"], base=arch["base"], dropout=arch["dropout"])
    return UNet(arch["encoder"], arch["n_classes"], 3)


def loss_fn(logits: torch.Tensor, cls: torch.Tensor, weight: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    from bcpath.nuclei.losses import combined_loss

    logits = logits.float()
    loss = combined_loss(logits[:, :3], cls, weight)
    if logits.shape[1] == 4:
        loss = loss + DIST_WEIGHT * F.mse_loss(torch.sigmoid(logits[:, 3]), dist)
    return loss


def train_run(
    images: dict[str, list[Img]], sets: list[str], variant: dict[str, Any], seconds: float, args: argparse.Namespace,
    device: torch.device, log: Any, tensors: dict[str, list[torch.Tensor]], max_steps: int | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``model`` (default: a new one of ``variant``'s architecture) on ``sets`` for
    ``max_steps`` steps, or as many as ``seconds`` allow."""
    from bcpath.stain.augment import StainAugment

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    ds = DeviceSet(images, sets, tensors)
    sampler = MixedSampler(ds.groups, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    model = (model if model is not None else build(architecture_of(variant))).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=variant["lr"], weight_decay=1e-4)
    aug = StainAugment()
    amp = device.type == "cuda"
    warm, total, step, losses = 20, max_steps or 10**9, 0, []
    t_train = time.perf_counter()
    t_mark = t_train
    model.train()
    while step < total:
        if max_steps is None and step in (10, 30):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == 10:
                t_mark = time.perf_counter()  # after cuDNN's autotuning of the first steps
            else:
                rate = 20 / max(time.perf_counter() - t_mark, 1e-6)
                total = max(31, 30 + int(rate * (seconds - (time.perf_counter() - t_train))))
        lr_scale = min(1.0, (step + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))) if step >= warm else 1.0)
        for g in opt.param_groups:
            g["lr"] = variant["lr"] * lr_scale
        x, cls, weight, dist = make_batch(ds, sampler, args.batch, args.crop, gen, rng, variant, aug, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = loss_fn(logits, cls, weight, dist)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == total:
            losses.append((step, float(loss.detach())))
        if step > warm and max_steps is None and time.perf_counter() - t_train > seconds * 1.15:
            losses.append((step, float(loss.detach())))
            break  # the rate estimate was optimistic
    if device.type == "cuda":
        torch.cuda.synchronize()
    del ds
    info = {"steps": step, "planned_steps": total, "batch": args.batch, "crop": args.crop, "train_s": time.perf_counter() - t_train,
            "setup_s": t_train - t0, "loss_curve": losses, "final_loss": losses[-1][1] if losses else None}
    log(f"  trained {'+'.join(sets)}: {step} steps in {info['train_s']:.1f} s, last loss {info['final_loss']}")
    return model, info


def model_input(im: Img, variant: dict[str, Any]) -> np.ndarray:
    return im.vah if variant["input"] == "vahadane" and im.vah is not None else im.raw


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pack", type=Path, default=ROOT / ".gpu_data" / "nuclei_pack.npz")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget of the whole run (s)")
    p.add_argument("--final-share", type=float, default=0.22, help="share of the budget for the final training")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    p.add_argument("--run-overhead-s", type=float, default=3.0, help="time kept per run for predicting the held-out set (CPU: minutes)")
    p.add_argument("--dry-run", action="store_true", help="tiny CPU run: 2 images per set, one fold, a few steps")
    p.add_argument("--steps", type=int, default=None, help="train every LODO run for exactly this many steps (equal-step "
                   "comparisons, e.g. with an earlier run's fold) instead of as many as its time share allows")
    p.add_argument("--held-out", default=",".join(SETS), help="the folds to run, by held-out set (comma-separated; on a "
                   "2-core CPU, two processes each take some folds)")
    p.add_argument("--final", choices=("auto", "skip", "only"), default="auto",
                   help="auto: after the LODO table, the best variant on all sets; skip: no final training; only: no LODO, "
                   "the first variant on all sets (its threshold is chosen later from the LODO runs' lodo.json files)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="RUN_DIR", help="no training: merge the lodo.json of runs "
                   "that each took some folds into --out/lodo.json (and unpack --merge-final's model with the chosen threshold)")
    p.add_argument("--merge-final", type=Path, metavar="RUN_DIR", help="with --merge: the --final only run")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.merge:
        merged = merge_runs(args.merge, args.out, args.merge_final)
        print(merged.get("table_markdown", "no variant scored on every fold"))
        return 0
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.dry_run:
        args.batch, args.crop, args.workers = 4, 64, 2

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    torch.set_num_threads(1 if args.dry_run else args.threads)
    IMAGES.update(load_pack(args.pack, limit=2 if args.dry_run else None, crop=128 if args.dry_run else None))
    log("pack: " + ", ".join(f"{s} {len(v)}" for s, v in IMAGES.items()))
    ctx = mp.get_context("fork")
    pool = ctx.Pool(args.workers, initializer=_worker_init)  # before CUDA is touched
    jobs = [(name, i) for name in SETS for i in range(len(IMAGES[name]))]
    for name, i, extra in pool.imap_unordered(_targets, jobs, chunksize=4):
        IMAGES[name][i].extra = extra
    log("targets ready")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log(f"device {torch.cuda.get_device_name(0)}")
    tensors = device_tensors(IMAGES, device)
    log("images on the device")

    wanted = [h for h in args.held_out.split(",") if h]
    if set(wanted) - set(SETS):
        raise SystemExit(f"unknown held-out sets {sorted(set(wanted) - set(SETS))}; choose from {list(SETS)}")
    folds = [(held, train) for held, train in lodo_folds(list(SETS)) if held in wanted and args.final != "only"]
    if args.dry_run:
        folds = folds[:1]
    runs = [(v, held, train) for v in variants for held, train in folds]
    result: dict[str, Any] = {"budget_s": args.budget_s, "device": str(device), "torch": torch.__version__, "variants": {v: VARIANTS[v] for v in variants},
                              "batch": args.batch, "crop": args.crop, "seed": args.seed, "dry_run": args.dry_run,
                              "folds": {}, "per_image": {}, "runs": [], "skipped": [], "errors": []}

    def write_result() -> None:
        tmp = out / "lodo.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=float))
        tmp.replace(out / "lodo.json")

    pending: list[tuple[str, str, Any]] = []

    def collect(block: bool) -> None:
        still = []
        for v, held, res in pending:
            if not block and not res.ready():
                still.append((v, held, res))
                continue
            variant = VARIANTS[v]
            thresholds = DISTANCE_THRESHOLDS if variant["decoding"] == "distance" else IB_THRESHOLDS
            per_t: dict[float, list[dict[str, Any]]] = {t: [] for t in thresholds}
            try:
                scored = res.get()
            except Exception as error:  # noqa: BLE001 - recorded, the other runs go on
                result["errors"].append({"variant": v, "held_out": held, "stage": "scoring", "error": repr(error)})
                log(f"  scoring {v} on {held} failed: {error!r}")
                continue
            for s, i, rows in scored:
                for t, r in zip(thresholds, rows, strict=True):
                    per_t[t].append({"image": IMAGES[s][i].name, **r})
            result["folds"].setdefault(v, {})[held] = {str(t): summarise_set(per_t[t]) for t in thresholds}
            result["per_image"].setdefault(v, {})[held] = {str(t): [{k: r[k] for k in ("image", "aji", "inter", "union", "n_gt", "n_pred")} for r in per_t[t]] for t in thresholds}
            best_t = max(thresholds, key=lambda t: summarise_set(per_t[t])["mean_aji"])
            log(f"  scored {v} on {held}: mean AJI {summarise_set(per_t[best_t])['mean_aji']:.3f} (at its own best threshold {best_t}, for information)")
            write_result()
        pending[:] = still

    final_reserve = 0.0 if args.final != "auto" else args.budget_s * args.final_share + (10 if args.dry_run else 25)
    for k, (v, held, train) in enumerate(runs):
        now = time.perf_counter()
        left = deadline - final_reserve - now
        per_run = left / (len(runs) - k) - args.run_overhead_s  # predict + setup per run  # eval + setup overhead per run
        if per_run < 8 and not args.dry_run:
            result["skipped"].append({"variant": v, "held_out": held, "why": f"budget: {per_run:.1f} s left per run"})
            log(f"skip {v} / {held}: budget")
            write_result()
            continue
        variant = VARIANTS[v]
        log(f"run {k + 1}/{len(runs)}: {v}, train {'+'.join(train)}, held out {held}, {per_run:.0f} s")
        try:
            model, info = train_run(IMAGES, train, variant, per_run, args, device, log, tensors, max_steps=3 if args.dry_run else args.steps)
            t_eval = time.perf_counter()
            held_images = IMAGES[held]
            maps = predict_maps(model, [model_input(im, variant) for im in held_images], device,
                                batch_size=64 if device.type == "cuda" else 4, channels_last=True)
        except Exception as error:  # noqa: BLE001 - recorded, the other runs go on
            result["errors"].append({"variant": v, "held_out": held, "stage": "training", "error": repr(error)})
            log(f"  {v} / {held} failed: {error!r}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_result()
            continue
        thresholds = DISTANCE_THRESHOLDS if variant["decoding"] == "distance" else IB_THRESHOLDS
        res = pool.map_async(_score, [(held, i, m.astype(np.float16), variant["decoding"], thresholds) for i, m in enumerate(maps)], chunksize=2)
        pending.append((v, held, res))
        info.update(variant=v, held_out=held, train=train, predict_s=time.perf_counter() - t_eval)
        result["runs"].append(info)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        collect(block=False)
        write_result()
    collect(block=True)

    chosen = choose_and_tabulate(result, [h for h, _ in folds])
    write_result()
    log("LODO done" + ("\n" + result["table_markdown"] if result.get("table_markdown") else ": no complete variant"))

    if args.final == "only":
        chosen = {variants[0]: {"threshold": None, "mean_of_set_means": None, "note": "chosen later from the LODO runs"}}
    # final model: the best variant on all three sets
    if chosen and args.final != "skip":
        complete = [v for v in chosen if "incomplete" not in chosen[v]] or list(chosen)
        best = max(complete, key=lambda v: chosen[v]["mean_of_set_means"])
        variant = VARIANTS[best]
        seconds = deadline - time.perf_counter() - (8 if args.dry_run else 20)
        if seconds > 15 or args.dry_run:
            log(f"final: {best} on all sets for {seconds:.0f} s")
            try:
                model, info = train_run(IMAGES, list(SETS), variant, seconds, args, device, log, tensors,
                                        max_steps=3 if args.dry_run else None)
                write_model(out, model, best, variant, chosen[best], info, result, args)
                result["final"] = {"variant": best, **chosen[best], **info}
            except Exception as error:  # noqa: BLE001
                result["errors"].append({"variant": best, "stage": "final", "error": repr(error)})
                log(f"  final training failed: {error!r}")
        else:
            result["final"] = {"skipped": f"budget: {seconds:.0f} s left"}
        write_result()
    pool.close()
    log("done")
    return 0


def choose_and_tabulate(result: dict[str, Any], fold_names: list[str]) -> dict[str, Any]:
    """Per variant one decoding threshold over all its folds (the best mean of the held-out sets'
    mean AJI); fills result["chosen_thresholds"], ["table"], ["table_markdown"] and
    ["per_image_at_chosen"]; returns the chosen thresholds."""
    table: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Any] = {}
    for v, per_set in result["folds"].items():
        if len(per_set) < len(fold_names):
            continue
        conv = {s: {float(t): r for t, r in d.items()} for s, d in per_set.items()}
        t = choose_threshold(conv)
        table[v] = {s: conv[s][t] for s in conv}
        chosen[v] = {"threshold": t, "mean_of_set_means": float(np.mean([conv[s][t]["mean_aji"] for s in conv]))}
    if not chosen:  # no variant scored on every fold (budget): the best mean over what was scored
        for v, per_set in result["folds"].items():
            conv = {s: {float(t): r for t, r in d.items()} for s, d in per_set.items()}
            t = choose_threshold(conv)
            chosen[v] = {"threshold": t, "mean_of_set_means": float(np.mean([conv[s][t]["mean_aji"] for s in conv])),
                         "incomplete": sorted(conv)}
    result["chosen_thresholds"] = chosen
    result["table"] = table
    if table:
        result["table_markdown"] = lodo_markdown(table, fold_names)
        result["per_image_at_chosen"] = [
            {"variant": v, "held_out": held, "threshold": chosen[v]["threshold"], **r}
            for v in table for held, per_t in result["per_image"][v].items()
            for r in per_t[next(k for k in per_t if float(k) == float(chosen[v]["threshold"]))]
        ]  # fmt: skip
    return chosen


def merge_runs(run_dirs: list[Path], out: Path, final_dir: Path | None) -> dict[str, Any]:
    """The LODO table of folds run in separate processes (``--held-out``), each a folder with its
    lodo.json; written to ``out``/lodo.json. With ``final_dir`` (a ``--final only`` run), its
    final_model.tar is unpacked to ``out``/final_model with the chosen threshold and the table
    in its train.json."""
    merged: dict[str, Any] = {"merged_from": [str(d) for d in run_dirs], "folds": {}, "per_image": {}, "runs": [], "skipped": [], "errors": []}
    for d in run_dirs:
        part = json.loads((d / "lodo.json").read_text())
        for key in ("folds", "per_image"):
            for v, per in part[key].items():
                merged[key].setdefault(v, {}).update(per)
        for key in ("runs", "skipped", "errors"):
            merged[key] += part[key]
        merged.update({k: part[k] for k in ("device", "torch", "variants", "batch", "crop", "seed") if k in part})
    fold_names = [s for s in SETS if any(s in per for per in merged["folds"].values())]
    chosen = choose_and_tabulate(merged, fold_names)
    out.mkdir(parents=True, exist_ok=True)
    if final_dir is not None:
        with tarfile.open(final_dir / "final_model.tar") as tar:
            tar.extractall(out, filter="data")
        meta_path = out / "final_model" / "train.json"
        meta = json.loads(meta_path.read_text())
        pick = chosen[meta["variant"]]
        meta["threshold"] = pick["threshold"]
        meta["lodo"] = {"table": merged["table"].get(meta["variant"]), "mean_of_set_means": pick["mean_of_set_means"],
                        "threshold_chosen_on": "mean over the 3 held-out sets of the per-set mean AJI",
                        "per_image": [r for r in merged.get("per_image_at_chosen", []) if r["variant"] == meta["variant"]]}
        final = json.loads((final_dir / "lodo.json").read_text()).get("final", {})
        meta["training"].update({k: final[k] for k in ("steps", "train_s", "loss_curve") if k in final})
        meta_path.write_text(json.dumps(meta, indent=1, default=float))
    (out / "lodo.json").write_text(json.dumps(merged, indent=1, default=float))
    return merged


def write_model(out: Path, model: torch.nn.Module, name: str, variant: dict[str, Any], chosen: dict[str, Any],
                info: dict[str, Any], result: dict[str, Any], args: argparse.Namespace) -> None:
    """The model folder of bcpath.nuclei.predict.load_nuclei_model, as final_model.tar."""
    # float16 for the transfer (≤ 16 MB per returned file): a ResNet-34 U-Net is ~48 MB so
    # (split in parts), a base-16 plain U-Net 4 MB; load_state_dict casts back to float32.
    state = {k: v.detach().half().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    arch = architecture_of(variant)
    meta = {
        "architecture": arch,
        "pretrained_encoder": None,
        "init_from": None,
        "mpp": MODEL_MPP,
        # inference tiling of the shipped model (the LODO scoring above uses 256 px at 50 %;
        # same AJI to 0.001, 1.6x faster: bench/nuclei_tiling.py)
        "tile": 512,
        "predict_overlap": 0.25,
        "input_normalisation": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": "rgb/255"},
        "stain_normalisation": variant["input"] == "vahadane",
        "stain_augmentation": variant["input"] == "stainaug",
        "target_stain": "he",
        "stain_reference": "cpm15/image01" if variant["input"] == "vahadane" else None,
        "decoding": variant["decoding"],
        "threshold": chosen["threshold"],
        "threshold_grid": list(DISTANCE_THRESHOLDS if variant["decoding"] == "distance" else IB_THRESHOLDS),
        "min_area_px": MIN_AREA_PX,
        "best_sha256": hashlib.sha256(weights).hexdigest(),
        "variant": name,
        "training": {"script": "bench/gpu_train_nuclei.py", "args": {k: str(v) for k, v in vars(args).items()},
                     "data": ["monuseg_nonbreast", "cpm15", "consep_train"], "sampler": "set uniform, source image uniform, tile uniform",
                     "optimiser": {"name": "AdamW", "lr": variant["lr"], "weight_decay": 1e-4, "schedule": "warm-up 20 steps, cosine"},
                     **{k: info[k] for k in ("steps", "batch", "crop", "train_s", "final_loss")}},
        "lodo": {"table": result.get("table", {}).get(name), "mean_of_set_means": chosen["mean_of_set_means"],
                 "threshold_chosen_on": "mean over the 3 held-out sets of the per-set mean AJI"},
        "device": result["device"],
        "torch": torch.__version__,
    }
    files = {"best.pt": weights, "train.json": json.dumps(meta, indent=1, default=float).encode()}
    stain = ROOT / "models" / "nuclei_unet" / "stain.json"
    if meta["stain_normalisation"] and stain.is_file():
        files["stain.json"] = stain.read_bytes()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for fname, data in files.items():
            ti = tarfile.TarInfo(f"final_model/{fname}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    data = tar_buf.getvalue()
    if len(data) <= PART_BYTES:
        (out / "final_model.tar").write_bytes(data)
        return
    for k in range(0, len(data), PART_BYTES):  # cat final_model.tar.* > final_model.tar
        (out / f"final_model.tar.{k // PART_BYTES:02d}").write_bytes(data[k : k + PART_BYTES])


if __name__ == "__main__":
    raise SystemExit(main())
