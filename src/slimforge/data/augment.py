"""Text augmentation for small data: random word deletion, word swaps and span masking.

Owns: `AugmentConfig`, `augment_text`, `augment`. Each operation works on whitespace-split
words (Wei & Zou 2019 for deletion and swap; span masking as in SpanBERT, one contiguous run
of words replaced by the tokenizer's mask token). `augment` keeps every original example
and adds `copies` altered ones per example, each drawn from a generator seeded by
(`seed`, example index, copy), so the same config gives the same data on any machine and a
resumed run trains on exactly what the first one did.

Useful for classification, where a label survives a few lost or shuffled words. Weak for
distillation: the teacher's output for an altered text is a new target, not the original
one, and mostly teaches the student to imitate the teacher on broken text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.errors import DataError


class AugmentConfig(BaseModel):
    """Which alterations, how strong, how many copies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deletion: float = Field(0.1, ge=0, lt=1)
    """Each word is dropped with this probability (one word always stays)."""
    swap: float = Field(0.1, ge=0, le=1)
    """Swaps of two random words, as a fraction of the word count (at least one when > 0)."""
    span: float = Field(0.0, ge=0, lt=1)
    """One contiguous run of this fraction of the words is masked (0: none)."""
    mask_token: str = "[MASK]"
    """What a masked word becomes: the tokenizer's mask token where it has one."""
    copies: int = Field(1, ge=1, le=64)
    """Altered copies added per example."""
    seed: int = 0


def augment_text(text: str, config: AugmentConfig, rng: random.Random) -> str:
    """One altered copy of `text`: span masking, then deletion, then swaps."""
    words = text.split()
    if len(words) < 2:
        return text
    if config.span > 0:
        length = max(1, round(config.span * len(words)))
        start = rng.randrange(len(words) - length + 1)
        words[start:start + length] = [config.mask_token] * length
    if config.deletion > 0:
        kept = [w for w in words if rng.random() >= config.deletion]
        words = kept or [rng.choice(words)]
    if config.swap > 0 and len(words) > 1:
        for _ in range(max(1, round(config.swap * len(words)))):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


def augment(examples: Sequence[Any], config: AugmentConfig, field: str = "text") -> list[Any]:
    """The examples followed by `copies` altered copies of each: texts, or records whose
    `field` holds the text (every other field, the label too, is kept).

    Raises:
        DataError: a record without a text in `field`.
    """
    added = []
    for copy in range(config.copies):
        for index, example in enumerate(examples):
            rng = random.Random(f"{config.seed}:{index}:{copy}")
            if isinstance(example, str):
                added.append(augment_text(example, config, rng))
                continue
            if not isinstance(example, dict) or not isinstance(example.get(field), str):
                raise DataError(f"Example {index} has no text in {field!r} to augment.",
                                "name the text column, or augment only text data.")
            added.append({**example, field: augment_text(example[field], config, rng)})
    return [*examples, *added]
