"""How float weights become integer codes, and the kernel cache quantized layers share.

Owns: `int8_symmetric` (codes in [-127, 127] with one scale per row or per matrix) and
`KernelCache` (a module base whose kernel-specific packed form is rebuilt on demand and
never saved, pickled or kept across a dtype or device change). The quantized layers in
`quantize.py` and `weight_only.py` build on both.
"""

from __future__ import annotations

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
