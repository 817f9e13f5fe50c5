"""The torchao route for int8 weights with int8 dynamic activations.

Owns: `TorchaoInt8Linear`. The weight is stored as slimforge's own plain tensors (int8 codes,
one symmetric scale per output channel or per matrix), so it saves to safetensors and reloads
without torchao's tensor subclasses in the file; on first use the codes are handed unchanged
to torchao's `Int8Tensor` (the kernel path of `Int8DynamicActivationInt8WeightConfig`), which
quantizes each activation row (token) with its own scale. Per-token scales make a text's
output independent of its batch-mates, unlike PyTorch's per-batch dynamic int8.

Why both routes exist: `torch.ao.quantization`'s kernels are deprecated upstream and torchao is
their successor, but on the CPU torchao's eager path is slower than fp32 (MiniLM at batch 32:
see docs/benchmarks.md); it is fast only under `torch.compile`. `quantize` keeps PyTorch's
kernels as the CPU default and this route one `method` away.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimforge.compress.codes import KernelCache, fill_int8_linear, init_int8_linear
from slimforge.errors import SlimforgeError


def _torchao() -> Any:
    try:
        from torchao.quantization import Int8Tensor, PerRow, PerTensor
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import (
            QuantizeTensorToInt8Kwargs,
        )
    except ImportError as err:
        raise SlimforgeError(
            f"The torchao route needs torchao with Int8Tensor ({err}).",
            "pip install 'torchao>=0.15', or use method: dynamic-int8.") from err
    return Int8Tensor, PerRow, PerTensor, QuantizeTensorToInt8Kwargs


class TorchaoInt8Linear(KernelCache):
    """A Linear computed by torchao with int8 weights and per-token int8 activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool, channels: int) -> None:
        super().__init__()
        init_int8_linear(self, in_features, out_features, bias, channels)

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool) -> TorchaoInt8Linear:
        """Quantize a float Linear's weight symmetrically to int8 ([-127, 127])."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     linear.out_features if per_channel else 1)
        fill_int8_linear(module, linear, per_channel)
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (int8 times scale)."""
        return self.weight_int8.float() * self.weight_scale.float()[:, None]

    def _int8_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        int8_tensor, per_row, per_tensor, act_kwargs = _torchao()
        granularity = per_row() if len(self.weight_scale) > 1 else per_tensor()
        scale = self.weight_scale.float().reshape(-1, 1)
        if len(scale) == 1:
            scale = scale.reshape(1, 1)
        # Given our scale, torchao's rounding of int8 * scale / scale returns our codes exactly.
        weight = int8_tensor.from_hp(
            self.dequantized_weight().to(dtype), granularity, scale=scale,
            act_quant_kwargs=act_kwargs(granularity=per_row()))
        if not torch.equal(weight.qdata, self.weight_int8):
            raise SlimforgeError("torchao changed the int8 codes it was given.",
                                 "report the torchao version; use method: dynamic-int8.")
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.cached(f"int8/{x.dtype}/{x.device}",
                             lambda: self._int8_tensor(x.dtype).to(x.device))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        kind = "per-channel" if len(self.weight_scale) > 1 else "per-tensor"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                "per-token int8 activations (torchao)")
