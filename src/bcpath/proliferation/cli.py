"""``bcpath mitosis`` sub-commands: train, detect and evaluate mitotic-figure detection.

    bcpath mitosis train --amibr DIR --nuclei DIR [DIR...] --out DIR [--epochs N ...]
    bcpath mitosis detect --model ID_OR_PATH [--mpp 0.25] IMAGE... --out DIR
    bcpath mitosis evaluate --pred DIR --truth DIR [--mpp 0.25] [--radius-um 7.5] [--out FILE]

``detect`` treats each image as tumor: it is resampled to the model's µm/px, searched for
candidates, classified, and ``DIR/<stem>.mitoses.csv`` lists x, y (px of the input image),
probability, atypical_probability. µm/px comes from ``--mpp``, else the TIFF tags; an image
coarser than the model's µm/px (beyond 10 %) is refused. The threshold on p(mitosis) is the
model's own (chosen at training, in the train.json beside its weights) unless ``--threshold``
is given. ``--model`` is a registry id (from
``--registry``, default ``models/registry.yaml`` of the current folder or of the bcpath
checkout), a ``bcpath mitosis train`` output folder, or its best.pt.

``evaluate`` pairs ``PRED/<stem>.mitoses.csv`` with the truth of each stem: ``TRUTH/<stem>.csv``
or ``TRUTH/<stem>.mitoses.csv`` (columns x, y in px), or an image ``TRUTH/<stem>.png|tif|jpg``
whose one figure is its centre (AMi-Br patches). Matching is MIDOG's: one-to-one within
``--radius-um`` (7.5 µm). Prints precision, recall and F1 per image and pooled as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bcpath.errors import BcpathError
from bcpath.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import torch

    from bcpath.models.registry import ModelSpec

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("x", "y", "probability", "atypical_probability")
OUTPUT_SUFFIX = ".mitoses.csv"
MPP_TOLERANCE = 1.1
"""An image up to 10 % coarser than the model's µm/px is upsampled; coarser ones are refused."""


def default_registry() -> Path:
    """``models/registry.yaml`` of the current folder, else of the bcpath source checkout."""
    local = Path("models/registry.yaml")
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[3] / "models" / "registry.yaml"


def recorded_threshold(folder: Path) -> float:
    """The detection threshold in ``folder/train.json`` (chosen at training), else 0.5."""
    record_path = folder / "train.json"
    if record_path.is_file():
        value = json.loads(record_path.read_text()).get("threshold")
        if isinstance(value, int | float) and 0 < value < 1:
            return float(value)
    return 0.5


def resolve_model(model: str, registry: str | Path | None = None, device: str | None = None) -> tuple[ModelSpec, torch.nn.Module, float]:
    """(spec, loaded model, its detection threshold) of a registry id, a ``bcpath mitosis
    train`` folder or its best.pt; the threshold is the one train.json beside the weights
    records (0.5 without one)."""
    from bcpath.models.registry import load_model, load_registry, weights_file
    from bcpath.proliferation.mitosis_training import load_trained

    path = Path(model)
    if path.is_dir() or path.suffix == ".pt":
        folder = path if path.is_dir() else path.parent
        return (*load_trained(folder, device), recorded_threshold(folder))
    registry_path = Path(registry) if registry else default_registry()
    specs = load_registry(registry_path)
    if model not in specs:
        raise BcpathError(
            f"mitosis model {model!r}: not a folder, a .pt file or an id in {registry_path} "
            f"(ids: {', '.join(k for k, s in specs.items() if s.kind == 'mitosis_classifier') or 'none of kind mitosis_classifier'})"
        )
    spec = specs[model]
    if spec.kind != "mitosis_classifier":
        raise BcpathError(f"model {model}: kind {spec.kind}, not mitosis_classifier; give a mitosis model")
    net = load_model(spec, registry_path.parent, device=device)
    return spec, net, recorded_threshold(weights_file(spec, registry_path.parent).parent)


def detect_file(path: Path, spec: ModelSpec, model: torch.nn.Module, mpp: float | None, threshold: float) -> pd.DataFrame:
    """Detections of one image file, x/y in the file's pixels (:data:`OUTPUT_COLUMNS`)."""
    from bcpath.images import MPP_RANGE, image_mpp, read_uint8_image
    from bcpath.nuclei.predict import resample_rgb
    from bcpath.proliferation.mitosis import DetectionParams, detect_in_image

    image = read_uint8_image(path)
    if image.ndim == 2:
        raise BcpathError(f"image {path}: grayscale {image.shape}; mitosis detection needs the RGB H&E image")
    image_um = mpp if mpp is not None else image_mpp(path)
    if image_um is None:
        raise BcpathError(
            f"image {path}: no µm/px in the file (no TIFF resolution tags in {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px); "
            f"give it with --mpp, e.g. --mpp 0.25 for 40x"
        )
    if image_um > spec.mpp * MPP_TOLERANCE:
        raise BcpathError(
            f"image {path}: {image_um:g} µm/px is coarser than model {spec.model_id} allows ({spec.mpp:g} µm/px, "
            f"up to {spec.mpp * MPP_TOLERANCE:.3g}); mitotic figures need a 40x scan (about 0.25 µm/px)"
        )
    rgb = resample_rgb(image, image_um, spec.mpp)
    found, _ = detect_in_image(rgb, model, spec, DetectionParams(threshold=threshold))
    # Pixel centres map back: x_image = (x_model + 0.5) · (W / W_model) - 0.5.
    sx, sy = image.shape[1] / rgb.shape[1], image.shape[0] / rgb.shape[0]
    return pd.DataFrame({
        "x": (found["x"].to_numpy() + 0.5) * sx - 0.5, "y": (found["y"].to_numpy() + 0.5) * sy - 0.5,
        "probability": found["probability"].to_numpy(np.float32), "atypical_probability": found["atypical_probability"].to_numpy(np.float32),
    })


def detect_files(
    images: Sequence[str | Path], out: str | Path, model: str, mpp: float | None = None, threshold: float | None = None,
    registry: str | Path | None = None, device: str | None = None,
) -> list[Path]:
    """Write ``out/<stem>.mitoses.csv`` for each image; returns the written paths.

    ``threshold`` None = the model's own (train.json beside its weights)."""
    from bcpath.images import image_inputs
    from bcpath.io import atomic_path

    paths = image_inputs(images, mpp, OUTPUT_SUFFIX)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise BcpathError(f"--threshold {threshold}: must be between 0 and 1")
    spec, net, own_threshold = resolve_model(model, registry, device)
    threshold = own_threshold if threshold is None else threshold
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        table = detect_file(path, spec, net, mpp, threshold)
        target = out_dir / f"{path.stem}{OUTPUT_SUFFIX}"
        with atomic_path(target) as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        logger.info("%s: %d mitotic figure(s) -> %s", path, len(table), target)
        written.append(target)
    return written


def _stem(path: Path) -> str:
    return path.name[: -len(OUTPUT_SUFFIX)] if path.name.endswith(OUTPUT_SUFFIX) else path.stem


def read_points(path: Path) -> np.ndarray:
    """(n, 2) x, y of a CSV with columns x and y (BcpathError naming the file otherwise)."""
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise BcpathError(f"{path}: not a readable CSV ({exc})") from exc
    if not {"x", "y"} <= set(table.columns):
        raise BcpathError(f"{path}: needs columns x and y (pixels); found {list(table.columns)}")
    return table[["x", "y"]].to_numpy(np.float64)


def read_truth(folder: Path) -> dict[str, np.ndarray]:
    """Stem → (n, 2) true figure positions: CSVs, or images whose figure is the centre."""
    from bcpath.images import read_array

    if not folder.is_dir():
        raise BcpathError(f"--truth {folder}: not a folder; give the folder of truth CSVs or centred crops")
    truth: dict[str, np.ndarray] = {}
    for path in sorted(folder.iterdir()):
        stem = _stem(path)
        if path.suffix.lower() == ".csv":
            points = read_points(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            h, w = read_array(path).shape[:2]
            points = np.array([[(w - 1) / 2.0, (h - 1) / 2.0]])
        else:
            continue
        if stem in truth:
            raise BcpathError(f"--truth {folder}: two files for {stem}; keep one")
        truth[stem] = points
    if not truth:
        raise BcpathError(f"--truth {folder}: no .csv or image files in it")
    return truth


def evaluate_folders(pred: str | Path, truth: str | Path, mpp: float = 0.25, radius_um: float = 7.5) -> dict[str, Any]:
    """Precision, recall, F1 per image and pooled (MIDOG matching within ``radius_um``)."""
    from bcpath.proliferation.mitosis import f1_scores, match_detections

    if not (mpp > 0 and radius_um > 0):
        raise BcpathError(f"--mpp {mpp} and --radius-um {radius_um}: must be positive")
    pred_dir = Path(pred)
    if not pred_dir.is_dir():
        raise BcpathError(f"--pred {pred_dir}: not a folder; give `bcpath mitosis detect`'s --out")
    predictions = {_stem(p): p for p in sorted(pred_dir.glob(f"*{OUTPUT_SUFFIX}"))}
    if not predictions:
        raise BcpathError(f"--pred {pred_dir}: no *{OUTPUT_SUFFIX} files; run bcpath mitosis detect first")
    truths = read_truth(Path(truth))
    missing = sorted(set(truths) - set(predictions))
    if missing:
        raise BcpathError(f"--truth {truth}: no prediction for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in {pred_dir}; run detect on those images")
    extra = sorted(set(predictions) - set(truths))
    if extra:
        raise BcpathError(f"--pred {pred_dir}: {predictions[extra[0]]} has no truth in {truth}; add it or remove the prediction")
    radius_px = radius_um / mpp
    rows = []
    totals = np.zeros(3, int)
    for stem in sorted(truths):
        counts = match_detections(read_points(predictions[stem]), truths[stem], radius_px)
        totals += counts
        rows.append({"image": stem, **f1_scores(*counts)})
    return {"radius_um": radius_um, "mpp": mpp, "n_images": len(rows), "pooled": f1_scores(*(int(v) for v in totals)), "per_image": rows}


def _cmd_train(args: argparse.Namespace) -> int:
    from bcpath.proliferation.mitosis import MitosisTrainConfig
    from bcpath.proliferation.mitosis_training import MitosisDataConfig, train_mitosis_model

    data = MitosisDataConfig(
        model_mpp=args.model_mpp, patch_px=args.patch_px, crop_px=args.crop_px, width=args.width, embed_dim=args.embed_dim,
        val_fraction=args.val_fraction, target_fp_per_mm2=args.target_fp_per_mm2, seed=args.seed,
    )
    config = MitosisTrainConfig(
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        hard_negative_epochs=args.hard_negative_epochs, seed=args.seed, threads=args.threads, device=args.device,
        max_minutes=args.max_minutes,
    )
    command = "bcpath mitosis train " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if sys.argv[1:3] == ["mitosis", "train"] else ""
    record = train_mitosis_model(args.amibr, args.nuclei, args.out, data, config, model_id=args.model_id, command=command)
    v = record["validation"]
    print(
        f"validation: mitoses {v['mitoses']['n']} detection recall {v['mitoses']['detection_recall']:.3f}, "
        f"false positives {v['nuclei_images']['fp_per_mm2']:.1f}/mm² on {v['nuclei_images']['n_images']} nuclei images, "
        f"atypical balanced accuracy {v['atypical']['balanced_accuracy']:.3f} (threshold {record['threshold']:.3f}); model in {args.out}"
    )
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    written = detect_files(args.images, args.out, args.model, args.mpp, args.threshold, args.registry, args.device)
    print(f"{len(written)} detection table(s) written to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bcpath.io import json_ready

    result = json.dumps(json_ready(evaluate_folders(args.pred, args.truth, args.mpp, args.radius_um)), indent=2)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result + "\n")
    sys.stdout.write(result + "\n")
    return 0


def add_mitosis_subparser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bcpath mitosis train | detect | evaluate`` on ``sub``."""
    mitosis = sub.add_parser("mitosis", help="mitotic-figure detection: train, detect, evaluate")
    actions = mitosis.add_subparsers(dest="mitosis_command", required=True)

    train = actions.add_parser("train", help="two-stage MitosNet training on AMi-Br figures vs annotated nuclei")
    train.add_argument("--amibr", required=True, metavar="DIR", help="AMi-Br folder (patches/normal, patches/atypical, AMI-BR.csv)")
    train.add_argument("--nuclei", nargs="+", required=True, metavar="DIR", help="MoNuSeg- or CPM-15-layout nuclei folders (negatives)")
    train.add_argument("--out", required=True, help="output folder (best.pt, train.json, log.csv, log_stage1.csv)")
    train.add_argument("--model-id", default="mitosis_amibr")
    train.add_argument("--model-mpp", type=float, default=0.25)
    train.add_argument("--patch-px", type=int, default=64, help="model input side at --model-mpp (64 px = 16 µm at 0.25)")
    train.add_argument("--crop-px", type=int, default=96, help="stored crop side (augmentation margin)")
    train.add_argument("--width", type=int, default=16, help="MitosNet first-block channels")
    train.add_argument("--embed-dim", type=int, default=64)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--target-fp-per-mm2", type=float, default=2.0, help="the detection threshold allows this many detections per mm² of the training nuclei images")
    train.add_argument("--epochs", type=int, default=12, help="stage-1 epochs at most")
    train.add_argument("--hard-negative-epochs", type=int, default=5, help="stage-2 epochs at most (0 = one stage)")
    train.add_argument("--patience", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    train.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    train.add_argument("--max-minutes", type=float, help="stop a stage after the epoch passing this wall time")
    train.set_defaults(func=_cmd_train)

    detect = actions.add_parser("detect", help="detect mitotic figures; write DIR/<stem>.mitoses.csv")
    detect.add_argument("images", nargs="+", metavar="IMAGE", help="H&E image(s) at 40x: TIFF, PNG or JPEG")
    detect.add_argument("--model", default="mitosis_amibr", help="registry id, `bcpath mitosis train` folder or its best.pt (default mitosis_amibr)")
    detect.add_argument("--registry", help="registry YAML (default models/registry.yaml)")
    detect.add_argument("--mpp", type=float, help="µm/px of the images (default: from the TIFF tags)")
    detect.add_argument("--threshold", type=float, help="p(mitosis) of a detection (default: the model's, from its train.json; else 0.5)")
    detect.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    detect.add_argument("--out", required=True, help="output folder")
    detect.set_defaults(func=_cmd_detect)

    evaluate = actions.add_parser("evaluate", help="precision, recall, F1 with MIDOG matching (7.5 µm)")
    evaluate.add_argument("--pred", required=True, help="folder of <stem>.mitoses.csv")
    evaluate.add_argument("--truth", required=True, help="folder of <stem>.csv (x, y) or centred crops <stem>.png")
    evaluate.add_argument("--mpp", type=float, default=0.25, help="µm/px of the images (for the radius; default 0.25)")
    evaluate.add_argument("--radius-um", type=float, default=7.5)
    evaluate.add_argument("--out", help="also write the JSON here")
    evaluate.set_defaults(func=_cmd_evaluate)
