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
SHORT_COLUMNS = ("row", "quality", "p50 ms", "per s", "MB", "gain", "ok")
COLUMNS = ("row", "steps", "quality [interval]", "p50 ms", "p95 ms", "throughput", "size MB",
           "peak RSS MB", "vs baseline", "verdict")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def quality_text(metrics: dict[str, float]) -> str:
    """The quality metrics of one evaluation, as `name value` pairs."""
    parts = [f"{k} {metrics[k]:.4g}" for k in QUALITY_KEYS if k in metrics]
    return ", ".join(parts) or "—"


SHORT_QUALITY = {"cosine_mean": "cos", "perplexity_ratio": "ppl ×", "accuracy_drop": "acc -"}


def _quality_cell(quality: dict[str, dict[str, float]], short: bool) -> str:
    parts = []
    for metric, q in quality.items():
        if short:
            return f"{SHORT_QUALITY.get(metric, metric)} {q['value']:.4f}"
        interval = f" [{q['low']:.4f}, {q['high']:.4f}]" if "low" in q else ""
        parts.append(f"{metric} {q['value']:.4f}{interval}")
    return ", ".join(parts)


def _steps_cell(row: dict[str, Any]) -> str:
    return " → ".join(f"`{s['step']}" + (f" {s['method']}`" if "method" in s else "`")
                      for s in row["steps"]) or "—"


def _vs_cell(row: dict[str, Any]) -> str:
    ratios = row.get("vs_baseline") or {}
    if not ratios:
        return "—"
    return (f"thr ×{ratios['throughput_ratio']:.2f}, p50 ×{ratios['latency_speedup']:.2f}, "
            f"size ×{ratios['size_ratio']:.2f}")


def stage_rows(rows: list[dict[str, Any]], chosen: str, short: bool = False) -> list[list[str]]:
    """One table row per result row (dicts as in results.json), in the order of COLUMNS, or of
    SHORT_COLUMNS for an 80-column terminal when `short`; the chosen row is starred."""
    out = []
    for row in rows:
        name = row["name"] + (" ★" if row["name"] == chosen else "")
        if row.get("status") != "measured":
            out.append([name, "skipped", *["—"] * 4, "no"] if short else
                       [name, _steps_cell(row), "—", *["—"] * 6, row["reason"]])
            continue
        quality = _quality_cell(row["quality"], short)
        unit = "tok/s" if row["bench"]["throughput_unit"] == "tokens/s" else "/s"
        if short:
            out.append([name, quality, _fmt(row["p50_ms"], 2), f"{row['throughput_per_s']:.1f}",
                        _fmt(row["size_mb"], 1), f"×{row.get('gain', 1.0):.2f}",
                        "yes" if row["accepted"] else "no"])
            continue
        out.append([name, _steps_cell(row), quality, _fmt(row["p50_ms"], 2),
                    _fmt(row["p95_ms"], 2), f"{row['throughput_per_s']:.1f} {unit}",
                    _fmt(row["size_mb"], 1), _fmt(row["peak_rss_mb"], 0), _vs_cell(row),
                    row["reason"]])
    return out


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


def environment(threads: int) -> dict[str, Any]:
    """Where and when figures were measured: date, CPU, GPU, threads and package versions."""
    import torch

    from slimforge.io.checkpoint import package_versions

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_name(), "gpu": gpu, "threads": threads,
            "platform": platform.platform(), "versions": package_versions()}


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


def optimize_report(results: dict[str, Any], plots: list[str] | None = None) -> str:
    """The Markdown report of an `optimize` run (`results` as written to results.json);
    `plots` names the chart files written beside it."""
    plots = plots or []
    base, chosen = results["baseline"], results["chosen"]
    rows = [base, *([results["peer"]] if results["peer"] else []), *results["candidates"]]
    bench, budget = base["bench"], results["budget"]
    lines = [f"# slimforge optimize: {results['model']}", "",
             *_context(bench["threads"], results.get("data")),
             f"- Objective: {results['objective']['metric']} (latency: "
             f"{bench['latency_shape']}; throughput: {bench['throughput_shape']})",
             f"- Budget: cosine ≥ {budget['min_cosine']} (embedding), perplexity ≤ "
             f"×{budget['max_perplexity_ratio']} (causal LM), accuracy drop ≤ "
             f"{budget['max_accuracy_drop']} (classification), judged on the pessimistic end "
             f"of a {budget['confidence']:.0%} paired bootstrap interval "
             f"({budget['resamples']} resamples); the guard asks for ≥ "
             f"×{1 + budget['min_gain']:.2f} on the objective, measured against the baseline "
             "in the same run", "",
             "## Chosen", "", *_chosen_lines(results), "",
             "## Every candidate", "",
             "Every row was evaluated on the same held-out examples and timed in alternating "
             "rounds with the baseline in this run. Peak RSS is the whole process's (the "
             "baseline is loaded beside each row): an upper bound, not the row's own.", "",
             _table(COLUMNS, stage_rows(rows, chosen["name"])), ""]
    lines += [f"- {row['name']}: " + "; ".join(row["notes"])
              for row in rows if row.get("notes")]
    lines += ["", *_fairness_section(rows, chosen["name"]), *_plot_section(plots),
              *_claims_section(results["claims"]),
              *_environment_section(results["environment"]),
              *_data_section(results.get("data_check", [])),
              *cost_section(results.get("cost", [])), *_layer_section(rows, plots)]
    return "\n".join(lines).rstrip() + "\n"


def _chosen_lines(results: dict[str, Any]) -> list[str]:
    chosen = results["chosen"]
    lines = [f"**{chosen['name']}** — {results['reason']}.", ""]
    if chosen["kind"] == "candidate":
        vs_peer = chosen.get("speedup_vs_peer")
        lines += [f"- {results['objective']['metric']}: ×{chosen['speedup_vs_baseline']:.2f} "
                  "the baseline" + (f", ×{vs_peer:.2f} the peer ({results['peer']['name']})"
                                    if vs_peer else ""),
                  f"- quality: {_quality_cell(chosen['quality'], short=False)}",
                  f"- size: {chosen['size_mb']:.1f} MB (baseline "
                  f"{results['baseline']['size_mb']:.1f} MB)", f"- steps: {_steps_cell(chosen)}"]
    for text in results.get("relax", []):
        lines.append(f"- closest: {text}")
    if results.get("pareto"):
        lines.append(f"- Pareto front (quality vs {results['objective']['metric']}): "
                     + ", ".join(results["pareto"]))
    skipped = [c for c in results["candidates"] if c.get("status") != "measured"]
    if skipped:
        lines.append(f"- {len(skipped)} candidate(s) not measured: " + "; ".join(
            f"{c['name']} ({c['reason']})" for c in skipped))
    lines.append(f"- Reproduce: `{results['reproduce']}`")
    return lines


def _plot_section(plots: list[str]) -> list[str]:
    captions = {"pareto-latency.png": "Quality against batch-1 latency",
                "pareto-size.png": "Quality against size on disk",
                "latency.png": "Latency distribution per row"}
    shown = [name for name in captions if name in plots]
    if not shown:
        return []
    lines = ["## Plots", ""]
    for name in shown:
        lines += [f"![{captions[name]}]({name})", ""]
    return lines


def _claims_section(found: list[dict[str, Any]]) -> list[str]:
    if not found:
        return []
    rows = [[c["technique"], c["promise"], c["source"], f"{c['row']}: {c['measured']}",
             "yes" if c["holds"] else "**no**"] for c in found]
    return ["## Claims check", "",
            "What is commonly promised for each technique, against what this run measured "
            "where a candidate used that technique alone.", "",
            _table(("technique", "promise", "where it comes from", "measured here", "holds"),
                   rows), ""]


def _environment_section(env: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env["versions"].items()))
    return ["## Environment", "", f"- Date: {env['date']}", f"- CPU: {env['cpu']}, "
            f"{env['threads']} threads; GPU: {env['gpu'] or 'none'}",
            f"- Platform: {env['platform']}", f"- Versions: {versions}", ""]


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
                      f"{result['throughput_shape']} ({result['throughput_unit']})",
                      *_engine_lines(result), "", _table(header, rows), ""])


def _engine_lines(result: dict[str, Any]) -> list[str]:
    """Causal LMs: what generated, and what compiling it cost (not in the timings)."""
    if "engine" not in result:
        return []
    compiled = (f"; compiled in {result['compile_s']:.1f} s before timing"
                if result.get("compile_s") else "")
    return [f"- Generation: {result['engine']}{compiled}"]


def eval_report(result: dict[str, Any]) -> str:
    """The Markdown report of an `evaluate` run (result as from `EvalResult.to_json()`)."""
    rows = [[k, f"{result[k]:.6g}"] for k in (*EVAL_KEYS, "tokens") if k in result]
    return "\n".join([f"# slimforge evaluate: {result['spec']}", "",
                      f"- Task: {result['task']}, samples: {result['samples']}, "
                      f"reference: {result['reference'] or '—'}",
                      _date_line(), f"- Data: {result['data']['spec']}", "",
                      _table(("metric", "value"), rows), "",
                      *[f"- {note}" for note in result["notes"]], "",
                      *_fairness_lines(result, "## Fairness across groups")])


def _fairness_section(rows: list[dict[str, Any]], chosen: str) -> list[str]:
    """Classification recipes with `eval.group_field`: each row's parity figures and its
    worst group's accuracy change against the baseline (compression can cost a small group
    first while the average barely moves), then the chosen row's per-group table."""
    measured = [r for r in rows if "fairness" in r.get("eval", {})]
    if not measured:
        return []
    table = []
    for row in measured:
        fairness, deltas = row["eval"]["fairness"], row["eval"].get("fairness_deltas")
        changes = (deltas or {}).get("groups", {})
        worst = min(changes, key=lambda g: changes[g]["accuracy"]) if changes else None
        table.append([row["name"], f"{fairness['demographic_parity_difference']:.4f}",
                      f"{fairness['equalized_odds_difference']:.4f}",
                      f"{fairness['accuracy_gap']:.4f}",
                      f"{changes[worst]['accuracy']:+.4f} ({worst})" if worst else "—"])
    lines = ["## Fairness across groups", "",
             "Per row: demographic-parity and equalized-odds differences, the accuracy gap "
             "between the best and the worst group, and the group whose accuracy fell most "
             "against the baseline.", "",
             _table(("row", "parity difference", "equalized-odds difference", "accuracy gap",
                     "worst group change"), table), ""]
    picked = next((r for r in measured if r["name"] == chosen), None)
    if picked is not None:
        lines += _fairness_lines(picked["eval"], f"### Chosen: {chosen}, per group")
    return lines


def _fairness_lines(result: dict[str, Any], heading: str) -> list[str]:
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
    lines = [heading, "",
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
