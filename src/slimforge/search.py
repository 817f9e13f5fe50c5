"""How `optimize` judges candidates: quality intervals, the budget, the guard, the Pareto front
and the choice.

Owns: `quality`, `verdict`, `objective_gain`, `guard`, `pareto`, `choose`, `relaxations`.
Pure functions over evaluation results and result rows (the dicts `optimize` writes to
`results.json`); nothing here runs a model. Quality is a change against the baseline on the
same examples, with a paired bootstrap interval, and the budget is judged on the interval's
pessimistic end: a candidate passes only if the floor holds across the interval. Speed is
judged on figures measured against the baseline in the same run (alternating rounds), so the
machine's drift cancels out of the ratio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimforge.errors import SlimforgeError
from slimforge.evaluation.evaluate import EvalResult
from slimforge.evaluation.metrics import bootstrap_interval
from slimforge.recipe import Budget, Objective

LOWER_IS_BETTER = {"perplexity_ratio", "accuracy_drop"}
"""Judged quality metrics where smaller is better (the rest: larger is better)."""


def _interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def quality(result: EvalResult, base: EvalResult, budget: Budget) -> dict[str, dict[str, float]]:
    """The judged quality change of `result` against the baseline's `base`, first, with its
    bootstrap interval; then the task's plain figures.

    - embedding: `cosine_mean` to the baseline's embeddings of the same texts;
    - causal LM: `perplexity_ratio` (candidate / baseline, windows resampled in pairs);
    - classification: `accuracy_drop` (baseline - candidate, records resampled in pairs).
    """
    level, resamples = budget.confidence, budget.resamples
    mine, theirs = result.per_example, base.per_example
    if result.task == "embedding":
        cos = [1.0] * result.samples if result is base else mine.get("cosine")
        if cos is None:
            raise SlimforgeError(f"{result.spec} was evaluated without a reference.",
                                 "evaluate candidates against the baseline's outputs.")
        low, high = bootstrap_interval({"c": cos}, lambda c: c.mean(1), level, resamples)
        return {"cosine_mean": _interval(float(np.mean(cos)), low, high),
                **_plain(result, ("knn_overlap_at_10", "retrieval_at_1"))}
    if result.task == "causal-lm":
        columns = {"mine": mine["nll"], "base": theirs["nll"], "tokens": mine["tokens"]}

        def ratio(mine: np.ndarray, base: np.ndarray, tokens: np.ndarray) -> np.ndarray:
            return np.exp((mine.sum(-1) - base.sum(-1)) / tokens.sum(-1))

        value = float(ratio(*(np.asarray(c, dtype=np.float64) for c in columns.values())))
        low, high = bootstrap_interval(columns, ratio, level, resamples)
        return {"perplexity_ratio": _interval(value, low, high),
                **_plain(result, ("perplexity",))}
    if result.task == "classification":
        columns = {"mine": mine["correct"], "base": theirs["correct"]}

        def drop(mine: np.ndarray, base: np.ndarray) -> np.ndarray:
            return base.mean(-1) - mine.mean(-1)

        value = float(np.mean(theirs["correct"]) - np.mean(mine["correct"]))
        low, high = bootstrap_interval(columns, drop, level, resamples)
        return {"accuracy_drop": _interval(value, low, high),
                **_plain(result, ("accuracy", "macro_f1"))}
    raise SlimforgeError(f"No quality metric to judge {result.spec} ({result.task}) by.",
                         "optimize embedding, causal-lm or classification models.")


def _plain(result: EvalResult, keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {k: {"value": result.metrics[k]} for k in keys if k in result.metrics}


def _floor(metric: str, budget: Budget) -> float:
    return {"cosine_mean": budget.min_cosine, "perplexity_ratio": budget.max_perplexity_ratio,
            "accuracy_drop": budget.max_accuracy_drop}[metric]


def verdict(figures: dict[str, dict[str, float]], budget: Budget) -> tuple[bool, bool, str]:
    """(passes, certainly fails, words) for a candidate's judged quality (its first metric).

    It passes when the whole interval is inside the floor, and certainly fails when the whole
    interval is outside it; in between, it does not pass (the evidence is not enough)."""
    metric, q = next(iter(figures.items()))
    floor = _floor(metric, budget)
    lower_better = metric in LOWER_IS_BETTER
    worst, best = (q["high"], q["low"]) if lower_better else (q["low"], q["high"])
    ok = worst <= floor if lower_better else worst >= floor
    hopeless = best > floor if lower_better else best < floor
    sign = ("≤" if ok else ">") if lower_better else ("≥" if ok else "<")
    words = (f"{metric} {q['value']:.4f} [{q['low']:.4f}, {q['high']:.4f}]: "
             f"{'pessimistic end' if ok else 'worst case'} {worst:.4f} {sign} {floor}")
    return ok, hopeless, words


def objective_gain(bench: dict[str, Any], objective: Objective) -> float:
    """How much better than the baseline a candidate is on the objective (>1: better),
    from figures measured against the baseline in the same run."""
    anchor = bench.get("anchor")
    if anchor is None:
        return 1.0
    return {"throughput": bench["throughput_per_s"] / anchor["throughput_per_s"],
            "latency": anchor["p50_ms"] / bench["p50_ms"],
            "p95_latency": anchor["p95_ms"] / bench["p95_ms"],
            "size": anchor["size_mb"] / bench["size_mb"]}[objective.metric]


def guard(gain: float, objective: Objective, budget: Budget) -> tuple[bool, str]:
    """The guard: is the candidate really better on the objective than the baseline, on
    this machine, at the measured shapes? Fake quantization or zeros a dense kernel still
    multiplies measure ~1.0x here and are rejected."""
    need = 1 + budget.min_gain
    ok = gain >= need
    return ok, (f"{objective.metric} x{gain:.2f} of the baseline "
                f"({'≥' if ok else 'below'} the guard's x{need:.2f})")


def _objective_value(row: dict[str, Any], objective: Objective) -> float:
    """The objective's figure of a row, oriented so that larger is better."""
    return {"throughput": row["throughput_per_s"], "latency": -row["p50_ms"],
            "p95_latency": -row["p95_ms"], "size": -row["size_mb"]}[objective.metric]


def _quality_value(row: dict[str, Any]) -> float:
    metric, q = next(iter(row["quality"].items()))
    return -q["value"] if metric in LOWER_IS_BETTER else q["value"]


def pareto(rows: list[dict[str, Any]], objective: Objective) -> list[str]:
    """Names of the measured rows no other row beats on both quality and the objective."""
    measured = [r for r in rows if r.get("status") == "measured"]
    points = {r["name"]: (_quality_value(r), _objective_value(r, objective)) for r in measured}
    return [name for name, (q, o) in points.items()
            if not any(q2 >= q and o2 >= o and (q2, o2) != (q, o)
                       for q2, o2 in points.values())]


def choose(rows: list[dict[str, Any]], baseline: dict[str, Any], objective: Objective,
           budget: Budget) -> tuple[dict[str, Any], str]:
    """The accepted candidate with the largest objective gain, and why; the baseline, and
    why, when none was accepted. Gains within the guard's margin of the best are a tie
    (timing noise), and a tie goes to the candidate with fewer steps."""
    accepted = [r for r in rows if r.get("accepted") and r["kind"] == "candidate"]
    if not accepted:
        return baseline, ("no candidate kept quality within the budget and beat the baseline "
                          "by the guard's margin: the baseline is returned unchanged")
    top = max(r["gain"] for r in accepted)
    tied = [r for r in accepted if r["gain"] * (1 + budget.min_gain) >= top]
    best = min(tied, key=lambda r: (len(r["steps"]), -r["gain"]))
    reason = (f"the largest {objective.metric} gain (x{best['gain']:.2f}, measured against the "
              f"baseline in the same run) of the {len(accepted)} candidate(s) within the budget")
    if best["gain"] < top:
        reason = (f"{objective.metric} x{best['gain']:.2f} of the baseline, within the guard's "
                  f"margin of the top gain (x{top:.2f}) with fewer steps, of the "
                  f"{len(accepted)} candidate(s) within the budget")
    return best, reason


def relaxations(rows: list[dict[str, Any]], budget: Budget, limit: int = 3) -> list[str]:
    """For rejected candidates, closest first: which budget setting would have let each in."""
    out = []
    for row in rows:
        if row["kind"] != "candidate" or row.get("status") != "measured" or row["accepted"]:
            continue
        metric, q = next(iter(row["quality"].items()))
        lower_better = metric in LOWER_IS_BETTER
        worst = q["high"] if lower_better else q["low"]
        floor = _floor(metric, budget)
        key = {"cosine_mean": "min_cosine", "perplexity_ratio": "max_perplexity_ratio",
               "accuracy_drop": "max_accuracy_drop"}[metric]
        miss = (worst - floor) if lower_better else (floor - worst)
        needs = []
        if miss > 0:
            needs.append(f"budget.{key}: {worst:.4f}")
        if row["gain"] < 1 + budget.min_gain:
            needs.append(f"budget.min_gain: {max(row['gain'] - 1, 0):.2f}" if row["gain"] > 1
                         else "nothing: it is not faster than the baseline here")
        distance = max(miss, 0) + max(1 + budget.min_gain - row["gain"], 0)
        out.append((distance, f"{row['name']}: would pass with " + " and ".join(needs)))
    return [text for _, text in sorted(out)[:limit]]
