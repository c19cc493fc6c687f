"""Nuclei metrics (AJI, AJI+, mAP@[.5:.95], object F1, PQ, pixel Dice) on hand-made and random labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from bcpath.nuclei.metrics import (
    MAP_THRESHOLDS,
    aji,
    aji_plus,
    evaluate,
    mean_average_precision,
    object_scores,
    overlap,
    panoptic_quality,
    pixel_dice,
)


def _hand_pair() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((6, 8), dtype=np.int32)
    gt[0:2, 0:2] = 1  # A, 4 px
    gt[0:2, 5:7] = 2  # B, 4 px, missed
    pred = np.zeros((6, 8), dtype=np.int32)
    pred[0:2, 0:3] = 7  # 6 px, IoU with A = 4/6
    pred[4:6, 5:7] = 3  # 4 px, false positive
    return gt, pred


def test_hand_computed_values():
    gt, pred = _hand_pair()
    # C = 4 (A∩7); U = 6 (A∪7) + 4 (B, unpaired) + 4 (3, never used) = 14.
    assert aji(gt, pred) == pytest.approx(4 / 14)
    assert aji_plus(gt, pred) == pytest.approx(4 / 14)
    # IoU 2/3 > t for t = .50, .55, .60, .65: TP 1, FP 1, FN 1 -> 1/3; 0 for the 6 others.
    assert mean_average_precision(gt, pred) == pytest.approx(4 * (1 / 3) / 10)
    scores = object_scores(gt, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert object_scores(gt, pred, iou_threshold=0.7)["f1"] == 0.0
    assert pixel_dice(gt, pred) == pytest.approx(2 * 4 / (8 + 10))
    # PQ: one match (IoU 2/3): SQ = 2/3, DQ = 1 / (1 + 1/2 + 1/2) = 1/2, PQ = 1/3.
    pq = panoptic_quality(gt, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 1, 1)
    assert pq["sq"] == pytest.approx(2 / 3) and pq["dq"] == pytest.approx(0.5)
    assert pq["pq"] == pytest.approx(1 / 3)


def _two_match_pair() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((6, 8), dtype=np.int32)
    gt[0:2, 0:2] = 1  # A, 4 px
    gt[3:6, 3:6] = 2  # B, 9 px
    pred = np.zeros((6, 8), dtype=np.int32)
    pred[0:2, 0:2] = 5  # = A, IoU 1
    pred[3:6, 3:5] = 9  # 6 px inside B, IoU 6/9 = 2/3
    pred[0, 7] = 2  # 1 px false positive
    return gt, pred


def test_hand_computed_pq_and_two_thresholds():
    gt, pred = _two_match_pair()
    # IoU > 0.5: A-5 (1) and B-9 (2/3): TP 2, FP 1, FN 0.
    # SQ = (1 + 2/3) / 2 = 5/6; DQ = 2 / (2 + 1/2 + 0) = 4/5; PQ = 5/6 * 4/5 = 2/3.
    pq = panoptic_quality(gt, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (2, 1, 0)
    assert pq["sq"] == pytest.approx(5 / 6)
    assert pq["dq"] == pytest.approx(4 / 5)
    assert pq["pq"] == pytest.approx(2 / 3)
    result = evaluate(gt, pred)
    # IoU 0.5: P = 2/3, R = 2/2, F1 = 2*2 / (2*2 + 1 + 0) = 4/5 (= DQ).
    assert result["precision_0.5"] == pytest.approx(2 / 3)
    assert result["recall_0.5"] == pytest.approx(1.0)
    assert result["f1_0.5"] == pytest.approx(4 / 5)
    # IoU 0.7: only A-5 (2/3 < 0.7): TP 1, FP 2, FN 1: P = 1/3, R = 1/2, F1 = 2 / (2 + 2 + 1).
    assert result["precision_0.7"] == pytest.approx(1 / 3)
    assert result["recall_0.7"] == pytest.approx(1 / 2)
    assert result["f1_0.7"] == pytest.approx(2 / 5)
    assert (result["pq"], result["dq"], result["sq"]) == pytest.approx((2 / 3, 4 / 5, 5 / 6))
    # The older key names carry the same values.
    for name in ("f1", "precision", "recall"):
        assert result[f"{name}_50"] == result[f"{name}_0.5"]
        assert result[f"{name}_70"] == result[f"{name}_0.7"]


EVALUATE_KEYS = (
    "aji", "aji_plus", "map", "f1_0.5", "precision_0.5", "recall_0.5",
    "f1_0.7", "precision_0.7", "recall_0.7", "pq", "dq", "sq", "dice",
)  # fmt: skip


def test_evaluate_empty_prediction_and_empty_truth():
    gt, pred = _two_match_pair()
    empty = np.zeros_like(gt)
    for a, b in ((gt, empty), (empty, pred)):
        result = evaluate(a, b)
        assert all(result[key] == 0.0 for key in EVALUATE_KEYS), result
    # Empty prediction: every GT nucleus is a false negative; nothing is a false positive.
    pq = panoptic_quality(gt, empty)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (0, 0, 2)
    # Empty truth: every prediction is a false positive.
    scores = object_scores(empty, pred, iou_threshold=0.7)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 3, 0)
    both = evaluate(empty, empty)
    assert all(both[key] == 1.0 for key in EVALUATE_KEYS), both
    assert both["n_gt"] == both["n_pred"] == 0.0


def test_pq_no_match_is_zero():
    gt, _ = _two_match_pair()
    pred = np.zeros_like(gt)
    pred[5, 0] = 1  # touches nothing
    pq = panoptic_quality(gt, pred)
    assert pq["pq"] == pq["dq"] == pq["sq"] == 0.0


def test_merged_prediction_aji_versus_aji_plus():
    gt = np.zeros((4, 4), dtype=np.int32)
    gt[0:2, 0:2] = 1
    gt[0:2, 2:4] = 2
    pred = (gt > 0).astype(np.int32)  # one prediction covers both nuclei
    # AJI: both GT pair with the same prediction: C = 4 + 4, U = 8 + 8.
    assert aji(gt, pred) == pytest.approx(0.5)
    # AJI+: one-to-one: C = 4, U = 8 (both GT) + 8 (pred) - 4.
    assert aji_plus(gt, pred) == pytest.approx(4 / 12)
    # IoU exactly 0.5 is not a match (IoU > t).
    assert object_scores(gt, pred)["tp"] == 0
    assert mean_average_precision(gt, pred) == 0.0
    assert pixel_dice(gt, pred) == 1.0


def test_perfect_and_empty():
    gt, _ = _hand_pair()
    for fn in (aji, aji_plus, mean_average_precision, pixel_dice, _pq):
        assert fn(gt, gt) == 1.0
        assert fn(gt, np.zeros_like(gt)) == 0.0
        assert fn(np.zeros_like(gt), gt) == 0.0
        assert fn(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert object_scores(gt, gt)["f1"] == 1.0
    assert object_scores(gt, np.zeros_like(gt))["f1"] == 0.0
    result = evaluate(gt, gt)
    assert all(result[k] == 1.0 for k in ("aji", "aji_plus", "map", "dice", "f1_50", "f1_70"))
    assert all(result[k] == 1.0 for k in EVALUATE_KEYS)


def _pq(gt: np.ndarray, pred: np.ndarray) -> float:
    return panoptic_quality(gt, pred)["pq"]


def test_input_validation():
    with pytest.raises(ValueError, match="shapes differ"):
        aji(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(TypeError):
        aji(np.zeros((3, 3), float), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="non-negative"):
        aji(-np.ones((3, 3), int), np.zeros((3, 3), int))


# --- random instance images and a slow, literal reference -------------------------------------


def _random_instances(rng: np.random.Generator, shape=(96, 96), n=25) -> np.ndarray:
    """Touching and separate blobs: Voronoi cells cut by discs of random radius."""
    seeds = np.zeros(shape, dtype=bool)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = True
    markers, _ = ndi.label(seeds)
    _, (iy, ix) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    cells = markers[iy, ix]
    dist = ndi.distance_transform_edt(markers == 0)
    radius = rng.uniform(3, 9, size=cells.max() + 1)
    return np.where(dist < radius[cells], cells, 0).astype(np.int32)


def _perturb(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    pred = np.roll(gt, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    labels = np.unique(pred[pred > 0])
    mapping = np.zeros(int(pred.max()) + 1, dtype=np.int64)
    mapping[labels] = rng.permutation(labels.size) + 1
    merge = rng.choice(labels, size=labels.size // 6, replace=False)
    pred = mapping[pred]
    if merge.size:
        pred[np.isin(pred, mapping[merge])] = 1  # merge a few objects into label 1
    drop = rng.choice(np.unique(pred[pred > 0]), size=2, replace=False)
    pred[np.isin(pred, drop)] = 0
    extra = _random_instances(rng, gt.shape, n=5)
    pred = np.where((pred == 0) & (extra > 0), extra + 1000, pred)
    return pred.astype(np.int32)


def _reference(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    g_ids = [int(v) for v in np.unique(gt) if v]
    p_ids = [int(v) for v in np.unique(pred) if v]
    iou = np.zeros((len(g_ids), len(p_ids)))
    inter = np.zeros_like(iou)
    union = np.zeros_like(iou)
    for i, g in enumerate(g_ids):
        gm = gt == g
        for j, p in enumerate(p_ids):
            pm = pred == p
            inter[i, j] = np.logical_and(gm, pm).sum()
            union[i, j] = np.logical_or(gm, pm).sum()
            iou[i, j] = inter[i, j] / union[i, j]
    # Kumar et al. 2017, Algorithm 1, literally.
    c = u = 0.0
    used: set[int] = set()
    for i, g in enumerate(g_ids):
        if len(p_ids) == 0 or iou[i].max() == 0:
            u += (gt == g).sum()
            continue
        j = int(np.argmax(iou[i]))
        c += inter[i, j]
        u += union[i, j]
        used.add(j)
    for j, p in enumerate(p_ids):
        if j not in used:
            u += (pred == p).sum()
    ap = []
    for t in MAP_THRESHOLDS:
        tp = 0
        for i in range(len(g_ids)):
            tp += int(np.count_nonzero(iou[i] > t) > 0)  # unique partner above 0.5
        ap.append(tp / (len(g_ids) + len(p_ids) - tp))
    tp50 = sum(int(np.any(iou[i] > 0.5)) for i in range(len(g_ids)))
    # Kirillov et al. 2019, eq. 1: sum of matched IoU / (TP + FP/2 + FN/2).
    fp50, fn50 = len(p_ids) - tp50, len(g_ids) - tp50
    return {
        "aji": c / u,
        "map": float(np.mean(ap)),
        "f1_50": 2 * tp50 / (len(g_ids) + len(p_ids)),
        "pq": float(iou[iou > 0.5].sum()) / (tp50 + fp50 / 2 + fn50 / 2),
    }


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_slow_reference(seed):
    rng = np.random.default_rng(seed)
    gt = _random_instances(rng)
    pred = _perturb(rng, gt)
    fast = evaluate(gt, pred)
    ref = _reference(gt, pred)
    for key in ("aji", "map", "f1_50", "pq"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0.0 < fast["aji"] < 1.0 and 0.0 < fast["map"] < 1.0
    assert 0.0 < fast["aji_plus"] < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_label_permutation_invariance(seed):
    rng = np.random.default_rng(100 + seed)
    gt = _random_instances(rng)
    pred = _perturb(rng, gt)
    base = evaluate(gt, pred)

    def relabel(img: np.ndarray) -> np.ndarray:
        ids = np.unique(img[img > 0])
        lut = np.zeros(int(img.max()) + 1, dtype=np.int64)
        lut[ids] = rng.choice(np.arange(1, 10 * ids.size + 50_000), ids.size, replace=False)
        return lut[img]

    for g2, p2 in ((relabel(gt), pred), (gt, relabel(pred)), (relabel(gt), relabel(pred))):
        other = evaluate(g2, p2)
        for key, value in base.items():
            assert other[key] == pytest.approx(value, abs=1e-12), key


def test_sparse_path_matches_dense(monkeypatch):
    import bcpath.nuclei.metrics as metrics

    rng = np.random.default_rng(7)
    gt = _random_instances(rng)
    pred = _perturb(rng, gt)
    dense = evaluate(gt, pred)
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", 0)
    assert evaluate(gt, pred) == pytest.approx(dense)
    ov = overlap(gt, pred)
    assert ov.iou_matrix().shape == (ov.n_gt, ov.n_pred)


def test_aji_plus_against_brute_force_small():
    from itertools import permutations

    rng = np.random.default_rng(3)
    gt = _random_instances(rng, shape=(40, 40), n=5)
    pred = _random_instances(rng, shape=(40, 40), n=5)
    ov = overlap(gt, pred)
    inter = np.zeros((ov.n_gt, ov.n_pred))
    inter[ov.pair_gt, ov.pair_pred] = ov.pair_inter
    iou = ov.iou_matrix()
    # One-to-one assignment maximising summed IoU (brute force; n_gt <= n_pred here or swap).
    n = max(ov.n_gt, ov.n_pred)
    iou_sq = np.zeros((n, n))
    iou_sq[: ov.n_gt, : ov.n_pred] = iou
    inter_sq = np.zeros((n, n))
    inter_sq[: ov.n_gt, : ov.n_pred] = inter
    best = max(permutations(range(n)), key=lambda p: iou_sq[np.arange(n), list(p)].sum())
    c = inter_sq[np.arange(n), list(best)].sum()
    u = ov.gt_area.sum() + ov.pred_area.sum() - c
    assert aji_plus(gt, pred) == pytest.approx(c / u)


# --------------------------------------------------------------------------- issue 13 pieces


def test_aji_components_pool_to_the_aji_of_one_image() -> None:
    from bcpath.nuclei.metrics import aji, aji_components

    gt = np.zeros((20, 20), np.int32)
    gt[2:8, 2:8], gt[10:16, 10:16] = 1, 2
    pred = np.zeros_like(gt)
    pred[3:8, 2:8], pred[10:18, 10:16] = 5, 7
    inter, union = aji_components(gt, pred)
    assert inter / union == pytest.approx(aji(gt, pred))
    assert inter == 30 + 36 and union == 36 + 48


def test_summarise_set_pooled_mean_and_worst() -> None:
    from bcpath.nuclei.lodo import MixedSampler, choose_threshold, lodo_folds, summarise_set

    rows = [{"image": "a", "aji": 0.5, "inter": 50, "union": 100}, {"image": "b", "aji": 0.2, "inter": 2, "union": 10}]
    s = summarise_set(rows)
    assert s["mean_aji"] == pytest.approx(0.35) and s["pooled_aji"] == pytest.approx(52 / 110)
    assert (s["worst_image"], s["worst_aji"]) == ("b", 0.2)
    assert lodo_folds(["x", "y", "z"])[1] == ("y", ["x", "z"])
    per_set = {"x": {0.4: {"mean_aji": 0.5}, 0.6: {"mean_aji": 0.6}}, "y": {0.4: {"mean_aji": 0.5}, 0.6: {"mean_aji": 0.3}}}
    assert choose_threshold(per_set) == 0.4  # the mean over sets, not the best single set
    # set uniform, then source image uniform: set 0 has one source of 30 tiles, set 1 three sources
    sampler = MixedSampler([["s"] * 30, ["a", "b", "b", "c"]], seed=0)
    draws = sampler.draw(6000)
    sets = np.array([d[0] for d in draws])
    assert abs((sets == 0).mean() - 0.5) < 0.03
    ones = np.array([d[1] for d in draws if d[0] == 1])
    assert abs((ones == 0).mean() - 1 / 3) < 0.04  # source "a" (one tile) as often as "b" (two)


def test_distance_decoding_splits_touching_nuclei() -> None:
    from bcpath.nuclei.targets import distance_target, encode_targets, instances_from_distance

    yy, xx = np.mgrid[0:40, 0:60]
    labels = np.zeros((40, 60), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[((yy - 20) ** 2 + (xx - 37) ** 2 <= 100) & (labels == 0)] = 2  # touching disc
    dist = distance_target(labels)
    assert dist.max() == pytest.approx(1.0) and dist[labels == 0].max() == 0
    assert dist[20, 20] == pytest.approx(1.0, abs=0.1) and dist[20, 38] > 0.7
    # a "network" that merged the two into one foreground blob with no boundary between them
    probs = np.zeros((3, 40, 60), np.float32)
    probs[0] = labels == 0
    probs[1] = labels > 0
    pred = instances_from_distance(probs, dist, 0.5, 0.5, min_area_px=10)
    assert len(np.unique(pred)) - 1 == 2
    from bcpath.nuclei.metrics import aji

    assert aji(labels, pred) > 0.85
    assert encode_targets(labels).max() == 2


def test_source_image_groups_consep_tiles() -> None:
    from bcpath.nuclei.datasets import source_image

    assert source_image("train_12_003") == "train_12"
    assert source_image("image03") == "image03"
    assert source_image("TCGA-A7-A13E-01Z-00-DX1") == "TCGA-A7-A13E-01Z-00-DX1"
