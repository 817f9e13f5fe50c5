"""compress/torchao_int8.py: the torchao route keeps slimforge's codes and scales each token."""

from __future__ import annotations

import torch

from slimforge.compress.torchao_int8 import TorchaoInt8Linear


def test_torchao_computes_with_exactly_our_codes():
    torch.manual_seed(0)
    layer = TorchaoInt8Linear.from_float(torch.nn.Linear(64, 32), per_channel=True)
    weight = layer._int8_tensor(torch.float32)
    assert torch.equal(weight.qdata, layer.weight_int8)
    assert torch.allclose(weight.scale.flatten(), layer.weight_scale)


def test_each_row_is_quantized_with_its_own_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = TorchaoInt8Linear.from_float(linear, per_channel=True)
    quiet = torch.randn(1, 64) * 0.01
    loud = torch.randn(1, 64) * 100  # with one scale per batch, it would flatten `quiet`
    alone, together = layer(quiet), layer(torch.cat([quiet, loud]))[:1]
    assert torch.equal(alone, together)
    ref = linear(quiet)
    assert (ref - alone).norm() / ref.norm() < 0.02


def test_per_tensor_weights_are_supported():
    layer = TorchaoInt8Linear.from_float(torch.nn.Linear(16, 8), per_channel=False)
    assert layer.weight_scale.shape == (1,)
    assert layer(torch.randn(3, 16)).shape == (3, 8)
