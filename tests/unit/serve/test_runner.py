"""serve/runner.py: splitting a sorted batch by length, and running it without changing
any answer."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from slimforge.serve.runner import BatchRunner, padded, split_by_length


def _cost(lengths, groups, call_cost):
    return sum(call_cost + (g.stop - g.start) * padded(lengths[g.stop - 1]) for g in groups)


def _brute_force(lengths, call_cost):
    n = len(lengths)
    best = float("inf")
    for mask in itertools.product([False, True], repeat=n - 1):
        cuts = [0] + [i + 1 for i, cut in enumerate(mask) if cut] + [n]
        groups = [slice(a, b) for a, b in itertools.pairwise(cuts)]
        best = min(best, _cost(lengths, groups, call_cost))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_split_is_optimal_and_covers_the_batch_in_order(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 300) for _ in range(rng.randint(1, 9)))
    call_cost = rng.choice([0, 50, 150, 1000])
    groups = split_by_length(lengths, call_cost)
    assert [i for g in groups for i in range(g.start, g.stop)] == list(range(len(lengths)))
    assert _cost(lengths, groups, call_cost) == _brute_force(lengths, call_cost)


def test_a_costly_call_keeps_the_batch_whole_and_a_free_one_splits_by_padded_length():
    lengths = [5, 20, 40, 70, 250]
    assert split_by_length(lengths, 10_000) == [slice(0, 5)]
    # free calls: one group per padded length (32, 32, 64, 96, 256)
    assert split_by_length(lengths, 0) == [slice(0, 2), slice(2, 3), slice(3, 4),
                                           slice(4, 5)]
    assert split_by_length([], 100) == []


def test_unsorted_lengths_are_refused():
    with pytest.raises(ValueError, match="sorted"):
        split_by_length([30, 10], 0)


def test_split_batches_give_the_same_embeddings_as_one_padded_batch(tiny_bert):
    texts = ["a", "short text", "a somewhat longer text " * 6, "the longest text here " * 12]
    ids = sorted(tiny_bert.tokenizer(texts)["input_ids"], key=len)
    runner = BatchRunner(tiny_bert)
    runner.call_cost = 10_000  # one call
    whole = np.stack(runner(ids))
    runner.call_cost = 0  # one call per padded length
    split = np.stack(runner(ids))
    assert whole.shape == (4, tiny_bert.model.config.hidden_size)
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_calibration_measures_a_nonnegative_bounded_call_cost(tiny_bert):
    runner = BatchRunner(tiny_bert)
    cost = runner.calibrate(repeats=1)
    assert 0 <= cost <= 4096
    assert runner.call_cost == cost
