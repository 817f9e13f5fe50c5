"""Weight-only int8 and int4 Linear layers for memory-bound work (LLM decode at batch 1).

Owns: `WeightOnlyInt8Linear` (one symmetric scale per output channel) and
`WeightOnlyInt4Linear` (asymmetric, one scale and zero per group of `group_size` inputs).
Activations stay in the model's compute dtype; weights are read as int8 or int4, which is what
bounds decode speed. On the CPU they run PyTorch's packed kernels
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`), which are fast with bfloat16
activations and slow with float32 ones, so `quantize` runs such models in bfloat16 where the
CPU has native bf16. Saved state is portable plain tensors (int4 packed two per byte by us);
the kernel's own packed layout is a cache rebuilt on first use. The packed kernels serve few
rows (decode); from `DENSE_FROM_ROWS` rows on (prefill) the work is compute-bound and a dense
GEMM on the dequantized weight is faster; with `keep_dense` set that weight is kept between
calls (faster at small batches, 2 more bytes per weight in RAM). On CUDA the layers run
dequantized: correct, not faster.
"""

from __future__ import annotations

import torch
from torch import nn

from slimforge.compress.codes import (
    KernelCache,
    fill_int8_linear,
    init_int8_linear,
    int4_groups,
)

DENSE_FROM_ROWS = 16
PACKED_K_MULTIPLE = 16
"""PyTorch's CPU `_weight_int8pack_mm` (torch 2.13) crashes the process on more than one row
when the input width is not a multiple of 16 (e.g. 56 or 1,382 FFN neurons left by structured
pruning); such layers take the dense path."""


class _WeightOnlyLinear(KernelCache):
    """Shared plumbing: the path choice (packed kernel or dense GEMM) and the bias."""

    in_features: int
    out_features: int

    def __init__(self) -> None:
        super().__init__()
        # True: keep the dequantized weight for the dense path instead of rebuilding it on
        # every call (QuantConfig.dense_cache). Saved, so a reloaded model behaves the same.
        self.register_buffer("keep_dense", torch.tensor(False))

    def _dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        key = f"dense/{dtype}"
        kept = self._cache.get(key)  # looked up first: reading the flag costs a tensor sync
        if kept is not None:
            return kept
        if bool(self.keep_dense):
            return self.cached(key, lambda: self.dequantized_weight().to(dtype))
        return self.dequantized_weight().to(dtype)

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _packed_mm(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if (x.device.type == "cpu" and flat.shape[0] < DENSE_FROM_ROWS
                and self.in_features % PACKED_K_MULTIPLE == 0):
            out = self._packed_mm(flat.contiguous())  # the packed kernels need contiguous rows
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        else:  # the bias rides in the GEMM (one pass over the output instead of two)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = nn.functional.linear(flat, self._dense_weight(x.dtype), bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class WeightOnlyInt8Linear(_WeightOnlyLinear):
    """y = x W^T + b with W stored as int8 and one scale per output channel."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        init_int8_linear(self, in_features, out_features, bias, out_features)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> WeightOnlyInt8Linear:
        """Quantize a float Linear's weight per output channel to int8 ([-127, 127])."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        fill_int8_linear(module, linear)
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer computes with."""
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale[:, None]

    def _packed_mm(self, flat: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale.to(flat.dtype)
        return torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class WeightOnlyInt4Linear(_WeightOnlyLinear):
    """y = x W^T + b with W stored as 4-bit codes, a scale and a zero per input group."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        if in_features % group_size or in_features % 2:
            raise ValueError(f"in_features {in_features} is not a multiple of {group_size}")
        self.in_features, self.out_features = in_features, out_features
        self.group_size = group_size
        groups = in_features // group_size
        codes = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        self.register_buffer("weight_int4x2", codes)  # low nibble: even column
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> WeightOnlyInt4Linear:
        """Quantize each group to 16 levels spanning its min..max (asymmetric)."""
        n, k = linear.out_features, linear.in_features
        module = cls(k, n, linear.bias is not None, group_size)
        codes, scale, zero = int4_groups(linear.weight, group_size)
        module.weight_int4x2.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
        module.weight_scale.copy_(scale)
        module.weight_zero.copy_(zero)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def codes(self) -> torch.Tensor:
        """The 4-bit codes (0..15) as an `[out, in]` uint8 matrix."""
        packed = self.weight_int4x2
        return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(self.out_features, -1)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer computes with."""
        grouped = self.codes().reshape(self.out_features, -1, self.group_size)
        scale, zero = self.weight_scale[..., None], self.weight_zero[..., None]
        weight = (grouped.to(scale.dtype) - 8) * scale + zero
        return weight.reshape(self.out_features, self.in_features)

    def _kernel_state(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        packed = self.cached("packed", lambda: torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            self.codes().to(torch.int32), 1))
        scales_and_zeros = self.cached(f"scales_and_zeros/{dtype}", lambda: torch.stack(
            [self.weight_scale.T, self.weight_zero.T], dim=-1).to(dtype).contiguous())
        return packed, scales_and_zeros

    def _packed_mm(self, flat: torch.Tensor) -> torch.Tensor:
        packed, scales_and_zeros = self._kernel_state(flat.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size,
                                                          scales_and_zeros)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 weights, group_size={self.group_size}")
