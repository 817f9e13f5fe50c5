"""Per-layer quantization sensitivity, and mixed precision built on it.

Owns: `LayerSensitivity`, `rank_layers` and `keep_sensitive_in_float`. Each quantizable layer
is quantized alone; the model's output on calibration text is compared with the float
model's as SQNR (dB); the lowest SQNR hurts most. `keep_sensitive_in_float` is the
`quantize` step's `prepare` hook: with `keep_float: N` it adds the N worst layers to `skip`,
so the recorded step is a plain config that reloads without any data. Calibration text
should not be the evaluation text (the pipeline uses the train split).

    >>> from slimforge.models.load import load_model
    >>> from slimforge.compress.quantize import QuantConfig
    >>> ranking = rank_layers(load_model("builtin:tiny-bert"), QuantConfig(), ["some text"])
    >>> ranking[0].sqnr_db <= ranking[-1].sqnr_db
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

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


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).mean().clamp(min=1e-20)
    return float(10 * torch.log10(ref.pow(2).mean() / noise))


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
                            calibration: Sequence[str]) -> tuple[QuantConfig, list[str]]:
    """The `prepare` hook of `quantize`: resolve `keep_float` into explicit `skip` names.

    Returns:
        The config to apply and record (`keep_float` 0, the chosen layers in `skip`), and
        notes naming the layers kept in float and their SQNR.
    """
    if config.keep_float == 0:
        return config, []
    worst = rank_layers(loaded, config, calibration)[: config.keep_float]
    resolved = config.model_copy(update={
        "keep_float": 0, "skip": [*config.skip, *(r.name for r in worst)]})
    kept = ", ".join(f"{r.name} ({r.sqnr_db:.1f} dB alone)" for r in worst)
    return resolved, [f"kept in float as most sensitive on {len(calibration)} calibration "
                      f"texts: {kept}"]
