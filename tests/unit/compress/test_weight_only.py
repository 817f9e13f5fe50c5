"""compress/weight_only.py and the weight-only methods of `quantize`."""

from __future__ import annotations

import pickle

import pytest
import torch

from slimforge.compress.quantize import QuantConfig, compute_dtype, cpu_has_bf16, quantize
from slimforge.compress.weight_only import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from slimforge.errors import SlimforgeError


@torch.no_grad()
def _rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().float(), out.detach().float()
    return float((ref - out).norm() / ref.norm())


@pytest.mark.parametrize("build", [WeightOnlyInt8Linear.from_float,
                                   lambda lin: WeightOnlyInt4Linear.from_float(lin, 32)])
def test_kernel_matches_the_dequantized_weight(build):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 48)
    layer = build(linear)
    for rows in (1, 3, 40):  # the packed kernel below DENSE_FROM_ROWS, a dense GEMM above
        x = torch.randn(rows, 2, 128)
        expected = torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
        assert _rel_err(expected, layer(x)) < 1e-5
        assert _rel_err(expected, layer.to(torch.bfloat16)(x.bfloat16())) < 1e-2
        layer.float()


def test_int8_and_int4_error_against_float():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    x = torch.randn(8, 256)
    assert _rel_err(linear(x), WeightOnlyInt8Linear.from_float(linear)(x)) < 0.01
    assert _rel_err(linear(x), WeightOnlyInt4Linear.from_float(linear, 32)(x)) < 0.1


def test_int4_is_exact_on_weights_already_on_a_16_level_grid():
    """Known answer: weights of the form (code - 8) * s + z per group survive int4 exactly,
    which is why SmolLM2 (a Q4_1 GGUF expanded to float) loses little at group size 32."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (16, 64)).float()
    codes[:, ::32] = 0  # every group spans the full 0..15 range
    codes[:, 1::32] = 15
    scale = torch.rand(16, 2, 1) + 0.1
    weight = ((codes.reshape(16, 2, 32) - 8) * scale + torch.randn(16, 2, 1)).reshape(16, 64)
    linear = torch.nn.Linear(64, 16, bias=False)
    linear.weight.data.copy_(weight)
    layer = WeightOnlyInt4Linear.from_float(linear, 32)
    assert torch.allclose(layer.dequantized_weight(), weight, atol=1e-5)
    assert torch.equal(layer.codes().float(), codes)


def test_kernel_cache_is_neither_saved_nor_stale():
    layer = WeightOnlyInt4Linear.from_float(torch.nn.Linear(64, 16), 32)
    layer(torch.randn(1, 64))
    assert layer._cache
    assert "_cache" not in layer.state_dict()
    assert pickle.loads(pickle.dumps(layer))._cache == {}
    layer.to(torch.bfloat16)
    assert layer._cache == {}
    layer(torch.randn(1, 64, dtype=torch.bfloat16))
    layer.load_state_dict(layer.state_dict())
    assert layer._cache == {}


def test_groups_that_do_not_divide_a_layer_are_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(48, 16), torch.nn.Linear(64, 8),
                                torch.nn.Linear(64, 16))
    with pytest.raises(SlimforgeError, match="cannot pack 0, 1: in_features must be"):
        quantize(model, QuantConfig(method="weight-only-int4", group_size=32))
    kept = quantize(model, QuantConfig(method="weight-only-int4", skip=["0", "1"]))
    assert [type(m) for m in kept] == [torch.nn.Linear, torch.nn.Linear, WeightOnlyInt4Linear]


def test_compute_dtype_follows_the_method_and_the_cpu():
    assert compute_dtype(QuantConfig()) is torch.float32
    wo = QuantConfig(method="weight-only-int8")
    assert compute_dtype(wo) is (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    forced = QuantConfig(method="weight-only-int4", compute_dtype="float32")
    assert compute_dtype(forced) is torch.float32


def test_weight_only_model_runs_in_its_compute_dtype(tiny_llama):
    config = QuantConfig(method="weight-only-int4", compute_dtype="bfloat16")
    q = quantize(tiny_llama.model, config)
    assert type(q.lm_head) is WeightOnlyInt4Linear
    assert q.model.norm.weight.dtype is torch.bfloat16
    logits = q(torch.tensor([[5, 6, 7]])).logits
    assert logits.dtype is torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    assert next(tiny_llama.model.parameters()).dtype is torch.float32  # input untouched


@pytest.mark.gpu
def test_cuda_runs_the_dequantized_weights():
    layer = WeightOnlyInt4Linear.from_float(torch.nn.Linear(64, 16), 32)
    x = torch.randn(3, 64)
    expected = torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
    assert torch.allclose(layer.to("cuda")(x.cuda()).cpu(), expected, atol=1e-4)


def test_dense_cache_keeps_the_dequantized_weight_and_is_saved():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    cached = quantize(model, QuantConfig(method="weight-only-int8", dense_cache=True,
                                         compute_dtype="float32"))
    plain = quantize(model, QuantConfig(method="weight-only-int8", compute_dtype="float32"))
    x = torch.randn(20, 32)  # 20 rows: the dense path
    assert torch.equal(cached(x), plain(x))
    assert any(key.startswith("dense/") for key in cached[0]._cache)
    assert not plain[0]._cache
    assert bool(cached[0].state_dict()["keep_dense"])


@pytest.mark.parametrize("width", [56, 1382])
def test_widths_the_packed_kernel_cannot_take_run_dense(width):
    """Structured pruning leaves FFN widths such as 56 or 1,382; PyTorch's packed int8 kernel
    crashes the process on those with more than one row, so they must not reach it."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, 32)
    layer = WeightOnlyInt8Linear.from_float(linear)
    x = torch.randn(2, 8, width)
    expected = torch.nn.functional.linear(x, layer.dequantized_weight(), linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
