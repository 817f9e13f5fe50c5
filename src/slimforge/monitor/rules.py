"""Prometheus alerting rules for a served model: when to wake someone up.

Owns: `Thresholds`, `alert_rules` and `write_rules`. The rules read only what
`slimforge serve` exports (`serve/metrics.py`) plus Prometheus' own `up`, and alert per
replica (`job`, `instance`), so one slow replica is not averaged away by healthy ones:

| alert | fires when (for `for_minutes`) |
|---|---|
| SlimforgeDown | the scrape fails (`up == 0`) |
| SlimforgeLatencyP95High | p95 of /v1 request duration over `p95_latency_s` (default 0.5 s) |
| SlimforgeErrorRateHigh | 5xx over `error_rate` (default 1%) of all requests |
| SlimforgeQueueSaturated | queued inputs over `queue_fraction` (90%) of the queue's capacity |
| SlimforgeMemoryHigh | resident memory over `memory_fraction` (90%) of the process' limit |
| SlimforgeNoTraffic | no /v1 request for `no_traffic_minutes` (15) |
| SlimforgeGpuUnderused | GPU busy under `gpu_utilization` (30%) on average over 15 minutes |

Every rule has a `promtool test rules` case that fires on a bad series and stays silent on a
good one (tests/integration/test_monitor.py). The GPU rule reads `slimforge_gpu_utilization_
ratio`, which a server exports only on a GPU that NVML can read: on a CPU server it has
nothing to judge and stays silent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from slimforge.io.atomic import atomic_write_text

V1 = 'endpoint=~"/v1/.+"'
BY = "by (job, instance)"
BY_LE = "by (job, instance, le)"


class Thresholds(BaseModel):
    """The service-level thresholds; each one is overridable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str = "slimforge"
    """The Prometheus job that scrapes the servers."""
    p95_latency_s: float = Field(0.5, gt=0)
    error_rate: float = Field(0.01, gt=0, lt=1)
    queue_fraction: float = Field(0.9, gt=0, le=1)
    memory_fraction: float = Field(0.9, gt=0, le=1)
    no_traffic_minutes: int = Field(15, ge=1)
    gpu_utilization: float = Field(0.3, gt=0, lt=1)
    """Below this average GPU utilisation the replica wastes its GPU."""
    for_minutes: int = Field(5, ge=0)
    """How long a condition must hold before it fires."""


def _rule(name: str, expr: str, minutes: int, severity: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": f"{minutes}m",
            "labels": {"severity": severity},
            "annotations": {"summary": summary,
                            "description": f"{summary} on {{{{ $labels.instance }}}}."}}


def alert_rules(t: Thresholds) -> dict[str, Any]:
    """The rules file's content: one group of alerting rules for job `t.job`."""
    job = f'job="{t.job}"'
    p95 = (f"histogram_quantile(0.95, sum {BY_LE} "
           f"(rate(slimforge_request_duration_seconds_bucket{{{job}, {V1}}}[5m])))")
    errors = (f'sum {BY} (rate(slimforge_requests_total{{{job}, status=~"5.."}}[5m])) / '
              f"sum {BY} (rate(slimforge_requests_total{{{job}}}[5m]))")
    traffic = (f"sum {BY} (rate(slimforge_requests_total{{{job}, {V1}}}"
               f"[{t.no_traffic_minutes}m])) or 0 * sum {BY} "
               f"(slimforge_requests_in_flight{{{job}}})")
    rules = [
        _rule("SlimforgeDown", f"up{{{job}}} == 0", 1, "critical",
              "A slimforge server cannot be scraped"),
        _rule("SlimforgeLatencyP95High", f"{p95} > {t.p95_latency_s}", t.for_minutes,
              "warning", f"p95 latency of /v1 requests is over {t.p95_latency_s} s"),
        _rule("SlimforgeErrorRateHigh", f"{errors} > {t.error_rate}", t.for_minutes,
              "critical", f"More than {t.error_rate:.0%} of requests fail with 5xx"),
        _rule("SlimforgeQueueSaturated",
              f"slimforge_queue_depth{{{job}}} / slimforge_queue_capacity{{{job}}} > "
              f"{t.queue_fraction}", t.for_minutes, "warning",
              f"The batch queue is over {t.queue_fraction:.0%} full: requests get 429"),
        _rule("SlimforgeMemoryHigh",
              f"process_resident_memory_bytes{{{job}}} / slimforge_memory_limit_bytes{{{job}}}"
              f" > {t.memory_fraction}", t.for_minutes, "warning",
              f"Resident memory is over {t.memory_fraction:.0%} of the limit"),
        _rule("SlimforgeNoTraffic", f"({traffic}) == 0", t.no_traffic_minutes, "info",
              f"No /v1 request in {t.no_traffic_minutes} minutes"),
        _rule("SlimforgeGpuUnderused",
              f"avg_over_time(slimforge_gpu_utilization_ratio{{{job}}}[15m]) < "
              f"{t.gpu_utilization}", 15, "info",
              f"The GPU is busy less than {t.gpu_utilization:.0%} of the time: fewer or "
              "smaller GPUs would do"),
    ]
    return {"groups": [{"name": "slimforge", "rules": rules}]}


def write_rules(path: str | Path, thresholds: Thresholds | None = None) -> Path:
    """Write the rules file (atomically) and return its path."""
    content = alert_rules(thresholds or Thresholds())
    return atomic_write_text(path, yaml.safe_dump(content, sort_keys=False, width=1000))
