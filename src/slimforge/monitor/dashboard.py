"""A Grafana dashboard over the metrics `slimforge serve` exports.

Owns: `dashboard` and `metric_names`. One row of time series per concern: latency
quantiles, requests and errors, batching (batch size, queue depth against capacity, time in
queue), generation (tokens/s, time to first token, inter-token latency) and resources
(resident memory against the limit, CPU). A `job` and an `instance` variable pick the
replicas; `slimforge_model_info` in the legend tells a compressed replica from an
uncompressed one. `metric_names` lists every metric the panels read, so a test can check
each one against a live server's /metrics.
"""

from __future__ import annotations

import re
from typing import Any

SEL = 'job="$job", instance=~"$instance"'
V1 = 'endpoint=~"/v1/.+"'


def _quantiles(metric: str, extra: str = "") -> list[tuple[str, str]]:
    selector = f"{SEL}, {extra}" if extra else SEL
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}"
             f"[$__rate_interval])))", f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Request latency (/v1)", "s", _quantiles("slimforge_request_duration_seconds", V1)),
    ("Requests per second by status", "reqps", [
        (f"sum by (status) (rate(slimforge_requests_total{{{SEL}, {V1}}}[$__rate_interval]))",
         "{{status}}")]),
    ("Share of 5xx", "percentunit", [
        (f'sum(rate(slimforge_requests_total{{{SEL}, status=~"5.."}}[$__rate_interval])) / '
         f"sum(rate(slimforge_requests_total{{{SEL}}}[$__rate_interval]))", "5xx")]),
    ("Refused before running (per second)", "reqps", [
        (f"sum by (reason) (rate(slimforge_rejected_requests_total{{{SEL}}}"
         "[$__rate_interval]))", "{{reason}}")]),
    ("Batch size", "none", _quantiles("slimforge_batch_size")),
    ("Queue depth and capacity", "none", [
        (f"slimforge_queue_depth{{{SEL}}}", "{{instance}} waiting"),
        (f"slimforge_queue_capacity{{{SEL}}}", "{{instance}} capacity"),
        (f"slimforge_requests_in_flight{{{SEL}}}", "{{instance}} in flight")]),
    ("Time in queue", "s", _quantiles("slimforge_queue_time_seconds")),
    ("Tokens per second", "none", [
        (f"sum(rate(slimforge_input_tokens_total{{{SEL}}}[$__rate_interval]))", "in"),
        (f"sum(rate(slimforge_output_tokens_total{{{SEL}}}[$__rate_interval]))", "out")]),
    ("Time to first token", "s", _quantiles("slimforge_time_to_first_token_seconds")),
    ("Inter-token latency", "s", _quantiles("slimforge_inter_token_latency_seconds")),
    ("Resident memory and limit", "bytes", [
        (f"process_resident_memory_bytes{{{SEL}}}", "{{instance}} RSS"),
        (f"slimforge_memory_limit_bytes{{{SEL}}}", "{{instance}} limit")]),
    ("CPU (cores busy)", "none", [
        (f"rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval])", "{{instance}}")]),
    ("GPU utilisation and memory (GPU servers only)", "percentunit", [
        (f"slimforge_gpu_utilization_ratio{{{SEL}}}", "{{instance}} busy"),
        (f"slimforge_gpu_memory_used_bytes{{{SEL}}} / slimforge_gpu_memory_total_bytes"
         f"{{{SEL}}}", "{{instance}} memory")]),
    ("Served model", "none", [
        (f"slimforge_model_info{{{SEL}}}", "{{instance}} {{variant}} {{sha256}}")]),
]


def _panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": index + 1, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def _variable(name: str, query: str, multi: bool) -> dict[str, Any]:
    return {"name": name, "type": "query", "query": query, "refresh": 2, "multi": multi,
            "includeAll": multi, "datasource": {"type": "prometheus", "uid": "${datasource}"}}


def dashboard(job: str = "slimforge") -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, pick the Prometheus data source)."""
    return {
        "title": "slimforge serve", "uid": "slimforge-serve", "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "tags": ["slimforge"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {**_variable("job", "label_values(slimforge_model_info, job)", False),
             "current": {"text": job, "value": job}},
            _variable("instance", 'label_values(slimforge_model_info{job="$job"}, instance)',
                      True),
        ]},
        "panels": [_panel(i, *p) for i, p in enumerate(PANELS)],
    }


def metric_names(board: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's queries and variables read."""
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"]]
    return {name for e in exprs for name in re.findall(r"\b((?:slimforge|process)_[a-z_]+)", e)}
