"""Knowledge distillation through `fit`: a student learns to reproduce its teacher.

Owns: `DistillConfig`, `EmbeddingDistillation`, `LogitDistillation`, `distill`,
`student_from_teacher`. Two signals:

- representation (embedding models): 1 - cos between the student's and the teacher's pooled
  sentence embeddings, plus `mse_weight` x their squared distance; when the widths differ a
  learned projection maps the student's into the teacher's space. The teacher's embeddings
  are computed once (it is frozen), so each step costs the student alone.
- logits (causal LMs): KL divergence between the temperature-softened next-token
  distributions, scaled by T^2 so its gradients keep their size as T changes (Hinton et al.
  2015), mixed with the hard next-token loss by `alpha`; summed over tokens, so `fit`
  normalises by the step's token count.

A student is any model of the teacher's task, or `student_from_teacher`: the teacher with
some layers dropped (and optionally narrower FFNs), initialised from its weights — the
`prune_structured` step, so it saves and reloads like any pruned model.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slimforge.models.tasks import LoadedModel, embed, pool, tokenize
from slimforge.train.config import TrainConfig
from slimforge.train.engine import TrainResult, fit


class DistillConfig(BaseModel):
    """The distillation signal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(2.0, gt=0)
    """logits: softening of both distributions."""
    alpha: float = Field(0.5, ge=0, le=1)
    """logits: weight of the distillation term; 1 - alpha goes to the hard-label loss."""
    mse_weight: float = Field(1.0, ge=0)
    """representation: weight of the squared distance beside 1 - cos."""
    hidden_weight: float = Field(0.0, ge=0)
    """representation: weight of matching every layer's hidden states too (mean squared
    error per token, each student layer against the teacher layer whose output it stands in
    for: `layer_targets`); needs a student of the teacher's width (a pruned or truncated
    teacher). The teacher then runs beside the student in the first epoch (see
    `state_cache_mb`). The per-token error is small beside the pooled loss, so it needs a
    large weight: a 3-layer MiniLM student after 400 steps, each layer matched to its source
    layer, reached held-out cosine 0.929 at 1, 0.931 at 3, 0.933 at 10, and no more at 30
    or 100."""
    state_cache_mb: int = Field(2048, ge=0)
    """representation with `hidden_weight`: memory (MB) for the teacher's token states of
    texts already seen, so that later epochs do not run the teacher again (fp32 on the stdlib
    train split, 131k tokens: 575 MB for a 3-layer MiniLM student, 1.15 GB for a pruned
    6-layer one); texts past the limit, or all with 0, run the teacher at every step. A
    resumed run refills the cache from other batches, whose padding moves the teacher's
    states in the last bits (about 2e-6 for MiniLM); with 0 the teacher sees the same
    batches as in an uninterrupted run."""
    max_length: int = Field(128, ge=8)
    """Tokens per text (representation) or per window (logits)."""
    dropout: float | None = Field(0.0, ge=0, lt=1)
    """The student's dropout probability while it learns (every `nn.Dropout`, attention's
    included), restored afterwards; None keeps the model's own. Off by default: the targets
    are deterministic, and dropout's noise costs fidelity (a MiniLM 3-layer student after
    400 steps: held-out cosine 0.927 without, 0.920 with its 0.1, 0.902 with 0.25)."""


class _Student(nn.Module):
    """The student, and a projection into the teacher's width when they differ."""

    def __init__(self, model: nn.Module, width: int, teacher_width: int) -> None:
        super().__init__()
        self.model = model
        self.projection = nn.Linear(width, teacher_width) if width != teacher_width else None

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)


class EmbeddingDistillation:
    """Objective: match the teacher's pooled, normalised sentence embeddings."""

    def __init__(self, student: LoadedModel, texts: Sequence[str], targets: torch.Tensor,
                 config: DistillConfig, teacher: LoadedModel | None = None) -> None:
        self.student, self.texts, self.targets, self.config = student, texts, targets, config
        self.teacher = teacher
        from slimforge.compress.structured import blocks

        self.layer_map = (layer_targets(teacher_layers(student), len(blocks(teacher.model)))
                          if teacher is not None else [])
        self._lengths: list[int] | None = None
        self._states: dict[int, torch.Tensor] = {}  # text -> [its tokens, layers, width]
        self._state_bytes = 0

    def units(self, examples: Sequence[int]) -> int:
        return len(examples)

    def length(self, example: int) -> int:
        """The text's token count (up to `max_length`), for batches grouped by length."""
        if self._lengths is None:
            ids = self.student.tokenizer(list(self.texts), truncation=True,
                                         max_length=self.config.max_length)["input_ids"]
            self._lengths = [len(x) for x in ids]
        return self._lengths[example]

    def loss(self, model: nn.Module, examples: Sequence[int]) -> torch.Tensor:
        batch = tokenize(self.student, [self.texts[i] for i in examples], self.config.max_length)
        wanted = self.config.hidden_weight > 0 and self.teacher is not None
        out = model(**batch, output_hidden_states=wanted)  # student, holder, or DDP of either
        hidden = out.last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], self.student.pooling)
        layers = self._hidden_loss(out.hidden_states, batch, examples) if wanted else 0.0
        projection = getattr(getattr(model, "module", model), "projection", None)
        if projection is not None:
            vectors = nn.functional.normalize(projection(vectors), dim=-1)
        target = self.targets[list(examples)]
        cosine = (vectors * target).sum(dim=-1)
        return ((1 - cosine).sum() + self.config.mse_weight * (vectors - target).pow(2).sum()
                + self.config.hidden_weight * layers)

    def _hidden_loss(self, student: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                     examples: Sequence[int]) -> torch.Tensor:
        """Per text, the mean over its tokens of the squared distance between each student
        layer's output and its teacher layer's, summed over layers and texts."""
        teacher = self._teacher_states(batch, examples)
        mask = batch["attention_mask"].float()
        tokens = mask.sum(dim=1)
        total = torch.zeros((), dtype=torch.float32)
        for j in range(len(self.layer_map)):
            gap = (student[j + 1].float() - teacher[:, :, j].float()).pow(2).mean(-1)
            total = total + ((gap * mask).sum(dim=1) / tokens).sum()
        return total

    def _teacher_states(self, batch: dict[str, torch.Tensor], examples: Sequence[int]
                        ) -> torch.Tensor:
        """The teacher's token states of the layers the student learns from, [texts, tokens,
        layers, width]: from the cache when every text of the batch is in it, else from one
        teacher pass, whose texts join the cache while it has room. Padding positions are
        zero from the cache; the loss masks them either way."""
        assert self.teacher is not None
        mask = batch["attention_mask"].bool()
        if all(i in self._states for i in examples):
            first = self._states[examples[0]]
            states = first.new_zeros((*mask.shape, *first.shape[1:]))
            states[mask.cpu()] = torch.cat([self._states[i] for i in examples])
            return states.to(mask.device)
        with torch.no_grad():
            hidden = self.teacher.model(**batch, output_hidden_states=True).hidden_states
        states = torch.stack([hidden[source + 1] for source in self.layer_map], dim=2)
        limit = self.config.state_cache_mb * 2**20
        for row, i in enumerate(examples):
            kept = states[row][mask[row]]
            size = kept.numel() * kept.element_size()
            if i not in self._states and self._state_bytes + size <= limit:
                self._states[i] = kept.detach().to("cpu", copy=True)
                self._state_bytes += size
        return states


class LogitDistillation:
    """Objective: the teacher's softened next-token distribution, and the true next token."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, config: DistillConfig) -> None:
        self.student, self.teacher, self.config = student, teacher, config

    def units(self, examples: Sequence[torch.Tensor]) -> int:
        return sum(len(window) - 1 for window in examples)

    def length(self, example: torch.Tensor) -> int:
        """A window's length (all windows are equal: grouping changes nothing)."""
        return len(example)

    def loss(self, model: nn.Module, examples: Sequence[torch.Tensor]) -> torch.Tensor:
        ids = torch.stack(list(examples)).to(self.student.device)
        with torch.no_grad():
            teacher = self.teacher.model(input_ids=ids).logits[:, :-1].float()
        student = model(input_ids=ids).logits[:, :-1].float()
        t = self.config.temperature
        soft = nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=-1),
                                    nn.functional.log_softmax(teacher / t, dim=-1),
                                    log_target=True, reduction="sum") * t * t
        hard = nn.functional.cross_entropy(student.reshape(-1, student.shape[-1]),
                                           ids[:, 1:].reshape(-1), reduction="sum")
        return self.config.alpha * soft + (1 - self.config.alpha) * hard


def teacher_layers(student: LoadedModel) -> list[int]:
    """For each layer of a student made from its teacher (`prune_structured` steps), the
    teacher layer it came from."""
    from slimforge.compress.structured import blocks

    left = list(range(len(blocks(student.model)) + sum(
        len(s.get("remove_layers", [])) for s in student.steps if s["step"] == "prune_structured")))
    for step in student.steps:
        if step["step"] == "prune_structured":
            gone = set(step.get("remove_layers", []))
            left = [source for i, source in enumerate(left) if i not in gone]
    return left


def layer_targets(sources: Sequence[int], depth: int) -> list[int]:
    """For each student layer (made from teacher layer `sources[j]`), the teacher layer whose
    output it learns: the last one before the next kept layer, because the student layer
    stands in for that whole span of the teacher's `depth` layers (the last, for the rest).

    A 3-layer MiniLM student keeping layers 0, 4, 5 learns layers 3, 4, 5: held-out cosine
    0.9415 after 400 steps, against 0.9363 matching each layer to its own source (0, 4, 5),
    0.9403 for 1, 4, 5 and 0.9418 for 2, 4, 5. With nothing removed, the map is the identity.
    """
    return [nxt - 1 for nxt in sources[1:]] + [depth - 1] if sources else []


def token_windows(loaded: LoadedModel, texts: Sequence[str], length: int) -> list[torch.Tensor]:
    """The texts' tokens joined end to end and cut into windows of `length` (the last
    partial window dropped): causal-LM training examples."""
    ids = loaded.tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    return [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)]


def student_from_teacher(teacher: LoadedModel, keep_layers: Sequence[int],
                         ffn: float = 0.0, calibration: Sequence[str] | None = None
                         ) -> LoadedModel:
    """The teacher with only `keep_layers` left (and `ffn` of each FFN's neurons removed),
    initialised from its weights."""
    from slimforge.compress import apply_step
    from slimforge.compress.structured import blocks

    count = len(blocks(teacher.model))
    drop = [i for i in range(count) if i not in set(keep_layers)]
    step = {"step": "prune_structured", "heads": 0.0, "ffn": ffn, "remove_layers": drop,
            "compensate": False}
    if ffn == 0:
        step["score"] = "magnitude"  # nothing is ranked: no calibration pass needed
    return apply_step(teacher, step, calibration=calibration)


def pick_layers(teacher: LoadedModel, count: int, texts: Sequence[str], max_length: int = 128,
                exhaustive: int = 64) -> list[int]:
    """The `count` teacher layers whose untrained student (`student_from_teacher`) best
    reproduces the teacher's embeddings on `texts`, by mean cosine: every combination when
    there are at most `exhaustive`, else greedy removal of the least missed layer. Which
    layers to keep matters: for all-MiniLM-L6-v2, keeping layers 0, 4 and 5 starts at
    cosine 0.69 on held-out text where every other layer (1, 3, 5) starts at 0.47. Pick
    with training texts, never held-out ones. Embedding teachers only.

    Raises:
        SlimforgeError: not an embedding model, or `count` not between 1 and its layers - 1.
    """
    import itertools
    import math

    from slimforge.compress.structured import blocks
    from slimforge.errors import SlimforgeError

    layers = len(blocks(teacher.model))
    if teacher.task != "embedding" or not 0 < count < layers:
        raise SlimforgeError(f"Picking {count} of {teacher.spec}'s {layers} layers by fidelity "
                             f"needs an embedding model and 1 to {layers - 1} layers.",
                             "name the layers to keep instead (keep_layers).")
    target = embed(teacher, list(texts), max_length=max_length)

    def fidelity(keep: Sequence[int]) -> float:
        student = student_from_teacher(teacher, keep)
        found = embed(student, list(texts), max_length=max_length)
        return float((found * target).sum(dim=-1).mean())

    if math.comb(layers, count) <= exhaustive:
        return list(max(itertools.combinations(range(layers), count), key=fidelity))
    keep = list(range(layers))
    while len(keep) > count:
        keep = max(([k for k in keep if k != gone] for gone in keep), key=fidelity)
    return keep


@contextlib.contextmanager
def _dropout(model: nn.Module, p: float | None) -> Iterator[None]:
    """Every dropout module of `model` at probability `p` inside the block (None: as is)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)] if p is not None else []
    before = [m.p for m in layers]
    for module in layers:
        module.p = p
    try:
        yield
    finally:
        for module, old in zip(layers, before, strict=True):
            module.p = old


def distill(student: LoadedModel, teacher: LoadedModel, texts: Sequence[str],
            config: DistillConfig, train: TrainConfig, run_dir: str | Path,
            evaluate: Any = None, resume: bool = False) -> tuple[LoadedModel, TrainResult]:
    """Train `student` to reproduce `teacher` on `texts`; returns the trained student (a new
    LoadedModel recording the step) and the run's result.

    Raises:
        TrainingError: see `fit`; also a task without a distillation signal here.
    """
    from slimforge.errors import TrainingError

    if student.task != teacher.task:
        raise TrainingError(f"The student is a {student.task} model, the teacher a "
                            f"{teacher.task} one.", "distill between models of one task.")
    model = student.model
    if student.task == "embedding":
        # The pooled-embedding loss never reaches a classification pooler: keep it out of
        # the optimizer (and out of DP-SGD, which needs a gradient for every trained weight).
        pooler = getattr(model, "pooler", None)
        for param in pooler.parameters() if isinstance(pooler, nn.Module) else ():
            param.requires_grad_(False)
        targets = embed(teacher, list(texts), max_length=config.max_length)
        width = embed(student, list(texts[:1]), max_length=config.max_length).shape[-1]
        if config.hidden_weight and width != targets.shape[-1]:
            raise TrainingError(f"Matching token states needs a student of the teacher's width "
                                f"({targets.shape[-1]}); this one has {width}.",
                                "set hidden_weight to 0 (the pooled embeddings are matched "
                                "through a learned projection).")
        holder = _Student(model, width, targets.shape[-1])
        objective: Any = EmbeddingDistillation(student, texts, targets, config,
                                               teacher if config.hidden_weight else None)
        examples: Sequence[Any] = list(range(len(texts)))
        trained = holder if holder.projection is not None else model
    elif student.task == "causal-lm":
        objective = LogitDistillation(student, teacher, config)
        examples = token_windows(student, texts, config.max_length)
        trained = model
    else:
        raise TrainingError(f"No distillation signal for {student.task} models yet.",
                            "distill embedding or causal-lm models.")
    with _dropout(model, config.dropout):
        result = fit(trained, examples, objective, train, run_dir, evaluate=evaluate,
                     resume=resume)
    # Training changes values, not structure: no step to replay, the weights carry it.
    note = f"distilled from {teacher.spec} for {result.steps} steps ({result.precision})"
    return dataclasses.replace(student, model=model, notes=[*student.notes, note]), result
