"""RAM-CNN at the paper's scale (issue 15 item 3): leave-5-out on the large TMA, side by side
with cell scoring and NAP, all against the planted H-Scores. Not part of CI.

Steps (each cached by its files)::

    python -m bcpath.demo.tma --large large_tma --cores 120 --workers 2
    snakemake --cores 2 --configfile config/large_tma.yaml results/cohort/ihc/cores.csv
    OMP_NUM_THREADS=1 python bench/ramcnn_scale.py --cores results/cohort/ihc/cores.csv \\
        --size 512 --epochs 20 --n-dla 2 --out ramcnn_scale_512.json    # 7.5 min (1 thread, busy 2 cores)

The cores table is the workflow's (collect_ihc_cores): SINI/SITI .npz written by score_tma at
``ihc.ramcnn.size`` (512 in config/large_tma.yaml; a smaller --size area-resizes them), cell
scoring and NAP H-Scores, and the reference (= planted) H-Score. Prints a Markdown table and
writes the metrics, settings, per-core predictions and timing as JSON.

Measured (120 cores, seed 0, 2 CPU cores shared with other jobs, 1 torch thread), leave-5-out
(24 folds of 115 training cores), 20 epochs x 2 DLA copies, batch 16, Adam 1e-3, σ 0.9:

    method                                  MAE   SD    r      CV time
    RAM-CNN 512 px (8 bins, pool 8)         13.5  13.2  0.977  7.5 min
    RAM-CNN 128 px (demo network)           19.9  16.4  0.958  13.3 min (busier machine)
    cell scoring                             0.4   1.4  1.000
    NAP                                     44.5  28.8  0.979

The workflow (train_ramcnn with config/large_tma.yaml) gives the same RAM-CNN CV to 4 digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", required=True, help="results/cohort/ihc/cores.csv of a large-TMA run")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-dla", type=int, default=2, help="DLA labels per core (copies per epoch)")
    parser.add_argument("--dla-sigma", type=float, default=0.9, help="H-Score points")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--bins", default="auto", help="'auto' (8 above 128 px) or a count (0 = raw input)")
    parser.add_argument("--pool", type=int, default=None, help="pooling of the bins (default: to 64 px maps, 8 at 512 px)")
    parser.add_argument("--k", type=int, default=5, help="cores held out per fold (paper: 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from bcpath.ihc.ramcnn import h_score_metrics, leave_k_out_cv, load_training_cores

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bins = args.bins if args.bins == "auto" else int(args.bins)
    cores, ids, skipped = load_training_cores(args.cores)
    table = pd.read_csv(args.cores, dtype={"core_id": str, "slide_id": str})
    table["key"] = table["slide_id"] + "/" + table["core_id"]
    started = time.perf_counter()
    cv, metrics = leave_k_out_cv(
        cores, args.k, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        n_dla_labels=args.n_dla, dla_sigma=args.dla_sigma, size=args.size, width=args.width, bins=bins, pool=args.pool, device="cpu",
    )
    seconds = time.perf_counter() - started
    merged = cv.merge(table[["key", "h_score_cells", "h_score_nap", "tumor_fraction", "flags"]], left_on="core_id", right_on="key")
    ref = merged["reference"].to_numpy()
    rows = {
        "RAM-CNN (leave-5-out)": metrics,
        "cell scoring": h_score_metrics(ref, merged["h_score_cells"].to_numpy()),
        "NAP": h_score_metrics(ref, merged["h_score_nap"].to_numpy()),
    }
    settings = {k: v for k, v in vars(args).items() if k not in ("cores", "out")}
    print(f"\n{len(cores)} cores ({skipped} without reference), leave-{args.k}-out ({metrics['n_folds']} folds), "
          f"RAM-CNN {settings}, CV {seconds / 60:.1f} min on {torch.get_num_threads()} thread(s)\n")
    print("| method | MAE | SD of error | Pearson r | bias |")
    print("|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['mae']:.1f} | {m['sd_error']:.1f} | {m['pearson_r']:.3f} | {m['bias']:+.1f} |")
    if args.out:
        record = {
            "command": "python bench/ramcnn_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "n_cores": len(cores), "settings": settings, "cv_seconds": round(seconds, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "metrics": rows,
            "predictions": merged.drop(columns=["key"]).replace({np.nan: None}).to_dict("records"),
        }
        Path(args.out).write_text(json.dumps(record, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
