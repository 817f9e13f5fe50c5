"""Training objectives for `fit` that need no teacher.

Owns: `NextToken`, `Classify`. An objective sums its loss over its units (predicted tokens,
or examples) and says how many there are, so `fit` can normalise over a whole accumulated
step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimforge.errors import DataError
from slimforge.trust.attacks import Surface


class NextToken:
    """Causal-LM fine-tuning: cross-entropy of every next token of fixed-length windows
    (`distill.token_windows`), summed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def units(self, examples: Sequence[torch.Tensor]) -> int:
        return sum(len(window) - 1 for window in examples)

    def length(self, example: torch.Tensor) -> int:
        """A window's length (all windows are equal: grouping changes nothing)."""
        return len(example)

    def loss(self, model: nn.Module, examples: Sequence[torch.Tensor]) -> torch.Tensor:
        ids = torch.stack(list(examples)).to(self.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1), reduction="sum")


class Classify:
    """Classification: summed cross-entropy over labelled records. Records hold a text
    (models with a tokenizer) or a feature tensor / nested list (plain modules: images,
    vectors) and an integer label. `surface` exposes what an attack may move: the features,
    or a text model's input word embeddings."""

    def __init__(self, device: torch.device, tokenizer: Any = None, text_field: str = "text",
                 feature_field: str = "features", label_field: str = "label",
                 max_length: int = 128) -> None:
        self.device, self.tokenizer = device, tokenizer
        self.field = text_field if tokenizer is not None else feature_field
        self.label_field, self.max_length = label_field, max_length

    def units(self, examples: Sequence[dict[str, Any]]) -> int:
        return len(examples)

    def length(self, example: dict[str, Any]) -> int:
        """A text record's token count (up to `max_length`), for batches grouped by length;
        1 for feature records, which are never padded."""
        if self.tokenizer is None:
            return 1
        ids = self.tokenizer(str(example[self.field]), truncation=True,
                             max_length=self.max_length)["input_ids"]
        return len(ids)

    def _labels(self, examples: Sequence[dict[str, Any]]) -> torch.Tensor:
        try:
            return torch.tensor([int(r[self.label_field]) for r in examples], device=self.device)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"Every record needs an integer {self.label_field!r}; got "
                            f"{dict(list(examples[0].items())[:3])}.",
                            "map labels to class ids 0..C-1, or name the label column.") from None

    def surface(self, model: nn.Module, examples: Sequence[dict[str, Any]]) -> Surface:
        """The batch as an attack sees it."""
        labels = self._labels(examples)
        if self.tokenizer is None:
            x = torch.stack([torch.as_tensor(r[self.field], dtype=torch.float32)
                             for r in examples]).to(self.device)
            return Surface(x, labels, lambda v: _plain_logits(model, v))
        batch = self.tokenizer([str(r[self.field]) for r in examples], padding=True,
                               truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        inner = getattr(model, "module", model)  # DDP keeps the model in .module
        embedded = inner.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"]
        return Surface(embedded, labels,
                       lambda v: model(inputs_embeds=v, attention_mask=mask).logits)

    def loss(self, model: nn.Module, examples: Sequence[dict[str, Any]]) -> torch.Tensor:
        surface = self.surface(model, examples)
        return surface.loss(surface.x)


def _plain_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    output = model(x)
    return getattr(output, "logits", output)
