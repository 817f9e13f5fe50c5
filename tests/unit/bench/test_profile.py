"""bench/profile.py: work and traffic are counted right, and the bound follows the numbers."""

from __future__ import annotations

import json

import pytest
import torch

from slimforge.bench.profile import OVERHEAD_SHARE, Peaks, _bound, _Traffic, profile

PEAKS = Peaks(flops_per_s=100e9, bytes_per_s=10e9, dtype="float32", threads=2)  # balance 10


@pytest.mark.parametrize(("intensity", "flops_share", "bw_share", "bound"), [
    (50.0, 0.7, 0.1, "compute"),
    (0.5, 0.02, 0.7, "memory"),
    (0.5, 0.02, OVERHEAD_SHARE / 2, "overhead"),
    (50.0, OVERHEAD_SHARE / 2, 0.05, "overhead"),
])
def test_the_bound_follows_the_roofline_and_the_achieved_shares(intensity, flops_share,
                                                                 bw_share, bound):
    assert PEAKS.balance == 10
    assert _bound(intensity, PEAKS, flops_share, bw_share) == bound


def test_traffic_counts_each_weight_once_and_every_activation():
    weight = torch.randn(64, 32)
    x = torch.randn(8, 32)
    with _Traffic({weight.untyped_storage().data_ptr()}) as traffic:
        y = x @ weight.T  # reads x and the weight, writes y
        _ = y @ weight  # reads y again, the weight not again, writes 8 x 32
    assert traffic.bytes == 4 * (8 * 32 + 64 * 32 + 8 * 64) + 4 * (8 * 64 + 8 * 32)


def test_profile_of_a_tiny_encoder_reports_every_figure(tiny_bert, tmp_path):
    result = profile(tiny_bert, batch=4, seq=32, trace=tmp_path / "trace.json", peaks=PEAKS)
    figures = result.to_json()
    assert figures["workload"] == "forward, batch 4 x 32 tokens"
    assert figures["flops"] > 0
    assert figures["bytes"] > 0
    assert figures["arithmetic_intensity"] == pytest.approx(figures["flops"] / figures["bytes"])
    assert figures["bound"] == _bound(figures["arithmetic_intensity"], PEAKS,
                                      figures["achieved_flops_share"],
                                      figures["achieved_bandwidth_share"])
    assert figures["bound"] in figures["verdict"]
    assert figures["top_ops"][0]["op"].startswith("aten::")
    assert sum(op["share"] for op in figures["top_ops"]) <= 1.0 + 1e-6
    top = figures["top_modules"][0]
    assert top["module"]
    assert top["weights_mb"] > 0
    assert top["activations_mb_per_step"] > 0
    assert "traceEvents" in json.loads((tmp_path / "trace.json").read_text())


def test_profile_of_a_decode_step_counts_the_weights_it_reads(tiny_llama):
    result = profile(tiny_llama, peaks=PEAKS)
    weights = sum(p.numel() * p.element_size() for p in tiny_llama.model.parameters())
    assert result.workload == "decode step, batch 1, after a 32-token prompt"
    assert result.bytes >= weights  # every weight is read once per step
