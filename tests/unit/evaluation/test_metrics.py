"""evaluate/metrics.py: known answers for every metric."""

from __future__ import annotations

import math

import pytest
import torch

from slimforge.evaluation import metrics


def _unit(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=gen), dim=-1)


def test_identical_embeddings_are_perfectly_faithful():
    emb = _unit(50, 16)
    assert metrics.cosine_mean(emb, emb) == pytest.approx(1.0)
    assert metrics.knn_overlap(emb, emb, 10) == pytest.approx(1.0)
    assert metrics.pairwise_spearman(emb, emb) == pytest.approx(1.0)


def test_unrelated_embeddings_score_low():
    a, b = _unit(200, 16, 0), _unit(200, 16, 1)
    assert abs(metrics.cosine_mean(a, b)) < 0.1
    assert metrics.knn_overlap(a, b, 10) < 0.15  # chance is 10/199
    assert abs(metrics.pairwise_spearman(a, b)) < 0.1


def test_spearman_known_answers():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert metrics.spearman(x, x**3) == pytest.approx(1.0)
    assert metrics.spearman(x, -x) == pytest.approx(-1.0)


def test_retrieval_at_1():
    docs = torch.eye(4)
    assert metrics.retrieval_at_1(docs, docs) == 1.0
    assert metrics.retrieval_at_1(docs[[1, 0, 2, 3]], docs) == 0.5


def test_perplexity_of_a_uniform_binary_guess_is_two():
    assert metrics.perplexity(10 * math.log(2), 10) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one"):
        metrics.perplexity(1.0, 0)


def test_accuracy_and_macro_f1():
    preds, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    assert metrics.accuracy(preds, labels) == 0.75
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 2 fp 0 fn 1 -> 4/5
    assert metrics.macro_f1(preds, labels) == pytest.approx((2 / 3 + 4 / 5) / 2)
