"""Differential privacy for `fit`: DP-SGD through Opacus, with the privacy spent reported.

Owns: `PrivacyConfig`, `PrivateTraining`. DP-SGD (Abadi et al. 2016) bounds what one
training example can change: every example's gradient is clipped to `max_grad_norm`,
Gaussian noise of `noise_multiplier x max_grad_norm` is added to their sum, and batches
are drawn by Poisson sampling (each example joins a step's batch with probability
`batch_size / dataset size`), which is what the privacy accountant assumes. The noise is
chosen so that the whole run (its `max_steps`) spends at most `target_epsilon` at
`delta`; the epsilon actually spent so far is reported from Opacus' accountant. Opacus
computes the per-example gradients (`GradSampleModule`) and does the clipping and noise
(`DPOptimizer`); slimforge draws the batches, so a resumed run draws the same ones.
Limits, each refused with a clear message: one process (no DDP), no gradient
accumulation, fp32 (per-example gradients in low precision lose the clipping's meaning),
and layers Opacus supports (BatchNorm mixes examples: replace it with GroupNorm). Every
trainable parameter must get a per-example gradient (freeze what the loss never uses).
Hugging Face transformers train privately too: their absolute position embeddings are looked
up with ids of batch size 1 broadcast over the batch, which Opacus would take for a single
example, so a private run hands the model explicit per-example position ids (the same
values it would use itself).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slimforge.errors import TrainingError


class PrivacyConfig(BaseModel):
    """The privacy budget of a run and the clipping bound."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_epsilon: float = Field(..., gt=0)
    """The most epsilon the whole run may spend (smaller: more private, more noise)."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """The failure probability; keep it well below 1 / the number of training examples."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Each example's gradient is clipped to this L2 norm."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus' accountant: Renyi DP (rdp) or the tighter PRV accountant (prv)."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Opacus' and torch's warnings that say nothing a user can act on (a full
    backward hook on a first layer whose input needs no gradient; the accountant's alpha
    range)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def _refuse_unsupported(model: nn.Module) -> None:
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator checks the mode training will run in
    errors = ModuleValidator.validate(model, strict=False)
    model.train(was_training)
    if errors:
        names = sorted({type(e).__name__ for e in errors})
        first = str(errors[0]).split(".")[0]
        raise TrainingError(
            f"DP-SGD cannot train this model: {first} ({len(errors)} problem(s): "
            f"{', '.join(names)}).",
            "replace BatchNorm with GroupNorm or LayerNorm (opacus.validators.ModuleValidator"
            ".fix(model) does it), or freeze the unsupported layers (requires_grad=False).")


def _per_example_positions(model: nn.Module) -> Any:
    """On the outermost Hugging Face model inside `model` that takes `position_ids`, a hook
    that passes them per example (`[batch, length]`) when the caller gave none; returns the
    hook's handle, or None for other models."""
    import inspect

    from transformers import PreTrainedModel

    def positions(_: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ids = kwargs.get("input_ids")
        if ids is None or kwargs.get("position_ids") is not None:
            return None
        ranks = torch.arange(ids.shape[1], device=ids.device)
        return args, {**kwargs, "position_ids": ranks.expand(ids.shape).contiguous()}

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            if "position_ids" in inspect.signature(module.forward).parameters:
                return module.register_forward_pre_hook(positions, with_kwargs=True)
            return None
    return None


class PrivateTraining:
    """One DP-SGD run: the wrapped model and optimizer, the batch sampler, the accountant."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 config: PrivacyConfig, dataset_size: int, batch_size: int, steps: int,
                 seed: int) -> None:
        from opacus import GradSampleModule
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if batch_size >= dataset_size:
            raise TrainingError(
                f"DP-SGD samples batches of about {batch_size} from {dataset_size} examples: "
                "every example would be in every batch, which leaves no privacy to gain.",
                "use a batch_size well below the number of training examples.")
        _refuse_unsupported(model)
        self.config, self.dataset_size, self.seed = config, dataset_size, seed
        self.sample_rate = batch_size / dataset_size
        try:
            with quiet():
                self.noise_multiplier = get_noise_multiplier(
                    target_epsilon=config.target_epsilon, target_delta=config.delta,
                    sample_rate=self.sample_rate, steps=steps, accountant=config.accountant)
        except ValueError as exc:
            raise TrainingError(f"No noise level reaches epsilon {config.target_epsilon} "
                                f"in {steps} steps ({exc}).",
                                "raise target_epsilon, or train fewer steps.") from None
        self.module = GradSampleModule(model, loss_reduction="sum")
        self._hook = _per_example_positions(model)  # after wrapping: nothing to undo if it fails
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=config.max_grad_norm,
                                     expected_batch_size=batch_size, loss_reduction="mean")

    def batch(self, step: int) -> list[int]:
        """Step `step`'s Poisson-sampled batch (possibly empty), the same on every run."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        chosen = torch.rand(self.dataset_size, generator=generator) < self.sample_rate
        return chosen.nonzero().flatten().tolist()

    def check_gradients(self, model: nn.Module) -> None:
        """Refuse a step in which a trainable parameter got no per-example gradient (a
        layer the loss never uses, such as BERT's pooler under an embedding loss): Opacus
        cannot noise it consistently."""
        missing = [name for name, p in model.named_parameters()
                   if p.requires_grad and getattr(p, "grad_sample", None) is None]
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more"
                                              if len(missing) > 4 else "")
            raise TrainingError(
                f"DP-SGD got no per-example gradient for {shown}: the loss does not use "
                "them, or Opacus cannot compute them for that layer.",
                "freeze those parameters (requires_grad=False) before training with privacy, "
                "or train without privacy.")

    def empty_step(self) -> None:
        """Mark an empty batch: the optimizer step still adds its noise, as the accounting
        assumes."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                param.grad_sample = param.new_zeros((0, *param.shape))

    def close(self) -> None:
        """Detach Opacus from the model: its hooks (which would keep recording activations
        and break later gradient computations) and the per-example gradients."""
        self.module._close()
        if self._hook is not None:
            self._hook.remove()

    def spent(self, steps: int) -> dict[str, Any]:
        """The privacy spent after `steps` steps, from Opacus' accountant."""
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.config.accountant)
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)] if steps else []
        with quiet():
            epsilon = float(accountant.get_epsilon(self.config.delta)) if steps else 0.0
        return {"epsilon": epsilon, "delta": self.config.delta,
                "target_epsilon": self.config.target_epsilon,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "max_grad_norm": self.config.max_grad_norm, "steps": steps,
                "accountant": self.config.accountant}
