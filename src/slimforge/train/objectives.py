"""Training objectives for `fit` that need no teacher.

Owns: `NextToken`. An objective sums its loss over its units (here: predicted tokens) and
says how many there are, so `fit` can normalise over a whole accumulated step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NextToken:
    """Causal-LM fine-tuning: cross-entropy of every next token of fixed-length windows
    (`distill.token_windows`), summed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def units(self, examples: Sequence[torch.Tensor]) -> int:
        return sum(len(window) - 1 for window in examples)

    def loss(self, model: nn.Module, examples: Sequence[torch.Tensor]) -> torch.Tensor:
        ids = torch.stack(list(examples)).to(self.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1), reduction="sum")
