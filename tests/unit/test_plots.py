"""report/plots.py: the sensitivity chart is a real PNG, ranked, and absent without figures."""

from __future__ import annotations

from slimforge.report.plots import SHOWN_LAYERS, sensitivity_png
from slimforge.report.report import optimize_report, sensitivity_file


def test_sensitivity_chart_is_a_png():
    layers = {f"layer.{i}": {"sqnr_db": 20.0 + i, "alone_sqnr_db": 30.0 + i} for i in range(50)}
    png = sensitivity_png(layers, "chart")
    assert png is not None
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5_000
    assert SHOWN_LAYERS < 50


def test_no_figures_no_chart():
    assert sensitivity_png({}, "nothing") is None
    assert sensitivity_png({"a": {}}, "nothing") is None


def test_report_links_the_chart_and_names_the_worst_layers():
    bench = {"p50_ms": 1.0, "p95_ms": 1.1, "throughput_per_s": 10.0, "throughput_unit": "x/s",
             "size_mb": 1.0, "peak_rss_mb": 1.0, "threads": 2, "latency_shape": "1x8",
             "throughput_shape": "8x8"}
    stage = {"name": "int8 dynamic", "eval": {"cosine_mean": 0.99}, "bench": bench,
             "passed": True, "verdict": "ok", "selected": True, "notes": [],
             "layers": {"a": {"sqnr_db": 31.0}, "b": {"sqnr_db": 12.5}}}
    text = optimize_report({"model": "m", "selected": "int8 dynamic", "reason": "r",
                            "stages": [stage]}, plots=[sensitivity_file("int8 dynamic")])
    assert "`b` 12.5 dB, `a` 31.0 dB" in text
    assert "(sensitivity-int8-dynamic.png)" in text
