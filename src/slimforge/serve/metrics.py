"""The server's Prometheus metrics, on an explicit registry.

Owns: `ServerMetrics`. Naming follows Prometheus' rules: the `slimforge_` prefix, no colons,
base units in the name (`_seconds`, `_bytes`), counters ending in `_total`, histograms rather
than summaries (they aggregate across replicas). `slimforge_model_info` carries the artifact's
spec, variant (its compression steps) and sha256, so a compressed and an uncompressed replica
can be told apart on one dashboard. Process CPU and memory come from prometheus-client's
process collector; `slimforge_memory_limit_bytes` and `slimforge_queue_capacity` are the
denominators the alert rules (`slimforge.monitor.rules`) divide by. On a GPU that NVML can
read, its utilisation, memory and energy are exported too (`GPU_METRICS`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slimforge.bench.resources import gpu_reading
from slimforge.serve.memory import memory_limit_bytes

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


GPU_METRICS = frozenset({"slimforge_gpu_utilization_ratio", "slimforge_gpu_memory_used_bytes",
                         "slimforge_gpu_memory_total_bytes", "slimforge_gpu_energy_joules_total"})
"""Exported only by a server on a GPU that NVML can read; absent (not zero) elsewhere."""


class _GpuCollector(Collector):
    """The GPU's utilisation, memory and energy from NVML, read at every scrape."""

    def __init__(self, index: int) -> None:
        self.index = index

    def collect(self) -> Iterator[Metric]:
        reading = gpu_reading(self.index)
        if reading is None:
            return
        yield GaugeMetricFamily("slimforge_gpu_utilization_ratio",
                                "Share of the last sample period the GPU was busy",
                                value=reading["utilization"])
        yield GaugeMetricFamily("slimforge_gpu_memory_used_bytes", "GPU memory in use",
                                value=reading["memory_used_bytes"])
        yield GaugeMetricFamily("slimforge_gpu_memory_total_bytes", "GPU memory in all",
                                value=reading["memory_total_bytes"])
        if "energy_j" in reading:
            yield CounterMetricFamily("slimforge_gpu_energy_joules",
                                      "Energy the GPU used since the driver loaded",
                                      value=reading["energy_j"])


class ServerMetrics:
    """Every metric the server exports, registered on its own registry."""

    def __init__(self, model_info: dict[str, str], queue_capacity: int | None = None,
                 gpu_index: int | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        if gpu_index is not None and gpu_reading(gpu_index) is not None:
            r.register(_GpuCollector(gpu_index))
        limit = memory_limit_bytes()
        if limit is not None:  # what process_resident_memory_bytes is measured against
            Gauge("slimforge_memory_limit_bytes", "Memory this process may use (cgroup limit, "
                  "else the machine's)", registry=r).set(limit)
        self.requests = Counter("slimforge_requests", "Requests answered",
                                ["endpoint", "status"], registry=r)
        self.duration = Histogram("slimforge_request_duration_seconds",
                                  "Time from request received to response sent",
                                  ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("slimforge_requests_in_flight", "Requests being handled",
                               registry=r)
        self.queue_depth = Gauge("slimforge_queue_depth", "Inputs waiting for a batch",
                                 registry=r)
        self.batch_size = Histogram("slimforge_batch_size", "Inputs per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_time = Histogram("slimforge_queue_time_seconds",
                                    "Time an input waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_in = Counter("slimforge_input_tokens", "Tokens received", registry=r)
        self.tokens_out = Counter("slimforge_output_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("slimforge_time_to_first_token_seconds",
                              "Generation: request received to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("slimforge_inter_token_latency_seconds",
                                     "Generation: time between consecutive tokens",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.queue_capacity = Gauge("slimforge_queue_capacity",
                                    "Most inputs that may wait (beyond: 429)", registry=r)
        if queue_capacity is not None:
            self.queue_capacity.set(queue_capacity)
        self.rejected = Counter("slimforge_rejected_requests",
                                "Requests refused before running", ["reason"], registry=r)
        Info("slimforge_model", "The served model", registry=r).info(model_info)

    def observe_batch(self, items: int, tokens: int, queue_seconds: list[float]) -> None:
        """Record one model call (the batcher's `on_batch` hook)."""
        self.batch_size.observe(items)
        for seconds in queue_seconds:
            self.queue_time.observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
