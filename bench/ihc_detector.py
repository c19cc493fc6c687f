"""Compare IHC nucleus detectors on the 4 annotated DeepLIIF Ki67 tiles (validation only).

    OMP_NUM_THREADS=1 python bench/ihc_detector.py [--deepliif ../shared/data/ihc/deepliif_ki67]
        [--detectors threshold unet od_sum learned] [--fade 0.5] [--out results/bench/ihc_detector.json]

Prints one markdown row per detector and tile (F1 within 8 px, P, R, pos/neg accuracy of matched
cells, % positive found vs true), the mean and the worst tile; the OD-sum detector also with its
settings chosen leave-one-tile-out (od_sum_loto). Logic: bcpath.ihc.detector_eval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bcpath.ihc.detector_eval import DETECTORS, compare_detectors, format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepliif", default="../shared/data/ihc/deepliif_ki67")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--fade", type=float, help="scale the tiles' hematoxylin by this first (paler counterstain), e.g. 0.5")
    parser.add_argument("--out", help="write the full result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = compare_detectors(args.deepliif, args.detectors, fade=args.fade)
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
