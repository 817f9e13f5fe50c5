"""A Llama-style decoder's weights, laid out for the generation engine's kernels.

Owns: `Projection` (one Linear in the form its kernel reads: dense, packed int8 per channel,
or packed int4 in groups), `DecoderWeights` (every tensor one forward pass needs, plus the
shape facts) and `decoder_weights(model, format)`. Formats:

- `fp32`, `bf16`: dense weights in that dtype (the reference, and the prefill-fast form);
- `int8`: every projection and the output head as int8 with one scale per output channel,
  run by PyTorch's packed `_weight_int8pack_mm`;
- `int4`: decoder projections as 4-bit codes with a scale and zero per group of 32 inputs
  (`_weight_int4pack_mm_for_cpu`), the output head as int8. Groups of 32 are the GGUF Q4_0/Q4_1
  block, so a model loaded from such a file is represented exactly: its weights are already
  16 evenly spaced levels per block, which min..max quantization finds again.

Quantized formats compute in bfloat16 (the packed CPU kernels are slow with float32
activations) and keep a dense bfloat16 copy of each projection for prefill, where the work is
compute-bound and the packed kernels are ~10x slower than a dense GEMM (measured: 512 rows of
1536x576, 0.5 ms dense vs 5.4 ms int4). Layers already quantized by `slimforge quantize`
(`WeightOnlyInt8Linear`, `WeightOnlyInt4Linear`) keep their codes: nothing is re-rounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from slimforge.compress.codes import int4_groups, int8_symmetric
from slimforge.compress.weight_only import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from slimforge.errors import ModelLoadError

Format = Literal["fp32", "bf16", "int8", "int4"]
FORMATS: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
INT4_GROUP = 32
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class Projection:
    """One Linear layer in the form its decode kernel reads.

    `kind` is `dense` (`weight` is `[out, in]` in the compute dtype), `int8` (`weight` is int8
    `[out, in]`, `scale` one per output) or `int4` (`weight` is the CPU kernel's packed
    layout, `scale` its `[in/group, out, 2]` scales and zeros). `dense` holds a compute-dtype
    copy for prefill when `kind` is not dense.
    """

    kind: str
    weight: torch.Tensor
    out_features: int
    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Few rows (one token per sequence): the packed kernel, reading the fewest bytes."""
        if self.kind == "dense":
            return nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        if self.kind == "int8":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scale)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, INT4_GROUP,
                                                             self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Many rows (a prompt): a dense GEMM, compute-bound."""
        weight = self.weight if self.kind == "dense" else self.dense
        assert weight is not None
        return nn.functional.linear(x, weight, self.bias)

    def nbytes(self) -> int:
        """Bytes the decode kernel reads for this layer."""
        return sum(t.numel() * t.element_size()
                   for t in (self.weight, self.scale, self.bias) if t is not None)


@dataclass
class Layer:
    """One decoder block's weights."""

    attn_norm: torch.Tensor
    qkv: Projection  # queries, keys and values in one kernel call
    o: Projection
    mlp_norm: torch.Tensor
    gate_up: Projection  # the gate and up projections in one call
    down: Projection
    q_norm: torch.Tensor | None = None  # Qwen3: RMSNorm over each head before RoPE
    k_norm: torch.Tensor | None = None


@dataclass
class DecoderWeights:
    """Everything one forward pass of a Llama-style decoder reads, in one format."""

    format: str
    dtype: torch.dtype
    embed: torch.Tensor  # [vocab, hidden], compute dtype
    layers: list[Layer]
    norm: torch.Tensor
    head: Projection
    inv_freq: torch.Tensor  # float32 [head_dim / 2]
    rope_scale: float
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    vocab_size: int
    max_positions: int
    notes: list[str] = field(default_factory=list)

    def decode_bytes(self) -> int:
        """Bytes of weights one decode step reads (the memory-bandwidth bound)."""
        total = self.head.nbytes() + self.norm.numel() * self.norm.element_size()
        for layer in self.layers:
            total += sum(p.nbytes() for p in (layer.qkv, layer.o, layer.gate_up, layer.down))
        return total


def format_of(model: nn.Module) -> str:
    """The format that computes what `model` computes: its weight-only int4/int8 codes
    where slimforge quantized it (group 32 for int4), else its float dtype."""
    kinds = {type(m) for m in model.modules()}
    if WeightOnlyInt4Linear in kinds:
        return "int4"
    if WeightOnlyInt8Linear in kinds:
        return "int8"
    return "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the engine cannot run `model` (None when it can): it runs Llama-style decoders
    (RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP) with full attention."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return (f"the engine runs Llama-style decoders ({', '.join(SUPPORTED)}); "
                f"this model is {kind or type(model).__name__}")
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act} (the engine implements SiLU)"
    if getattr(config, "use_sliding_window", False) or (
            kind == "mistral" and getattr(config, "sliding_window", None)):
        return "sliding-window attention (the engine's cache is full attention)"
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return f"{rope.get('rope_type', rope.get('type'))} rotary scaling depends on the length"
    return None


def not_served_by_engine(model: nn.Module, device: torch.device) -> str | None:
    """Why `serve` and `bench` leave `model` on `device` to transformers (None: they use the
    engine): an architecture the engine does not run, or a device its fast path has not been
    measured on (only the CPU so far)."""
    reason = unsupported_reason(model)
    if reason is None and device.type != "cpu":
        reason = "the engine's fast path is measured on CPU only so far"
    return reason


def _float(linear: nn.Module) -> torch.Tensor:
    if isinstance(linear, (WeightOnlyInt8Linear, WeightOnlyInt4Linear)):
        return linear.dequantized_weight().float()
    return linear.weight.detach().float()


def _bias(linears: list[nn.Module], dtype: torch.dtype) -> torch.Tensor | None:
    biases = [getattr(linear, "bias", None) for linear in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat([torch.zeros(linear.out_features) if b is None else b.detach().float()
                      for linear, b in zip(linears, biases, strict=True)]).to(dtype)


def _int8_parts(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(linear, WeightOnlyInt8Linear) and linear.weight_scale.numel() > 1:
        return linear.weight_int8, linear.weight_scale.float()
    return int8_symmetric(_float(linear))


def _int4_parts(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(linear, WeightOnlyInt4Linear) and linear.group_size == INT4_GROUP:
        return linear.codes(), linear.weight_scale.float(), linear.weight_zero.float()
    return int4_groups(_float(linear), INT4_GROUP)


def _int8(linears: list[nn.Module], dtype: torch.dtype) -> Projection:
    parts = [_int8_parts(linear) for linear in linears]
    codes = torch.cat([c for c, _ in parts]).contiguous()
    scale = torch.cat([s for _, s in parts])
    dense = (codes.to(dtype) * scale.to(dtype)[:, None]).contiguous()
    return Projection("int8", codes, codes.shape[0], scale.to(dtype), _bias(linears, dtype),
                      dense)


def _int4(linears: list[nn.Module], dtype: torch.dtype) -> Projection:
    parts = [_int4_parts(linear) for linear in linears]
    codes, scale, zero = (torch.cat([p[i] for p in parts]) for i in range(3))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scales = torch.stack([scale.T, zero.T], dim=-1).to(dtype).contiguous()
    grouped = codes.reshape(codes.shape[0], -1, INT4_GROUP).to(dtype)
    dense = ((grouped - 8) * scale[..., None].to(dtype) + zero[..., None].to(dtype))
    return Projection("int4", packed, codes.shape[0], scales, _bias(linears, dtype),
                      dense.reshape(codes.shape).contiguous())


def _projection(linears: list[nn.Module], fmt: str, dtype: torch.dtype, notes: list[str],
                name: str) -> Projection:
    """The Linear layers `linears` (same input) as one projection: their outputs
    concatenated, so one kernel call reads all their weights."""
    k, n = linears[0].in_features, sum(linear.out_features for linear in linears)
    if fmt == "int4":
        if k % INT4_GROUP == 0 and n % 16 == 0:
            return _int4(linears, dtype)
        notes.append(f"{name}: {n}x{k} does not fit int4 groups of {INT4_GROUP}; int8 instead")
        fmt = "int8"
    if fmt == "int8":
        if k % 16 == 0:  # torch 2.13's packed int8 kernel needs this
            return _int8(linears, dtype)
        notes.append(f"{name}: input width {k} is not a multiple of 16; dense instead")
    weight = torch.cat([_float(linear) for linear in linears]).to(dtype).contiguous()
    return Projection("dense", weight, n, bias=_bias(linears, dtype))


def decoder_weights(model: nn.Module, fmt: str = "bf16") -> DecoderWeights:
    """Lay out a transformers Llama-style causal LM's weights for the engine.

    Raises:
        ModelLoadError: the architecture is not one the engine runs, or the format is unknown.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise ModelLoadError(f"The generation engine cannot run this model: {reason}.",
                             "use transformers' own generate for it (slimforge does, "
                             "automatically, in evaluate, bench and serve).")
    if fmt not in FORMATS:
        raise ModelLoadError(f"Unknown generation format {fmt!r}.",
                             f"use one of {', '.join(FORMATS)}.")
    dtype = torch.float32 if fmt == "fp32" else torch.bfloat16
    config, core = model.config, model.model
    notes: list[str] = []
    linear_fmt = "dense" if fmt in ("fp32", "bf16") else fmt
    head_fmt = "int8" if fmt == "int4" else linear_fmt

    def proj(modules: list[nn.Module], name: str, kind: str = linear_fmt) -> Projection:
        return _projection(modules, kind, dtype, notes, name)

    layers = []
    for i, block in enumerate(core.layers):
        attn, mlp = block.self_attn, block.mlp
        layers.append(Layer(
            attn_norm=block.input_layernorm.weight.detach().to(dtype),
            qkv=proj([attn.q_proj, attn.k_proj, attn.v_proj], f"layer {i} qkv"),
            o=proj([attn.o_proj], f"layer {i} o"),
            mlp_norm=block.post_attention_layernorm.weight.detach().to(dtype),
            gate_up=proj([mlp.gate_proj, mlp.up_proj], f"layer {i} gate/up"),
            down=proj([mlp.down_proj], f"layer {i} down"),
            q_norm=_norm_weight(attn, "q_norm", dtype), k_norm=_norm_weight(attn, "k_norm", dtype),
        ))
    rotary = core.rotary_emb
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // \
        config.num_attention_heads
    return DecoderWeights(
        format=fmt, dtype=dtype,
        embed=core.embed_tokens.weight.detach().to(dtype).contiguous(),
        layers=layers, norm=core.norm.weight.detach().to(dtype),
        head=proj([model.lm_head], "output head", head_fmt),
        inv_freq=rotary.inv_freq.detach().float().cpu(),
        rope_scale=float(getattr(rotary, "attention_scaling", 1.0)),
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim, eps=float(config.rms_norm_eps), vocab_size=config.vocab_size,
        max_positions=int(getattr(config, "max_position_embeddings", 2048)), notes=notes,
    )


def _norm_weight(module: Any, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    norm = getattr(module, name, None)
    return None if norm is None else norm.weight.detach().to(dtype)
