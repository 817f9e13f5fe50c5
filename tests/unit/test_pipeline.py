"""pipeline.py: how stages are judged against the floor and how the winner is picked."""

from __future__ import annotations

import pytest

from slimforge.bench.bench import BenchResult
from slimforge.errors import SlimforgeError
from slimforge.evaluation.evaluate import EvalResult
from slimforge.pipeline import StageResult, _judge, _pick
from slimforge.recipe import Selection


def _eval(**metrics: float) -> EvalResult:
    return EvalResult("t", "spec", metrics, 10, {})


def _stage(name: str, passed: bool, p50: float, size: float, tput: float) -> StageResult:
    bench = BenchResult("spec", "embedding", p50, p50, p50, "", tput, "items/s", "", 1.0, size,
                        1, 0.0, 1, "cpu")
    return StageResult(name, None, _eval(), bench, passed, "", [])  # type: ignore[arg-type]


@pytest.mark.parametrize(("stage", "base", "passed", "words"), [
    (_eval(cosine_mean=0.975), _eval(), True, "cosine 0.9750 ≥ 0.97"),
    (_eval(cosine_mean=0.944), _eval(), False, "cosine 0.9440 < 0.97"),
    (_eval(perplexity=16.5), _eval(perplexity=15.9), True, "perplexity ×1.038 ≤ ×1.1"),
    (_eval(perplexity=45.1), _eval(perplexity=15.9), False, "perplexity ×2.836 > ×1.1"),
    (_eval(accuracy=0.90), _eval(accuracy=0.92), False, "accuracy ×0.978 < ×0.99"),
])
def test_judge_against_the_floor(stage, base, passed, words):
    assert _judge(stage, base, Selection()) == (passed, words)


def test_judge_needs_a_metric():
    with pytest.raises(SlimforgeError, match="No quality metric"):
        _judge(_eval(retrieval_at_1=0.3), _eval(), Selection())


def test_pick_the_best_passing_stage_by_objective():
    stages = [_stage("baseline", True, 10.0, 90.0, 50.0), _stage("fast", True, 4.0, 60.0, 120.0),
              _stage("faster-but-wrong", False, 2.0, 20.0, 300.0),
              _stage("small", True, 6.0, 25.0, 80.0)]
    best, reason = _pick(stages, Selection(objective="latency"))
    assert best.name == "fast"
    assert "below the floor: faster-but-wrong" in reason
    assert _pick(stages, Selection(objective="size"))[0].name == "small"
    assert _pick(stages, Selection(objective="throughput"))[0].name == "fast"
    assert _pick(stages[:1], Selection())[0].name == "baseline"
