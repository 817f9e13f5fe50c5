"""bench/bench.py on tiny models: every figure present, anchors give ratios."""

from __future__ import annotations

import pytest

from slimforge.bench.bench import BenchConfig, benchmark
from slimforge.errors import SlimforgeError
from slimforge.models.load import load_model

FAST = BenchConfig(warmup=1, repeats=4, batch_size=4, seq_len=16, latency_seq_len=8,
                   prefill_len=32, decode_tokens=4, threads=1)
REQUIRED = {"p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "size_mb"}


def test_encoder_figures(tiny_bert):
    result = benchmark(tiny_bert, FAST).to_json()
    assert set(result) >= REQUIRED
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["throughput_unit"] == "items/s"
    assert result["threads"] == 1
    assert result["parameters"] > 30_000
    assert result["size_mb"] > 0.1


def test_causal_lm_figures(tiny_llama):
    result = benchmark(tiny_llama, FAST).to_json()
    assert REQUIRED | {"decode_tokens_per_s", "prefill_tokens_per_s"} <= set(result)
    assert result["throughput_unit"] == "tokens/s"
    assert result["decode_tokens_per_s"] > 0
    assert result["prefill_tokens_per_s"] > 0


def test_anchor_is_measured_in_the_same_run(tiny_bert):
    result = benchmark(tiny_bert, FAST, anchor="builtin:tiny-bert")
    assert result.anchor is not None
    assert result.anchor.spec == "builtin:tiny-bert"
    assert set(result.vs_anchor) == {"latency_speedup", "throughput_ratio", "size_ratio"}
    assert result.vs_anchor["size_ratio"] == pytest.approx(1.0)
    assert result.to_json()["anchor"]["p50_ms"] > 0


def test_plain_module_uses_its_example_inputs():
    result = benchmark(load_model("module:slimforge.models.tiny:TinyMLP"), FAST)
    assert result.p50_ms > 0
    assert result.task == "classification"


def test_module_without_inputs_gets_a_clear_error():
    loaded = load_model("module:torch.nn:Identity")
    with pytest.raises(SlimforgeError, match="no tokenizer and no example_inputs"):
        benchmark(loaded, FAST)


@pytest.mark.gpu
def test_cuda_model_reports_cuda_peak(tiny_bert):
    tiny_bert.model.to("cuda")
    result = benchmark(tiny_bert, FAST)
    assert result.device == "cuda"
    assert result.cuda_peak_mb > 0


def test_cpu_model_is_reported_on_cpu(tiny_bert):
    result = benchmark(tiny_bert, FAST)
    assert result.device == "cpu"
    assert result.cuda_peak_mb is None
