"""Per-layer quantization sensitivity, and mixed precision built on it.

Owns: `LayerSensitivity`, `rank_layers`, `keep_sensitive_in_float` and `layer_sqnr`. Each
quantizable layer is quantized alone; the model's output on calibration text is compared with
the float model's as SQNR (dB); the lowest SQNR hurts most. `keep_sensitive_in_float` is the
`quantize` step's `prepare` hook: with `keep_float: N` it adds the N worst layers to `skip`,
so the recorded step is a plain config that reloads without any data, and records every
layer's ranking SQNR (`alone_sqnr_db`). `layer_sqnr` is the step's `inspect` hook: each
quantized layer's own output against its float original on the same input (`sqnr_db`).
Calibration text should not be the evaluation text (the pipeline uses the train split).

    >>> from slimforge.models.load import load_model
    >>> from slimforge.compress.quantize import QuantConfig
    >>> ranking = rank_layers(load_model("builtin:tiny-bert"), QuantConfig(), ["some text"])
    >>> ranking[0].sqnr_db <= ranking[-1].sqnr_db
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from slimforge.compress import Prepared
from slimforge.compress.quantize import QuantConfig, quantize, quantized_layers
from slimforge.models.tasks import LoadedModel, tokenize
from slimforge.progress import track


@dataclass(frozen=True)
class LayerSensitivity:
    """How much quantizing one layer alone changes the model's output."""

    name: str
    sqnr_db: float


def _output(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    hidden = getattr(out, "last_hidden_state", None)
    return (hidden if hidden is not None else out.logits).float()


def _db(signal: float, noise: float) -> float:
    """Signal-to-noise power ratio in dB (a noiseless output is capped, not infinite)."""
    return 10 * math.log10(max(signal, 1e-20) / max(noise, 1e-20))


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return _db(float(ref.pow(2).mean()), float((ref - out).pow(2).mean()))


@torch.inference_mode()
def rank_layers(loaded: LoadedModel, config: QuantConfig, texts: Sequence[str],
                max_length: int = 128) -> list[LayerSensitivity]:
    """Quantize each layer `config` would quantize, one at a time; most sensitive first.

    Args:
        loaded: the float model and its tokenizer.
        config: the quantization to assess (its `skip` and `only` choose the layers).
        texts: calibration text (not the evaluation text).
        max_length: tokens per text.

    Returns:
        One entry per layer, sorted by output SQNR, lowest (most harmful) first.
    """
    batch = tokenize(loaded, list(texts), max_length)
    reference = _output(loaded.model, batch)
    single = config.model_copy(update={"keep_float": 0})
    ranking = []
    for name in track(quantized_layers(loaded.model, single), "layer sensitivity"):
        alone = quantize(loaded.model, single.model_copy(update={"only": [name], "skip": []}))
        ranking.append(LayerSensitivity(name, _sqnr_db(reference, _output(alone, batch))))
    return sorted(ranking, key=lambda r: r.sqnr_db)


def keep_sensitive_in_float(loaded: LoadedModel, config: QuantConfig,
                            calibration: Sequence[str]) -> Prepared:
    """The `prepare` hook of `quantize`: resolve `keep_float` into explicit `skip` names.

    Returns:
        The config to apply and record (`keep_float` 0, the chosen layers in `skip`), notes
        naming the layers kept in float, and every ranked layer's `alone_sqnr_db`.
    """
    if config.keep_float == 0:
        return Prepared(config)
    ranking = rank_layers(loaded, config, calibration)
    worst = ranking[: config.keep_float]
    resolved = config.model_copy(update={
        "keep_float": 0, "skip": [*config.skip, *(r.name for r in worst)]})
    kept = ", ".join(f"{r.name} ({r.sqnr_db:.1f} dB alone)" for r in worst)
    return Prepared(resolved, [f"kept in float as most sensitive on {len(calibration)} "
                               f"calibration texts: {kept}"],
                    {r.name: {"alone_sqnr_db": r.sqnr_db} for r in ranking})


_MEASURED = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv2d)


class _SqnrMeter:
    """Accumulates signal and noise power of one layer's output against its float self."""

    def __init__(self, original: torch.nn.Module) -> None:
        self.original, self.signal, self.noise = original, 0.0, 0.0

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        param = next(self.original.parameters())
        x = args[0].to(param.device)
        if x.is_floating_point():  # a layer computing in bf16 is compared with its fp32 self
            x = x.to(param.dtype)
        ref = self.original(x).float()
        self.signal += float(ref.pow(2).sum())
        self.noise += float((ref - output.float()).pow(2).sum())

    def db(self) -> float:
        return _db(self.signal, self.noise)


@torch.inference_mode()
def layer_sqnr(loaded: LoadedModel, compressed: torch.nn.Module, texts: Sequence[str],
               max_length: int = 128) -> dict[str, dict[str, float]]:
    """The `inspect` hook of `quantize`: every replaced layer's output SQNR (dB) against its
    float original, fed the same input, over calibration text. Models without a tokenizer
    get no figures (there is no text to feed them)."""
    if loaded.tokenizer is None:
        return {}
    originals = dict(loaded.model.named_modules())
    meters = {name: _SqnrMeter(originals[name]) for name, module in compressed.named_modules()
              if name in originals and type(module) is not type(originals[name])
              and isinstance(originals[name], _MEASURED)}
    handles = [compressed.get_submodule(name).register_forward_hook(meter)
               for name, meter in meters.items()]
    try:
        compressed(**tokenize(loaded, list(texts), max_length))
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"sqnr_db": meter.db()} for name, meter in meters.items() if meter.signal}
