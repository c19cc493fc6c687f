"""Pack the three annotated nuclei sets into one compressed file for a machine without ../shared.

    .venv/bin/python bench/gpu_nuclei_pack.py                       # → .gpu_data/nuclei_pack.npz
    .venv/bin/python bench/gpu_nuclei_pack.py --limit 3 --out /tmp/tiny.npz   # a few per set

What the pack holds, per set (``monuseg`` = MoNuSeg non-breast, ``cpm15``, ``consep`` = CoNSeP
train), per image:

- the RGB resampled to the model's 0.5 µm/px (area interpolation, as
  :func:`bcpath.nuclei.predict.resample_rgb`), JPEG quality 95 (``raw``);
- the same, Vahadane-normalised with the shipped model's ``models/nuclei_unet/stain.json``
  (reference CPM-15 image01; staintools is not needed where the pack is read), JPEG 95 (``vah``);
- instance labels at 0.5 µm/px (centre-aligned nearest neighbour, as
  :func:`bcpath.nuclei.training.resample_labels`) and the original labels at the image's own
  size (scores are computed there), uint16, deflated;
- name, source image (CoNSeP's ``train_<image>`` of its tiles: splits keep them together),
  µm/px.

The JPEG step costs a little fidelity (quality 95 at 0.5 µm/px) and keeps the pack under
40 MB. The data stay under their licences (see ../shared/data/README.md): the pack is a
working file, never committed (``/.gpu_data/`` is in .git/info/exclude).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETS = {"monuseg": "monuseg_nonbreast", "cpm15": "cpm15", "consep": "consep_train"}
MODEL_MPP = 0.5
JPEG_QUALITY = 95


def _encode(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _one(args: tuple[object, str]) -> dict[str, object]:
    sample, stain = args
    from bcpath.nuclei.datasets import source_image
    from bcpath.nuclei.predict import resample_rgb
    from bcpath.nuclei.training import resample_labels
    from bcpath.stain.normalise import StainNormaliser

    rgb, labels = sample.load()  # type: ignore[attr-defined]
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{sample.annotation}: more than 65535 nuclei")  # type: ignore[attr-defined]
    small = resample_rgb(rgb, sample.mpp, MODEL_MPP)  # type: ignore[attr-defined]
    lab = resample_labels(labels, small.shape[:2])
    vah = StainNormaliser.load(stain).normalise(small, sample.name)  # type: ignore[attr-defined]
    return {
        "name": sample.name,  # type: ignore[attr-defined]
        "group": source_image(sample.name),  # type: ignore[attr-defined]
        "mpp": float(sample.mpp),  # type: ignore[attr-defined]
        "raw": _encode(small),
        "vah": _encode(vah),
        "lab": lab.astype(np.uint16),
        "orig": np.asarray(labels).astype(np.uint16),
    }


def pack(shared: Path, out: Path, stain: Path, limit: int | None, workers: int) -> dict[str, object]:
    from bcpath.nuclei.datasets import list_nuclei_folder

    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, object] = {}
    t0 = time.perf_counter()
    for key, folder in SETS.items():
        samples = list_nuclei_folder(shared / folder)
        if limit:
            # the first tiles of as many source images as possible
            by_group: dict[str, list] = {}
            from bcpath.nuclei.datasets import source_image

            for s in samples:
                by_group.setdefault(source_image(s.name), []).append(s)
            samples = [g[0] for g in by_group.values()][:limit]
        with ProcessPoolExecutor(workers) as pool:
            items = list(pool.map(_one, [(s, str(stain)) for s in samples], chunksize=4))
        raw = [np.frombuffer(i["raw"], np.uint8) for i in items]  # type: ignore[arg-type]
        vah = [np.frombuffer(i["vah"], np.uint8) for i in items]  # type: ignore[arg-type]
        arrays[f"{key}_names"] = np.array([i["name"] for i in items])
        arrays[f"{key}_groups"] = np.array([i["group"] for i in items])
        arrays[f"{key}_mpp"] = np.array([i["mpp"] for i in items], dtype=np.float64)
        for part, chunks in (("raw", raw), ("vah", vah)):
            arrays[f"{key}_{part}"] = np.concatenate(chunks)
            arrays[f"{key}_{part}_off"] = np.cumsum([0] + [c.size for c in chunks]).astype(np.int64)
        for part in ("lab", "orig"):
            arrays[f"{key}_{part}"] = np.concatenate([i[part].ravel() for i in items])  # type: ignore[union-attr]
            arrays[f"{key}_{part}_shape"] = np.array([i[part].shape for i in items], dtype=np.int64)  # type: ignore[union-attr]
        summary[key] = {"folder": folder, "images": len(items), "groups": len(set(arrays[f"{key}_groups"]))}
        print(f"{key}: {len(items)} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    arrays["meta"] = np.array(json.dumps({"sets": list(SETS), "model_mpp": MODEL_MPP, "jpeg_quality": JPEG_QUALITY,
                                          "stain": str(stain), "summary": summary}))
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out.write_bytes(buf.getvalue())
    summary["bytes"] = out.stat().st_size
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu_data" / "nuclei_pack.npz")
    parser.add_argument("--stain", type=Path, default=ROOT / "models" / "nuclei_unet" / "stain.json")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per set (one per source image)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    summary = pack(args.shared, args.out, args.stain, args.limit, args.workers)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
