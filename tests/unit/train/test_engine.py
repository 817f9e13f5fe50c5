"""train/engine.py: accumulation, schedules, NaN, early stopping, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from slimforge.errors import TrainingError
from slimforge.train.config import TrainConfig, lr_factor
from slimforge.train.engine import fit
from slimforge.train.state import WEIGHTS


class Tokens:
    """Examples are (x, y) rows of different lengths: 'tokens' per example vary."""

    def units(self, examples):
        return sum(len(x) for x, _ in examples)

    def loss(self, model, examples):
        return sum(((model(x) - y) ** 2).sum() for x, y in examples)


def _data(count=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1 + i % 5, 4, generator=g), torch.randn(1 + i % 5, 2, generator=g))
            for i in range(count)]


def _model():
    torch.manual_seed(0)
    return nn.Linear(4, 2)


FP32 = {"precision": "fp32", "optimizer": "sgd", "lr": 0.1, "momentum": 0.0,
        "weight_decay": 0.0, "schedule": "constant", "clip_norm": None}


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    data = _data()
    big, small = _model(), _model()
    fit(big, data, Tokens(), TrainConfig(max_steps=3, batch_size=4, **FP32), tmp_path / "a")
    fit(small, data, Tokens(), TrainConfig(max_steps=3, batch_size=2, accumulation=2, **FP32),
        tmp_path / "b")
    # Normalised over the step's tokens, not per micro-batch: the same update.
    assert torch.allclose(big.weight, small.weight, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_linear_scaling_rule_is_opt_in(tmp_path):
    base = {k: v for k, v in FP32.items() if k not in ("lr", "schedule")}
    scaled = TrainConfig(max_steps=1, batch_size=8, accumulation=2, lr=0.01,
                         scale_lr_from_batch=4, schedule="constant", **base)
    plain, ruled = _model(), _model()
    fit(plain, _data(), Tokens(), scaled.model_copy(update={"scale_lr_from_batch": None,
                                                            "lr": 0.04}), tmp_path / "a")
    fit(ruled, _data(), Tokens(), scaled, tmp_path / "b")  # 0.01 x 16 / 4
    assert torch.allclose(plain.weight, ruled.weight)


def test_schedules():
    config = TrainConfig(max_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(config, 0) == pytest.approx(1 / 11)
    assert lr_factor(config, 10) == pytest.approx(1.0)
    assert lr_factor(config, 60) == pytest.approx(0.55)
    assert lr_factor(config.model_copy(update={"schedule": "linear"}), 60) == pytest.approx(0.55)
    step = config.model_copy(update={"schedule": "step", "step_every": 20, "step_gamma": 0.5})
    assert lr_factor(step, 55) == pytest.approx(0.25)


class Exploding(Tokens):
    def __init__(self, at_call):
        self.calls, self.at_call = 0, at_call

    def loss(self, model, examples):
        self.calls += 1
        value = super().loss(model, examples)
        return value * float("nan") if self.calls == self.at_call else value


def test_a_nan_loss_stops_the_run_and_the_last_checkpoint_survives(tmp_path):
    config = TrainConfig(max_steps=10, batch_size=4, checkpoint_every=1, **FP32)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*intact") as stopped:
        fit(_model(), _data(), Exploding(3), config, tmp_path)
    assert "lower lr" in stopped.value.fix
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["step"] == 2
    resumed = fit(_model(), _data(), Tokens(), config, tmp_path, resume=True)
    assert resumed.resumed_from == 2


def test_early_stopping_keeps_the_best_weights(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.4, 0.3])
    model = _model()
    config = TrainConfig(max_steps=50, batch_size=4, eval_every=1, patience=2, **FP32)
    seen = {}

    def evaluate(m):
        score = next(scores)
        seen[score] = m.weight.detach().clone()
        return score

    result = fit(model, _data(), Tokens(), config, tmp_path, evaluate=evaluate)
    assert (result.steps, result.stopped_early, result.best_step) == (4, True, 2)
    assert torch.equal(model.weight, seen[0.9])


def test_clear_errors_for_what_cannot_train(tmp_path):
    with pytest.raises(TrainingError, match="no training examples"):
        fit(_model(), [], Tokens(), TrainConfig(), tmp_path)
    with pytest.raises(TrainingError, match="fp16 training needs a CUDA GPU"):
        fit(_model(), _data(), Tokens(), TrainConfig(precision="fp16"), tmp_path)


CHILD = """
import sys, time, torch
from slimforge.models.load import load_model
from slimforge.train.config import TrainConfig
from slimforge.train.distill import DistillConfig, EmbeddingDistillation
from slimforge.train.engine import fit
from slimforge.train.state import save_weights
from slimforge.models.tasks import embed
run_dir, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
student = load_model("builtin:tiny-bert")  # dropout 0.1: the RNG state must come back too
texts = [f"sentence number {i} about item {i * 7 % 13}" for i in range(40)]
targets = torch.nn.functional.normalize(torch.randn(40, 32), dim=-1)

class Slow(EmbeddingDistillation):
    def loss(self, model, examples):
        time.sleep(0.02)
        return super().loss(model, examples)

objective = Slow(student, texts, targets, DistillConfig(max_length=16))
config = TrainConfig(max_steps=40, batch_size=4, accumulation=2, lr=1e-3, warmup_steps=3,
                     precision="bf16", checkpoint_every=4, seed=3)
fit(student.model, list(range(40)), objective, config, run_dir, resume=resume)
save_weights(__import__("pathlib").Path(out), student.model, {})
"""


def _child(run_dir, out, resume):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(out),
                             "1" if resume else "0"])


def test_a_run_killed_mid_way_and_resumed_ends_bit_identical(tmp_path):
    from safetensors.torch import load_file

    straight = _child(tmp_path / "straight", tmp_path / "straight-out", False)
    assert straight.wait(timeout=300) == 0
    killed = _child(tmp_path / "run", tmp_path / "unused", True)
    meta = tmp_path / "run" / "last" / "meta.json"
    deadline = time.monotonic() + 240
    while not (meta.is_file() and json.loads(meta.read_text())["step"] >= 12):
        assert time.monotonic() < deadline
        assert killed.poll() is None
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    step = json.loads(meta.read_text())["step"]
    assert step < 40  # killed mid-run, after a checkpoint
    resumed = _child(tmp_path / "run", tmp_path / "resumed-out", True)
    assert resumed.wait(timeout=300) == 0
    a = load_file(tmp_path / "straight-out" / WEIGHTS)
    b = load_file(tmp_path / "resumed-out" / WEIGHTS)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))  # no step logged twice


def test_tensorboard_scalars_match_the_jsonl_and_a_resume_purges_the_overlap(tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(max_steps=3, batch_size=4, tensorboard=True, **FP32)
    fit(_model(), _data(), Tokens(), config, tmp_path)
    shutil.copytree(tmp_path / "last", tmp_path / "step3")
    fit(_model(), _data(), Tokens(), config.model_copy(update={"max_steps": 6}), tmp_path,
        resume=True)
    # As if killed after step 6 with only the step-3 checkpoint on disk: resume to 8.
    shutil.rmtree(tmp_path / "last")
    shutil.copytree(tmp_path / "step3", tmp_path / "last")
    fit(_model(), _data(), Tokens(), config.model_copy(update={"max_steps": 8}), tmp_path,
        resume=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert {"lr", "grad_norm", "seconds"} <= set(events.Tags()["scalars"])
    # A fresh start in the same folder: its curve alone, like its metrics.jsonl.
    fit(_model(), _data(), Tokens(), config.model_copy(update={"max_steps": 2}), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_batches_grouped_by_length_cover_each_epoch_once_and_pad_little():
    from slimforge.train.engine import _Stream

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (1000,), generator=g).tolist()
    grouped, plain = _Stream(1000, 3, 0, lengths, 8), _Stream(1000, 3, 0)
    batches = [grouped.take(8) for _ in range(3 * 1000 // 8)]  # 3 epochs; 1000 % 8 == 0
    for epoch in range(3):
        seen = [i for b in batches[epoch * 125:(epoch + 1) * 125] for i in b]
        assert sorted(seen) == list(range(1000))
    def padding(b):
        return sum(max(lengths[i] for i in b) - lengths[i] for i in b)

    wasted = sum(padding(b) for b in batches)
    assert wasted < 0.1 * sum(padding(plain.take(8)) for _ in range(375))
    assert batches[:125] != batches[125:250]  # a new draw every epoch


def test_grouped_batches_stay_aligned_across_epochs_and_resume_exactly():
    from slimforge.train.engine import _Stream

    lengths = [(i * 37) % 101 for i in range(203)]  # 203 % 8 != 0: batches straddle epochs
    stream = _Stream(203, 1, 0, lengths, 8)
    batches = [stream.take(8) for _ in range(100)]
    straddling = {(e * 203) // 8 for e in range(1, 4)}
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
              for k, b in enumerate(batches) if k not in straddling]
    assert sorted(spread)[len(spread) // 2] <= 10  # sorted windows, not random draws
    resumed = _Stream(203, 1, 40 * 8, lengths, 8)
    assert [resumed.take(8) for _ in range(60)] == batches[40:]


def test_group_by_length_needs_an_objective_that_knows_lengths(tmp_path):
    config = TrainConfig(max_steps=2, batch_size=4, group_by_length=True, **FP32)
    with pytest.raises(TrainingError, match="each example's length"):
        fit(_model(), _data(), Tokens(), config, tmp_path)

    class Sized(Tokens):
        def length(self, example):
            return len(example[0])

    fit(_model(), _data(), Sized(), config, tmp_path / "ok")
