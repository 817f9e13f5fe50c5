"""`prune_structured(model, config) -> model`: attention heads, FFN neurons and whole layers,
physically removed, so the matrices a dense kernel multiplies are smaller.

Owns: `StructuredConfig`, `prune_structured`, `blocks`, `importance`. Works for BERT-style
encoders (`layer.attention.self.query/key/value`, `attention.output.dense`,
`intermediate.dense`, `output.dense`) and Llama-style decoders (`self_attn.q/k/v/o_proj`,
`mlp.gate/up/down_proj`) from transformers. Rows and columns are cut with transformers'
own `prune_linear_layer`. Llama heads go by key/value group (a KV head and the query heads
that share it), so grouped-query attention stays consistent.

Importance, measured by the step's `prepare` hook on calibration text (`score: activation`):
with `compensate` (the default), what each removed input of an output projection put out
on average is folded into that projection's bias, so a neuron or head is scored by what is
still lost — the variance of its output times its outgoing weights' squared norm (An et al.
2024, "FLAP"); without, by its mean |output| times its outgoing weights' norm. A layer's
influence is 1 - cos(input, output) of its hidden states averaged over tokens (Men et al.
2024, "ShortGPT"): a layer that barely turns the residual stream goes first.
`score: magnitude` uses weight norms alone (no data; not for layers). The resolved choice
— which heads, neurons and layers, by index — is what the step records, so the saved model
is rebuilt by replaying the cut on the original architecture (`restructure`), and reloads
smaller with no data. The Hugging Face `config.json` beside it still describes the model
before the cut.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from slimforge.compress import Prepared, StepConfig, register_step
from slimforge.errors import SlimforgeError


class StructuredConfig(StepConfig):
    """What to remove. Shares apply within each layer, so every layer keeps the same shape."""

    heads: float = Field(0.25, ge=0, lt=1)
    """Share of attention heads removed from each layer (Llama: of KV groups)."""
    ffn: float = Field(0.3, ge=0, lt=1)
    """Share of FFN (intermediate) neurons removed from each layer."""
    layers: int = Field(0, ge=0)
    """Whole layers removed, the least influential first."""
    score: Literal["activation", "magnitude"] = "activation"
    """Importance from calibration activations, or from weight norms alone."""
    remove_heads: dict[int, list[int]] = Field(default_factory=dict)
    """Resolved: per layer index, the heads (Llama: KV groups) removed."""
    remove_neurons: dict[int, list[int]] = Field(default_factory=dict)
    """Resolved: per layer index, the FFN neurons removed."""
    remove_layers: list[int] = Field(default_factory=list)
    """Resolved: the layers removed."""
    compensate: bool = True
    """Add what a removed head or neuron put out on average (over calibration tokens) to
    the output projection's bias (An et al. 2024, "FLAP"), where that projection has one."""
    means: dict[int, dict[str, list[float]]] = Field(default_factory=dict, exclude=True)
    """Filled by `prepare` when compensating: per layer, the mean input of the attention
    and FFN output projections. Not recorded: the biases are in the saved weights."""

    @model_validator(mode="after")
    def _layers_need_activations(self) -> StructuredConfig:
        if self.layers and self.score == "magnitude" and not self.remove_layers:
            raise ValueError("a layer's influence is measured on data: use score: activation")
        return self


class _Block:
    """One transformer layer's prunable parts, whatever the architecture."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        if hasattr(layer, "self_attn"):  # Llama-style
            attn, mlp = layer.self_attn, layer.mlp
            self.kind = "llama"
            self.head_dim = attn.head_dim
            self.group = attn.num_key_value_groups
            self.heads = attn.k_proj.out_features // self.head_dim  # KV groups
            self.out_proj, self.ffn_out = attn.o_proj, mlp.down_proj
        else:  # BERT-style
            attn = layer.attention
            self.kind = "bert"
            self.head_dim = attn.self.attention_head_size
            self.group = 1
            self.heads = attn.self.query.out_features // self.head_dim
            self.out_proj, self.ffn_out = attn.output.dense, layer.output.dense

    def query_rows(self, heads: Sequence[int]) -> torch.Tensor:
        """Rows of the query projection (and columns of the output one) for KV groups."""
        return torch.tensor([(h * self.group + q) * self.head_dim + d for h in heads
                             for q in range(self.group) for d in range(self.head_dim)],
                            dtype=torch.long)

    def kv_rows(self, heads: Sequence[int]) -> torch.Tensor:
        return torch.tensor([h * self.head_dim + d for h in heads for d in range(self.head_dim)],
                            dtype=torch.long)

    def keep_heads(self, keep: Sequence[int]) -> None:
        from transformers.pytorch_utils import prune_linear_layer

        q, kv = self.query_rows(keep), self.kv_rows(keep)
        if self.kind == "llama":
            attn = self.layer.self_attn
            attn.q_proj = prune_linear_layer(attn.q_proj, q, 0)
            attn.k_proj = prune_linear_layer(attn.k_proj, kv, 0)
            attn.v_proj = prune_linear_layer(attn.v_proj, kv, 0)
            attn.o_proj = prune_linear_layer(attn.o_proj, q, 1)
            self.out_proj = attn.o_proj
        else:
            own, output = self.layer.attention.self, self.layer.attention.output
            for part in ("query", "key", "value"):
                setattr(own, part, prune_linear_layer(getattr(own, part), q, 0))
            output.dense = prune_linear_layer(output.dense, q, 1)
            own.num_attention_heads = len(keep)
            own.all_head_size = len(keep) * self.head_dim
            self.out_proj = output.dense
        self.heads = len(keep)

    def keep_neurons(self, keep: torch.Tensor) -> None:
        from transformers.pytorch_utils import prune_linear_layer

        if self.kind == "llama":
            mlp = self.layer.mlp
            mlp.gate_proj = prune_linear_layer(mlp.gate_proj, keep, 0)
            mlp.up_proj = prune_linear_layer(mlp.up_proj, keep, 0)
            mlp.down_proj = prune_linear_layer(mlp.down_proj, keep, 1)
            self.ffn_out = mlp.down_proj
        else:
            self.layer.intermediate.dense = prune_linear_layer(self.layer.intermediate.dense,
                                                               keep, 0)
            self.layer.output.dense = prune_linear_layer(self.layer.output.dense, keep, 1)
            self.ffn_out = self.layer.output.dense


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers (BERT's `encoder.layer`, Llama's `layers`)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and (
                hasattr(module[0], "self_attn") and hasattr(module[0], "mlp")
                or hasattr(module[0], "attention") and hasattr(module[0], "intermediate")):
            return module
    raise SlimforgeError(f"{type(model).__name__} has no BERT- or Llama-style layers to prune.",
                         "use prune (unstructured) for other architectures.")


def _lowest(scores: torch.Tensor, count: int) -> list[int]:
    return sorted(scores.argsort()[:count].tolist())


def _column_norms(linear: nn.Linear, width: int) -> torch.Tensor:
    """The norm of each group of `width` input columns (a head's slice, or one neuron)."""
    weight = linear.weight.detach().float()
    return weight.reshape(weight.shape[0], -1, width).pow(2).sum(dim=(0, 2)).sqrt()


def _collect(loaded: Any, parts: list[_Block], texts: Sequence[str], max_length: int
             ) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor, int]:
    """Over every calibration token (one text per forward: no padding counts): per layer,
    the sum, sum of squares and sum of |x| of each input of both output projections, and
    the summed influence of each layer; and the token count."""
    from slimforge.models.tasks import tokenize

    sums = {(i, kind): torch.zeros(3, width) for i, p in enumerate(parts)
            for kind, width in (("heads", p.out_proj.in_features),
                                ("neurons", p.ffn_out.in_features))}
    influence, tokens = torch.zeros(len(parts)), 0

    def accumulate(key: tuple[int, str]):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[key] += torch.stack([x.sum(0), x.pow(2).sum(0), x.abs().sum(0)])
        return hook

    def at_layer(i: int):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            before = (args[0] if args else kwargs["hidden_states"]).detach().float()
            after = (out[0] if isinstance(out, tuple) else out).detach().float()
            influence[i] += (1 - nn.functional.cosine_similarity(before, after, dim=-1)).sum()
        return hook

    handles = []
    for i, part in enumerate(parts):
        handles += [part.out_proj.register_forward_pre_hook(accumulate((i, "heads"))),
                    part.ffn_out.register_forward_pre_hook(accumulate((i, "neurons"))),
                    part.layer.register_forward_hook(at_layer(i), with_kwargs=True)]
    try:
        with torch.inference_mode():
            for text in texts:
                batch = tokenize(loaded, [text], max_length)
                tokens += int(batch["input_ids"].numel())
                loaded.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return sums, influence, tokens


def importance(loaded: Any, texts: Sequence[str], fluctuation: bool = True,
               max_length: int = 256) -> dict[str, Any]:
    """Per layer: head (KV group) and FFN neuron scores and the mean input of both output
    projections; and one influence per layer.

    An input column j of an output projection W scores var(x_j) x |W[:, j]|^2 with
    `fluctuation` (what is lost once the mean is folded into the bias: FLAP), else
    mean |x_j| x |W[:, j]|; a head scores the sum over its columns (Llama: its KV group's)."""
    parts = [_Block(layer) for layer in blocks(loaded.model)]
    sums, influence, tokens = _collect(loaded, parts, texts, max_length)
    count = max(tokens, 1)
    result: dict[str, Any] = {"heads": [], "neurons": [], "head_means": [], "neuron_means": [],
                              "layers": influence / count}
    for i, part in enumerate(parts):
        for kind, projection in (("heads", part.out_proj), ("neurons", part.ffn_out)):
            total, squares, absolute = sums[(i, kind)] / count
            norms = projection.weight.detach().float().pow(2).sum(dim=0)
            column = ((squares - total.pow(2)).clamp(min=0) * norms if fluctuation
                      else absolute * norms.sqrt())
            if kind == "heads":
                column = column.reshape(part.heads, -1).sum(dim=1)
            result[kind].append(column)
            result[f"{kind[:-1]}_means"].append(total)
    return result


def _magnitude(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    parts = [_Block(layer) for layer in blocks(model)]
    return {"heads": [_column_norms(p.out_proj, p.head_dim).reshape(p.heads, p.group).sum(1)
                      for p in parts],
            "neurons": [_column_norms(p.ffn_out, 1) for p in parts]}


def _prepare(loaded: Any, config: StructuredConfig, calibration: Sequence[str]) -> Prepared:
    resolved = bool(config.remove_heads or config.remove_neurons or config.remove_layers)
    measure = config.score == "activation" or (resolved and config.compensate)
    scores = (importance(loaded, calibration, fluctuation=config.compensate) if measure
              else _magnitude(loaded.model))
    means = {i: {"heads": head.tolist(), "neurons": neuron.tolist()} for i, (head, neuron) in
             enumerate(zip(scores["head_means"], scores["neuron_means"], strict=True))
             } if config.compensate and "head_means" in scores else {}
    if resolved:  # the user's own choice: only the compensation needs data
        return Prepared(config.model_copy(update={"means": means}))
    parts = [_Block(layer) for layer in blocks(loaded.model)]
    if config.layers >= len(parts):
        raise SlimforgeError(f"Cannot remove {config.layers} of {len(parts)} layers.",
                             f"remove at most {len(parts) - 1}.")
    heads = {i: _lowest(s, int(config.heads * p.heads)) for i, (s, p) in
             enumerate(zip(scores["heads"], parts, strict=True)) if int(config.heads * p.heads)}
    neurons = {i: _lowest(s, int(config.ffn * len(s)))
               for i, s in enumerate(scores["neurons"]) if int(config.ffn * len(s))}
    layers = _lowest(scores["layers"], config.layers) if config.layers else []
    resolved = config.model_copy(update={"remove_heads": heads, "remove_neurons": neurons,
                                         "remove_layers": layers, "means": means})
    kept_heads = parts[0].heads - len(heads.get(0, []))
    kept_ffn = parts[0].ffn_out.in_features - len(neurons.get(0, []))
    note = (f"structured ({config.score}): {len(parts) - len(layers)} of {len(parts)} layers, "
            f"{kept_heads} of {parts[0].heads} {'KV groups' if parts[0].group > 1 else 'heads'}"
            f" and {kept_ffn} of {parts[0].ffn_out.in_features} FFN neurons per layer kept; "
            "removed, so a dense kernel does less work")
    return Prepared(resolved, [note])


def _compensate(projection: nn.Linear, columns: torch.Tensor, mean: list[float] | None) -> None:
    """Fold the removed inputs' average contribution into the projection's bias."""
    if mean is None or projection.bias is None:
        return
    with torch.no_grad():
        projection.bias += projection.weight[:, columns].float() @ torch.tensor(mean)[columns]


def _cut(model: nn.Module, config: StructuredConfig) -> nn.Module:
    layers = blocks(model)
    for i, layer in enumerate(layers):
        part = _Block(layer)
        if config.remove_heads.get(i):
            gone = set(config.remove_heads[i])
            _compensate(part.out_proj, part.query_rows(sorted(gone)),
                        config.means.get(i, {}).get("heads"))
            part.keep_heads([h for h in range(part.heads) if h not in gone])
        if config.remove_neurons.get(i):
            _compensate(part.ffn_out, torch.tensor(sorted(config.remove_neurons[i])),
                        config.means.get(i, {}).get("neurons"))
            gone = set(config.remove_neurons[i])
            part.keep_neurons(torch.tensor([n for n in range(part.ffn_out.in_features)
                                            if n not in gone], dtype=torch.long))
    # The layers left keep their own index (layer_idx): a KV cache sized from the unchanged
    # config still has a slot for each.
    for i in sorted(config.remove_layers, reverse=True):
        del layers[i]
    return model


def _inspect(loaded: Any, compressed: nn.Module, calibration: Any) -> dict[str, dict[str, float]]:
    figures = {}
    for i, layer in enumerate(blocks(compressed)):
        part = _Block(layer)
        figures[f"layer.{i}"] = {"heads": float(part.heads),
                                 "ffn_neurons": float(part.ffn_out.in_features)}
    return figures


@register_step("prune_structured", StructuredConfig, restructure=_cut, prepare=_prepare,
               inspect=_inspect)
def prune_structured(model: nn.Module, config: StructuredConfig) -> nn.Module:
    """Return a copy of `model` with the configured heads, FFN neurons and layers removed;
    the input is left untouched. The `remove_*` fields must be resolved (the step's
    `prepare` hook does it from calibration text).

    Raises:
        SlimforgeError: the model has no BERT- or Llama-style layers.
    """
    return _cut(copy.deepcopy(model).eval(), config)
