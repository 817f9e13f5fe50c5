"""`slimforge monitor watch URL`: a running server's vital signs, live in the terminal.

Owns: `Scrape`, `scrape`, `rates` and `watch`. Each tick reads `/metrics` once and compares
it with the previous reading, as Prometheus' `rate()` would: requests/s, the share of 5xx,
latency p50/p95 from the histogram's bucket deltas (linear inside a bucket, like
`histogram_quantile`), mean batch size, generated tokens/s, queue depth against capacity,
resident memory and CPU use. Bounded: it stops after `duration_s` (or Ctrl-C).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from slimforge.errors import SlimforgeError

DURATION = "slimforge_request_duration_seconds"


@dataclass
class Scrape:
    """One reading of /metrics: sample values by name, and the request-duration buckets."""

    at: float
    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative /v1 count
    requests: float = 0.0  # /v1 requests answered
    errors: float = 0.0  # /v1 requests answered with 5xx


def scrape(url: str, client: httpx.Client) -> Scrape:
    """Read `url`/metrics once."""
    try:
        response = client.get(url.rstrip("/") + "/metrics", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise SlimforgeError(f"Could not read {url}/metrics: {exc}.",
                             "check that `slimforge serve` runs there.") from None
    reading = Scrape(at=time.monotonic())
    buckets: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            v1 = s.labels.get("endpoint", "").startswith("/v1/")
            if s.name == f"{DURATION}_bucket" and v1:
                buckets[float(s.labels["le"])] += s.value
            elif s.name == "slimforge_requests_total" and v1:
                reading.requests += s.value
                reading.errors += s.value if s.labels["status"].startswith("5") else 0.0
            elif not s.labels or s.name.endswith(("_sum", "_count")):
                reading.values[s.name] = reading.values.get(s.name, 0.0) + s.value
    reading.buckets = dict(buckets)
    return reading


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """`histogram_quantile` over cumulative bucket counts (le -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lower
            inside = buckets[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, buckets[le]
    return lower


def rates(before: Scrape, after: Scrape) -> dict[str, Any]:
    """What changed between two readings, per second where it is a rate."""
    seconds = max(after.at - before.at, 1e-9)

    def delta(name: str) -> float:
        return after.values.get(name, 0.0) - before.values.get(name, 0.0)

    requests = after.requests - before.requests
    window = {le: after.buckets[le] - before.buckets.get(le, 0.0) for le in after.buckets}
    batches = delta("slimforge_batch_size_count")
    p50, p95 = _quantile(0.5, window), _quantile(0.95, window)
    capacity = after.values.get("slimforge_queue_capacity")
    return {
        "requests_per_s": requests / seconds,
        "error_share": (after.errors - before.errors) / requests if requests else 0.0,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p95_ms": None if p95 is None else p95 * 1000,
        "mean_batch": delta("slimforge_batch_size_sum") / batches if batches else None,
        "tokens_out_per_s": delta("slimforge_output_tokens_total") / seconds,
        "queue": after.values.get("slimforge_queue_depth", 0.0),
        "queue_capacity": capacity,
        "in_flight": after.values.get("slimforge_requests_in_flight", 0.0),
        "rss_mb": after.values.get("process_resident_memory_bytes", 0.0) / 2**20,
        "cpu_percent": 100 * delta("process_cpu_seconds_total") / seconds,
    }


def _table(url: str, figures: dict[str, Any]) -> Any:
    from rich.table import Table

    def show(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}"

    table = Table(title=f"slimforge monitor watch {url}")
    for column in ("req/s", "5xx", "p50", "p95", "batch", "tok/s", "queue", "in flight", "RSS",
                   "CPU"):
        table.add_column(column, justify="right")
    capacity = figures["queue_capacity"]
    table.add_row(show(figures["requests_per_s"]), f"{figures['error_share']:.1%}",
                  show(figures["p50_ms"], " ms"), show(figures["p95_ms"], " ms"),
                  show(figures["mean_batch"]), show(figures["tokens_out_per_s"]),
                  f"{figures['queue']:.0f}" + ("" if capacity is None else f"/{capacity:.0f}"),
                  f"{figures['in_flight']:.0f}", show(figures["rss_mb"], " MB"),
                  show(figures["cpu_percent"], "%"))
    return table


def watch(url: str, interval_s: float = 2.0, duration_s: float = 60.0) -> dict[str, Any]:
    """Show the server's figures every `interval_s` for `duration_s`; return the last ones."""
    from rich.console import Console
    from rich.live import Live

    with httpx.Client() as client:
        before = scrape(url, client)
        figures: dict[str, Any] = {}
        end = time.monotonic() + duration_s
        with Live(console=Console(stderr=True), refresh_per_second=4) as live:
            while time.monotonic() < end:
                time.sleep(max(0.0, min(interval_s, end - time.monotonic())))
                after = scrape(url, client)
                figures = rates(before, after)
                live.update(_table(url, figures))
                before = after
    return figures
