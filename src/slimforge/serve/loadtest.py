"""`loadtest(url, ...)`: a bounded async load generator for HTTP model servers.

Owns: `LoadConfig`, `LoadResult`, `loadtest` and `corpus_payloads`. `concurrency` clients
(httpx, one connection pool) send requests back to back until `requests` were sent or
`duration_s` passed, whichever is set (one of them always is: a load test never runs
unbounded). Each request's latency and status are kept; the result reports QPS, latency
percentiles of the successful ones, and errors by status. Works against any server that
takes OpenAI-style JSON bodies (slimforge serve, the naive baseline in `benchmarks/`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimforge.bench.measure import percentile


class LoadConfig(BaseModel):
    """What load to send."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = "/v1/embeddings"
    concurrency: int = Field(64, ge=1)
    requests: int | None = Field(None, ge=1)
    """Stop after this many requests (default 1,000 when `duration_s` is not set)."""
    duration_s: float | None = Field(None, gt=0)
    """Stop sending after this long."""
    timeout_s: float = Field(60.0, gt=0)
    api_key: str | None = None

    @model_validator(mode="after")
    def _bounded(self) -> LoadConfig:
        if self.requests is None and self.duration_s is None:
            return self.model_copy(update={"requests": 1000})
        return self


@dataclass
class LoadResult:
    """What the load test measured."""

    requests: int
    seconds: float
    qps: float
    ok: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_rate: float
    statuses: dict[str, int] = field(default_factory=dict)
    concurrency: int = 0

    def to_json(self) -> dict[str, Any]:
        """The result as a plain dict."""
        return asdict(self)


def corpus_payloads(model: str, texts_per_request: int = 1, limit: int = 512,
                    data: str = "builtin:stdlib-docs") -> list[dict[str, Any]]:
    """Embedding request bodies made of held-out corpus paragraphs, cycled by `loadtest`."""
    from slimforge.data.sources import load_texts

    texts = load_texts(data, "eval", limit=limit)
    return [{"model": model, "input": texts[i:i + texts_per_request]}
            for i in range(0, len(texts) - texts_per_request + 1, texts_per_request)]


async def _client(url: str, headers: dict[str, str], config: LoadConfig, bodies: Any,
                  stop: float, budget: itertools.count, latencies: list[float],
                  statuses: Counter) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=config.timeout_s,
                                 limits=httpx.Limits(max_connections=1)) as client:
        await _send(client, config, bodies, stop, budget, latencies, statuses)


async def _send(client: httpx.AsyncClient, config: LoadConfig, bodies: Any, stop: float,
                budget: itertools.count, latencies: list[float], statuses: Counter) -> None:
    while time.monotonic() < stop:
        if config.requests is not None and next(budget) >= config.requests:
            return
        start = time.perf_counter()
        try:
            response = await client.post(config.endpoint, json=next(bodies))
            status = str(response.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        statuses[status] += 1
        if status == "200":
            latencies.append(time.perf_counter() - start)


async def loadtest(url: str, payloads: list[dict[str, Any]],
                   config: LoadConfig | None = None) -> LoadResult:
    """Send bounded concurrent load to `url` and measure it.

    Args:
        url: the server's base URL (`http://127.0.0.1:8000`).
        payloads: JSON bodies, cycled.
        config: endpoint, concurrency, bound (requests or duration), timeout, key.
    """
    config = config or LoadConfig()
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    latencies: list[float] = []
    statuses: Counter = Counter()
    bodies, budget = itertools.cycle(payloads), itertools.count()
    start = time.monotonic()
    stop = start + (config.duration_s or float("inf"))
    await asyncio.gather(*(_client(url, headers, config, bodies, stop, budget, latencies,
                                   statuses) for _ in range(config.concurrency)))
    seconds = time.monotonic() - start
    total = sum(statuses.values())
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return LoadResult(requests=total, seconds=seconds, qps=len(latencies) / seconds,
                      ok=len(latencies), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95),
                      p99_ms=percentile(ms, 99), error_rate=1 - len(latencies) / max(total, 1),
                      statuses=dict(statuses), concurrency=config.concurrency)
