"""bench/resources.py and the GPU metrics: sampled while working, absent without a GPU."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import torch

from slimforge.bench.resources import ResourceSampler, gpu_reading, rss_bytes


def test_the_sampler_sees_cpu_work_and_memory():
    with ResourceSampler(interval_s=0.05) as sampler:
        end = time.monotonic() + 0.5
        x = torch.randn(512, 512)
        while time.monotonic() < end:
            x = (x @ x).tanh()
    summary = sampler.summary()
    assert summary["samples"] >= 5
    assert summary["cpu_percent_mean"] > 20  # a core kept busy
    assert 0 < summary["rss_mb_mean"] <= summary["rss_mb_max"]
    assert rss_bytes() > 0
    if not torch.cuda.is_available():
        assert gpu_reading() is None
        assert not any(key.startswith("gpu_") for key in summary)  # absent, not zero


def test_bench_reports_the_resources_it_sampled(tiny_bert):
    from slimforge.bench.bench import BenchConfig, benchmark

    result = benchmark(tiny_bert, BenchConfig(repeats=3, batch_size=2, seq_len=16, warmup=1,
                                              throughput_repeats=2))
    assert result.to_json()["resources"]["rss_mb_max"] > 0


def test_gpu_metrics_follow_the_naming_rules(monkeypatch):
    """The exposition of a GPU server, with NVML's answer given (no GPU here)."""
    import slimforge.serve.metrics as metrics

    reading = {"utilization": 0.42, "memory_used_bytes": 1e9, "memory_total_bytes": 8e10,
               "energy_j": 1234.5}
    monkeypatch.setattr(metrics, "gpu_reading", lambda index=0: reading)
    text = metrics.ServerMetrics({"spec": "x"}, 64, gpu_index=0).exposition().decode()
    for name in metrics.GPU_METRICS:
        assert f"\n{name} " in text, name
    assert "slimforge_gpu_utilization_ratio 0.42" in text
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "metrics"], input=text,
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_is_read_through_nvml():
    reading = gpu_reading(0)
    assert reading is not None
    assert 0 <= reading["utilization"] <= 1
    assert 0 < reading["memory_used_bytes"] <= reading["memory_total_bytes"]
