"""``bcpath ihc score``: cell-based H-Score, NAP, Allred score and QC flags of IHC cores.

    bcpath ihc score [--mpp 0.5] [--stains liu2019|qupath] [--nuclei-model NAME|DIR] IMAGE... --out DIR

For each image writes ``DIR/<stem>.cells.csv`` (x, y in image px, dab_od_mean, class in
negative / 1+ / 2+ / 3+) and ``DIR/<stem>.json`` (summary of
:func:`bcpath.ihc.score.score_core`, plus ``h_score_ramcnn: null``: no RAM-CNN model is
configured). µm/px comes from ``--mpp``, else the TIFF resolution tags, else the image fails.
An image that cannot be scored (unreadable, grayscale, no µm/px) gets one error line naming it;
the others are still scored, and the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bcpath.errors import BcpathError

__all__ = ["add_ihc_subparser", "read_ihc_image", "score_files"]

logger = logging.getLogger(__name__)

CELL_COLUMNS = ("x", "y", "dab_od_mean", "class")


def read_ihc_image(path: str | Path) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of an IHC image file (:func:`bcpath.images.read_uint8_image`: RGBA
    composited on white, 16-bit scaled). A one-channel image is returned as (H, W) so that
    scoring can refuse it with its own message.

    Raises:
        BcpathError: missing or unreadable file, unsupported shape or pixel type.
    """
    from bcpath.images import read_uint8_image

    return read_uint8_image(path)


def _json_ready(value: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, floats rounded to 4 decimals, recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    return value


def score_one(path: Path, out: Path, mpp: float | None, stains: str, ramcnn: Any = None, segmenter: Any = None) -> dict[str, Any]:
    """Score one image file and write its ``.cells.csv`` and ``.json``; returns the summary.

    ``ramcnn``: a :class:`bcpath.ihc.ramcnn.RamCnn` (from :func:`bcpath.ihc.ramcnn.load_ramcnn`);
    its H-Score is computed from the image's SINI/SITI (nuclei from cell scoring, the whole
    tissue as the tumor mask) resized to the model's input, so the image should frame one whole
    core as the training cores were. ``segmenter``: the nucleus detector, a callable or a name
    (:func:`bcpath.ihc.score.nuclei_model_segmenter`); None = the default one.
    """
    from bcpath.ihc.score import score_core
    from bcpath.images import MPP_RANGE, image_mpp

    rgb = read_ihc_image(path)
    image_um = mpp if mpp is not None else image_mpp(path)
    if image_um is None:
        raise BcpathError(
            f"image {path}: no µm/px in the file (no TIFF resolution tags in {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px); "
            "give it with --mpp, e.g. --mpp 0.25 for 40x or 0.5 for 20x"
        )
    result = score_core(rgb, image_um, stains=stains, name=f"image {path}", segmenter=segmenter)
    with open(out / f"{path.stem}.cells.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CELL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in result.cell_rows():
            writer.writerow({**row, "x": f"{row['x']:.2f}", "y": f"{row['y']:.2f}", "dab_od_mean": f"{row['dab_od_mean']:.4f}"})
    h_ramcnn = None
    if ramcnn is not None and "not_ihc" not in result.summary["flags"]:
        from bcpath.ihc.ramcnn import predict_h_score, resize_input, sini_siti

        sini, siti = sini_siti(rgb, result.nuclei > 0 if result.nuclei is not None else None, None, stains=stains, mpp=image_um)
        size = int(ramcnn.config["size"])
        h_ramcnn = predict_h_score(ramcnn, resize_input(sini, size), resize_input(siti, size))
    summary = {"image": str(path), **result.summary, "h_score_ramcnn": h_ramcnn}
    (out / f"{path.stem}.json").write_text(json.dumps(_json_ready(summary), indent=2) + "\n")
    logger.info(
        "%s: %d cells, H-Score %s (NAP %s), Allred %s%s",
        path, summary["n_cells"], summary["h_score_cells"], summary["h_score_nap"], summary["allred"],
        f", flags {', '.join(summary['flags'])}" if summary["flags"] else "",
    )
    if "not_ihc" in summary["flags"]:
        raise BcpathError(
            f"image {path}: not an IHC image (flag not_ihc: {summary['eosin_fraction']:.0%} of its tissue is eosin-stained, as in H&E); "
            f"no H-Score given ({out / path.stem}.json has null scores); score DAB + hematoxylin IHC images"
        )
    return summary


def score_files(
    images: Sequence[str | Path],
    out: str | Path,
    mpp: float | None = None,
    stains: str = "liu2019",
    ramcnn: str | Path | None = None,
    nuclei_model: str | Path | None = None,
) -> tuple[list[Path], list[str]]:
    """Score each image into ``out``; an image that fails does not stop the others.

    Returns:
        (scored image paths, one error message per failed image).

    Raises:
        BcpathError: bad ``--mpp`` or two images with the same stem (checked before any work).
    """
    from bcpath.images import image_inputs

    paths = image_inputs(images, mpp, ".json")
    model = None
    if ramcnn is not None:
        from bcpath.ihc.ramcnn import load_ramcnn

        model, _ = load_ramcnn(ramcnn)
    from bcpath.ihc.score import DEFAULT_DETECTOR, nuclei_model_segmenter

    # None from a name means the threshold detector; score_core takes that by name.
    segmenter = nuclei_model_segmenter(nuclei_model if nuclei_model is not None else DEFAULT_DETECTOR) or "threshold"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    errors: list[str] = []
    for path in paths:
        try:
            score_one(path, out, mpp, stains, model, segmenter)
        except BcpathError as error:
            message = str(error) if str(path) in str(error) else f"image {path}: {error}"
            errors.append(message)
            continue
        done.append(path)
    return done, errors


def _cmd_score(args: argparse.Namespace) -> int:
    done, errors = score_files(args.images, args.out, args.mpp, args.stains, args.ramcnn, args.nuclei_model)
    for message in errors:
        print(f"bcpath: {message}", file=sys.stderr)
    print(f"{len(done)} of {len(done) + len(errors)} images scored into {args.out}")
    return 1 if errors else 0


def _cmd_detector_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from bcpath.ihc.detector_eval import compare_detectors, format_table

    torch.set_num_threads(max(1, args.threads))
    result = compare_detectors(args.deepliif, args.detectors, models_dir=args.models, fade=args.fade)
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_train_detector(args: argparse.Namespace) -> int:
    from bcpath.ihc.nuclei_net import train_detector

    meta = train_detector(
        args.data, args.out, width=args.width, crop=args.crop, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
        epochs=args.epochs, patience=args.patience, lr=args.lr, seed=args.seed, threads=args.threads, max_minutes=args.max_minutes,
    )  # fmt: skip
    best = max(meta["validation_decode_grid"], key=lambda r: r["f1"])
    print(f"IHC nucleus detector written to {args.out}: best epoch {meta['fit']['best_epoch']} of {meta['fit']['epochs_run']}, "
          f"rendered-validation detection F1 {best['f1']:.3f} (centre threshold {best['center_threshold']}), {meta['cpu_minutes']:.1f} CPU min")  # fmt: skip
    return 0


def _cmd_nuclei_data(args: argparse.Namespace) -> int:
    from bcpath.ihc.nuclei_training import annotated_tiles, write_nuclei_training_folder

    tiles = annotated_tiles(args.deepliif)
    excluded = set(args.exclude or ())
    tiles = [t for t in tiles if t.name not in excluded]
    write_nuclei_training_folder(tiles, args.out)
    print(f"{len(tiles)} annotated IHC tiles written to {args.out} (CPM-15 layout + mpp.json)")
    return 0


def _cmd_nuclei_cv(args: argparse.Namespace) -> int:
    from bcpath.ihc.nuclei_training import cross_validate

    result = cross_validate(
        args.deepliif, args.out, args.init_from, epochs=args.epochs, lr=args.lr, seed=args.seed,
        model_mpp=args.model_mpp, held_out=args.tile,
    )
    for row in result["folds"]:
        tuned, before = row["fine_tuned"], row["initial"]
        print(f"{row['tile']}: F1 {tuned['f1']:.3f} (P {tuned['precision']:.3f} R {tuned['recall']:.3f}), before {before['f1']:.3f}")
    tuned, before = result["pooled"]["fine_tuned"], result["pooled"]["initial"]
    print(f"pooled at 8 px: F1 {tuned['f1']:.3f} (P {tuned['precision']:.3f} R {tuned['recall']:.3f}, "
          f"accuracy {tuned['accuracy']:.3f}); before fine-tuning {before['f1']:.3f}; details in {args.out}/cv.json")
    return 0


def add_ihc_subparser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bcpath ihc score | nuclei-data | nuclei-cv | detector-eval | train-detector`` on ``sub``."""
    from bcpath.ihc.score import STAIN_CHOICES

    ihc = sub.add_parser("ihc", help="IHC (DAB + hematoxylin) scoring: H-Score, NAP, Allred")
    actions = ihc.add_subparsers(dest="ihc_command", required=True)
    score = actions.add_parser("score", help="score IHC cores; write DIR/<stem>.cells.csv and DIR/<stem>.json")
    score.add_argument("images", nargs="+", metavar="IMAGE", help="IHC image(s): RGB TIFF, PNG or JPEG")
    score.add_argument("--mpp", type=float, help="µm/px of the images (default: from the TIFF tags)")
    score.add_argument("--stains", choices=STAIN_CHOICES, default="liu2019", help="stain vectors (default liu2019)")
    score.add_argument("--ramcnn", metavar="DIR", help="trained RAM-CNN folder (ramcnn.pt + ramcnn.json, e.g. results/models/ramcnn) for h_score_ramcnn")
    score.add_argument(
        "--nuclei-model", metavar="NAME|DIR",
        help="nucleus detector: unet (default: models/nuclei_unet_v2), od_sum, learned (models/ihc_nuclei), threshold, or a model folder",
    )  # fmt: skip
    score.add_argument("--out", required=True, help="output folder")
    score.set_defaults(func=_cmd_score)

    data = actions.add_parser(
        "nuclei-data",
        help="write annotated DeepLIIF-style IHC tiles as a nuclei training folder for `bcpath nuclei train`",
    )
    data.add_argument("--deepliif", required=True, metavar="DIR", help="folder with test/, test_groundtruth/, val/")
    data.add_argument("--exclude", nargs="*", metavar="NAME", help="tile names to leave out (e.g. to keep a test tile)")
    data.add_argument("--out", required=True, help="output folder (images/, inst_masks/)")
    data.set_defaults(func=_cmd_nuclei_data)

    ev = actions.add_parser(
        "detector-eval", help="compare nucleus detectors on annotated DeepLIIF tiles: F1 within 8 px, pos/neg accuracy, % positive error per tile"
    )
    ev.add_argument("--deepliif", required=True, metavar="DIR", help="folder with test/, test_groundtruth/, val/")
    ev.add_argument("--detectors", nargs="+", default=["threshold", "unet", "od_sum", "learned"], choices=["threshold", "unet", "od_sum", "learned"])
    ev.add_argument("--models", metavar="DIR", help="models folder holding nuclei_unet_v2/ and ihc_nuclei/ (default: the checkout's models/)")
    ev.add_argument("--fade", type=float, help="scale the tiles' hematoxylin by this first (a paler counterstain), e.g. 0.5")
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--out", metavar="JSON", help="write per-tile results here")
    ev.set_defaults(func=_cmd_detector_eval)

    td = actions.add_parser("train-detector", help="train the learned IHC nucleus detector on H&E nuclei sets re-rendered as IHC")
    td.add_argument("--data", nargs="+", required=True, metavar="DIR", help="nuclei sets (MoNuSeg or CPM-15 layout)")
    td.add_argument("--out", required=True, help="output model folder (best.pt, train.json, log.csv)")
    td.add_argument("--width", type=int, default=12)
    td.add_argument("--crop", type=int, default=128, help="crop edge at 0.5 µm/px")
    td.add_argument("--batch-size", type=int, default=8)
    td.add_argument("--steps-per-epoch", type=int, default=60)
    td.add_argument("--epochs", type=int, default=14)
    td.add_argument("--patience", type=int, default=4)
    td.add_argument("--lr", type=float, default=2e-3)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--threads", type=int, default=1)
    td.add_argument("--max-minutes", type=float, default=None, help="wall-clock limit (default none; the epochs bound the run)")
    td.set_defaults(func=_cmd_train_detector)

    cv = actions.add_parser(
        "nuclei-cv", help="leave-one-tile-out fine-tuning of a nuclei model on annotated IHC tiles: detection F1 at 8 px"
    )
    cv.add_argument("--deepliif", required=True, metavar="DIR", help="folder with test/, test_groundtruth/, val/")
    cv.add_argument("--init-from", default="models/nuclei_unet", metavar="MODEL_DIR", help="nuclei model to fine-tune (default models/nuclei_unet)")
    cv.add_argument("--epochs", type=int, default=200)
    cv.add_argument("--lr", type=float, default=3e-4)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--model-mpp", type=float, default=0.5, help="µm/px of the fine-tuned model (default 0.5; 0.25 = DeepLIIF's own)")
    cv.add_argument("--tile", nargs="*", metavar="NAME", help="hold out only these tiles (default: each in turn)")
    cv.add_argument("--out", required=True, help="work folder (fold models, cv.json)")
    cv.set_defaults(func=_cmd_nuclei_cv)
