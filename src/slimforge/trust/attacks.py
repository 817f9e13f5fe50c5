"""Adversarial examples: FGSM and PGD, in input space (images, feature vectors) or in the
word-embedding space of a text model, for robust evaluation and adversarial training.

Owns: `AttackConfig`, `Surface`, `perturb`, `Adversarial`. A `Surface` is what an attack
needs from a batch: the tensor it may move (`x`: pixels, or the input word embeddings of a
text model), the labels, and `logits(x)`. FGSM (Goodfellow et al. 2015) takes one step of
size eps along the sign of the loss gradient; PGD (Madry et al. 2018) starts at a random
point of the L-infinity ball of radius eps and takes `steps` signed steps of `step_size`,
projecting back into the ball (and into the input's valid range) after each. Adversarial
training (`Adversarial`, Madry's min-max) trains on the PGD/FGSM points of each batch
instead of the clean ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class AttackConfig(BaseModel):
    """One attack: its method, budget and steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["fgsm", "pgd"] = "pgd"
    eps: float = Field(..., gt=0)
    """The L-infinity radius: how far each input value may move (pixels in [0, 1]: 0.1 is
    a tenth of the range; text: units of the word-embedding values)."""
    steps: int = Field(10, ge=1)
    """PGD: gradient steps (FGSM takes one)."""
    step_size: float | None = Field(None, gt=0)
    """PGD: size of each step; None: 2.5 x eps / steps (Madry et al.)."""
    random_start: bool = True
    """PGD: start from a uniform random point of the ball."""
    low: float | None = None
    """Smallest valid input value (images: 0); None: unbounded (embeddings)."""
    high: float | None = None
    """Largest valid input value (images: 1); None: unbounded."""
    seed: int = 0
    """Seeds PGD's random start, so an evaluation is repeatable."""

    @model_validator(mode="after")
    def _bounds(self) -> AttackConfig:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("low must be below high")
        return self

    @property
    def alpha(self) -> float:
        """PGD's step size."""
        return self.step_size or 2.5 * self.eps / self.steps


@dataclass
class Surface:
    """What an attack moves and how the model sees it."""

    x: torch.Tensor
    labels: torch.Tensor
    logits: Callable[[torch.Tensor], torch.Tensor]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The summed cross-entropy of the model's logits at `x` against the labels."""
        return nn.functional.cross_entropy(self.logits(x).float(), self.labels,
                                           reduction="sum")


class Attackable(Protocol):
    """An objective whose examples can be turned into a `Surface`."""

    def units(self, examples: Sequence[Any]) -> int: ...

    def surface(self, model: nn.Module, examples: Sequence[Any]) -> Surface: ...


def _project(x: torch.Tensor, origin: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    x = torch.max(torch.min(x, origin + config.eps), origin - config.eps)
    if config.low is not None or config.high is not None:
        x = x.clamp(config.low, config.high)
    return x


def _gradient(surface: Surface, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(surface.loss(x), x)
    return grad


def perturb(surface: Surface, config: AttackConfig) -> torch.Tensor:
    """The adversarial version of `surface.x` (detached): the point of the eps-ball around
    it that the attack finds to raise the loss most. Model gradients are not touched."""
    origin = surface.x.detach()
    if config.method == "fgsm":
        return _project(origin + config.eps * _gradient(surface, origin).sign(), origin, config)
    x = origin
    if config.random_start:
        generator = torch.Generator(device=origin.device).manual_seed(config.seed)
        noise = torch.rand(origin.shape, generator=generator, device=origin.device)
        x = _project(origin + (2 * noise.to(origin.dtype) - 1) * config.eps, origin, config)
    for _ in range(config.steps):
        x = _project(x + config.alpha * _gradient(surface, x).sign(), origin, config)
    return x.detach()


class Adversarial:
    """Adversarial training: the wrapped objective's cross-entropy on the attack's points
    instead of the clean inputs (Madry et al.: min over weights of max over the ball)."""

    def __init__(self, objective: Attackable, config: AttackConfig) -> None:
        self.objective, self.config = objective, config

    def units(self, examples: Sequence[Any]) -> int:
        return self.objective.units(examples)

    def loss(self, model: nn.Module, examples: Sequence[Any]) -> torch.Tensor:
        surface = self.objective.surface(model, examples)
        return surface.loss(perturb(surface, self.config))


@torch.no_grad()
def _correct(surface: Surface, x: torch.Tensor) -> int:
    return int((surface.logits(x).argmax(-1) == surface.labels).sum())


def robust_accuracy(model: nn.Module, objective: Attackable, examples: Sequence[Any],
                    config: AttackConfig, batch_size: int = 64) -> dict[str, float]:
    """Clean accuracy and accuracy under the attack, over `examples`, in eval mode."""
    model.eval()
    clean = robust = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        surface = objective.surface(model, chunk)
        clean += _correct(surface, surface.x)
        with torch.enable_grad():
            moved = perturb(surface, config)
        robust += _correct(surface, moved)
    return {"clean_accuracy": clean / len(examples), "robust_accuracy": robust / len(examples)}
