"""trust/privacy.py through `fit`: DP-SGD spends no more than its epsilon, clips and noises
each step, samples batches by Poisson draws, and refuses what it cannot do."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from slimforge.data.sources import digits_records
from slimforge.errors import TrainingError
from slimforge.models.load import load_model
from slimforge.train.config import TrainConfig
from slimforge.train.engine import fit
from slimforge.train.objectives import Classify
from slimforge.trust.attacks import AttackConfig, robust_accuracy
from slimforge.trust.privacy import PrivacyConfig, PrivateTraining

CPU = torch.device("cpu")


def _accuracy(model, records):
    surface = Classify(CPU).surface(model, records)
    with torch.no_grad():
        return float((surface.logits(surface.x).argmax(-1) == surface.labels).float().mean())


def test_dp_sgd_on_digits_spends_at_most_its_epsilon_and_learns(tmp_path):
    model = load_model("builtin:digits-cnn").model
    config = TrainConfig(max_steps=150, batch_size=64, lr=2e-3, clip_norm=None,
                         privacy=PrivacyConfig(target_epsilon=8.0, delta=1e-5))
    result = fit(model, digits_records("train"), Classify(CPU), config, tmp_path)
    spent = result.privacy
    assert spent["epsilon"] <= 8.0
    assert spent["epsilon"] > 6.0
    assert spent["noise_multiplier"] > 0.3
    assert spent["steps"] == 150
    assert spent["sample_rate"] == pytest.approx(64 / 1437)
    assert result.precision == "fp32"
    assert _accuracy(model, digits_records("eval")) > 0.5  # well above chance (0.1)
    # the model leaves without Opacus' hooks: gradients work as before (an attack needs them)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    figures = robust_accuracy(model, Classify(CPU), digits_records("eval")[:32],
                              AttackConfig(eps=0.1, steps=2))
    assert figures["robust_accuracy"] <= figures["clean_accuracy"]


def test_noise_is_added_every_step(tmp_path):
    """With a zero loss the only change to the weights is the DP noise."""

    class Zero:
        def units(self, examples):
            return len(examples)

        def loss(self, model, examples):
            return (model(torch.zeros(len(examples), 2)) * 0).sum()

    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    config = TrainConfig(max_steps=3, batch_size=4, lr=0.1, optimizer="sgd", momentum=0,
                         weight_decay=0, clip_norm=None,
                         privacy=PrivacyConfig(target_epsilon=1.0))
    fit(model, list(range(40)), Zero(), config, tmp_path)
    assert not torch.equal(model.weight, before)


def test_poisson_batches_vary_in_size_and_repeat_per_step():
    model = nn.Linear(2, 2)
    private = PrivateTraining(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              PrivacyConfig(target_epsilon=8), 1000, 50, 100, seed=3)
    sizes = [len(private.batch(step)) for step in range(30)]
    assert len(set(sizes)) > 3
    assert 30 < sum(sizes) / 30 < 70
    assert private.batch(5) == private.batch(5)


def test_empty_poisson_batch_still_steps(tmp_path):
    class Count:
        def units(self, examples):
            return len(examples)

        def loss(self, model, examples):
            return model(torch.ones(len(examples), 2)).sum()

    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    config = TrainConfig(max_steps=20, batch_size=1, lr=0.01, clip_norm=None,
                         privacy=PrivacyConfig(target_epsilon=50.0))
    result = fit(model, list(range(3)), Count(), config, tmp_path)  # P(empty) = (2/3)^3
    assert result.steps == 20
    assert torch.isfinite(model.weight).all()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert any(math.isnan(v) for v in losses)  # some steps had an empty batch
    assert any(not math.isnan(v) for v in losses)


def test_batchnorm_is_refused_with_the_fix(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 10))
    config = TrainConfig(max_steps=2, batch_size=4, privacy=PrivacyConfig(target_epsilon=8))
    with pytest.raises(TrainingError, match="BatchNorm") as info:
        fit(model, digits_records("train")[:100], Classify(CPU), config, tmp_path)
    assert "GroupNorm" in info.value.fix


def test_a_parameter_the_loss_never_uses_is_named(tmp_path):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.pooler = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    class Loss:
        def units(self, examples):
            return len(examples)

        def loss(self, model, examples):
            return model(torch.ones(len(examples), 2)).sum()

    config = TrainConfig(max_steps=2, batch_size=8, privacy=PrivacyConfig(target_epsilon=8))
    with pytest.raises(TrainingError, match="pooler.weight") as info:
        fit(Unused(), list(range(100)), Loss(), config, tmp_path)
    assert "requires_grad=False" in info.value.fix


def test_a_bert_student_distills_privately_and_leaves_no_hooks_behind(tmp_path, tiny_bert):
    from slimforge.train.distill import DistillConfig, distill, student_from_teacher

    student = student_from_teacher(tiny_bert, [0])
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    texts = [f"text number {i} about things" for i in range(200)]
    config = TrainConfig(max_steps=3, batch_size=16, privacy=PrivacyConfig(target_epsilon=8))
    trained, result = distill(student, tiny_bert, texts, DistillConfig(max_length=32), config,
                              tmp_path)
    assert 0 < result.privacy["epsilon"] <= 8
    after = trained.model.state_dict()
    assert not torch.equal(after["encoder.layer.0.attention.self.query.weight"],
                           before["encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(after["embeddings.position_embeddings.weight"],
                           before["embeddings.position_embeddings.weight"])
    assert torch.equal(after["pooler.dense.weight"], before["pooler.dense.weight"])  # unused
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in trained.model.modules())


def test_batch_as_large_as_the_data_is_refused(tmp_path):
    config = TrainConfig(max_steps=2, batch_size=64, privacy=PrivacyConfig(target_epsilon=8))
    with pytest.raises(TrainingError, match="no privacy"):
        fit(nn.Linear(2, 2), list(range(10)), Classify(CPU), config, tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"accumulation": 2}, "accumulation"),
    ({"precision": "bf16"}, "fp32"),
    ({"adversarial": AttackConfig(eps=0.1)}, "not supported"),
])
def test_privacy_refuses_what_it_cannot_account_for(changes, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(max_steps=5, privacy=PrivacyConfig(target_epsilon=8), **changes)
