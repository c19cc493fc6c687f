"""Prediction tiling of a nuclei model: accuracy and speed of tile size / overlap side by side.

For each ``TILE:OVERLAP`` setting, the same model (its weights and threshold unchanged)
predicts the annotated images of ../shared/data/nuclei (MoNuSeg non-breast, CPM-15 and every
``--consep-step``-th CoNSeP training tile) and a 2000 × 1000 px image at 0.5 µm/px (two
MoNuSeg images stacked) timed twice (best of the two). Printed per setting: mean AJI and worst
image per set, and the seconds for the large image with its speed relative to the first setting.

These images are training data of models/nuclei_unet_v2: the figures compare tilings of one
model, not its generalisation (that is the leave-one-dataset-out table of its card).

    OMP_NUM_THREADS=1 .venv/bin/python bench/nuclei_tiling.py --model models/nuclei_unet_v2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from bcpath.nuclei.datasets import list_cpm15, list_monuseg, list_nuclei_folder
    from bcpath.nuclei.metrics import evaluate
    from bcpath.nuclei.predict import load_nuclei_model, predict_instances

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "nuclei_unet_v2"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei")
    parser.add_argument("--settings", nargs="+", default=["256:0.5", "512:0.25", "384:0.25"], help="TILE:OVERLAP")
    parser.add_argument("--consep-step", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    sets = {
        "monuseg": list_monuseg(args.data / "monuseg_nonbreast"),
        "cpm15": list_cpm15(args.data / "cpm15"),
        "consep": list_nuclei_folder(args.data / "consep_train")[:: args.consep_step],
    }
    loaded = {name: [(s.name, *s.load(), s.mpp) for s in samples] for name, samples in sets.items()}
    first_rgb = loaded["monuseg"][0][1]
    large = np.ascontiguousarray(np.concatenate([first_rgb, first_rgb[::-1]], axis=0))
    bundle = load_nuclei_model(args.model, device="cpu")
    print(f"{args.model}: threshold {bundle.threshold}; large image {large.shape[1]} x {large.shape[0]} px at 0.5 µm/px")
    print("| tile:overlap | " + " | ".join(f"{n} mean AJI (worst)" for n in loaded) + " | large image s | speed vs first |")
    print("|---" * (len(loaded) + 3) + "|")
    first_s = None
    for setting in args.settings:
        tile, overlap = setting.split(":")
        bundle.tile, bundle.overlap = int(tile), float(overlap)
        cells = []
        for rows in loaded.values():
            scores = {name: evaluate(truth, predict_instances(bundle, rgb, mpp))["aji"] for name, rgb, truth, mpp in rows}
            worst = min(scores, key=scores.get)
            cells.append(f"{np.mean(list(scores.values())):.4f} ({worst} {scores[worst]:.3f})")
        times = []
        for _ in range(2):
            start = time.perf_counter()
            predict_instances(bundle, large, 0.5)
            times.append(time.perf_counter() - start)
        seconds = min(times)
        first_s = first_s or seconds
        print(f"| {setting} | " + " | ".join(cells) + f" | {seconds:.2f} | {first_s / seconds:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
