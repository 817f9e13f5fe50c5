"""Running one batch of queued inputs through the model, at the least padding cost.

Owns: `BatchRunner`, `split_by_length`. The batcher hands over inputs sorted by length; a
transformer computes every padded position, so a batch whose longest text is 5x its median
wastes most of its work. `split_by_length` cuts the sorted batch into contiguous groups that
minimise `groups x call_cost + sum(group size x group's padded length)`: one model call
costs a fixed overhead (per-op dispatch, thread wake-ups) worth `call_cost` tokens of
compute, which `BatchRunner.calibrate` measures on the model at start-up. On a CPU that
overhead is small and splitting pays (all-MiniLM-L6-v2, held-out paragraphs, batches of 32:
2.0x the texts/s of padding each batch to its longest; docs/benchmarks.md); on a GPU it is
large against the per-token cost and batches stay whole.

Every group is padded to a multiple of `PAD_TO_MULTIPLE_OF` tokens: few distinct tensor
shapes, so the CPU kernels' per-shape caches and the allocator stop growing with traffic,
and freed heap memory is handed back to the OS every `TRIM_EVERY_BATCHES` batches.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from slimforge.models.tasks import LoadedModel, pool
from slimforge.serve.memory import release_free_memory

PAD_TO_MULTIPLE_OF = 32
"""Groups are padded to a multiple of 32 tokens (MiniLM, 600 random batches: 2.6 GB RSS
unpadded, 1.57 GB padded; docs/benchmarks.md)."""
TRIM_EVERY_BATCHES = 10
"""How often freed heap memory is handed back to the OS (glibc keeps it otherwise)."""
WARM_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
"""Rows per call that `warm_up` runs (capped at the batch size)."""
MAX_CALL_COST = 4096
"""Cap on the calibrated call cost, in tokens: beyond it batches are never split anyway."""


def padded(tokens: int, multiple: int = PAD_TO_MULTIPLE_OF) -> int:
    """`tokens` rounded up to the padding multiple."""
    return -(-tokens // multiple) * multiple


def split_by_length(lengths: Sequence[int], call_cost: float) -> list[slice]:
    """Contiguous groups of `lengths` (sorted ascending) with the least total cost.

    Cost of a group: `call_cost + len(group) * padded(longest in group)`, in tokens. Exact
    dynamic programme over the cut points; O(n^2) for n inputs (n is a batch: <= a few
    hundred).
    """
    if any(a > b for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError("split_by_length needs lengths sorted ascending")
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = padded(lengths[end - 1])
        for start in range(end):
            cost = best[start] + call_cost + (end - start) * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        groups.append(slice(cut[end], end))
        end = cut[end]
    return groups[::-1]


class BatchRunner:
    """Runs batches of token ids (text models) or feature vectors (plain modules)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.call_cost = 0.0
        self._batches = 0

    @torch.inference_mode()
    def __call__(self, payloads: Sequence[Any]) -> list[Any]:
        """One result per payload, in order; payloads are token-id lists sorted by length
        when the model has a tokenizer, feature vectors otherwise."""
        self._batches += 1
        if self._batches % TRIM_EVERY_BATCHES == 0:
            release_free_memory()
        if self.loaded.tokenizer is None:
            out = self.loaded.model(torch.tensor(payloads, dtype=torch.float32,
                                                 device=self.loaded.device))
            return list(getattr(out, "logits", out).float().cpu().numpy())
        results: list[Any] = []
        for group in split_by_length([len(p) for p in payloads], self.call_cost):
            results.extend(self._forward(payloads[group]))
        return results

    def _forward(self, ids: Sequence[list[int]]) -> list[Any]:
        batch = self.loaded.tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt",
                                          pad_to_multiple_of=PAD_TO_MULTIPLE_OF)
        batch = {k: v.to(self.loaded.device) for k, v in batch.items()}
        out = self.loaded.model(**batch)
        if self.loaded.task != "embedding":
            return list(out.logits.float().cpu().numpy())
        vectors = pool(out.last_hidden_state, batch["attention_mask"], self.loaded.pooling)
        return list(vectors.cpu().numpy())

    @torch.inference_mode()
    def calibrate(self, short: int = PAD_TO_MULTIPLE_OF, rows: int = 8, repeats: int = 3) -> float:
        """Measure the fixed cost of one model call in tokens and use it for splitting.

        Times a call on one short input and on `rows` inputs of 4x the length (median of
        `repeats`); the per-token cost is the slope between them, the call cost what is left
        of the short call. Returns the call cost in tokens.
        """
        if self.loaded.tokenizer is None:
            return 0.0
        small, large = self._dummy(1, short), self._dummy(rows, 4 * short)
        timings = []
        for _ in range(repeats + 1):  # the first round is warm-up
            timings.append((self._timed(small), self._timed(large)))
        t_small = statistics.median(s for s, _ in timings[1:])
        t_large = statistics.median(b for _, b in timings[1:])
        per_token = max(t_large - t_small, 1e-9) / (4 * short * rows - short)
        self.call_cost = min(max(t_small / per_token - short, 0.0), MAX_CALL_COST)
        return self.call_cost

    @torch.inference_mode()
    def warm_up(self, max_rows: int, max_tokens: int) -> int:
        """Run the shapes traffic will bring, once each, before the first request: padded
        lengths up to `max_tokens` times `WARM_ROWS` rows up to `max_rows`. The CPU kernels
        build a plan per shape and the allocator grows to its working size here, not under
        the first users (first-request latency, and memory that looks like a leak).
        Returns the number of model calls made."""
        if self.loaded.tokenizer is None:
            return 0
        rows = sorted({min(r, max_rows) for r in WARM_ROWS})
        lengths = range(PAD_TO_MULTIPLE_OF, padded(max_tokens) + 1, PAD_TO_MULTIPLE_OF)
        for n, length in itertools.product(rows, lengths):
            self._forward(self._dummy(n, length))
        release_free_memory()
        return len(rows) * len(lengths)

    def _dummy(self, rows: int, length: int) -> list[list[int]]:
        token = self.loaded.tokenizer.unk_token_id or 0
        return [[token] * length] * rows

    def _timed(self, ids: list[list[int]]) -> float:
        start = time.perf_counter()
        self._forward(ids)
        return time.perf_counter() - start
