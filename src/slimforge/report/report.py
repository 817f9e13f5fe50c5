"""Markdown reports of what a run measured.

Owns: `stage_rows` (the comparison table's data, shared by the CLI's rich table and the
Markdown), `optimize_report`, `bench_report`, `eval_report`. Figures come in as results and go
out as text; nothing here measures anything.
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
from typing import Any

from slimforge.bench.cost import cost_section

QUALITY_KEYS = ("cosine_mean", "knn_overlap_at_10", "spearman", "retrieval_at_1", "perplexity",
                "accuracy", "macro_f1")
EVAL_KEYS = (*QUALITY_KEYS, "robust_accuracy", "demographic_parity_difference",
             "equalized_odds_difference")
"""What `evaluate` shows: the quality figures, then robustness and fairness when measured."""
COLUMNS = ("stage", "quality", "p50 ms", "p95 ms", "throughput", "size MB", "peak RSS MB",
           "speed-up", "verdict")
SHORT_COLUMNS = ("stage", "quality", "p50 ms", "p95 ms", "per s", "MB", "speed-up", "ok")
SHORT_NAMES = {"cosine_mean": "cos", "knn_overlap_at_10": "knn10", "retrieval_at_1": "R@1",
               "perplexity": "ppl", "accuracy": "acc", "macro_f1": "F1"}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def quality_text(metrics: dict[str, float]) -> str:
    """The quality metrics of one evaluation, as `name value` pairs."""
    parts = [f"{k} {metrics[k]:.4g}" for k in QUALITY_KEYS if k in metrics]
    return ", ".join(parts) or "—"


def _short_quality(metrics: dict[str, float]) -> str:
    keys = [k for k in ("cosine_mean", "knn_overlap_at_10", "perplexity", "accuracy")
            if k in metrics] or [k for k in QUALITY_KEYS if k in metrics]
    return " ".join(f"{SHORT_NAMES.get(k, k)} {metrics[k]:.3g}" for k in keys) or "—"


def stage_rows(stages: list[dict[str, Any]], short: bool = False) -> list[list[str]]:
    """One row per stage (dicts as in metrics.json), in the order of COLUMNS, or of
    SHORT_COLUMNS for an 80-column terminal when `short`."""
    rows = []
    for stage in stages:
        bench, ratios = stage["bench"], stage["bench"].get("vs_anchor", {})
        name = stage["name"] + (" ★" if stage.get("selected") else "")
        speedup = f"{ratios.get('latency_speedup', 1.0):.2f}×"
        timing = [_fmt(bench["p50_ms"], 2), _fmt(bench["p95_ms"], 2)]
        if short:
            rows.append([name, _short_quality(stage["eval"]), *timing,
                         f"{bench['throughput_per_s']:.1f}", _fmt(bench["size_mb"], 1), speedup,
                         "yes" if stage["passed"] else "no"])
            continue
        rows.append([name, quality_text(stage["eval"]), *timing,
                     f"{bench['throughput_per_s']:.1f} {bench['throughput_unit']}",
                     _fmt(bench["size_mb"], 1), _fmt(bench["peak_rss_mb"], 0), speedup,
                     stage["verdict"]])
    return rows


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _date_line() -> str:
    return f"- Date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}"


def _context(threads: int, data: dict[str, Any] | None = None) -> list[str]:
    lines = [_date_line(),
             f"- Machine: {cpu_name()}, {threads} threads, Python {platform.python_version()}"]
    if data:
        lines.append(f"- Data: {data.get('spec')} (sha256 {str(data.get('sha256'))[:16]}…)"
                     if data.get("sha256") else f"- Data: {data.get('spec')}")
    return lines


def sensitivity_file(stage: str) -> str:
    """The file name of a stage's per-layer SQNR chart inside the run folder."""
    return f"sensitivity-{re.sub(r'[^A-Za-z0-9]+', '-', stage).strip('-')}.png"


def _layer_section(stages: list[dict[str, Any]], plots: list[str]) -> list[str]:
    lines = []
    for stage in stages:
        layers = {k: v for k, v in stage.get("layers", {}).items() if "sqnr_db" in v}
        if not layers:
            continue
        worst = sorted(layers.items(), key=lambda kv: kv[1]["sqnr_db"])[:5]
        lines += [f"### {stage['name']}", "",
                  f"{len(layers)} quantized layers; output SQNR against float on calibration "
                  f"text, lowest: " + ", ".join(f"`{n}` {v['sqnr_db']:.1f} dB" for n, v in worst)
                  + ". Every layer's figures are in the model's `slimforge.json`.", ""]
        if sensitivity_file(stage["name"]) in plots:
            lines += [f"![per-layer SQNR of {stage['name']}]({sensitivity_file(stage['name'])})",
                      ""]
    return ["## Per-layer quantization SQNR", "", *lines] if lines else []


def optimize_report(summary: dict[str, Any], plots: list[str] | None = None) -> str:
    """The Markdown report of an `optimize` run (summary as written to metrics.json);
    `plots` names the chart files written beside it."""
    stages = summary["stages"]
    first = stages[0]
    lines = [f"# slimforge optimize: {summary['model']}", "",
             *_context(first["bench"]["threads"], summary.get("data")),
             f"- Latency: {first['bench']['latency_shape']}; throughput: "
             f"{first['bench']['throughput_shape']}",
             "- Speed-up: baseline p50 / stage p50, both measured in the same run "
             "(alternating rounds)",
             "- Peak RSS: of the whole process while the stage was measured; the baseline is "
             "loaded beside every stage, so it is an upper bound, not the stage's own", "",
             _table(COLUMNS, stage_rows(stages)), "",
             f"**Selected: {summary['selected']}** — {summary['reason']}", ""]
    for stage in stages:
        if stage["notes"]:
            lines.append(f"- {stage['name']}: " + "; ".join(stage["notes"]))
    lines += ["", *_data_section(summary.get("data_check", [])),
              *cost_section(summary.get("cost", [])), *_layer_section(stages, plots or [])]
    return "\n".join(lines).rstrip() + "\n"


def _data_section(checks: list[dict[str, Any]]) -> list[str]:
    """What the data gate said about each local data file the run read."""
    if not checks:
        return []
    lines = ["## Data check", ""]
    for check in checks:
        verdict = ("passed every hard rule" if check["passed"] else
                   "BROKE " + "; ".join(check["failures"]) + " (run on, as told to proceed)")
        lines.append(f"- {check['role']} data `{check['data']}`: {verdict}; "
                     f"report: `{check['report']}`")
    return [*lines, ""]


def bench_report(result: dict[str, Any]) -> str:
    """The Markdown report of a `bench` run (result as from `BenchResult.to_json()`)."""
    keys = ["p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "prefill_tokens_per_s",
            "decode_tokens_per_s", "peak_rss_mb", "size_mb", "parameters", "sparsity"]
    anchor = result.get("anchor")
    header = ("figure", result["spec"], *((anchor["spec"], "ratio") if anchor else ()))
    rows = []
    for key in keys:
        if key not in result:
            continue
        row = [key, f"{result[key]:.4g}"]
        if anchor:
            row += [f"{anchor[key]:.4g}",
                    f"{result[key] / anchor[key]:.3f}" if anchor.get(key) else "—"]
        rows.append(row)
    return "\n".join([f"# slimforge bench: {result['spec']}", "",
                      *_context(result["threads"]),
                      f"- Latency: {result['latency_shape']}; throughput: "
                      f"{result['throughput_shape']} ({result['throughput_unit']})", "",
                      _table(header, rows), ""])


def eval_report(result: dict[str, Any]) -> str:
    """The Markdown report of an `evaluate` run (result as from `EvalResult.to_json()`)."""
    rows = [[k, f"{result[k]:.6g}"] for k in (*EVAL_KEYS, "tokens") if k in result]
    return "\n".join([f"# slimforge evaluate: {result['spec']}", "",
                      f"- Task: {result['task']}, samples: {result['samples']}, "
                      f"reference: {result['reference'] or '—'}",
                      _date_line(), f"- Data: {result['data']['spec']}", "",
                      _table(("metric", "value"), rows), "",
                      *[f"- {note}" for note in result["notes"]], "",
                      *_fairness_lines(result)])


def _fairness_lines(result: dict[str, Any]) -> list[str]:
    """Per-group figures, and their change against the reference when there is one."""
    if "fairness" not in result:
        return []
    fairness, deltas = result["fairness"], result.get("fairness_deltas")
    header = ("group", "examples", "accuracy", "selection rate", "TPR", "FPR",
              *(("accuracy vs reference", "selection vs reference") if deltas else ()))
    rows = []
    for group, row in fairness["groups"].items():
        change = (deltas or {}).get("groups", {}).get(group)
        rows.append([group, f"{row['count']:.0f}", f"{row['accuracy']:.4f}",
                     f"{row['selection_rate']:.4f}", f"{row['true_positive_rate']:.4f}",
                     f"{row['false_positive_rate']:.4f}",
                     *((f"{change['accuracy']:+.4f}", f"{change['selection_rate']:+.4f}")
                       if change else ([] if not deltas else ["—", "—"]))])
    lines = ["## Fairness across groups", "",
             f"Positive class {fairness['positive']}; demographic-parity difference "
             f"{fairness['demographic_parity_difference']:.4f}, equalized-odds difference "
             f"{fairness['equalized_odds_difference']:.4f}, accuracy gap "
             f"{fairness['accuracy_gap']:.4f}.", "", _table(header, rows), ""]
    if deltas:
        lines += [f"Against {result['reference']}: demographic-parity difference "
                  f"{deltas['demographic_parity_difference']:+.4f}, equalized-odds difference "
                  f"{deltas['equalized_odds_difference']:+.4f}, accuracy gap "
                  f"{deltas['accuracy_gap']:+.4f}.", ""]
    return lines
