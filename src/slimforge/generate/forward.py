"""The decoder's forward pass over a static key/value cache, as pure functions.

Owns: `KVCache` (pre-allocated keys and values, one row per sequence slot), `prefill` (one
prompt into one slot, dense GEMMs, causal attention over the prompt) and `decode` (one token
for every slot at its own position, the packed weight kernels, attention over the first
`span` cache positions). Every shape in `decode` is fixed by (slots, span), which is what lets
`torch.compile` turn it into one graph per bucket with no recompiles in between. Numerics
follow transformers' Llama: RMSNorm in float32, rotary embedding computed in float32, softmax
over scaled dot products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimforge.generate.weights import DecoderWeights, Layer


@dataclass
class KVCache:
    """Keys and values per layer: `[slots, kv_heads, max_len, head_dim]` each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(cls, weights: DecoderWeights, slots: int, max_len: int,
                 device: torch.device | str = "cpu") -> KVCache:
        """Zeroed cache for `slots` sequences of up to `max_len` tokens."""
        shape = (slots, weights.n_kv_heads, max_len, weights.head_dim)
        def make() -> list[torch.Tensor]:
            return [torch.zeros(shape, dtype=weights.dtype, device=device)
                    for _ in weights.layers]
        return cls(make(), make())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotary(w: DecoderWeights, positions: torch.Tensor, dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for `positions` (any shape), shaped `[..., 1, head_dim]` to broadcast
    over heads."""
    freqs = positions.float()[..., None] * w.inv_freq.to(positions.device)
    angles = torch.cat([freqs, freqs], dim=-1)
    cos = (angles.cos() * w.rope_scale).to(dtype)
    sin = (angles.sin() * w.rope_scale).to(dtype)
    return cos.unsqueeze(-2), sin.unsqueeze(-2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


def _qkv(w: DecoderWeights, layer: Layer, h: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values `[..., tokens, heads, head_dim]` with positions applied."""
    out = layer.qkv.prefill(h) if dense else layer.qkv.decode(h)
    q_width, kv_width = w.n_heads * w.head_dim, w.n_kv_heads * w.head_dim
    q, k, v = out.split([q_width, kv_width, kv_width], dim=-1)
    lead = h.shape[:-1]
    q = q.reshape(*lead, w.n_heads, w.head_dim)
    k = k.reshape(*lead, w.n_kv_heads, w.head_dim)
    v = v.reshape(*lead, w.n_kv_heads, w.head_dim)
    if layer.q_norm is not None and layer.k_norm is not None:
        q, k = _rms(q, layer.q_norm, w.eps), _rms(k, layer.k_norm, w.eps)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _mlp(layer: Layer, h: torch.Tensor, dense: bool) -> torch.Tensor:
    gate_up = layer.gate_up.prefill(h) if dense else layer.gate_up.decode(h)
    gate, up = gate_up.chunk(2, dim=-1)
    hidden = nn.functional.silu(gate) * up
    return layer.down.prefill(hidden) if dense else layer.down.decode(hidden)


def prefill(w: DecoderWeights, cache: KVCache, slot: int, tokens: torch.Tensor,
            all_logits: bool = False) -> torch.Tensor:
    """Run a prompt `[T]` through the model into cache slot `slot` (positions 0..T-1).

    Returns:
        Float32 logits of the last position `[vocab]`, or of every position `[T, vocab]`
        with `all_logits` (perplexity).
    """
    length = tokens.shape[0]
    x = w.embed[tokens][None]  # [1, T, D]
    positions = torch.arange(length, device=tokens.device)
    cos, sin = _rotary(w, positions, w.dtype)
    groups = w.n_heads // w.n_kv_heads
    for index, layer in enumerate(w.layers):
        h = _rms(x, layer.attn_norm, w.eps)
        q, k, v = _qkv(w, layer, h, cos, sin, dense=True)  # [1, T, heads, hd]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cache.keys[index][slot, :, :length] = k[0]
        cache.values[index][slot, :, :length] = v[0]
        attn = nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), is_causal=True)
        x = x + layer.o.prefill(attn.transpose(1, 2).reshape(1, length, -1))
        x = x + _mlp(layer, _rms(x, layer.mlp_norm, w.eps), dense=True)
    x = _rms(x[0] if all_logits else x[0, -1:], w.norm, w.eps)
    logits = w.head.prefill(x).float()
    return logits if all_logits else logits[0]


def visible_mask(positions: torch.Tensor, span: int) -> torch.Tensor:
    """Bool `[slots, span]`: cache position j is visible to slot s when j <= positions[s]."""
    return torch.arange(span, device=positions.device)[None] <= positions[:, None]


def decode(w: DecoderWeights, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
           visible: torch.Tensor) -> torch.Tensor:
    """One decode step for every slot: token `tokens[s]` at position `positions[s]`.

    Keys and values are written at each slot's position; attention reads cache positions
    `0..span-1`, where `visible` (bool `[slots, span]`, from `visible_mask`) says which ones
    each slot sees, so slots at different lengths share one step whose only varying size is
    `span` (compiled once, with that size symbolic).

    Returns:
        Float32 logits `[slots, vocab]`.
    """
    slots = tokens.shape[0]
    rows = torch.arange(slots, device=tokens.device)
    x = w.embed[tokens][:, None]  # [S, 1, D]
    cos, sin = _rotary(w, positions[:, None], w.dtype)  # [S, 1, 1, hd]
    span = visible.shape[1]
    groups, scale = w.n_heads // w.n_kv_heads, w.head_dim ** -0.5
    for index, layer in enumerate(w.layers):
        h = _rms(x, layer.attn_norm, w.eps)
        q, k, v = _qkv(w, layer, h, cos, sin, dense=False)  # [S, 1, heads, hd]
        keys, values = cache.keys[index], cache.values[index]
        keys[rows, :, positions] = k[:, 0]
        values[rows, :, positions] = v[:, 0]
        # Grouped-query attention as fused reductions over the cache in place (no copies):
        # each KV head's queries together, `[S, kv, groups, span]` scores.
        q = q.reshape(slots, w.n_kv_heads, groups, 1, w.head_dim)
        scores = (q * keys[:, :, None, :span]).float().sum(-1) * scale
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(w.dtype)
        attn = (probs[..., None] * values[:, :, None, :span]).sum(-2)  # [S, kv, groups, hd]
        x = x + layer.o.decode(attn.reshape(slots, 1, -1))
        x = x + _mlp(layer, _rms(x, layer.mlp_norm, w.eps), dense=False)
    return w.head.decode(_rms(x[:, 0], w.norm, w.eps)).float()
