"""Quantization steps: `quantize(model, QuantConfig(...)) -> new model`.

Owns: `QuantConfig`, `DynamicInt8Linear` and `quantize`. The foundation's method is dynamic
int8 on every `nn.Linear`: weights stored as int8 with symmetric per-output-channel (or
per-tensor) scales; activations quantized on the fly per batch by PyTorch's fbgemm/x86 kernel.
The module's state is plain tensors (int8 weight, float scales, float bias), so it saves to
safetensors and reloads without pickles; the kernel's packed form is rebuilt lazily.
On CUDA the same module runs dequantized (correct, not faster).

Try it:
    >>> from slimforge.models.tiny import tiny_bert
    >>> q = quantize(tiny_bert(), QuantConfig())
    >>> type(q.encoder.layer[0].output.dense).__name__
    'DynamicInt8Linear'
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from slimforge.compress import StepConfig, register_step


class QuantConfig(StepConfig):
    """How to quantize a model."""

    method: Literal["dynamic-int8"] = "dynamic-int8"
    """dynamic-int8: int8 weights, activations quantized per batch at run time (CPU kernel)."""
    granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    """Weight scales: one per output channel (keeps MiniLM fidelity) or one per matrix."""
    skip: list[str] = Field(default_factory=list)
    """Module names (glob patterns, e.g. `lm_head` or `*.attention.*`) to keep in float."""


class DynamicInt8Linear(nn.Module):
    """A Linear with int8 weights and dynamically quantized int8 activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool, channels: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight = torch.zeros(out_features, in_features, dtype=torch.int8)
        self.register_buffer("weight_int8", weight)
        self.register_buffer("weight_scale", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: Any = None

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool) -> DynamicInt8Linear:
        """Quantize a float Linear's weight symmetrically to int8 ([-127, 127])."""
        weight = linear.weight.detach().float().cpu()
        amax = weight.abs().amax(dim=1) if per_channel else weight.abs().amax().reshape(1)
        scale = (amax / 127.0).clamp(min=1e-12)
        q = torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, len(scale))
        module.weight_int8.copy_(q)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this module computes with (int8 times scale)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _pack(self) -> Any:
        q, scale = self.weight_int8.cpu(), self.weight_scale.double().cpu()
        # PyTorch warns that quantized-tensor constructors are deprecated; they remain the
        # entry to its packed int8 CPU GEMM, and the module's saved state never uses them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if len(scale) == 1:
                qweight = torch._make_per_tensor_quantized_tensor(q, float(scale[0]), 0)
            else:
                zeros = torch.zeros(len(scale), dtype=torch.long)
                qweight = torch._make_per_channel_quantized_tensor(q, scale, zeros, 0)
        bias = None if self.bias is None else self.bias.float().cpu()
        return torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            weight = self.dequantized_weight().to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, weight, bias)
        if self._packed is None:
            self._packed = self._pack()
        # reduce_range keeps activations in 7 bits so the int16 accumulation of the x86 kernel
        # cannot saturate on CPUs without VNNI.
        out = torch.ops.quantized.linear_dynamic(x.float(), self._packed, True)
        return out.to(x.dtype)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new values: pack again on the next forward

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # the packed form is a cache, not state
        return state

    def extra_repr(self) -> str:
        kind = "per-channel" if len(self.weight_scale) > 1 else "per-tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def _targets(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in config.skip)
    ]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _replace_linears(model: nn.Module, config: QuantConfig, with_values: bool) -> nn.Module:
    per_channel = config.granularity == "per-channel"
    for name, linear in _targets(model, config):
        if with_values:
            new = DynamicInt8Linear.from_float(linear, per_channel)
        else:
            channels = linear.out_features if per_channel else 1
            new = DynamicInt8Linear(
                linear.in_features, linear.out_features, linear.bias is not None, channels
            )
        _swap(model, name, new)
    return model


def _restructure(model: nn.Module, config: QuantConfig) -> nn.Module:
    return _replace_linears(model, config, with_values=False)


@register_step("quantize", QuantConfig, restructure=_restructure)
def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Return a quantized copy of `model`; the input is left untouched.

    Args:
        model: any module; every `nn.Linear` not matched by `config.skip` is replaced.
        config: method, weight-scale granularity, and the modules to skip.

    Returns:
        A new model whose Linear layers are `DynamicInt8Linear`.
    """
    return _replace_linears(copy.deepcopy(model).eval(), config, with_values=True)
