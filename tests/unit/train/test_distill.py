"""train/distill.py: students built from teachers learn to reproduce them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from slimforge.compress.structured import blocks
from slimforge.errors import TrainingError
from slimforge.models.load import load_model
from slimforge.models.tasks import embed
from slimforge.train.config import TrainConfig
from slimforge.train.distill import (
    DistillConfig,
    EmbeddingDistillation,
    distill,
    layer_targets,
    pick_layers,
    student_from_teacher,
    teacher_layers,
    token_windows,
)

TEXTS = [f"sentence {i}: the {('quick', 'lazy', 'brown')[i % 3]} fox number {i * 7 % 11}"
         for i in range(48)]
TRAIN = {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32", "seed": 1}


def _losses(folder):
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_an_embedding_student_moves_towards_its_teacher(tmp_path):
    teacher = load_model("builtin:tiny-bert")
    student = student_from_teacher(teacher, [1])
    assert len(blocks(student.model)) == 1
    assert teacher_layers(student) == [1]
    with torch.no_grad():  # start away from the teacher (tiny random models agree closely)
        torch.manual_seed(0)
        for p in blocks(student.model).parameters():
            p.add_(0.3 * torch.randn_like(p))
    target = embed(teacher, TEXTS, max_length=32)

    def gap(model):
        return float((1 - (embed(model, TEXTS, max_length=32) * target).sum(-1)).mean())

    before = gap(student)
    trained, result = distill(student, teacher, TEXTS, DistillConfig(max_length=32),
                              TrainConfig(max_steps=40, **TRAIN), tmp_path)
    assert gap(trained) < 0.5 * before
    assert result.steps == 40
    assert "distilled from builtin:tiny-bert" in trained.notes[-1]
    assert trained.steps == student.steps  # training changes values, not the structure


def test_the_student_learns_without_dropout_unless_told(tmp_path):
    teacher = load_model("builtin:tiny-bert")
    config = TrainConfig(max_steps=3, **TRAIN)
    losses = {}
    for dropout in (0.0, None):  # None: the model's own 0.1
        same = student_from_teacher(teacher, [0, 1])  # equal to its teacher
        distill(same, teacher, TEXTS, DistillConfig(max_length=32, dropout=dropout), config,
                tmp_path / str(dropout))
        losses[dropout] = _losses(tmp_path / str(dropout))[0]
        assert {m.p for m in same.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert losses[0.0] == pytest.approx(0.0, abs=1e-5)  # deterministic: nothing to learn
    assert losses[None] > 1e-3  # dropout's noise alone moves it away from its teacher


def test_a_narrower_student_learns_through_a_projection_not_token_states(tmp_path):
    from transformers import BertModel

    teacher = load_model("builtin:tiny-bert")
    config = teacher.model.config.to_dict() | {"hidden_size": 16, "intermediate_size": 32}
    narrow = dataclasses.replace(teacher, model=BertModel(type(teacher.model.config)(**config)))
    train = TrainConfig(max_steps=3, **TRAIN)
    _, result = distill(narrow, teacher, TEXTS, DistillConfig(max_length=32), train, tmp_path)
    assert result.steps == 3
    with pytest.raises(TrainingError, match="teacher's width"):
        distill(narrow, teacher, TEXTS, DistillConfig(max_length=32, hidden_weight=1.0), train,
                tmp_path / "states")


def test_hidden_states_are_matched_layer_to_layer():
    teacher = load_model("builtin:tiny-bert")
    same = student_from_teacher(teacher, [0, 1])  # nothing removed: nothing to learn
    targets = embed(teacher, TEXTS, max_length=32)
    objective = EmbeddingDistillation(same, TEXTS, targets,
                                      DistillConfig(max_length=32, hidden_weight=1.0), teacher)
    same.model.eval()
    with torch.no_grad():
        assert float(objective.loss(same.model, [0, 1, 2])) == pytest.approx(0.0, abs=1e-5)
    half = student_from_teacher(teacher, [1])  # its one layer against the teacher's second
    half.model.eval()
    losses = []
    for weight in (0.0, 1.0):
        objective = EmbeddingDistillation(
            half, TEXTS, targets, DistillConfig(max_length=32, hidden_weight=weight), teacher)
        with torch.no_grad():
            losses.append(float(objective.loss(half.model, [0, 1, 2])))
    assert losses[1] > losses[0] + 1e-5


def test_each_student_layer_learns_the_output_of_the_span_it_replaces():
    assert layer_targets([0, 4, 5], 6) == [3, 4, 5]
    assert layer_targets([1, 3, 5], 6) == [2, 4, 5]
    assert layer_targets([0, 2], 6) == [1, 5]  # the last stands in for every layer after it
    assert layer_targets(list(range(6)), 6) == list(range(6))  # pruned, not shortened


@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_token_states_are_kept_after_the_first_pass_when_memory_allows(cache_mb):
    teacher = load_model("builtin:tiny-bert")
    student = student_from_teacher(teacher, [1])
    student.model.eval()
    targets = embed(teacher, TEXTS, max_length=32)
    config = DistillConfig(max_length=32, hidden_weight=1.0, state_cache_mb=cache_mb)
    objective = EmbeddingDistillation(student, TEXTS, targets, config, teacher)
    calls = []
    hook = teacher.model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        first = float(objective.loss(student.model, [0, 5, 9]))  # texts of unequal length
        again = float(objective.loss(student.model, [9, 0, 5]))  # other order, other padding
        mixed = float(objective.loss(student.model, [0, 5, 9, 10]))  # one text not seen yet
    hook.remove()
    assert again == pytest.approx(first, rel=1e-5)
    assert mixed > first
    assert len(calls) == (2 if cache_mb else 3)  # the teacher skips the batch it has seen


def test_a_causal_student_learns_the_softened_next_token_distribution(tmp_path):
    teacher = load_model("builtin:tiny-llama")
    student = student_from_teacher(teacher, [0])
    assert all(len(w) == 16 for w in token_windows(student, TEXTS, 16))
    _, result = distill(student, teacher, TEXTS, DistillConfig(max_length=16),
                        TrainConfig(max_steps=30, **TRAIN), tmp_path)
    losses = _losses(tmp_path)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert result.precision == "fp32"


def _four_layer_teacher():
    import dataclasses

    from transformers import BertModel

    base = load_model("builtin:tiny-bert")
    config = base.model.config.__class__(**{**base.model.config.to_dict(),
                                            "num_hidden_layers": 4})
    torch.manual_seed(3)
    return dataclasses.replace(base, model=BertModel(config).eval())


def test_the_kept_layers_are_those_whose_student_matches_best():
    teacher = _four_layer_teacher()
    target = embed(teacher, TEXTS[:16])

    def fidelity(keep):
        found = embed(student_from_teacher(teacher, keep), TEXTS[:16])
        return float((found * target).sum(-1).mean())

    best = pick_layers(teacher, 2, TEXTS[:16])
    every = {(a, b): fidelity([a, b]) for a in range(4) for b in range(a + 1, 4)}
    assert tuple(best) == max(every, key=every.get)
    greedy = pick_layers(teacher, 2, TEXTS[:16], exhaustive=0)  # one layer dropped at a time
    assert len(greedy) == 2
    assert fidelity(greedy) >= sorted(every.values())[len(every) // 2]


def test_picking_layers_refuses_what_it_cannot_pick():
    from slimforge.errors import SlimforgeError

    with pytest.raises(SlimforgeError, match="1 to 3 layers"):
        pick_layers(_four_layer_teacher(), 4, TEXTS[:4])
    with pytest.raises(SlimforgeError, match="embedding model"):
        pick_layers(load_model("builtin:tiny-llama"), 1, TEXTS[:4])
