"""The real all-MiniLM-L6-v2: embeddings that make sense, int8 that keeps fidelity."""

from __future__ import annotations

import pytest
import torch

from slimforge.bench.bench import BenchConfig, benchmark
from slimforge.compress import apply_step
from slimforge.compress.quantize import cpu_has_vnni
from slimforge.evaluation.evaluate import EvalConfig, evaluate
from slimforge.io.run import write_run
from slimforge.models.load import load_model
from slimforge.models.tasks import embed


@pytest.fixture(scope="module")
def quantized(minilm):
    """`quantized(method)`: MiniLM quantized with `method`, made once per module (the torchao
    route takes 16 s to quantize and measure its layers on a slow CPU)."""
    made: dict = {}

    def get(method: str):
        if method not in made:
            made[method] = apply_step(minilm, {"step": "quantize", "method": method})
        return made[method]

    return get


def test_embeddings_rank_related_sentences_first(minilm):
    emb = embed(minilm, ["How do I open a file for reading?",
                         "Open a file and return a stream for reading its contents.",
                         "The weather in Lisbon is warm in July."])
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


def test_int8_keeps_fidelity_and_shrinks(minilm, tmp_path):
    q = apply_step(minilm, {"step": "quantize"})  # per-channel, int8 tables, auto range
    result = evaluate(q, config=EvalConfig(limit=120))
    assert result.reference == "builtin:minilm"
    full = q.model.encoder.layer[0].intermediate.dense.full_range
    assert result.metrics["cosine_mean"] > (0.985 if bool(full) else 0.96)
    assert result.metrics["knn_overlap_at_10"] > (0.85 if bool(full) else 0.75)
    assert result.metrics["spearman"] > 0.95
    figures = benchmark(q, BenchConfig(repeats=4, batch_size=4, seq_len=32, warmup=1))
    assert figures.size_mb < 0.30 * 90.9  # the int8 word-embedding table is most of it

    again = load_model(str(write_run(tmp_path, "test", "builtin:minilm", {}, {}, "#\n", q)))
    texts = ["Return the value of the named attribute of object."]
    assert torch.equal(embed(again, texts), embed(q, texts))


def test_int8_artifact_gives_the_same_embeddings_in_a_new_process(minilm, tmp_path):
    import subprocess
    import sys

    q = apply_step(minilm, {"step": "quantize"})
    run = write_run(tmp_path, "test", "builtin:minilm", {}, {}, "#\n", q)
    text = "Return a new view of the object's items."
    code = ("import sys, torch, slimforge\n"
            "from slimforge.models.tasks import embed\n"
            f"e = embed(slimforge.load_model({str(run)!r}), [{text!r}])\n"
            "torch.save(e, sys.argv[1])\n")
    out = tmp_path / "e.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=300)
    assert torch.equal(torch.load(out, weights_only=True), embed(q, [text]))


def test_sensitivity_on_calibration_text_keeps_the_worst_layer_in_float(minilm):
    """Ranked on the train split only; held-out fidelity must not get worse for it."""
    mixed = apply_step(minilm, {"step": "quantize", "keep_float": 1})
    (kept,) = mixed.steps[-1]["skip"]
    assert type(mixed.model.get_submodule(kept)) is torch.nn.Linear
    assert "calibration" in mixed.notes[0]
    plain = apply_step(minilm, {"step": "quantize"})
    config = EvalConfig(limit=120)
    with_float = evaluate(mixed, config=config).metrics["cosine_mean"]
    assert with_float >= evaluate(plain, config=config).metrics["cosine_mean"]


VNNI = cpu_has_vnni()


@pytest.mark.parametrize(("method", "cosine", "knn", "limit"), [
    # 8-bit activations with VNNI: measured 0.9939 / 0.907 on 500 paragraphs (Xeon); 7-bit
    # without: 0.9840 / 0.885 on 120 (AVX2 EPYC)
    ("static-int8", 0.99 if VNNI else 0.98, 0.9 if VNNI else 0.85, 120),
    ("weight-only-int8", 0.998, 0.95, 120),     # measured 0.9994 / 0.970 on 500
    # measured 0.9976 / 0.942 on 500; eager torchao is slow (32 paragraphs: about 30 s)
    ("torchao-int8-dynamic", 0.995, 0.92, 32),
])
def test_other_int8_routes_keep_fidelity_on_the_real_model(quantized, method, cosine, knn,
                                                          limit):
    q = quantized(method)
    metrics = evaluate(q, config=EvalConfig(limit=limit)).metrics
    assert metrics["cosine_mean"] > cosine
    assert metrics["knn_overlap_at_10"] > knn
    assert len(q.layers) == 40  # every quantized layer's SQNR is in the artifact


@pytest.mark.xfail(strict=True, reason="dynamic int8 quantizes activations with one scale per "
                   "batch, so a text's embedding depends on its batch-mates (measured: cosine "
                   "0.991 alone vs in a batch of 32); the torchao route's per-token scales, "
                   "static int8's fixed ranges and weight-only int8 do not (tests below)")
def test_int8_embedding_does_not_depend_on_its_batch_mates(minilm):
    _assert_independent_of_batch_mates(apply_step(minilm, {"step": "quantize"}))


@pytest.mark.parametrize("method", ["torchao-int8-dynamic", "weight-only-int8", "static-int8"])
def test_per_token_static_and_weight_only_int8_do_not_depend_on_batch_mates(quantized, method):
    _assert_independent_of_batch_mates(quantized(method))


def _assert_independent_of_batch_mates(q):
    """Alone vs first of 32. Measured: per-batch dynamic int8 0.991; torchao per-token 0.99958
    on the Xeon, 0.99891 on an AVX2 EPYC (padding changes float rounding upstream, which
    flips a few int8 roundings); weight-only int8 in bf16 > 0.9999."""
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "eval", 32)
    alone, batched = embed(q, texts[:1]), embed(q, texts, batch_size=32)[:1]
    assert float((alone.float() * batched.float()).sum()) > 0.998


def test_structured_pruning_shrinks_the_real_model_and_reloads_in_a_new_process(minilm,
                                                                              tmp_path):
    import subprocess
    import sys

    cut = apply_step(minilm, {"step": "prune_structured", "ffn": 0.3, "heads": 0.25})
    layer = cut.model.encoder.layer[0]
    assert (layer.intermediate.dense.out_features, layer.attention.self.num_attention_heads) \
        == (1076, 9)  # of 1536 and 12, in every layer
    assert evaluate(cut, config=EvalConfig(limit=120)).metrics["cosine_mean"] > 0.86  # 0.879
    run = write_run(tmp_path, "test", "builtin:minilm", {}, {}, "#\n", cut)
    text = "Return a new view of the object's items."
    code = ("import sys, torch, slimforge\n"
            "from slimforge.models.tasks import embed\n"
            f"m = slimforge.load_model({str(run)!r})\n"
            "assert m.model.encoder.layer[5].intermediate.dense.out_features == 1076\n"
            f"torch.save(embed(m, [{text!r}]), sys.argv[1])\n")
    out = tmp_path / "e.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=300)
    assert torch.equal(torch.load(out, weights_only=True), embed(cut, [text]))
