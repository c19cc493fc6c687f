"""``bcpath nuclei`` sub-commands: classical nuclei segmentation and its evaluation.

    bcpath nuclei predict --model {models/nuclei_unet_v2,MODEL_DIR,otsu,watershed,fiji} [--mpp 0.25] IMAGE... --out DIR
    bcpath nuclei evaluate --pred DIR --truth DIR [--out table.csv]
    bcpath nuclei train --data DIR [DIR...] --out DIR [--epochs N --encoder NAME ...]
    bcpath nuclei lodo --model {fiji,...,MODEL_DIR} [--set NAME=DIR ...] [--out DIR]
    bcpath nuclei lodo --train [--epochs N --max-minutes M ...] --out DIR

``lodo``: leave-one-dataset-out (:mod:`bcpath.nuclei.lodo`): per set, mean AJI, pooled AJI and
the worst image; ``--model`` scores a fixed segmenter on every set, ``--train`` trains the
U-Net on two sets and scores the third, per fold (CPU-sized; bench/gpu_train_nuclei.py is the
GPU version). Sets default to ``../shared/data/nuclei/{monuseg_nonbreast,cpm15,consep_train}``.

``--model`` of ``predict`` may also be a trained model (``train``'s output folder or its best.pt).

``predict`` writes ``DIR/<stem>.tif``: uint16 instance labels (0 = background), H × W of the input.
µm/px comes from ``--mpp``, else from the TIFF resolution tags (or ImageJ's ``unit=micron``),
else the command stops and asks for ``--mpp``. Inputs are made 8-bit RGB before segmenting:

- RGBA: composited on white (transparent = empty glass, which is white in brightfield);
- 16-bit: scaled by 255 / 65535, i.e. full range (not stretched to the image's own min / max,
  which would change the optical densities that the hematoxylin channel is computed from);
- grayscale: refused. Every baseline thresholds the hematoxylin channel of a colour
  deconvolution, which needs the three colour channels; a gray image has lost the stain
  separation, and converting it to gray-RGB would deconvolve to noise.

``evaluate`` pairs ``PRED/<stem>.*`` with ``TRUTH/<stem>.*`` (TIFF or PNG instance labels) and
writes per-image and mean scores of :func:`bcpath.nuclei.metrics.evaluate`.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.images import LABEL_IMAGE_SUFFIXES, MPP_RANGE, image_mpp, read_array, read_uint8_image

__all__ = [
    "EVALUATE_COLUMNS",
    "MPP_RANGE",
    "add_nuclei_subparser",
    "evaluate_folders",
    "image_mpp",
    "predict_files",
    "read_label_image",
    "read_rgb_for_segmentation",
]

logger = logging.getLogger(__name__)

EVALUATE_COLUMNS: tuple[str, ...] = (
    "aji",
    "map",
    "f1_0.5",
    "precision_0.5",
    "recall_0.5",
    "f1_0.7",
    "precision_0.7",
    "recall_0.7",
    "pq",
)
def read_rgb_for_segmentation(path: str | Path) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of an H&E image file; RGBA and 16-bit converted (module docstring)."""
    image = read_uint8_image(path)
    if image.ndim == 2:
        raise BcpathError(
            f"image {path}: grayscale {image.shape}; the nuclei baselines need an RGB H&E image "
            "(they threshold the hematoxylin channel of a colour deconvolution); give the "
            "colour image"
        )
    return image


def _model_error(model: str) -> BcpathError:
    from bcpath.nuclei.classical import BASELINES

    return BcpathError(
        f"nuclei model {model!r}: neither a classical baseline ({', '.join(BASELINES)}) nor a trained "
        "model folder; give one of those, models/nuclei_unet_v2 (the shipped U-Net) or a `bcpath nuclei train` output folder"
    )


def predict_files(
    images: Sequence[str | Path],
    out: str | Path,
    model: str,
    mpp: float | None = None,
    tta: bool = False,
) -> list[Path]:
    """Segment each image with a classical baseline, or a trained model (a ``bcpath nuclei
    train`` output folder or its ``best.pt``); write ``out/<stem>.tif`` (uint16 labels).

    ``mpp``: µm/px of every image; None reads it from each file. ``tta``: a trained model
    averages the 8 rotations/flips of each tile. Returns the written paths.
    """
    from bcpath.nuclei.classical import BASELINES, classical_baseline
    from bcpath.nuclei.slide import resolve_model_path

    trained = None
    if model not in BASELINES:
        model = resolve_model_path(model)
        if not Path(model).exists():
            raise _model_error(model)
        from bcpath.nuclei.predict import load_nuclei_model

        trained = load_nuclei_model(model, tta=tta)  # a `bcpath nuclei train` folder or its best.pt
    from bcpath.images import image_inputs

    paths = image_inputs(images, mpp, ".tif")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        rgb = read_rgb_for_segmentation(path)
        image_um = mpp if mpp is not None else image_mpp(path)
        if image_um is None:
            raise BcpathError(
                f"image {path}: no µm/px in the file (no TIFF resolution tags in "
                f"{MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px); give it with --mpp, "
                "e.g. --mpp 0.25 for 40x or 0.5 for 20x"
            )
        if trained is not None:
            from bcpath.nuclei.predict import predict_instances

            labels = predict_instances(trained, rgb, image_um)
        else:
            labels = classical_baseline(model, rgb, image_um)
        if int(labels.max()) > np.iinfo(np.uint16).max:
            raise BcpathError(
                f"image {path}: {int(labels.max())} nuclei do not fit uint16 labels; "
                "split the image into tiles"
            )
        target = out / f"{path.stem}.tif"
        tifffile.imwrite(target, labels.astype(np.uint16), compression="zlib")
        logger.info("%s: %d nuclei (%s, %.3f µm/px) -> %s", path, labels.max(), model, image_um, target)
        written.append(target)
    return written


def read_label_image(path: str | Path) -> NDArray[np.int64]:
    """(H, W) instance labels of a TIFF or PNG (0 = background)."""
    path = Path(path)
    labels = read_array(path)
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise BcpathError(
            f"label image {path}: shape {labels.shape}, type {labels.dtype}; expected one "
            "integer channel of instance labels (0 = background, one value per nucleus)"
        )
    if labels.size and int(labels.min()) < 0:
        raise BcpathError(f"label image {path}: negative labels; 0 must be the background")
    return labels.astype(np.int64)


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise BcpathError(f"--{role} {folder}: not a folder; give the folder of label images")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in LABEL_IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise BcpathError(
                f"--{role} {folder}: {files[path.stem].name} and {path.name} share a stem; "
                "keep one label image per image"
            )
        files[path.stem] = path
    if not files:
        raise BcpathError(f"--{role} {folder}: no .tif/.tiff/.png label images in it")
    return files


def evaluate_folders(pred: str | Path, truth: str | Path) -> list[dict[str, str | float]]:
    """Rows ``image, aji, map, f1_0.5, ..., pq``: one per stem, then ``image = "mean"``."""
    from bcpath.nuclei.metrics import evaluate

    pred_files = _label_files(Path(pred), "pred")
    truth_files = _label_files(Path(truth), "truth")
    for stem, path in pred_files.items():
        if stem not in truth_files:
            raise BcpathError(
                f"prediction {path}: no ground truth {stem}.tif/.png in {truth}; "
                "add it or remove the prediction"
            )
    for stem, path in truth_files.items():
        if stem not in pred_files:
            raise BcpathError(
                f"ground truth {path}: no prediction {stem}.tif in {pred}; "
                "run bcpath nuclei predict on that image or remove the ground truth"
            )
    rows: list[dict[str, str | float]] = []
    for stem in sorted(pred_files):
        p, g = read_label_image(pred_files[stem]), read_label_image(truth_files[stem])
        if p.shape != g.shape:
            raise BcpathError(
                f"prediction {pred_files[stem]}: size {p.shape} differs from ground truth "
                f"{truth_files[stem]} {g.shape}; predict on the same image as the annotation"
            )
        scores = evaluate(g, p)
        rows.append({"image": stem, **{c: scores[c] for c in EVALUATE_COLUMNS}})
    mean: dict[str, str | float] = {"image": "mean"}
    for column in EVALUATE_COLUMNS:
        mean[column] = float(np.mean([float(row[column]) for row in rows]))
    rows.append(mean)
    return rows


def _format_table(rows: list[dict[str, str | float]], sep: str | None) -> str:
    """CSV (``sep=","``) or a space-aligned table (``sep=None``); scores with 4 decimals."""
    header = ["image", *EVALUATE_COLUMNS]
    body = [[str(r["image"])] + [f"{float(r[c]):.4f}" for c in EVALUATE_COLUMNS] for r in rows]
    if sep is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *body])
        return buffer.getvalue()
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def _cmd_predict(args: argparse.Namespace) -> int:
    written = predict_files(args.images, args.out, args.model, args.mpp, args.tta)
    print(f"{len(written)} label images written to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    rows = evaluate_folders(args.pred, args.truth)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_format_table(rows, ","))
    sys.stdout.write(_format_table(rows, None))
    return 0


def add_nuclei_subparser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bcpath nuclei predict`` and ``bcpath nuclei evaluate`` on ``sub``."""
    from bcpath.nuclei.classical import BASELINES

    nuclei = sub.add_parser("nuclei", help="nuclei instance segmentation (classical baselines) and its metrics")
    actions = nuclei.add_subparsers(dest="nuclei_command", required=True)

    predict = actions.add_parser("predict", help="segment nuclei; write DIR/<stem>.tif uint16 instance labels")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="H&E image(s): TIFF or PNG, RGB(A), 8/16-bit")
    predict.add_argument(
        "--model", required=True,
        help=f"classical baseline ({', '.join(BASELINES)}) or a trained model folder / best.pt",
    )
    predict.add_argument("--mpp", type=float, help="µm/px of the images (default: from the TIFF tags)")
    predict.add_argument("--tta", action="store_true", help="trained models: average the 8 rotations/flips of each tile (8x slower, mAP +0.015 on the validation split)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.set_defaults(func=_cmd_predict)

    evaluate = actions.add_parser("evaluate", help="AJI, mAP, F1/P/R at IoU 0.5 and 0.7, PQ per image and mean")
    evaluate.add_argument("--pred", required=True, help="folder of predicted label images (<stem>.tif)")
    evaluate.add_argument("--truth", required=True, help="folder of ground-truth label images (<stem>.tif/.png)")
    evaluate.add_argument("--out", help="also write the table as CSV here")
    evaluate.set_defaults(func=_cmd_evaluate)

    add_train_subparser(actions)
    add_lodo_subparser(actions)


def _cmd_train(args: argparse.Namespace) -> int:
    from bcpath.nuclei.training import train_nuclei_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    meta = train_nuclei_model(
        args.data,
        args.out,
        encoder=args.encoder,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        pretrained_encoder=args.pretrained_encoder,
        device=args.device,
        model_mpp=args.model_mpp,
        val_organs=args.val_organs,
        val_names=args.val_names,
        stain_normalisation=not args.no_stain_normalisation,
        plain_base=args.plain_base,
        max_minutes=args.max_minutes,
        init_from=args.init_from,
        target_stain=args.target_stain,
    )
    m = meta["validation"]["mean"]
    print(
        f"{meta['epochs_run']} epochs (best {meta['best_epoch']}), threshold {meta['threshold']:g}; "
        f"validation AJI {m['aji']:.4f} mAP {m['map']:.4f} PQ {m['pq']:.4f} F1@0.5 {m['f1_0.5']:.4f}; "
        f"model in {args.out}"
    )
    return 0


def add_train_subparser(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bcpath nuclei train`` on the ``nuclei`` sub-command's ``actions``."""
    from bcpath.nuclei.predict import MODEL_MPP
    from bcpath.nuclei.training import DEFAULT_VAL_NAMES, DEFAULT_VAL_ORGANS

    train = actions.add_parser("train", help="train a 3-class nuclei U-Net (Lagree et al. 2021)")
    train.add_argument("--data", nargs="+", required=True, metavar="DIR", help="MoNuSeg- or CPM-15-layout folders")
    train.add_argument("--out", required=True, help="output folder (best.pt, last.pt, train.json, log.csv, stain.json)")
    train.add_argument("--encoder", default="plain", help="'plain' (small from-scratch U-Net) or a torchvision encoder, e.g. resnet18")
    train.add_argument("--pretrained-encoder", help="local encoder state_dict (never downloaded)")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--patience", type=int, default=10, help="early-stopping patience (epochs) on validation loss")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--model-mpp", type=float, default=MODEL_MPP, help=f"µm/px images are resampled to (default {MODEL_MPP})")
    train.add_argument("--val-organs", nargs="*", default=list(DEFAULT_VAL_ORGANS), help="organs held out for validation")
    train.add_argument("--val-names", nargs="*", default=list(DEFAULT_VAL_NAMES), help="image names held out for validation")
    train.add_argument("--no-stain-normalisation", action="store_true")
    train.add_argument("--plain-base", type=int, default=16, help="first-level width of the plain U-Net")
    train.add_argument("--max-minutes", type=float, help="stop after the epoch passing this wall time")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--target-stain", choices=["he", "ihc"], default="he", help="ihc: train on the images re-rendered as DAB + hematoxylin (nuclei for IHC scoring)")
    train.add_argument("--init-from", metavar="MODEL_DIR", help="start from an earlier training folder's best.pt (fine-tune or continue; same architecture)")
    train.set_defaults(func=_cmd_train)


def _lodo_sets(items: Sequence[str] | None, root: str) -> dict[str, str]:
    from bcpath.nuclei.lodo import DEFAULT_SETS

    if not items:
        return {k: str(Path(root) / v) for k, v in DEFAULT_SETS.items()}
    sets = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise BcpathError(f"--set {item!r}: expected NAME=DIR, e.g. consep=../shared/data/nuclei/consep_train")
        sets[name] = folder
    return sets


def _cmd_lodo(args: argparse.Namespace) -> int:
    import json

    from bcpath.io import json_ready, write_json
    from bcpath.nuclei.lodo import evaluate_by_set, lodo_markdown, run_lodo

    sets = _lodo_sets(args.set, args.root)
    for name, folder in sets.items():
        if not Path(folder).is_dir():
            raise BcpathError(f"lodo set {name}: no folder {folder}")
    if args.train:
        from bcpath.nuclei.predict import load_nuclei_model, predict_instances
        from bcpath.nuclei.training import train_nuclei_model

        if not args.out:
            raise BcpathError("bcpath nuclei lodo --train needs --out DIR (one model per fold)")

        def train_fold(folders: list[Path], out: Path):  # type: ignore[no-untyped-def]
            train_nuclei_model(
                folders, out, encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                patience=args.patience, seed=args.seed, device=args.device, max_minutes=args.max_minutes,
                plain_base=args.plain_base,
            )  # fmt: skip
            bundle = load_nuclei_model(out, device=args.device)
            return lambda rgb, mpp: predict_instances(bundle, rgb, mpp)

        result = run_lodo(sets, train_fold, args.out)
        table = {f"U-Net ({args.encoder}), trained per fold": {k: v for k, v in result["folds"].items()}}
    else:
        if not args.model:
            raise BcpathError("bcpath nuclei lodo: give --model (a baseline or a model folder) or --train")
        from bcpath.nuclei.classical import BASELINES, classical_baseline

        if args.model in BASELINES:
            def segmenter(rgb, mpp):  # type: ignore[no-untyped-def]
                return classical_baseline(args.model, rgb, mpp)
        else:
            if not Path(args.model).exists():
                raise _model_error(args.model)
            from bcpath.nuclei.predict import load_nuclei_model, predict_instances

            bundle = load_nuclei_model(args.model, device=args.device)

            def segmenter(rgb, mpp):  # type: ignore[no-untyped-def]
                return predict_instances(bundle, rgb, mpp)

        summary, rows = evaluate_by_set(sets, segmenter)
        result = {"model": args.model, "sets": sets, "summary": summary, "per_image": rows}
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_json(Path(args.out) / "lodo.json", json_ready(result))
        table = {args.model: summary}
    sys.stdout.write(lodo_markdown(table, list(sets)) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(json_ready(result)) + "\n")
    return 0


def add_lodo_subparser(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bcpath nuclei lodo`` on the ``nuclei`` sub-command's ``actions``."""
    lodo = actions.add_parser("lodo", help="leave-one-dataset-out validation: mean / pooled AJI and worst image per held-out set")
    lodo.add_argument("--set", action="append", metavar="NAME=DIR", help="an annotated set (MoNuSeg or CPM-15 layout); repeat; default the three sets under --root")
    lodo.add_argument("--root", default="../shared/data/nuclei", help="folder of the default sets")
    lodo.add_argument("--model", help="fixed segmenter scored on every set: a classical baseline or a model folder")
    lodo.add_argument("--train", action="store_true", help="train the U-Net per fold (two sets) and score the third")
    lodo.add_argument("--out", help="output folder (lodo.json; with --train one model folder per fold)")
    lodo.add_argument("--json", action="store_true", help="also print the full result as JSON")
    lodo.add_argument("--device", default="cpu")
    lodo.add_argument("--encoder", default="plain")
    lodo.add_argument("--plain-base", type=int, default=16)
    lodo.add_argument("--epochs", type=int, default=12)
    lodo.add_argument("--batch-size", type=int, default=4)
    lodo.add_argument("--lr", type=float, default=1e-3)
    lodo.add_argument("--patience", type=int, default=4)
    lodo.add_argument("--seed", type=int, default=0)
    lodo.add_argument("--max-minutes", type=float, help="per fold")
    lodo.set_defaults(func=_cmd_lodo)
