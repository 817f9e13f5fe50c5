"""serve/server.py: how batch workers and threads share the cores."""

from __future__ import annotations

from slimforge.serve.server import plan_workers


def test_cpu_encoders_get_one_core_per_worker_up_to_eight():
    assert plan_workers("embedding", "cpu", 2, None, None) == (2, 1)
    assert plan_workers("classification", "cpu", 32, None, None) == (8, 4)


def test_what_is_given_is_kept_and_the_rest_fills_the_cores():
    assert plan_workers("embedding", "cpu", 8, None, 4) == (2, 4)
    assert plan_workers("embedding", "cpu", 8, 2, None) == (2, 4)
    assert plan_workers("embedding", "cpu", 8, 3, 1) == (3, 1)


def test_generation_and_gpus_get_one_worker_on_every_core():
    assert plan_workers("causal-lm", "cpu", 16, None, None) == (1, 16)
    assert plan_workers("embedding", "cuda", 16, None, None) == (1, 16)
