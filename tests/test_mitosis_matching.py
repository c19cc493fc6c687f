"""Unit tests of MIDOG-style matching, F1 counts and non-maximum suppression (no data, no model)."""

from __future__ import annotations

import numpy as np

from bcpath.proliferation.candidates import non_maximum_suppression
from bcpath.proliferation.mitosis import f1_scores, match_detections


def test_match_is_one_to_one_within_radius():
    truth = np.array([[10.0, 10.0], [50.0, 50.0]])
    # Two detections near the first figure: only one may count; one far away is a false positive.
    pred = np.array([[12.0, 10.0], [9.0, 11.0], [200.0, 200.0]])
    assert match_detections(pred, truth, radius=5.0) == (1, 2, 1)


def test_match_prefers_the_assignment_that_matches_most():
    # Greedy nearest matching would give p0 to t1 and leave t0 unmatched; Hungarian matches both.
    truth = np.array([[0.0, 0.0], [6.0, 0.0]])
    pred = np.array([[4.0, 0.0], [10.0, 0.0]])
    assert match_detections(pred, truth, radius=5.0) == (2, 0, 0)


def test_match_radius_is_inclusive_and_empty_inputs():
    assert match_detections(np.array([[3.0, 4.0]]), np.array([[0.0, 0.0]]), radius=5.0) == (1, 0, 0)
    assert match_detections(np.array([[3.0, 4.1]]), np.array([[0.0, 0.0]]), radius=5.0) == (0, 1, 1)
    assert match_detections(np.zeros((0, 2)), np.array([[0.0, 0.0]]), radius=5.0) == (0, 0, 1)
    assert match_detections(np.array([[0.0, 0.0]]), np.zeros((0, 2)), radius=5.0) == (0, 1, 0)


def test_f1_scores():
    scores = f1_scores(3, 1, 2)
    assert scores["precision"] == 0.75 and scores["recall"] == 0.6
    assert np.isclose(scores["f1"], 2 * 0.75 * 0.6 / 1.35)
    assert np.isnan(f1_scores(0, 0, 0)["f1"])


def test_nms_keeps_the_best_of_each_cluster():
    x = np.array([0.0, 3.0, 30.0, 32.0, 100.0])
    y = np.zeros(5)
    score = np.array([0.6, 0.9, 0.7, 0.8, 0.1])
    kept = non_maximum_suppression(x, y, score, radius=5.0)
    assert kept.tolist() == [1, 3, 4]  # by decreasing score, one per cluster


def test_nms_chain_is_greedy_not_transitive():
    # b suppresses a and c (each within 5 of b); d is 6 from c but 10 from b: kept.
    x = np.array([0.0, 4.0, 8.0, 14.0])
    kept = non_maximum_suppression(x, np.zeros(4), np.array([0.5, 0.9, 0.5, 0.4]), radius=5.0)
    assert sorted(kept.tolist()) == [1, 3]
    assert non_maximum_suppression(np.zeros(0), np.zeros(0), np.zeros(0), 5.0).size == 0
