"""`fit(model, examples, objective, config, run_dir) -> TrainResult`: one training loop for
fine-tuning, recovery after compression and distillation, on one process or many.

Owns: `Objective`, `TrainResult`, `fit`, `precision_for`. The loop:

- Data order is a seeded permutation per epoch, and the position in the stream (examples
  consumed) is part of the checkpoint, so a resumed run sees exactly the batches the
  uninterrupted one would have.
- Accumulation normalises the loss over the whole step: the objective returns a *summed*
  loss and `units` says how many examples or tokens a micro-batch holds, so every
  micro-batch's loss is divided by the step's total units (across processes too), not
  averaged per micro-batch and then again over micro-batches (wrong when micro-batches hold
  different numbers of tokens).
- Mixed precision by autocast: bf16 (CPU or GPU), or fp16 with a gradient scaler (GPU);
  the choice and its reason are printed once and recorded.
- Gradient clipping, AdamW or SGD, warmup then cosine / linear / step decay (`config.py`).
- Evaluation every N steps with the task's metric (higher is better), the best weights kept
  in `best/`, early stopping after `patience` evaluations without gain; at the end the
  model holds the best weights when there was an evaluation.
- A resumable checkpoint in `last/` every N steps (`state.py`); `resume=True` continues
  from it: same weights as an uninterrupted run, bit for bit on a CPU.
- A NaN or infinite loss stops the run before anything is written, so `last/` is intact.
- Under `torchrun` (the process group initialised), the model is wrapped in
  DistributedDataParallel, each process takes its share of every global batch, and only
  rank 0 writes.
- `metrics.jsonl` in the run folder: one line per step and per evaluation.
- `config.privacy`: DP-SGD through Opacus (`trust/privacy.py`): Poisson-sampled batches,
  per-example clipping and noise; the epsilon spent is in the result. `config.adversarial`:
  the objective is wrapped to train on attacked inputs (`trust/attacks.py`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from slimforge.errors import TrainingError
from slimforge.train.config import TrainConfig, lr_factor
from slimforge.train.state import load_state, load_weights, save_state, save_weights


class Objective(Protocol):
    """What `fit` minimises."""

    def units(self, examples: Sequence[Any]) -> int:
        """How many loss terms `loss` sums over these examples (examples, or tokens)."""
        ...

    def loss(self, model: nn.Module, examples: Sequence[Any]) -> torch.Tensor:
        """The summed loss of `model` on `examples` (a scalar with a graph)."""
        ...


@dataclass
class TrainResult:
    """What a run did."""

    steps: int
    seconds: float
    last_loss: float
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    precision: str
    precision_reason: str
    resumed_from: int | None
    run_dir: str
    privacy: dict[str, Any] | None = None
    """DP-SGD runs: epsilon spent, delta, noise multiplier, sample rate, clipping bound."""

    def to_json(self) -> dict[str, Any]:
        """The result as a plain dict."""
        return asdict(self)


def precision_for(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The precision to train in and why."""
    cuda = device.type == "cuda"
    if config.precision == "fp16" and not cuda:
        raise TrainingError("fp16 training needs a CUDA GPU (its gradient scaler and kernels).",
                            "use precision: bf16 or fp32 on a CPU.")
    if config.precision != "auto":
        return config.precision, "as configured"
    if config.privacy is not None:
        return "fp32", "DP-SGD clips per-example gradients, computed in fp32"
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU computes in bf16 natively (no loss scaling needed)"
        return "fp16", "the GPU has no bf16: fp16 with a gradient scaler"
    from slimforge.compress.quantize import cpu_has_bf16

    if cpu_has_bf16():
        return "bf16", "the CPU has native bf16 (AMX / AVX-512 BF16)"
    return "fp32", "this CPU has no native bf16: autocast would be slower than fp32"


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _sum_across(value: float) -> float:
    import torch.distributed as dist

    if _world()[0] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor)


class _Stream:
    """The examples in training order: a seeded permutation per epoch, from a position.

    With `lengths`, each epoch's permutation is cut into windows of `MEGABATCH` batches,
    each window sorted by length and cut into batches of `group` (one global micro-batch),
    and the batches shuffled: texts of a batch then have similar lengths and little
    padding. The order is still a pure function of (seed, epoch), so resuming by position
    stays exact; the batch that straddles two epochs is kept whole at the epoch's edges."""

    MEGABATCH = 16

    def __init__(self, count: int, seed: int, position: int,
                 lengths: Sequence[int] | None = None, group: int = 1) -> None:
        self.count, self.seed, self.position = count, seed, position
        self.lengths, self.group = lengths, group
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.count, generator=generator)
        if self.lengths is None or self.group <= 1:
            return order
        head = (-epoch * self.count) % self.group  # completes the last epoch's last batch
        body = order[head:].tolist()
        tail = len(body) % self.group  # starts the batch the next epoch completes
        full, body = body[:len(body) - tail], body[len(body) - tail:]
        out = order[:head].tolist()
        window = self.group * self.MEGABATCH
        for start in range(0, len(full), window):
            chunk = sorted(full[start:start + window], key=lambda i: self.lengths[i])
            batches = [chunk[k:k + self.group] for k in range(0, len(chunk), self.group)]
            for j in torch.randperm(len(batches), generator=generator).tolist():
                out += batches[j]
        return torch.tensor(out + body)

    def take(self, size: int) -> list[int]:
        picked = []
        for k in range(self.position, self.position + size):
            epoch = k // self.count
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self._epoch_order(epoch)
            picked.append(int(self._order[k % self.count]))
        self.position += size
        return picked


def _micro_batches(stream: _Stream, examples: Sequence[Any], config: TrainConfig
                   ) -> Iterator[list[Any]]:
    """This process's share of each micro-batch of the next step."""
    world, rank = _world()
    for _ in range(config.accumulation):
        picked = stream.take(config.batch_size * world)
        mine = picked[rank * config.batch_size:(rank + 1) * config.batch_size]
        yield [examples[i] for i in mine]


class _Log:
    """metrics.jsonl, rewritten on resume to the lines up to the checkpoint's step; and, when
    asked, the same figures as TensorBoard scalars (events past the checkpoint's step, or all
    of them on a fresh start, are purged, so the curves have no doubled stretch)."""

    def __init__(self, path: Path, keep_until: int, enabled: bool, tensorboard: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if json.loads(line)["step"] <= keep_until]
            path.write_text("".join(line + "\n" for line in kept))
        self.board = _board(path.parent / "tensorboard", keep_until) if (
            enabled and tensorboard) else None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if key != "step" and math.isfinite(value):
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _board(folder: Path, resumed_at: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("TensorBoard logging needs the tensorboard package.",
                            "pip install 'slimforge[tensorboard]', or leave tensorboard off "
                            "(metrics.jsonl has the same figures).") from None
    # A fresh start purges every earlier event, as metrics.jsonl starts empty.
    return SummaryWriter(str(folder), purge_step=resumed_at + 1)


def _optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


class _Run:
    """One call of `fit`: the model, its optimizer and schedule, and where it stands."""

    def __init__(self, model: nn.Module, examples: Sequence[Any], objective: Objective,
                 config: TrainConfig, run_dir: Path) -> None:
        self.model, self.examples, self.objective, self.config = model, examples, objective, config
        self.run_dir = run_dir
        self.world, self.rank = _world()
        device = next(model.parameters()).device
        self.precision, self.reason = precision_for(config, device)
        self.device_type = device.type
        global_batch = config.batch_size * config.accumulation * self.world
        lr = config.lr * (global_batch / config.scale_lr_from_batch
                          if config.scale_lr_from_batch else 1)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")
        self.sharded = self.world > 1 and config.strategy == "fsdp"
        # `trained`: the module the optimizer steps (FSDP: a sharded copy of `model`, whose
        # full weights are gathered back into `model` for checkpoints and at the end).
        self.trained = _shard(model) if self.sharded else model
        self.wrapped = self.trained
        if self.world > 1 and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(model)
        self.optimizer = _optimizer(self.trained, config, lr)
        self.full_optimizer: dict[str, Any] | None = None
        self.private = self._private() if config.privacy is not None else None
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(config, step))
        if config.adversarial is not None:
            self.objective = _adversarial(objective, config)
        self.step, self.best, self.best_step, self.bad = 0, None, None, 0
        self.stream = _Stream(len(examples), config.seed, 0, _lengths(objective, examples, config),
                              config.batch_size * self.world)

    def _private(self) -> Any:
        from slimforge.trust.privacy import PrivateTraining

        if self.world > 1:
            raise TrainingError("DP-SGD runs in one process here.",
                                "run without torchrun, or train without privacy.")
        private = PrivateTraining(self.model, self.optimizer, self.config.privacy,
                                  len(self.examples), self.config.batch_size,
                                  self.config.max_steps, self.config.seed)
        self.optimizer, self.wrapped = private.optimizer, private.module
        return private

    def parts(self) -> dict[str, Any]:
        optimizer = self.full_optimizer if self.sharded else self.optimizer
        return {"optimizer": optimizer, "schedule": self.schedule, "scaler": self.scaler,
                "progress": {"step": self.step, "position": self.stream.position,
                             "best": self.best, "best_step": self.best_step, "bad": self.bad}}

    def resume(self) -> int | None:
        folder = self.run_dir / "last"
        if not (folder / "state.pt").is_file():
            return None
        restored = load_state(folder, self.model, self.parts())
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            whole = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.trained, self.model.state_dict(), options=whole)
            set_optimizer_state_dict(self.trained, self.optimizer, restored["optimizer"],
                                     options=whole)
        progress = restored["progress"]
        self.step, self.stream.position = progress["step"], progress["position"]
        self.best, self.best_step, self.bad = (progress["best"], progress["best_step"],
                                               progress["bad"])
        return self.step

    def gather(self, everywhere: bool = False, optimizer: bool = False) -> None:
        """FSDP: the trained shards' full weights into `model` on rank 0 (`everywhere`: on
        every rank), and with `optimizer` the optimizer's full state into `full_optimizer`
        for a checkpoint. Every rank must call it. Nothing to do otherwise: `model` is what
        trains."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = get_model_state_dict(self.trained, options=StateDictOptions(
            full_state_dict=True, cpu_offload=not everywhere))
        if full:  # offloaded: ranks other than 0 get nothing
            self.model.load_state_dict(full)
        if optimizer:
            self.full_optimizer = get_optimizer_state_dict(
                self.trained, self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def autocast(self) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device_type, dtype=dtype, enabled=dtype is not None)

    def _check(self, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingError(
                f"The loss is {value} at step {self.step + 1}; the run stopped "
                f"and the last good checkpoint ({self.run_dir / 'last'}) is intact.",
                "lower lr, enable clip_norm, use fp32/bf16 instead of fp16, or look for "
                "broken examples (`slimforge data check`).")

    def _update(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def private_step(self) -> tuple[float, float]:
        """One DP-SGD step on a Poisson-sampled batch: each example's gradient of its own
        loss, clipped, summed and noised by the DP optimizer; returns the mean loss (nan for
        an empty batch) and nan for the norm (a non-private norm would leak)."""
        from slimforge.trust.privacy import quiet

        picked = [self.examples[i] for i in self.private.batch(self.step)]
        value = math.nan
        if picked:
            loss = self.objective.loss(self.wrapped, picked)
            value = float(loss.detach())
            self._check(value)
            with quiet():
                loss.backward()
            self.private.check_gradients(self.model)
            value /= self.objective.units(picked)
        else:
            self.private.empty_step()
        try:
            self._update()
        except (RuntimeError, ValueError) as exc:  # Opacus meets a layer it cannot handle
            raise TrainingError(
                "DP-SGD could not compute per-example gradients for this model "
                f"({str(exc).splitlines()[0]}).",
                "DP-SGD here is tested on plain PyTorch layers (Conv, Linear, LayerNorm, "
                "Embedding); freeze the layers Opacus cannot handle, or train without "
                "privacy.") from None
        return value, math.nan

    def one_step(self) -> tuple[float, float]:
        """Forward and backward over the step's micro-batches, then the update; returns the
        step's mean loss per unit and the gradient norm before clipping."""
        from contextlib import nullcontext

        if self.private is not None:
            return self.private_step()
        micro = list(_micro_batches(self.stream, self.examples, self.config))
        total = _sum_across(float(sum(self.objective.units(m) for m in micro)))
        if total == 0:
            raise TrainingError(f"Step {self.step + 1} has no loss terms (empty examples).",
                                "drop examples without text or targets from the data.")
        summed = 0.0
        for i, examples in enumerate(micro):
            last = i == len(micro) - 1
            if self.sharded:  # gradients reduce-scatter on the step's last micro-batch only
                self.trained.set_requires_gradient_sync(last)
            sync = (nullcontext() if last or self.world == 1 or self.sharded
                    else self.wrapped.no_sync())
            with sync:
                with self.autocast():
                    loss = self.objective.loss(self.wrapped, examples)
                value = float(loss.detach())
                self._check(value)
                self.scaler.scale(loss * (self.world / total)).backward()
            summed += value
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.trained.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(
            params, self.config.clip_norm if self.config.clip_norm else math.inf)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self._update()
        return _sum_across(summed) / total, norm


def fit(model: nn.Module, examples: Sequence[Any], objective: Objective, config: TrainConfig,
        run_dir: str | Path, evaluate: Callable[[nn.Module], float] | None = None,
        resume: bool = False) -> TrainResult:
    """Train `model` in place on `examples` under `objective`.

    Args:
        model: the model to train (its parameters with `requires_grad` are updated).
        examples: the training examples, indexable; the objective turns a list of them
            into a loss.
        objective: `units(examples)` and summed `loss(model, examples)`.
        config: steps, batches, optimizer, schedule, precision, evaluation, checkpoints.
        run_dir: where `last/`, `best/` and `metrics.jsonl` go.
        evaluate: model -> metric (higher is better), run in eval mode without gradients.
        resume: continue from `run_dir/last` when it exists.

    Raises:
        TrainingError: a NaN or infinite loss (nothing written after it), no data, fp16
            without a GPU, or a checkpoint that does not fit.
    """
    if len(examples) == 0:
        raise TrainingError("There are no training examples.", "point at non-empty data.")
    run_dir = Path(run_dir)
    run = _Run(model, examples, objective, config, run_dir)
    resumed = run.resume() if resume else None
    writer = run.rank == 0
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(run_dir / "metrics.jsonl", resumed or 0, writer, config.tensorboard)
    started = time.perf_counter()
    try:
        loss, stopped = _loop(run, evaluate, log, writer)
    finally:
        log.close()
        if run.private is not None:
            run.private.close()  # the model leaves without Opacus' hooks, even on an error
    run.gather(everywhere=True)
    if evaluate is not None and run.best_step is not None and (run_dir / "best").is_dir():
        load_weights(run_dir / "best", model)
    model.eval()
    privacy = run.private.spent(run.step) if run.private is not None else None
    return TrainResult(run.step, time.perf_counter() - started, loss, run.best, run.best_step,
                       stopped, run.precision, run.reason, resumed, str(run_dir), privacy)


def _loop(run: _Run, evaluate: Callable[[nn.Module], float] | None, log: _Log,
          writer: bool) -> tuple[float, bool]:
    """The steps from where the run stands to the end or an early stop; returns the last
    loss and whether it stopped early."""
    from slimforge.progress import track

    config, loss, stopped = run.config, math.nan, False
    run.trained.train()
    for _ in track(range(run.step, config.max_steps), "training"):
        tick = time.perf_counter()
        loss, norm = run.one_step()
        log.write({"step": run.step, "loss": loss, "lr": run.schedule.get_last_lr()[0],
                   "grad_norm": norm, "seconds": time.perf_counter() - tick})
        final = run.step == config.max_steps
        if evaluate is not None and (final or config.eval_every
                                     and run.step % config.eval_every == 0):
            stopped = _evaluate(run, evaluate, log, writer)
        if final or stopped or run.step % config.checkpoint_every == 0:
            run.gather(optimizer=True)
            if writer:
                save_state(run.run_dir / "last", run.model, run.parts(),
                           {"step": run.step, "precision": run.precision})
        _barrier()
        if stopped:
            break
    return loss, stopped


def _lengths(objective: Objective, examples: Sequence[Any], config: TrainConfig
             ) -> list[int] | None:
    """Each example's length when batches are grouped by length."""
    if not config.group_by_length:
        return None
    if not hasattr(objective, "length"):
        raise TrainingError(f"group_by_length needs to know each example's length; "
                            f"{type(objective).__name__} does not say.",
                            "turn group_by_length off for this objective.")
    return [objective.length(example) for example in examples]


def _shard(model: nn.Module) -> nn.Module:
    """A copy of `model` sharded by FSDP across the process group: each transformer layer
    its own unit (its weights gathered only while it runs), the rest in the root unit."""
    import copy

    from torch.distributed.fsdp import fully_shard

    from slimforge.compress.structured import blocks
    from slimforge.errors import SlimforgeError

    sharded = copy.deepcopy(model)
    try:
        layers = list(blocks(sharded))
    except SlimforgeError:
        layers = []  # no transformer layers: one unit for the whole model
    for layer in layers:
        fully_shard(layer)
    return fully_shard(sharded)


def _adversarial(objective: Objective, config: TrainConfig) -> Objective:
    from slimforge.trust.attacks import Adversarial

    if not hasattr(objective, "surface"):
        raise TrainingError(f"Adversarial training needs an objective with inputs to attack; "
                            f"{type(objective).__name__} has none.",
                            "use it with classification (the Classify objective).")
    return Adversarial(objective, config.adversarial)


def _evaluate(run: _Run, evaluate: Callable[[nn.Module], float], log: _Log,
              writer: bool) -> bool:
    """Evaluate, keep the best weights, and say whether to stop early."""
    run.trained.eval()
    with torch.no_grad():
        metric = float(evaluate(run.trained))
    run.trained.train()
    log.write({"step": run.step, "eval": metric})
    if run.best is None or metric > run.best:
        run.best, run.best_step, run.bad = metric, run.step, 0
        run.gather()
        if writer:
            save_weights(run.run_dir / "best", run.model, {"step": run.step, "metric": metric})
    else:
        run.bad += 1
    return run.config.patience is not None and run.bad >= run.config.patience


def _barrier() -> None:
    import torch.distributed as dist

    if _world()[0] > 1:
        dist.barrier()
