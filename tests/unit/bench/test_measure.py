"""bench/measure.py: percentiles, memory, size and parameter counting."""

from __future__ import annotations

import pytest
import torch

from slimforge.bench import measure


def test_percentile_interpolates():
    values = [float(v) for v in range(1, 101)]
    assert measure.percentile(values, 50) == pytest.approx(50.5)
    assert measure.percentile(values, 0) == 1.0
    assert measure.percentile(values, 100) == 100.0
    assert measure.percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no values"):
        measure.percentile([], 50)


def test_time_calls_counts_calls():
    calls = []
    times = measure.time_calls(lambda: calls.append(1), warmup=2, repeats=5, sync=False)
    assert len(calls) == 7
    assert len(times) == 5
    assert all(t >= 0 for t in times)


def test_peak_rss_is_reset_and_read():
    measure.reset_peak_rss()
    before = measure.peak_rss_mb()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB touched
    assert measure.peak_rss_mb() >= before + 50
    del block


def test_size_and_parameters_count_shared_tensors_once():
    model = torch.nn.Sequential(torch.nn.Linear(100, 100, bias=False),
                                torch.nn.Linear(100, 100, bias=False))
    model[1].weight = model[0].weight  # tied
    params, sparsity = measure.parameter_stats(model)
    assert params == 100 * 100
    assert sparsity == 0.0
    assert measure.size_on_disk_mb(model) == pytest.approx(0.04, abs=0.002)
    with torch.no_grad():
        model[0].weight[:50] = 0
    assert measure.parameter_stats(model)[1] == pytest.approx(0.5)
