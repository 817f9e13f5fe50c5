"""How the next token is picked: greedy, or sampled with temperature, top-k, top-p and a
repetition penalty, reproducibly from a seed.

Owns: `SamplingParams` (validated settings of one request) and `Sampler` (one sequence's
picker, with its own random generator). The logits transforms are transformers' own
processors, so a setting means here what it means in `model.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from slimforge.errors import SlimforgeError


class GenerationError(SlimforgeError):
    """A generation request that cannot run as asked: bad settings, or a prompt too long."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings.

    Attributes:
        max_new_tokens: tokens to generate at most.
        temperature: 0 picks the most likely token (greedy); above 0 samples.
        top_k: sample among the k most likely tokens (0: all).
        top_p: sample among the smallest set of tokens whose probability reaches p (1: all).
        repetition_penalty: >1 makes tokens already in the sequence less likely (CTRL's rule,
            as in transformers).
        seed: seeds this request's own random generator, so a sampled output repeats.
        stop: strings that end the generation when the text produced so far ends with one
            (the stop string is cut from the returned text).
        ignore_eos: keep going past the end-of-sequence token (benchmarks).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens is {self.max_new_tokens} (must be at least 1)")
        if self.temperature < 0:
            problems.append(f"temperature is {self.temperature} (must be 0 or more)")
        if self.top_k < 0:
            problems.append(f"top_k is {self.top_k} (must be 0 or more)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p is {self.top_p} (must be in (0, 1])")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty is {self.repetition_penalty} (must be above 0)")
        if any(not s for s in self.stop):
            problems.append("a stop string is empty")
        if problems:
            raise GenerationError("Invalid sampling settings: " + "; ".join(problems) + ".",
                                  "fix the values named above.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Picks one sequence's tokens under its `SamplingParams`."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if not params.greedy:
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        self.processors = processors
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def pick(self, logits: torch.Tensor, history: list[int]) -> int:
        """The next token, given float logits `[vocab]` and the sequence so far."""
        scores = logits[None].float()
        if self.processors:
            ids = torch.tensor([history], dtype=torch.long)
            scores = self.processors(ids, scores)
        if self.params.greedy:
            return int(scores.argmax())
        probs = torch.softmax(scores[0], dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
