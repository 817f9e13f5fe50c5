"""trust/attacks.py: FGSM and PGD stay in their ball and range, hurt a trained model, and
adversarial training through `fit` makes it more robust; text models are attacked in
embedding space."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimforge.data.sources import digits_records
from slimforge.errors import TrainingError
from slimforge.models.load import load_model
from slimforge.train.config import TrainConfig
from slimforge.train.engine import fit
from slimforge.train.objectives import Classify, NextToken
from slimforge.trust.attacks import AttackConfig, Surface, perturb, robust_accuracy

CPU = torch.device("cpu")


def _surface():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(16, 1, 8, 8)
    return model, Surface(x, torch.arange(16) % 10, model)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_stays_in_the_ball_and_the_valid_range(method):
    model, surface = _surface()
    config = AttackConfig(method=method, eps=0.1, steps=5, low=0.0, high=1.0)
    moved = perturb(surface, config)
    assert (moved - surface.x).abs().max() <= 0.1 + 1e-6
    assert moved.min() >= 0
    assert moved.max() <= 1
    assert not moved.requires_grad
    assert all(p.grad is None for p in model.parameters())  # model gradients untouched


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_raises_the_loss(method):
    model, surface = _surface()
    moved = perturb(surface, AttackConfig(method=method, eps=0.05, steps=10))

    def loss(x):
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), surface.labels))

    assert loss(moved) > loss(surface.x) + 0.05


def test_pgd_is_repeatable_with_its_seed():
    _, surface = _surface()
    config = AttackConfig(eps=0.1, steps=3, seed=7)
    assert torch.equal(perturb(surface, config), perturb(surface, config))


def test_bad_attack_configs_are_refused():
    with pytest.raises(ValueError, match="greater than 0"):
        AttackConfig(eps=0)
    with pytest.raises(ValueError, match="low must be below high"):
        AttackConfig(eps=0.1, low=1, high=0)


def test_adversarial_training_on_digits_raises_robust_accuracy(tmp_path):
    train, test = digits_records("train"), digits_records("eval")[:200]
    objective = Classify(CPU)
    attack = AttackConfig(eps=0.2, steps=5, low=0.0, high=1.0)
    results = {}
    for name, adversarial in (("standard", None), ("adversarial", attack)):
        model = load_model("builtin:digits-cnn").model
        config = TrainConfig(max_steps=120, batch_size=64, lr=3e-3, warmup_steps=5,
                             precision="fp32", adversarial=adversarial)
        fit(model, train, objective, config, tmp_path / name)
        results[name] = robust_accuracy(model, objective, test, attack)
    assert results["standard"]["clean_accuracy"] > 0.85
    assert results["adversarial"]["robust_accuracy"] > results["standard"]["robust_accuracy"] + 0.2


def test_adversarial_training_needs_an_attackable_objective(tmp_path, tiny_llama):
    config = TrainConfig(max_steps=2, adversarial=AttackConfig(eps=0.1))
    with pytest.raises(TrainingError, match="inputs to attack"):
        fit(tiny_llama.model, [torch.arange(8)], NextToken(CPU), config, tmp_path)


def test_text_classifier_is_attacked_in_embedding_space():
    from transformers import BertConfig, BertForSequenceClassification

    from slimforge.models.tiny import byte_tokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    objective = Classify(CPU, tokenizer=byte_tokenizer())
    records = [{"text": "good" if i % 2 else "bad", "label": i % 2} for i in range(8)]
    surface = objective.surface(model, records)
    assert surface.x.shape[-1] == 32  # word embeddings, not token ids
    figures = robust_accuracy(model, objective, records, AttackConfig(eps=1.0, steps=5))
    assert figures["robust_accuracy"] <= figures["clean_accuracy"]
