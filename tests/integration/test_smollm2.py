"""The real SmolLM2-135M-Instruct from the bundled GGUF: it talks, and its perplexity is sane."""

from __future__ import annotations

import math

from slimforge.bench.bench import BenchConfig, benchmark
from slimforge.evaluation.evaluate import EvalConfig, evaluate


def test_loads_with_tokenizer_and_generates(smollm2):
    assert smollm2.task == "causal-lm"
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    out = smollm2.model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0])


def test_perplexity_on_held_out_docstrings_is_finite_and_low(smollm2):
    result = evaluate(smollm2, config=EvalConfig(max_tokens=600, window=256, stride=128))
    ppl = result.metrics["perplexity"]
    assert math.isfinite(ppl)
    assert 2.0 < ppl < 60.0


def test_bench_reports_decode_and_prefill(smollm2):
    # The engine uncompiled: compiling its decode step takes a minute on a slow CPU, and
    # test_generate.py already checks the compiled step against transformers.
    figures = benchmark(smollm2, BenchConfig(repeats=4, warmup=1, batch_size=2,
                                             prefill_len=64, decode_tokens=4, engine="eager"))
    assert figures.decode_tokens_per_s > 0
    assert figures.prefill_tokens_per_s > 0
    assert 400 < figures.size_mb < 700  # 134.5M fp32 parameters, embeddings tied


def test_weight_only_int8_and_int4_keep_perplexity(smollm2):
    """Issue 3's floors on held-out text: int8 <= 1.02x fp32, int4 (group 32) <= 1.10x."""
    from slimforge.compress import apply_step

    config = EvalConfig(max_tokens=1024, window=512, stride=512)
    base = evaluate(smollm2, config=config).metrics["perplexity"]
    int8 = apply_step(smollm2, {"step": "quantize", "method": "weight-only-int8"})
    assert evaluate(int8, config=config).metrics["perplexity"] / base <= 1.02
    del int8
    int4 = apply_step(smollm2, {"step": "quantize", "method": "weight-only-int4",
                                "group_size": 32})
    assert evaluate(int4, config=config).metrics["perplexity"] / base <= 1.10


def test_wanda_beats_magnitude_at_half_sparsity(smollm2):
    """Sun et al. 2023's claim, on held-out text: at 50% unstructured, Wanda's perplexity is
    below magnitude's."""
    from slimforge.compress import apply_step

    config = EvalConfig(max_tokens=1024, window=512, stride=512)
    magnitude = apply_step(smollm2, {"step": "prune", "sparsity": 0.5})
    by_magnitude = evaluate(magnitude, config=config).metrics["perplexity"]
    del magnitude
    wanda = apply_step(smollm2, {"step": "prune", "method": "wanda", "sparsity": 0.5})
    assert evaluate(wanda, config=config).metrics["perplexity"] < by_magnitude
