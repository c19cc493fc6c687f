"""The shipped nuclei U-Net (models/nuclei_unet): integrity, and its held-out accuracy on real images.

Held out = the validation organs of its training run (bladder and brain MoNuSeg images, see
models/nuclei_unet/MODEL_CARD.md); the images are in ../shared/data/nuclei.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcpath.nuclei.classical import classical_baseline
from bcpath.nuclei.datasets import list_monuseg
from bcpath.nuclei.metrics import evaluate
from bcpath.nuclei.slide import get_segmenter
from bcpath.wsi import file_sha256

MODEL = "models/nuclei_unet"


def test_shipped_weights_match_their_training_record(repo_root):
    folder = repo_root / MODEL
    train = json.loads((folder / "train.json").read_text())
    assert file_sha256(folder / "best.pt") == train["best_sha256"]
    assert (folder / "best.pt").stat().st_size < 25e6
    card = (folder / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA" in card and "bcpath nuclei train" in card
    assert f"{train['validation']['mean']['aji']:.3f}" in card
    # stage 2 started from stage 1, whose record ships beside it
    stage1 = json.loads((folder / "train_stage1.json").read_text())
    assert train["init_from"]["sha256"] == stage1["best_sha256"]
    assert train["architecture"] == stage1["architecture"] and train["split"] == stage1["split"]


def test_shipped_unet_beats_the_papers_gb_unet_and_fiji_on_held_out_organs(repo_root, require_shared):
    folder = repo_root / MODEL
    held_out = set(json.loads((folder / "train.json").read_text())["split"]["val"])
    samples = [s for s in list_monuseg(require_shared("nuclei/monuseg_nonbreast")) if f"monuseg/{s.name}" in held_out]
    assert len(samples) == 4
    unet = get_segmenter(str(folder))
    scores = {"unet": [], "fiji": []}
    for sample in samples:
        rgb, truth = sample.load()
        scores["unet"].append(evaluate(truth, unet(rgb, sample.mpp)))
        scores["fiji"].append(evaluate(truth, classical_baseline("fiji", rgb, sample.mpp)))
    mean = {name: {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "map")} for name, rows in scores.items()}
    # Lagree et al.'s GB U-Net: AJI 0.533, mAP 0.391 (on breast); the card records 0.626 / 0.337
    # here (the model shipped before 2026-12-02, on misaligned targets: 0.619 / 0.325).
    assert mean["unet"]["aji"] > 0.59 and mean["unet"]["map"] > 0.31, mean
    assert mean["unet"]["aji"] > mean["fiji"]["aji"] + 0.03, mean
    assert mean["unet"]["map"] > mean["fiji"]["map"], mean


def test_an_unknown_model_path_is_a_clear_error(tmp_path):
    from bcpath.errors import BcpathError

    (tmp_path / "empty").mkdir()
    with pytest.raises(BcpathError, match="train.json"):
        get_segmenter(str(tmp_path / "empty"))
