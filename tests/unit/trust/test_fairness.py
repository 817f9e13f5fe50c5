"""trust/fairness.py: per-group figures and parity differences on a constructed example whose
answers are worked out by hand (and are fairlearn's definitions)."""

from __future__ import annotations

import pytest

from slimforge.trust.fairness import fairness_deltas, group_fairness

# group a: labels 1 0 1 0 1 0, predictions 1 0 0 0 1 1 -> selection 3/6, TPR 2/3, FPR 1/3
# group b: labels 1 1 0 0,     predictions 1 1 1 0     -> selection 3/4, TPR 1,   FPR 1/2
LABELS = [1, 0, 1, 0, 1, 0, 1, 1, 0, 0]
PREDICTIONS = [1, 0, 0, 0, 1, 1, 1, 1, 1, 0]
GROUPS = ["a"] * 6 + ["b"] * 4


def test_group_figures_match_the_hand_worked_example():
    report = group_fairness(LABELS, PREDICTIONS, GROUPS)
    a, b = report["groups"]["a"], report["groups"]["b"]
    assert (a["count"], b["count"]) == (6, 4)
    assert a["selection_rate"] == pytest.approx(0.5)
    assert b["selection_rate"] == pytest.approx(0.75)
    assert a["true_positive_rate"] == pytest.approx(2 / 3)
    assert b["true_positive_rate"] == 1
    assert a["false_positive_rate"] == pytest.approx(1 / 3)
    assert b["false_positive_rate"] == pytest.approx(0.5)
    assert a["accuracy"] == pytest.approx(4 / 6)
    assert b["accuracy"] == pytest.approx(3 / 4)
    assert report["demographic_parity_difference"] == pytest.approx(0.25)
    # the larger of the TPR gap (1/3) and the FPR gap (1/6)
    assert report["equalized_odds_difference"] == pytest.approx(1 / 3)
    assert report["accuracy_gap"] == pytest.approx(3 / 4 - 4 / 6)


def test_multiclass_labels_are_binarised_on_the_positive_class():
    labels = [2, 0, 2, 1]
    predictions = [2, 1, 0, 1]
    report = group_fairness(labels, predictions, ["x", "x", "y", "y"], positive=2)
    assert report["groups"]["x"]["selection_rate"] == 0.5
    assert report["groups"]["y"]["selection_rate"] == 0
    assert report["groups"]["y"]["accuracy"] == 0.5  # accuracy counts every class


def test_deltas_against_the_uncompressed_model():
    reference = group_fairness(LABELS, LABELS, GROUPS)
    model = group_fairness(LABELS, PREDICTIONS, GROUPS)
    deltas = fairness_deltas(model, reference)
    assert deltas["groups"]["a"]["accuracy"] == pytest.approx(4 / 6 - 1)
    assert deltas["demographic_parity_difference"] == pytest.approx(
        model["demographic_parity_difference"] - reference["demographic_parity_difference"])
