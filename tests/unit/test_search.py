"""search.py: quality intervals, the budget on the interval, the guard, the front, the choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimforge.evaluation.evaluate import EvalResult
from slimforge.evaluation.metrics import bootstrap_interval
from slimforge.recipe import Budget, Objective
from slimforge.search import choose, guard, objective_gain, pareto, quality, relaxations, verdict


def _eval(task: str, **per_example: list[float]) -> EvalResult:
    count = len(next(iter(per_example.values())))
    return EvalResult(task, "spec", {}, count, {}, per_example=per_example)


def test_bootstrap_interval_covers_a_known_mean():
    values = np.random.default_rng(1).normal(5.0, 2.0, 400)
    low, high = bootstrap_interval({"v": values}, lambda v: v.mean(-1))
    assert low < 5.0 < high
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(400), rel=0.25)
    assert bootstrap_interval({"v": values}, lambda v: v.mean(-1)) == (low, high)  # seeded


def test_embedding_quality_is_the_mean_cosine_with_its_interval():
    base = _eval("embedding", cosine=[])
    base.samples = 4
    found = quality(_eval("embedding", cosine=[0.99, 0.98, 0.97, 1.0]), base, Budget())
    q = found["cosine_mean"]
    assert q["value"] == pytest.approx(0.985)
    assert 0.97 <= q["low"] <= q["value"] <= q["high"] <= 1.0
    assert quality(base, base, Budget())["cosine_mean"] == {"value": 1.0, "low": 1.0,
                                                            "high": 1.0}


def test_perplexity_ratio_resamples_windows_in_pairs():
    """Every window costs exactly 0.1 nats per token more: the ratio is exp(0.1) in every
    resample, so a paired interval has no width, however different the windows are."""
    tokens = [100.0, 50.0, 300.0, 80.0]
    base_nll = [250.0, 400.0, 600.0, 90.0]
    mine = _eval("causal-lm", nll=[b + 0.1 * t for b, t in zip(base_nll, tokens, strict=True)],
                 tokens=tokens)
    found = quality(mine, _eval("causal-lm", nll=base_nll, tokens=tokens), Budget())
    q = found["perplexity_ratio"]
    assert q["value"] == pytest.approx(math.exp(0.1))
    assert q["low"] == pytest.approx(math.exp(0.1))
    assert q["high"] == pytest.approx(math.exp(0.1))


def test_accuracy_drop_against_the_same_records():
    base = _eval("classification", correct=[1.0, 1.0, 0.0, 1.0] * 25)
    mine = _eval("classification", correct=[1.0, 0.0, 0.0, 1.0] * 25)
    q = quality(mine, base, Budget())["accuracy_drop"]
    assert q["value"] == pytest.approx(0.25)
    assert q["low"] <= 0.25 <= q["high"]
    assert quality(base, base, Budget())["accuracy_drop"]["high"] == 0.0


@pytest.mark.parametrize(("figures", "passes", "hopeless"), [
    ({"cosine_mean": {"value": 0.99, "low": 0.985, "high": 0.995}}, True, False),
    ({"cosine_mean": {"value": 0.981, "low": 0.975, "high": 0.987}}, False, False),  # straddles
    ({"cosine_mean": {"value": 0.95, "low": 0.94, "high": 0.96}}, False, True),
    ({"perplexity_ratio": {"value": 1.05, "low": 1.02, "high": 1.08}}, True, False),
    ({"perplexity_ratio": {"value": 1.15, "low": 1.12, "high": 1.2}}, False, True),
    ({"accuracy_drop": {"value": 0.005, "low": -0.01, "high": 0.02}}, False, False),
])
def test_the_budget_is_judged_on_the_interval(figures, passes, hopeless):
    budget = Budget(min_cosine=0.98, max_perplexity_ratio=1.1, max_accuracy_drop=0.01)
    ok, lost, words = verdict(figures, budget)
    assert (ok, lost) == (passes, hopeless)
    assert next(iter(figures)) in words


def _bench(tput: float, p50: float, p95: float, size: float) -> dict:
    return {"throughput_per_s": tput, "p50_ms": p50, "p95_ms": p95, "size_mb": size}


def test_gain_comes_from_the_same_run_and_the_guard_wants_a_margin():
    bench = {**_bench(300.0, 5.0, 6.0, 23.0), "anchor": _bench(75.0, 8.0, 9.0, 92.0)}
    assert objective_gain(bench, Objective(metric="throughput")) == pytest.approx(4.0)
    assert objective_gain(bench, Objective(metric="latency")) == pytest.approx(1.6)
    assert objective_gain(bench, Objective(metric="p95_latency")) == pytest.approx(1.5)
    assert objective_gain(bench, Objective(metric="size")) == pytest.approx(4.0)
    assert guard(1.02, Objective(), Budget())[0] is False  # masks on a dense kernel: ~1.0x
    assert guard(1.30, Objective(), Budget())[0] is True
    assert guard(1.02, Objective(), Budget(min_gain=0.0))[0] is True


def _row(name: str, cos: float, tput: float, accepted: bool = True, kind: str = "candidate",
         gain: float = 1.0) -> dict:
    return {"name": name, "kind": kind, "status": "measured", "accepted": accepted,
            "gain": gain, "steps": [{"step": "quantize"}], "throughput_per_s": tput,
            "p50_ms": 1000 / tput, "p95_ms": 1.0,
            "size_mb": 1.0, "quality": {"cosine_mean": {"value": cos, "low": cos - 0.002,
                                                        "high": cos + 0.002}}}


def test_pareto_front_and_choice():
    base = _row("baseline", 1.0, 75.0, kind="baseline")
    rows = [_row("int8", 0.993, 130.0, gain=1.7), _row("weights", 0.999, 290.0, gain=3.9),
            _row("pruned", 0.87, 100.0, accepted=False, gain=1.3),
            _row("peer", 0.993, 114.0, accepted=False, kind="peer", gain=1.5),
            {"name": "late", "kind": "candidate", "status": "skipped", "accepted": False}]
    assert set(pareto([base, *rows], Objective())) == {"baseline", "weights"}
    chosen, reason = choose(rows, base, Objective(), Budget())
    assert chosen["name"] == "weights"
    assert "x3.90" in reason
    fallback, why = choose([rows[2]], base, Objective(), Budget())
    assert fallback is base
    assert "returned unchanged" in why


def test_a_gain_within_the_noise_margin_goes_to_fewer_steps():
    base = _row("baseline", 1.0, 75.0, kind="baseline")
    simple = {**_row("w8", 0.999, 290.0, gain=3.90), "steps": [{"step": "quantize"}]}
    combo = {**_row("p+w8", 0.99, 300.0, gain=4.00),
             "steps": [{"step": "prune_structured"}, {"step": "quantize"}]}
    chosen, reason = choose([combo, simple], base, Objective(), Budget(min_gain=0.05))
    assert chosen["name"] == "w8"
    assert "fewer steps" in reason
    clear_win = {**combo, "gain": 4.5}
    assert choose([clear_win, simple], base, Objective(), Budget())[0]["name"] == "p+w8"


def test_relaxations_name_the_setting_that_would_let_a_candidate_in():
    rows = [_row("pruned", 0.9, 100.0, accepted=False, gain=1.3),
            _row("slow", 0.999, 70.0, accepted=False, gain=0.93),
            _row("close", 0.978, 300.0, accepted=False, gain=4.0)]
    advice = relaxations(rows, Budget(min_cosine=0.98))
    assert advice[0] == "close: would pass with budget.min_cosine: 0.9760"
    assert "pruned: would pass with budget.min_cosine: 0.8980" in advice
    assert "slow: would pass with nothing: it is not faster than the baseline here" in advice
