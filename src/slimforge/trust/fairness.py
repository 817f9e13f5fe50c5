"""Fairness of a classifier across the groups of a sensitive attribute, through fairlearn.

Owns: `group_fairness`, `fairness_deltas`. Per group: examples, accuracy (over all classes),
selection rate (share predicted `positive`), true- and false-positive rates. Across groups:
the demographic-parity difference (largest gap in selection rate) and the equalized-odds
difference (the larger of the largest gaps in true- and false-positive rate), fairlearn's
definitions, with predictions and labels binarised as `== positive`. After compression the
same figures are measured on the compressed model and the uncompressed one, and
`fairness_deltas` gives each group's change: compression often costs small groups first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def group_fairness(labels: Sequence[Any], predictions: Sequence[Any], groups: Sequence[Any],
                   positive: Any = 1) -> dict[str, Any]:
    """Per-group figures and the two parity differences for one model's predictions."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    y_true, y_pred = np.asarray(labels), np.asarray(predictions)
    sensitive = np.asarray([str(g) for g in groups])
    binary_true, binary_pred = (y_true == positive).astype(int), (y_pred == positive).astype(int)
    frame = MetricFrame(
        metrics={"count": count, "selection_rate": selection_rate,
                 "true_positive_rate": true_positive_rate,
                 "false_positive_rate": false_positive_rate},
        y_true=binary_true, y_pred=binary_pred, sensitive_features=sensitive)
    per_group = {str(g): {k: float(v) for k, v in row.items()}
                 for g, row in frame.by_group.to_dict(orient="index").items()}
    for group, row in per_group.items():
        members = sensitive == group
        row["accuracy"] = float((y_true[members] == y_pred[members]).mean())
    accuracies = [row["accuracy"] for row in per_group.values()]
    return {
        "positive": positive,
        "groups": per_group,
        "demographic_parity_difference": float(demographic_parity_difference(
            binary_true, binary_pred, sensitive_features=sensitive)),
        "equalized_odds_difference": float(equalized_odds_difference(
            binary_true, binary_pred, sensitive_features=sensitive)),
        "accuracy_gap": max(accuracies) - min(accuracies),
    }


def fairness_deltas(model: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Each group's accuracy and selection-rate change, and the parity differences' change,
    of `model` against `reference` (both from `group_fairness`)."""
    groups = {
        group: {key: row[key] - reference["groups"][group][key]
                for key in ("accuracy", "selection_rate")}
        for group, row in model["groups"].items() if group in reference["groups"]}
    return {"groups": groups, **{
        key: model[key] - reference[key]
        for key in ("demographic_parity_difference", "equalized_odds_difference",
                    "accuracy_gap")}}
