"""`prune(model, config) -> model`: weights set to zero — unstructured, or 2 of every 4.

Owns: `PruneConfig`, `prune`, `cubic_sparsity`, `input_norms`, `sparsity_of`. Scores are
|W| (magnitude) or |W| x the L2 norm of the layer's input feature over calibration tokens
(Wanda, Sun et al. 2023: a weight matters as much as the activations it multiplies).
Magnitude prunes the lowest scores of each matrix (`scope: layer`) or of all matrices at once
(`global`); Wanda, as in the paper, the lowest of each output row. `pattern: 2:4` keeps the 2
highest scores of every 4 consecutive inputs (50% exactly), the layout sparse tensor cores
run: on a CUDA GPU of compute capability 8.0+ the weights become PyTorch's semi-structured
sparse tensors (real speed there); elsewhere they stay a dense matrix with zeros.

What this buys, honestly: a dense kernel multiplies every zero, so on a CPU neither pattern
is faster and the dense safetensors are no smaller; the step's notes say so, and its
per-layer figures give each matrix's sparsity. Speed on a CPU comes from structured removal
(`structured.py`). Zeros are written into the weights (the mask is permanent), so the
artifact needs no mask and a replay needs no data.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from slimforge.compress import Prepared, StepConfig, register_step
from slimforge.errors import SlimforgeError

SKIP = ["*embed*", "lm_head", "*classifier*", "*pooler*"]
"""Kept dense by default: embeddings and output heads are small shares of the compute and
the most sensitive to zeros."""


class PruneConfig(StepConfig):
    """How to prune."""

    method: Literal["magnitude", "wanda"] = "magnitude"
    """Score: |W|, or |W| x input activation norm (needs calibration text)."""
    sparsity: float = Field(0.5, ge=0, lt=1)
    """Share of each pruned matrix's weights set to zero (2:4: always 0.5)."""
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    scope: Literal["layer", "global"] = "layer"
    """magnitude: one threshold per matrix, or one over all pruned matrices."""
    skip: list[str] = Field(default_factory=lambda: list(SKIP))
    """Module names (glob patterns) left dense."""
    only: list[str] = Field(default_factory=list)
    """Module names (glob patterns) to prune; empty: every `nn.Linear` not skipped."""
    input_norms: dict[str, list[float]] = Field(default_factory=dict, exclude=True)
    """wanda: each layer's input feature norms, measured by the step's `prepare` hook on
    calibration text. Not recorded: the zeros are in the saved weights."""

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError("2:4 keeps 2 of every 4 weights: its sparsity is 0.5; drop sparsity")
        if self.scope == "global" and self.method == "wanda":
            raise ValueError("wanda compares weights within each output row; use scope: layer")
        return self


def targets(model: nn.Module, skip: Sequence[str], only: Sequence[str]
            ) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` modules a pruning step works on, by name."""
    def matches(name: str, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not matches(name, skip)
            and (not only or matches(name, only))]


def cubic_sparsity(step: int, begin: int, end: int, final: float, initial: float = 0.0) -> float:
    """Gradual pruning's sparsity at training `step` (Zhu & Gupta 2017): from `initial` at
    `begin` to `final` at `end` along a cubic, fast first while the network can recover."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


def input_norms(loaded: Any, names: Sequence[str], texts: Sequence[str],
                max_length: int = 256) -> dict[str, list[float]]:
    """The L2 norm of each input feature of each named Linear over every calibration token
    (one text per forward, so no padding token counts)."""
    from slimforge.models.tasks import tokenize

    squares: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            squares[name] = squares.get(name, 0) + x.pow(2).sum(dim=0)
        return record

    modules = dict(loaded.model.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.inference_mode():
            for text in texts:
                loaded.model(**tokenize(loaded, [text], max_length))
    finally:
        for handle in handles:
            handle.remove()
    return {name: squares[name].sqrt().tolist() for name in names if name in squares}


def _scores(name: str, weight: torch.Tensor, config: PruneConfig) -> torch.Tensor:
    score = weight.detach().abs().float()
    if config.method == "wanda":
        norms = config.input_norms.get(name)
        if norms is None:
            raise SlimforgeError(f"wanda has no input norms for {name}.",
                                 "run it through apply_step (which measures them on "
                                 "calibration text), or pass method: magnitude.")
        score = score * torch.tensor(norms, dtype=score.dtype)
    return score


def _mask(score: torch.Tensor, config: PruneConfig, threshold: float | None) -> torch.Tensor:
    """True where a weight is kept."""
    if config.pattern == "2:4":
        rows, cols = score.shape
        groups = score.reshape(rows, cols // 4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
        return keep.reshape(rows, cols)
    if threshold is not None:  # global magnitude
        return score > threshold
    drop = int(config.sparsity * (score.shape[1] if config.method == "wanda" else score.numel()))
    if drop == 0:
        return torch.ones_like(score, dtype=torch.bool)
    if config.method == "wanda":  # the lowest of each output row
        keep = torch.ones_like(score, dtype=torch.bool)
        keep.scatter_(1, score.topk(drop, dim=1, largest=False).indices, False)
        return keep
    flat = torch.ones(score.numel(), dtype=torch.bool)
    flat[score.flatten().topk(drop, largest=False).indices] = False
    return flat.reshape(score.shape)


def _global_threshold(layers: list[tuple[str, nn.Linear]], config: PruneConfig) -> float:
    scores = torch.cat([_scores(n, m.weight, config).flatten() for n, m in layers])
    drop = int(config.sparsity * scores.numel())
    return float(scores.kthvalue(drop).values) if drop else -1.0


def _semi_structured(module: nn.Linear) -> None:
    """On a CUDA GPU with sparse tensor cores, store a 2:4 weight in the sparse format."""
    from torch.sparse import to_sparse_semi_structured

    module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()),
                                 requires_grad=False)


def _can_use_semi_structured(weight: torch.Tensor) -> bool:
    return (weight.is_cuda and torch.cuda.get_device_capability(weight.device) >= (8, 0)
            and weight.dtype in (torch.float16, torch.bfloat16))


def _restructure(model: nn.Module, config: PruneConfig) -> nn.Module:
    return model  # the zeros are values, not structure


def _prepare(loaded: Any, config: PruneConfig, calibration: Sequence[str]) -> Prepared:
    notes = [_what_it_buys(config)]
    if config.method != "wanda" or config.input_norms:
        return Prepared(config, notes)
    names = [name for name, _ in targets(loaded.model, config.skip, config.only)]
    norms = input_norms(loaded, names, calibration)
    notes.append(f"wanda: input norms over {len(calibration)} calibration texts")
    return Prepared(config.model_copy(update={"input_norms": norms}), notes)


def _what_it_buys(config: PruneConfig) -> str:
    if config.pattern == "2:4":
        return ("2:4: sparse tensor-core kernels on CUDA GPUs of compute capability 8.0+ (fp16/"
                "bf16); elsewhere a dense matrix with zeros: no speed-up, same size on disk")
    return ("unstructured zeros: a dense kernel still multiplies every one, so no speed-up "
            "and the same size on disk; it pays with sparse kernels or compression")


def sparsity_of(model: nn.Module, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each named layer's share of zero weights (what a dense kernel still computes: all)."""
    modules = dict(model.named_modules())
    figures = {}
    for name in names:
        dense = modules[name].weight.to_dense()  # a semi-structured sparse weight too
        figures[name] = {"sparsity": float((dense == 0).float().mean())}
    return figures


def _inspect(loaded: Any, compressed: nn.Module, calibration: Any) -> dict[str, dict[str, float]]:
    return sparsity_of(compressed, [name for name, m in compressed.named_modules()
                                    if isinstance(m, nn.Linear)])


@register_step("prune", PruneConfig, restructure=_restructure, prepare=_prepare,
               inspect=_inspect)
def prune(model: nn.Module, config: PruneConfig) -> nn.Module:
    """Return a copy of `model` with the lowest-scoring weights of each target Linear set to
    zero; the input is left untouched.

    Raises:
        SlimforgeError: wanda without input norms, or 2:4 on a layer whose inputs are not a
            multiple of 4.
    """
    model = copy.deepcopy(model).eval()
    layers = targets(model, config.skip, config.only)
    if config.pattern == "2:4":
        odd = [name for name, m in layers if m.in_features % 4]
        if odd:
            raise SlimforgeError(f"2:4 needs inputs in multiples of 4; {odd[0]} has "
                                 f"{dict(layers)[odd[0]].in_features}.",
                                 "skip that layer (skip: [...]) or prune it unstructured.")
    threshold = (_global_threshold(layers, config)
                 if config.scope == "global" and config.pattern == "unstructured" else None)
    with torch.no_grad():
        for name, module in layers:
            keep = _mask(_scores(name, module.weight, config), config, threshold)
            module.weight.mul_(keep.to(module.weight.dtype))
            if config.pattern == "2:4" and _can_use_semi_structured(module.weight):
                _semi_structured(module)
    return model
