"""How float weights become integer codes, and the kernel cache quantized layers share.

Owns: `int8_symmetric` (codes in [-127, 127] with one scale per row or per matrix),
`int4_groups` (4-bit codes with a scale and zero per group of columns), the
int8-weight Linear state (`init_int8_linear`, `fill_int8_linear`), `torch_qweight` (the form
PyTorch's int8 kernels pack) and `KernelCache` (a module
base whose kernel-ready forms are rebuilt on demand and never saved, pickled or kept across a
dtype or device change). The quantized layers of `compress/` build on them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def int8_symmetric(weight: torch.Tensor, per_row: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of a 2-D float tensor and their float32 scales.

    Returns:
        (codes as int8 in [-127, 127], scales: one per row, or a single one when not per_row).
    """
    weight = weight.detach().float().cpu()
    amax = weight.abs().amax(dim=1) if per_row else weight.abs().amax().reshape(1)
    scale = (amax / 127.0).clamp(min=1e-12)
    codes = torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8)
    return codes, scale


def int4_groups(weight: torch.Tensor, group_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit codes of a 2-D float tensor, in groups of `group_size` columns: each
    group's 16 levels span its min..max (the GGUF Q4_1 rule, so Q4_1 weights come back exact).

    Returns:
        (codes as uint8 `[rows, cols]` in 0..15, scales and zeros `[rows, cols / group_size]`
        in float32, in the packed kernels' form: weight = (code - 8) * scale + zero).
    """
    rows, cols = weight.shape
    grouped = weight.detach().float().cpu().reshape(rows, cols // group_size, group_size)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = ((high - low) / 15.0).clamp(min=1e-8)
    codes = torch.clamp(torch.round((grouped - low[..., None]) / scale[..., None]), 0, 15)
    return codes.to(torch.uint8).reshape(rows, cols), scale, low + 8 * scale


def init_int8_linear(module: nn.Module, in_features: int, out_features: int, bias: bool,
                     channels: int) -> None:
    """Register the state every int8-weight Linear shares: `weight_int8` [out, in],
    `weight_scale` (one per output channel, or one), and a float `bias` or None."""
    module.in_features, module.out_features = in_features, out_features
    module.register_buffer("weight_int8", torch.zeros(out_features, in_features,
                                                      dtype=torch.int8))
    module.register_buffer("weight_scale", torch.ones(channels))
    module.register_buffer("bias", torch.zeros(out_features) if bias else None)


def fill_int8_linear(module: nn.Module, linear: nn.Linear, per_channel: bool = True) -> None:
    """Quantize `linear`'s weight symmetrically to int8 ([-127, 127]) into `module`'s state
    (as registered by `init_int8_linear`), and copy its bias."""
    codes, scale = int8_symmetric(linear.weight, per_row=per_channel)
    module.weight_int8.copy_(codes)
    module.weight_scale.copy_(scale)
    if linear.bias is not None:
        module.bias.copy_(linear.bias.detach())


def torch_qweight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """PyTorch's quantized-tensor form of int8 codes with symmetric scales (one per output
    channel along dim 0, or one), the input of its packed int8 CPU kernels."""
    codes, scale = codes.cpu(), scale.double().cpu()
    # PyTorch warns that quantized-tensor constructors are deprecated; they remain the entry
    # to its packed int8 CPU kernels, and no module's saved state uses them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if len(scale) == 1:
            return torch._make_per_tensor_quantized_tensor(codes, float(scale[0]), 0)
        zeros = torch.zeros(len(scale), dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes, scale, zeros, 0)


class KernelCache(nn.Module):
    """A module with `_cache`: kernel-ready forms of its buffers (a packed weight, a
    dequantized copy), built on first use and dropped on a state, dtype or device change."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """The cached value under `key`, built by `build()` on first use."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._cache = {}  # new values: build again on the next forward

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}  # a cache, not state

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._cache = {}  # dtype or device changes invalidate every cached form
        return super()._apply(fn, recurse)
