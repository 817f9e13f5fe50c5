"""float8 (e4m3) weights and activations for Hopper-class GPUs.

Owns: `Float8Linear`, `FP8_MAX` and `fp8_fast_path_available`. Weights are stored as
`float8_e4m3fn` with one float32 scale per output channel (amax / 448); each activation row
(token) gets its own scale on the fly, so an output never depends on its batch-mates. On a
CUDA GPU of compute capability 8.9 or newer (Ada, Hopper) the product runs in
`torch._scaled_mm`'s fp8 tensor-core GEMM with row-wise scales. Everywhere else (the CPU,
older GPUs) the same quantize-dequantize arithmetic is emulated in float: correct, so fidelity
can be measured on a laptop before deploying, but slower than float (PyTorch's CPU fp8 GEMM is
a reference kernel: 2.5x slower than fp32 at 4,096 x 384 x 1,536 on this project's CPU).
The saved state is plain tensors in safetensors (the e4m3 codes as their uint8 bit patterns).
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
"""The largest finite e4m3fn value: scales map each row's amax onto it."""


def fp8_fast_path_available(device: torch.device) -> bool:
    """Whether `device` runs fp8 GEMMs in hardware (CUDA, compute capability >= 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 codes of a 2-D tensor and their float32 scales (one per row, [rows, 1])."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp(min=1e-12)
    codes = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return codes, scale


class Float8Linear(nn.Module):
    """y = x W^T + b with W and x rounded to float8 e4m3, each row with its own scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # The e4m3 bit patterns, held as uint8: `model.to(dtype)` casts every floating-point
        # buffer, float8 included, and would silently widen the codes back to full size.
        self.register_buffer("weight_fp8_bits",
                             torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Float8Linear:
        """Round a float Linear's weight to e4m3 with one scale per output channel."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        codes, scale = _to_fp8(linear.weight.detach().cpu())
        module.weight_fp8_bits.copy_(codes.view(torch.uint8))
        module.weight_scale.copy_(scale.flatten())
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    @property
    def weight_fp8(self) -> torch.Tensor:
        """The weight codes as float8_e4m3fn (a view, no copy)."""
        return self.weight_fp8_bits.view(FP8)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        return self.weight_fp8.float() * self.weight_scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        codes, scale = _to_fp8(flat)
        if fp8_fast_path_available(x.device):
            rows = flat.shape[0]
            pad = -rows % 16  # the fp8 GEMM wants whole tiles of 16 rows
            codes = nn.functional.pad(codes.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
            scale = nn.functional.pad(scale, (0, 0, 0, pad), value=1.0)
            out = torch._scaled_mm(codes, self.weight_fp8.t(), scale_a=scale,
                                   scale_b=self.weight_scale.float()[None, :],
                                   out_dtype=torch.bfloat16)[:rows]  # row-wise scales: bf16 out
        else:
            out = (codes.float() * scale) @ self.dequantized_weight().t()
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                "float8 e4m3 weights and per-token activations")
