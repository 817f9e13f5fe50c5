"""report/plots.py: the sensitivity chart is a real PNG, ranked, and absent without figures."""

from __future__ import annotations

from slimforge.report.plots import SHOWN_LAYERS, latency_png, pareto_png, sensitivity_png
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


def _row(name: str, kind: str, cos: float, p50: float, size: float, layers=None) -> dict:
    bench = {"p50_ms": p50, "p95_ms": p50 * 1.1, "throughput_per_s": 1000 / p50,
             "throughput_unit": "items/s", "size_mb": size, "peak_rss_mb": 500.0,
             "threads": 2, "latency_shape": "batch 1 x 8", "throughput_shape": "8 x 8",
             "latency_samples_ms": [p50 * (1 + i / 100) for i in range(20)]}
    return {"name": name, "kind": kind, "status": "measured", "accepted": kind != "peer",
            "steps": [{"step": "quantize", "method": "dynamic-int8"}] if kind != "baseline"
            else [], "quality": {"cosine_mean": {"value": cos, "low": cos - 0.001,
                                                 "high": min(cos + 0.001, 1.0)}},
            "p50_ms": p50, "p95_ms": p50 * 1.1, "throughput_per_s": 1000 / p50, "size_mb": size,
            "peak_rss_mb": 500.0, "gain": 8.0 / p50, "bench": bench, "reason": "r",
            "vs_baseline": {"throughput_ratio": 8.0 / p50, "latency_speedup": 8.0 / p50,
                            "size_ratio": size / 90.0},
            "notes": [], "layers": layers or {}}


def test_pareto_and_latency_charts_are_pngs():
    rows = [_row("baseline", "baseline", 1.0, 8.0, 90.0), _row("int8", "candidate", 0.99, 4.0,
                                                                 23.0)]
    for png in (pareto_png(rows, ["baseline", "int8"], "latency", chosen="int8"),
                pareto_png(rows, ["int8"], "size"), latency_png(rows)):
        assert png is not None
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert pareto_png(rows[:1], [], "latency") is None
    assert latency_png([{"name": "x", "status": "skipped"}]) is None


def test_report_links_every_chart_and_names_the_worst_layers():
    base = _row("baseline", "baseline", 1.0, 8.0, 90.0)
    chosen = _row("int8 dynamic", "candidate", 0.99, 4.0, 23.0,
                  layers={"a": {"sqnr_db": 31.0}, "b": {"sqnr_db": 12.5}})
    skipped = {"name": "late", "kind": "candidate", "status": "skipped", "accepted": False,
               "steps": [{"step": "prune"}], "reason": "skipped: the time budget was spent"}
    results = {"model": "m", "baseline": base, "peer": None, "candidates": [chosen, skipped],
               "chosen": {**chosen, "speedup_vs_baseline": 2.0, "speedup_vs_peer": None},
               "reason": "r", "objective": {"metric": "throughput"},
               "budget": {"min_cosine": 0.98, "max_perplexity_ratio": 1.1,
                          "max_accuracy_drop": 0.01, "confidence": 0.95, "resamples": 1000,
                          "min_gain": 0.05},
               "pareto": ["baseline", "int8 dynamic"], "relax": [], "claims": [],
               "environment": {"date": "d", "cpu": "c", "gpu": None, "threads": 2,
                               "platform": "p", "versions": {"torch": "2.13.0"}},
               "reproduce": "slimforge optimize r"}
    plots = [sensitivity_file("int8 dynamic"), "pareto-latency.png", "latency.png"]
    text = optimize_report(results, plots=plots)
    assert "`b` 12.5 dB, `a` 31.0 dB" in text
    for plot in plots:
        assert f"]({plot})" in text
    assert "| int8 dynamic ★ |" in text
    assert "skipped: the time budget was spent" in text
    assert "torch 2.13.0" in text
