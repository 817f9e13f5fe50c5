"""compress/quantize.py: dynamic int8 on tiny models: floors, not exact floats."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from slimforge.compress import apply_step, get_step, parse_step, restructure
from slimforge.compress.quantize import (
    DynamicInt8Linear,
    Int8Embedding,
    QuantConfig,
    cpu_has_vnni,
    quantize,
)
from slimforge.errors import RecipeError


@torch.no_grad()
def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach(), out.detach()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_linear_output_stays_above_an_sqnr_floor(granularity):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    q = DynamicInt8Linear.from_float(linear, per_channel=granularity == "per-channel")
    assert sqnr_db(linear(x), q(x)) > 30
    assert q.weight_int8.dtype == torch.int8
    assert q.weight_int8.abs().max() <= 127


def test_per_channel_beats_per_tensor_on_uneven_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight[0] *= 50  # one outlier row ruins a shared scale
    x = torch.randn(16, 64)
    per_tensor = DynamicInt8Linear.from_float(linear, per_channel=False)
    per_channel = DynamicInt8Linear.from_float(linear, per_channel=True)
    assert sqnr_db(linear(x)[:, 1:], per_channel(x)[:, 1:]) > sqnr_db(
        linear(x)[:, 1:], per_tensor(x)[:, 1:]) + 10


def test_quantize_returns_a_new_model_and_leaves_the_input_alone(tiny_bert):
    before = copy.deepcopy(tiny_bert.model.state_dict())
    q = quantize(tiny_bert.model, QuantConfig())
    assert q is not tiny_bert.model
    for key, value in tiny_bert.model.state_dict().items():
        assert torch.equal(value, before[key])
    linears = [m for m in q.modules() if type(m) is torch.nn.Linear]
    assert linears == []
    batch = tiny_bert.tokenizer(["hello world"], return_tensors="pt")
    ref = tiny_bert.model(**batch).last_hidden_state
    assert sqnr_db(ref, q(**batch).last_hidden_state) > 20


def test_skip_patterns_keep_modules_in_float(tiny_llama):
    q = quantize(tiny_llama.model, QuantConfig(skip=["lm_head", "*.mlp.*"]))
    assert type(q.lm_head) is torch.nn.Linear
    assert type(q.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert type(q.model.layers[0].self_attn.q_proj) is DynamicInt8Linear


def test_restructure_then_load_reproduces_the_quantized_model(tiny_bert):
    loaded = apply_step(tiny_bert, {"step": "quantize", "granularity": "per-tensor"})
    expected = QuantConfig(granularity="per-tensor").model_dump(mode="json")
    assert loaded.steps == [{"step": "quantize", **expected}]
    from slimforge.models.tiny import tiny_bert as build

    empty = restructure(build(seed=5), loaded.steps)
    empty.load_state_dict(loaded.model.state_dict())
    batch = tiny_bert.tokenizer(["same output"], return_tensors="pt")
    assert torch.equal(empty(**batch).last_hidden_state, loaded.model(**batch).last_hidden_state)


def test_packed_kernel_state_is_a_cache_not_state():
    q = DynamicInt8Linear.from_float(torch.nn.Linear(8, 4), per_channel=True)
    q(torch.randn(2, 8))
    assert q._cache
    assert set(q.state_dict()) == {"weight_int8", "weight_scale", "bias", "full_range",
                                   "onednn_from_rows"}
    clone = pickle.loads(pickle.dumps(q))
    assert clone._cache == {}
    assert torch.equal(clone(torch.ones(1, 8)), q(torch.ones(1, 8)))


def test_step_config_errors_name_the_key():
    with pytest.raises(RecipeError, match="granularity"):
        parse_step({"step": "quantize", "granularity": "per-row"})
    with pytest.raises(RecipeError, match="bits"):
        parse_step({"step": "quantize", "bits": 4})
    with pytest.raises(RecipeError, match="Unknown compression step 'prune-all'"):
        parse_step({"step": "prune-all"})
    with pytest.raises(RecipeError, match="needs a `step:` name"):
        parse_step({"method": "dynamic-int8"})
    assert get_step("quantize").config_type is QuantConfig


@pytest.mark.gpu
def test_cuda_runs_the_dequantized_weights():
    torch.manual_seed(0)
    q = DynamicInt8Linear.from_float(torch.nn.Linear(64, 32), per_channel=True)
    x = torch.randn(4, 64)
    expected = x @ q.dequantized_weight().T + q.bias
    out = q.to("cuda")(x.cuda()).cpu()
    assert torch.allclose(out, expected, atol=1e-4)


def test_int8_embedding_rows_are_close_and_padding_stays_zero():
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 16, padding_idx=0)
    q = Int8Embedding.from_float(table)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    assert sqnr_db(table(ids), q(ids)) > 35
    assert torch.equal(q(torch.tensor([0])), torch.zeros(1, 16))
    assert q.weight.shape == (50, 16)
    assert q.weight_int8.element_size() == 1


def test_embeddings_are_quantized_unless_asked_not_to(tiny_bert):
    with_tables = quantize(tiny_bert.model, QuantConfig())
    without = quantize(tiny_bert.model, QuantConfig(embeddings=False))
    assert type(with_tables.embeddings.word_embeddings) is Int8Embedding
    assert type(without.embeddings.word_embeddings) is torch.nn.Embedding
    kept = quantize(tiny_bert.model, QuantConfig(skip=["embeddings.position_embeddings"]))
    assert type(kept.embeddings.position_embeddings) is torch.nn.Embedding


@pytest.mark.parametrize(("choice", "stored"), [("full", True), ("reduced", False),
                                                ("auto", None)])
def test_activation_range_is_stored_in_the_module(choice, stored):
    q = quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                 QuantConfig(activation_range=choice))
    expected = cpu_has_vnni() if stored is None else stored
    assert bool(q[0].full_range) is expected


def test_full_range_activations_are_more_accurate_where_the_cpu_allows():
    if not cpu_has_vnni():
        pytest.skip("without VNNI both settings run 7-bit activations")
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 256)
    x = torch.randn(32, 256)
    full = DynamicInt8Linear.from_float(linear, per_channel=True, full_range=True)
    reduced = DynamicInt8Linear.from_float(linear, per_channel=True, full_range=False)
    assert sqnr_db(linear(x), full(x)) > sqnr_db(linear(x), reduced(x)) + 3


@pytest.mark.parametrize(("options", "message"), [
    ({"method": "dynamic-int8", "dense_cache": True}, "dense_cache applies"),
    ({"method": "weight-only-int8", "granularity": "per-tensor"}, "drop granularity"),
    ({"method": "torchao-int8-dynamic", "activation_range": "reduced"}, "static-int8 only"),
    ({"method": "weight-only-int4", "kernel": "fbgemm"}, "kernel applies"),
    ({"kernel": "onednn", "activation_range": "reduced"}, "use fbgemm"),
])
def test_options_that_do_not_fit_the_method_are_refused(options, message):
    with pytest.raises(RecipeError, match=message):
        parse_step({"step": "quantize", **options})


def test_auto_kernel_is_onednn_only_with_amx_and_8_bit_activations(monkeypatch):
    from slimforge.compress import quantize as module

    monkeypatch.setattr(module, "cpu_has_amx_int8", lambda: True)
    assert module.int8_engine(full_range=True) == "onednn"
    assert module.int8_engine(full_range=False) == "fbgemm"
    monkeypatch.setattr(module, "cpu_has_amx_int8", lambda: False)
    assert module.int8_engine(full_range=True) == "fbgemm"


@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_the_chosen_kernel_is_stored_and_used(kernel):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    q = quantize(model, QuantConfig(kernel=kernel, activation_range="full"))
    assert int(q[0].onednn_from_rows) == (1 if kernel == "onednn" else 0)
    assert f"{kernel} kernel" in repr(q)
    x = torch.randn(8, 64)
    assert sqnr_db(model(x), q(x)) > 30
    assert set(q[0]._cache) == {kernel}


def test_auto_kernel_on_amx_switches_to_onednn_for_large_calls(monkeypatch):
    from slimforge.compress import quantize as module

    monkeypatch.setattr(module, "cpu_has_amx_int8", lambda: True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    q = quantize(model, QuantConfig(activation_range="full"))
    assert int(q[0].onednn_from_rows) == module.ONEDNN_FROM_ROWS
    assert "onednn from 64 rows, fbgemm below" in repr(q)
    small, large = torch.randn(2, 8, 64), torch.randn(4, 16, 64)  # 16 and 64 rows
    assert sqnr_db(model(small), q(small)) > 30
    assert set(q[0]._cache) == {"fbgemm"}
    assert sqnr_db(model(large), q(large)) > 30
    assert set(q[0]._cache) == {"fbgemm", "onednn"}


def test_packing_leaves_the_process_engine_as_it_was():
    before = torch.backends.quantized.engine
    q = DynamicInt8Linear.from_float(torch.nn.Linear(8, 4), per_channel=True, full_range=True)
    q(torch.randn(2, 8))
    assert torch.backends.quantized.engine == before
