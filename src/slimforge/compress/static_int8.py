"""Static int8 post-training quantization with calibration, for Linear and Conv2d layers.

Owns: `StaticInt8Linear`, `StaticInt8Conv2d` and `calibrate_static`. Static means the
activations' int8 range is fixed ahead of time from calibration data, instead of measured on
every batch: `calibrate_static` runs calibration batches through the float model with one
torchao `HistogramObserver` per layer input (and per Conv2d output, which the int8 conv
kernel writes as int8), and the chosen scale and zero point of each become part of the
`quantize` config (`activation_qparams`). Weights are int8 with one symmetric scale per
output channel. Linear layers run fbgemm's static-input kernel with float output; Conv2d
layers run PyTorch's int8 convolution. No per-batch range is computed, and no output depends
on its batch-mates.

Why module swap and not the PT2E export flow: torchao 0.18's `X86InductorQuantizer` crashes
on all-MiniLM-L6-v2's exported graph (IndexError in `_annotate_linear_unary`, 2026-11-22), and
PT2E's int8 speed comes only through `torch.compile`; swapped modules save as plain safetensors
and run eagerly. On CUDA the layers run the same arithmetic in float: correct, not faster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from slimforge.compress.codes import KernelCache, int8_symmetric, torch_qweight
from slimforge.errors import SlimforgeError


def _observer(full_range: bool) -> Any:
    from torchao.quantization.pt2e import HistogramObserver

    return HistogramObserver(dtype=torch.quint8, reduce_range=not full_range)


class _InputObserver:
    """Forward hook feeding a layer's input (and optionally output) to observers."""

    def __init__(self, full_range: bool, with_output: bool) -> None:
        self.inputs = _observer(full_range)
        # The int8 conv writes its output codes itself, over the full 0..255.
        self.outputs = _observer(True) if with_output else None
        self.calls = 0

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.inputs(args[0].detach().float())
        if self.outputs is not None:
            self.outputs(output.detach().float())
        self.calls += 1

    def qparams(self) -> list[float]:
        pairs = [self.inputs] + ([self.outputs] if self.outputs is not None else [])
        values: list[float] = []
        for observer in pairs:
            scale, zero = observer.calculate_qparams()
            values += [float(scale.reshape(-1)[0]), float(zero.reshape(-1)[0])]
        return values


@torch.inference_mode()
def calibrate_static(model: nn.Module, layers: Sequence[str], batches: Iterable[Any],
                     full_range: bool) -> dict[str, list[float]]:
    """Fix each layer's activation range from calibration batches.

    Args:
        model: the float model.
        layers: names of its `nn.Linear` / `nn.Conv2d` modules to calibrate.
        batches: model inputs, each a dict of keyword arguments or a tuple of positional ones.
        full_range: 8-bit activations (0..255) where the CPU has VNNI, else 7-bit (0..127).

    Returns:
        Per layer `[input scale, input zero point]`, plus `[output scale, output zero point]`
        for Conv2d.

    Raises:
        SlimforgeError: no batch, or a layer the batches never reached.
    """
    hooks = {name: _InputObserver(full_range, isinstance(model.get_submodule(name), nn.Conv2d))
             for name in layers}
    handles = [model.get_submodule(name).register_forward_hook(hook)
               for name, hook in hooks.items()]
    seen = 0
    try:
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            else:
                model(*batch)
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise SlimforgeError("static-int8 calibration got no batch.",
                             "give calibration data (the recipe's `calibration_data`).")
    unseen = [name for name, hook in hooks.items() if not hook.calls]
    if unseen:
        raise SlimforgeError(
            f"static-int8 calibration never reached {', '.join(unseen[:5])}"
            f"{' ...' if len(unseen) > 5 else ''}, so their activation range is unknown.",
            "add them to `skip`, or calibrate with inputs that run them.")
    return {name: hook.qparams() for name, hook in hooks.items()}


def _fake_quant(x: torch.Tensor, scale: float, zero: int, levels: int) -> torch.Tensor:
    codes = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (codes - zero) * scale


class _StaticInt8(KernelCache):
    """Shared state: int8 weight, per-channel scales, bias and the fixed activation range."""

    def _init_state(self, weight_shape: tuple[int, ...], bias: bool, outputs: bool) -> None:
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0]))
        self.register_buffer("bias", torch.zeros(weight_shape[0]) if bias else None)
        # [input scale, input zero point(, output scale, output zero point)], and the top code
        self.register_buffer("act_qparams", torch.zeros(4 if outputs else 2, dtype=torch.float64))
        self.register_buffer("act_levels", torch.tensor(255))

    def _set(self, weight: torch.Tensor, bias: torch.Tensor | None, qparams: list[float],
             full_range: bool) -> None:
        codes, scale = int8_symmetric(weight.reshape(weight.shape[0], -1))
        self.weight_int8.copy_(codes.reshape(weight.shape))
        self.weight_scale.copy_(scale)
        if bias is not None:
            self.bias.copy_(bias.detach().float())
        self.act_qparams.copy_(torch.tensor(qparams, dtype=torch.float64))
        self.act_levels.fill_(255 if full_range else 127)

    def _input_qparams(self) -> tuple[float, int]:
        return float(self.act_qparams[0]), int(self.act_qparams[1])

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer computes with."""
        shape = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.float().reshape(shape)


class StaticInt8Linear(_StaticInt8):
    """A Linear with int8 weights and int8 activations over a calibrated, fixed range."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_state((out_features, in_features), bias, outputs=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, qparams: list[float],
                   full_range: bool) -> StaticInt8Linear:
        """Quantize a float Linear with its calibrated input range."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._set(linear.weight, linear.bias, qparams, full_range)
        return module

    def _pack(self) -> Any:
        bias = None if self.bias is None else self.bias.float().cpu()
        return torch.ops.quantized.linear_prepack(
            torch_qweight(self.weight_int8, self.weight_scale), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = self._input_qparams()
        flat = x.reshape(-1, self.in_features).float()
        if x.device.type != "cpu":
            q = _fake_quant(flat, scale, zero, int(self.act_levels))
            out = nn.functional.linear(q, self.dequantized_weight(), self.bias)
        else:
            out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                flat.contiguous(), scale, zero, self.cached("packed", self._pack))
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        scale, zero = self._input_qparams()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"static int8 activations (scale {scale:.3g}, zero point {zero})")


class StaticInt8Conv2d(_StaticInt8):
    """A Conv2d with int8 weights, int8 input and int8 output over calibrated ranges."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise SlimforgeError(
                f"static-int8 supports Conv2d with explicit zero padding, not "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}.",
                "add the layer to `skip`.")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = conv.padding, conv.dilation, conv.groups
        self._init_state(tuple(conv.weight.shape), conv.bias is not None, outputs=True)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, qparams: list[float],
                   full_range: bool) -> StaticInt8Conv2d:
        """Quantize a float Conv2d with its calibrated input and output ranges."""
        module = cls(conv)
        module._set(conv.weight, conv.bias, qparams, full_range)
        return module

    def _pack(self) -> Any:
        bias = None if self.bias is None else self.bias.float().cpu()
        return torch.ops.quantized.conv2d_prepack(
            torch_qweight(self.weight_int8, self.weight_scale), bias, list(self.stride),
            list(self.padding), list(self.dilation), self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = self._input_qparams()
        out_scale, out_zero = float(self.act_qparams[2]), int(self.act_qparams[3])
        levels = int(self.act_levels)
        if x.device.type != "cpu":
            out = nn.functional.conv2d(_fake_quant(x.float(), scale, zero, levels),
                                       self.dequantized_weight(), self.bias, self.stride,
                                       self.padding, self.dilation, self.groups)
            return _fake_quant(out, out_scale, out_zero, levels).to(x.dtype)
        qx = torch.quantize_per_tensor(x.float().contiguous(), scale, zero, torch.quint8)
        out = torch.ops.quantized.conv2d(qx, self.cached("packed", self._pack), out_scale,
                                         out_zero)
        return out.dequantize().to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, static int8 input and output")
