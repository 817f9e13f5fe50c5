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
    """In a fresh process: a late test's allocation may reuse memory that is already resident,
    so only a clean interpreter shows the counter move predictably."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from slimforge.bench import measure\n"
        "block = torch.ones(256 * 1024 * 1024 // 4)\n"
        "peak = measure.peak_rss_mb()\n"
        "del block\n"
        "reset = measure.reset_peak_rss()\n"
        "after_reset = measure.peak_rss_mb()\n"
        "block = torch.ones(64 * 1024 * 1024 // 4)\n"
        "print(reset, peak, after_reset, measure.peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    reset, peak, after_reset, grown = out[0] == "True", *map(float, out[1:])
    assert peak > 256
    if not reset:
        pytest.skip("this kernel does not allow resetting the peak RSS counter")
    assert after_reset < peak - 200  # the 256 MiB peak was forgotten
    assert grown >= after_reset + 50  # and the new 64 MiB block was seen


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
