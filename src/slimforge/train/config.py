"""`TrainConfig`: how `fit` trains — steps, batches, optimizer, schedule, precision, checks.

Owns: `TrainConfig`, `lr_factor`. The global batch is `batch_size x accumulation x world
size` examples; `scale_lr_from_batch` applies the linear scaling rule (Goyal et al. 2017:
the learning rate grows with the global batch, from the batch it was tuned for) only when
asked, because it is a heuristic that breaks down for large batches and for Adam.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimforge.trust.attacks import AttackConfig
from slimforge.trust.privacy import PrivacyConfig


class TrainConfig(BaseModel):
    """Everything `fit` needs to know besides the model, the data and the loss."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(100, ge=1)
    """Optimizer steps (each of `accumulation` micro-batches)."""
    batch_size: int = Field(16, ge=1)
    """Examples per micro-batch, per process."""
    accumulation: int = Field(1, ge=1)
    """Micro-batches whose gradients add up to one step; the loss is normalised over all
    their examples (or tokens) together, not averaged per micro-batch."""
    group_by_length: bool = False
    """Batch examples of similar length together (the objective's `length`): far less
    padding, so faster steps on texts of mixed lengths; each batch is still a random draw
    of lengths from a window of 16 batches, and the batches' order is shuffled."""
    lr: float = Field(5e-5, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """sgd only."""
    schedule: Literal["constant", "cosine", "linear", "step"] = "cosine"
    """After warmup: constant, cosine or linear decay to `min_lr_ratio`, or x`step_gamma`
    every `step_every` steps."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warmup from 0."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    step_every: int = Field(100, ge=1)
    step_gamma: float = Field(0.1, gt=0, le=1)
    clip_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; None: no clipping."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on a CPU with native bf16 (AMX / AVX-512 BF16) or a GPU that has
    it, fp16 with a gradient scaler on older GPUs, else fp32. fp16 needs a GPU."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every N steps (and at the end); 0: at the end only."""
    patience: int | None = Field(None, ge=1)
    """Early stopping: stop after this many evaluations without improvement."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: DDP keeps a whole model in every process; FSDP shards parameters,
    gradients and optimizer state across the processes (each device holds 1/N of them and
    gathers a layer's weights only while it runs), for models too large for one device."""
    checkpoint_every: int = Field(50, ge=1)
    """Write the resumable checkpoint every N steps (and at the end)."""
    seed: int = 0
    tensorboard: bool = False
    """Also write every metrics.jsonl figure as TensorBoard scalars in `run_dir/tensorboard`
    (needs the `tensorboard` package: `pip install 'slimforge[tensorboard]'`)."""
    scale_lr_from_batch: int | None = Field(None, ge=1)
    """Linear scaling rule, opt-in: lr x (global batch / this)."""
    privacy: PrivacyConfig | None = None
    """DP-SGD (`trust/privacy.py`): per-example clipping, noise, Poisson-sampled batches of
    `batch_size` examples on average, and the epsilon spent in the result."""
    adversarial: AttackConfig | None = None
    """Adversarial training (`trust/attacks.py`): train on each batch's FGSM/PGD points;
    the objective must expose `surface` (`Classify` does)."""

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError("warmup_steps must be fewer than max_steps")
        return self

    @model_validator(mode="after")
    def _privacy_fits(self) -> TrainConfig:
        if self.privacy is None:
            return self
        if self.accumulation > 1:
            raise ValueError("privacy (DP-SGD) draws one Poisson batch per step: set "
                             "accumulation to 1 and choose the expected batch with batch_size")
        if self.precision not in ("auto", "fp32"):
            raise ValueError("privacy (DP-SGD) trains in fp32: set precision to auto or fp32")
        if self.adversarial is not None:
            raise ValueError("privacy and adversarial training together are not supported: "
                             "the attack's gradients would enter the per-example gradients")
        return self


def lr_factor(config: TrainConfig, step: int) -> float:
    """The multiple of the base learning rate at optimizer step `step` (from 0)."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    done = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))
    if config.schedule == "linear":
        return floor + (1 - floor) * (1 - done)
    if config.schedule == "step":
        return config.step_gamma ** ((step - config.warmup_steps) // config.step_every)
    return 1.0
