"""models/nuclei_unet_v2, the default deep nuclei model: integrity, its card's leave-one-dataset-out
table against its per-image records, and its accuracy on the annotated images of ../shared.

Every H&E image in ../shared/data/nuclei is training data of this model (MoNuSeg non-breast,
CPM-15, CoNSeP train): the accuracy test here checks that the shipped weights, tiling and
decoding still reproduce their fit, not generalisation. Generalisation is the LODO table (each
fold trained without the set it is scored on, bench/gpu_train_nuclei.py) and, for IHC, the
DeepLIIF tiles it never saw (tests/test_ihc_detector.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bcpath.nuclei.classical import classical_baseline
from bcpath.nuclei.datasets import list_cpm15
from bcpath.nuclei.metrics import evaluate
from bcpath.nuclei.predict import load_nuclei_model, predict_instances
from bcpath.wsi import file_sha256

MODEL = "models/nuclei_unet_v2"
REPO = Path(__file__).resolve().parents[1]
SETS = ("monuseg", "cpm15", "consep")


@pytest.fixture(scope="module")
def record():
    folder = REPO / MODEL
    return (
        json.loads((folder / "train.json").read_text()),
        json.loads((folder / "lodo.json").read_text()),
        (folder / "MODEL_CARD.md").read_text(),
    )


def test_weights_match_their_record_and_load_with_its_tiling(repo_root, record):
    train, _, card = record
    weights = repo_root / MODEL / "best.pt"
    assert file_sha256(weights) == train["best_sha256"]
    assert weights.stat().st_size < 2e6
    assert train["architecture"] == {"encoder": "plain", "n_classes": 4, "in_channels": 3, "decoding": "distance", "depth": 4, "base": 8, "dropout": 0.1}
    assert not train["stain_normalisation"] and train["stain_augmentation"] and train["stain_reference"] is None
    bundle = load_nuclei_model(repo_root / MODEL, device="cpu")
    assert (bundle.tile, bundle.overlap, bundle.threshold, bundle.decoding) == (512, 0.25, 0.4, "distance")
    assert bundle.normaliser is None  # no single reference image
    assert "CC BY-NC-SA" in card and "bench/gpu_train_nuclei.py" in card


def _table_from_rows(rows):
    """mean / pooled AJI and worst image per held-out set from per-image rows."""
    out = {}
    for name in SETS:
        own = [r for r in rows if r["held_out"] == name]
        worst = min(own, key=lambda r: r["aji"])
        out[name] = {
            "mean_aji": float(np.mean([r["aji"] for r in own])),
            "pooled_aji": sum(r["inter"] for r in own) / sum(r["union"] for r in own),
            "worst": (worst["image"], worst["aji"]),
            "n": len(own),
        }
    return out


def test_card_table_is_the_per_image_record(record):
    train, lodo, card = record
    table = train["lodo"]["table"]
    recomputed = _table_from_rows(lodo["per_image_at_chosen"])
    assert {r["threshold"] for r in lodo["per_image_at_chosen"]} == {train["threshold"]}
    for name in SETS:
        row, again = table[name], recomputed[name]
        assert again["n"] == row["n_images"]
        assert again["mean_aji"] == pytest.approx(row["mean_aji"], abs=1e-9)
        assert again["pooled_aji"] == pytest.approx(row["pooled_aji"], abs=1e-9)
        assert again["worst"] == (row["worst_image"], pytest.approx(row["worst_aji"], abs=1e-9))
        cell = f"{row['mean_aji']:.3f} / {row['pooled_aji']:.3f}"
        assert cell in card, (name, cell)
    assert table["monuseg"]["n_images"] == 21 and table["cpm15"]["n_images"] == 15 and table["consep"]["n_images"] == 432
    # the worst CoNSeP source image (27 images cut in 16 tiles each) is in the card as well
    assert f"{table['consep']['worst_source']} {table['consep']['worst_source_aji']:.3f}" in card


def test_threshold_chosen_on_the_other_held_out_sets(record):
    """The card's second reading: for each held-out set, the threshold with the best mean over
    the other two sets' mean AJI, scored on this one (the images that choose never measure)."""
    train, lodo, card = record
    folds = lodo["folds"][train["variant"]]
    for name, expected_threshold in (("monuseg", "0.4"), ("cpm15", "0.5"), ("consep", "0.4")):
        others = [s for s in SETS if s != name]
        chosen = max(folds[name], key=lambda t: np.mean([folds[o][t]["mean_aji"] for o in others]))
        assert chosen == expected_threshold, name
        assert f"{folds[name][chosen]['mean_aji']:.3f}" in card, name
    # one threshold for all: the best mean over the three held-out sets
    best = max(folds["monuseg"], key=lambda t: np.mean([folds[s][t]["mean_aji"] for s in SETS]))
    assert float(best) == train["threshold"] == 0.4


def test_fits_its_training_images_and_beats_fiji(repo_root, require_shared, torch_one_thread):
    """CPM-15, 15 images (training data of this model, see the module docstring)."""
    samples = list_cpm15(require_shared("nuclei/cpm15"))
    assert len(samples) == 15
    bundle = load_nuclei_model(repo_root / MODEL, device="cpu")
    unet, fiji = [], []
    for sample in samples:
        rgb, truth = sample.load()
        unet.append(evaluate(truth, predict_instances(bundle, rgb, sample.mpp))["aji"])
        fiji.append(evaluate(truth, classical_baseline("fiji", rgb, sample.mpp))["aji"])
    print("unet", np.round(unet, 3), "fiji", np.round(fiji, 3))
    # bench/nuclei_tiling.py: 0.665 (worst image02 0.510) with 512 px tiles at 25 % overlap
    assert np.mean(unet) == pytest.approx(0.665, abs=0.02)
    assert min(unet) >= 0.47
    assert np.mean(unet) > np.mean(fiji) + 0.1


def test_paper_comparison_table_is_its_per_image_record(repo_root, record):
    """Issue 13 item 8 (bench/nuclei_paper_comparison.py, CoNSeP held out): every row of the
    table in the card and the README is recomputed from the per-image rows in
    paper_comparison.json, and the choice it argues for (keep the plain U-Net) still follows."""
    from bcpath.nuclei.lodo import summarise_set

    _, _, card = record
    readme = (repo_root / "README.md").read_text()
    comparison = json.loads((repo_root / MODEL / "paper_comparison.json").read_text())
    assert comparison["held_out"] == "consep" and comparison["train"] == ["monuseg", "cpm15"]
    models = comparison["models"]
    assert set(models) == {"plain", "plain_seed1", "plain_seed2", "resnet34", "ensemble", "gb_unet", "mask_rcnn", "fiji"}
    for name, row in models.items():
        rows = [dict(zip(comparison["per_image_columns"], r, strict=True)) for r in row["per_image_at_fixed"]]
        again = summarise_set(rows)
        assert again["n_images"] == 432 and again["n_sources"] == 27, name
        for key in ("mean_aji", "pooled_aji", "worst_source_aji"):
            assert again[key] == pytest.approx(row["at_fixed"][key], abs=1e-9), (name, key)
        assert again["worst_source"] == row["at_fixed"]["worst_source"], name
    for line in comparison["table_markdown"].splitlines():
        assert line in card and line in readme, line
    mean = {name: row["at_fixed"]["mean_aji"] for name, row in models.items()}
    seeds = [mean["plain"], mean["plain_seed1"], mean["plain_seed2"]]
    # every trained model above the Fiji-like baseline; ensemble and GB U-Net within the seed spread
    assert all(mean[name] > mean["fiji"] + 0.04 for name in models if name != "fiji")
    spread = max(seeds) - min(seeds)
    assert spread < 0.03 and min(seeds) - spread <= mean["gb_unet"] <= max(seeds) + spread
    assert min(seeds) - spread <= mean["ensemble"] <= max(seeds) + spread
    # the ResNet-34 U-Net costs several times the plain one per megapixel
    assert models["resnet34"]["gflop_per_mp"] > 5 * models["plain"]["gflop_per_mp"]


def test_organ_table_is_its_per_image_record(repo_root, record):
    """Issue 13 item 2, organ-wise within MoNuSeg (bench/nuclei_organ_lodo.py): each held-out
    organ's row recomputed from its per-image rows, its threshold re-chosen on the other organs
    only, the Fiji-like column from its own rows; the table is in the card and the README."""
    from bcpath.nuclei.lodo import summarise_set

    _, _, card = record
    readme = (repo_root / "README.md").read_text()
    organ_lodo = json.loads((repo_root / MODEL / "organ_lodo.json").read_text())
    organs = organ_lodo["organs"]
    for organ, row in organs.items():
        again = summarise_set([r for r in organ_lodo["per_image"] if r["organ"] == organ])
        for key in ("mean_aji", "pooled_aji", "worst_aji"):
            assert again[key] == pytest.approx(row["at_chosen"][key], abs=1e-9), (organ, key)
        others = [o for o in organs if o != organ]
        by_t = {o: organs[o]["mean_aji_by_threshold"] for o in organs}
        chosen = max(by_t[organ], key=lambda t: np.mean([by_t[o][t] for o in others]))
        assert float(chosen) == row["threshold_from_other_organs"], organ
        fiji = summarise_set([r for r in organ_lodo["fiji_per_image"] if r["organ"] == organ])
        assert fiji["mean_aji"] == pytest.approx(row["fiji"]["mean_aji"], abs=1e-9) and fiji["n_images"] == again["n_images"]
    for line in organ_lodo["table_markdown"].splitlines():
        assert line in card and line in readme, line
    # what the card says of it: above Fiji on 5 of 6 organs, every organ's threshold 0.5, all 21 images
    assert sum(row["at_chosen"]["mean_aji"] > row["fiji"]["mean_aji"] for row in organs.values()) == 5
    assert {row["threshold_from_other_organs"] for row in organs.values()} == {0.5}
    assert len(organ_lodo["per_image"]) == 21 and len(organs) == 6
