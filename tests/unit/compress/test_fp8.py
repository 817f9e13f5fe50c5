"""compress/fp8.py: float8 e4m3 weights and per-token activations."""

from __future__ import annotations

import pytest
import torch

from slimforge.compress.fp8 import Float8Linear, fp8_fast_path_available
from slimforge.compress.quantize import QuantConfig, quantize
from slimforge.errors import SlimforgeError


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().float(), out.detach().float()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def test_emulated_fp8_is_close_and_one_byte_per_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = Float8Linear.from_float(linear)
    x = torch.randn(8, 64)
    assert _sqnr_db(linear(x), layer(x)) > 25  # e4m3: 3 mantissa bits on both operands
    assert layer.weight_fp8_bits.element_size() == 1


def test_each_row_has_its_own_scale():
    torch.manual_seed(0)
    layer = Float8Linear.from_float(torch.nn.Linear(32, 16))
    layer.bias.zero_()
    quiet, loud = torch.randn(1, 32) * 1e-3, torch.randn(1, 32) * 1e3
    alone, together = layer(quiet), layer(torch.cat([quiet, loud]))[:1]
    # One scale for the batch would round `quiet` to zeros; GEMM blocking may differ in ulps.
    assert alone.abs().min() > 0
    assert torch.allclose(alone, together, rtol=1e-5, atol=0)


def test_casting_the_model_keeps_the_codes_one_byte():
    layer = Float8Linear.from_float(torch.nn.Linear(32, 16))
    codes = layer.weight_fp8_bits.clone()
    layer.to(torch.bfloat16)
    assert torch.equal(layer.weight_fp8_bits, codes)
    assert layer(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_layers_the_gpu_kernel_cannot_tile_are_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 10))
    with pytest.raises(SlimforgeError, match="fp8 cannot pack 1: in_features and out_features"):
        quantize(model, QuantConfig(method="fp8"))
    assert isinstance(quantize(model, QuantConfig(method="fp8", skip=["1"]))[0], Float8Linear)


@pytest.mark.gpu
def test_hopper_runs_the_fp8_gemm_and_agrees_with_the_emulation():
    device = torch.device("cuda")
    if not fp8_fast_path_available(device):
        pytest.skip("needs a GPU of compute capability 8.9+ (Ada, Hopper) for fp8 GEMMs")
    torch.manual_seed(0)
    layer = Float8Linear.from_float(torch.nn.Linear(256, 128))
    x = torch.randn(37, 256)  # not a multiple of 16 rows: padded inside
    emulated = layer(x)
    fast = layer.to(device)(x.to(device, torch.bfloat16)).float().cpu()
    assert fast.shape == emulated.shape
    assert _sqnr_db(emulated, fast) > 30  # bf16 output rounding only
