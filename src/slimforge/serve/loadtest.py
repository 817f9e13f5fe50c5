"""`loadtest(url, ...)`: a bounded async load generator for HTTP model servers.

Owns: `LoadConfig`, `LoadResult`, `loadtest`, `corpus_payloads`, `generation_payloads` and
`file_payloads`. `concurrency` clients (httpx, one connection each, as separate users would
have) send requests back to back until `requests` were sent or `duration_s` passed, whichever
is set (one of them always is: a load test never runs unbounded). Each request's latency and
status are kept; the result reports QPS, latency percentiles of the successful ones, and
errors by status. A body with `"stream": true` is read as server-sent events: time to first
token (the first event with text) and tokens per second (from the final event's `usage`, else
one per text event) are reported too. Works against any server that takes OpenAI-style JSON
bodies (slimforge serve, the naive baseline in `benchmarks/`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
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
    tokens_per_s: float | None = None
    """Generated tokens per second over the run (streamed generation only)."""
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None

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


def generation_payloads(model: str, endpoint: str, max_tokens: int = 32, limit: int = 64,
                        data: str = "builtin:stdlib-docs") -> list[dict[str, Any]]:
    """Streamed completion or chat bodies asking to continue or summarise held-out
    paragraphs (cut at 400 characters), greedy so that runs repeat."""
    from slimforge.data.sources import load_texts

    texts = [t[:400] for t in load_texts(data, "eval", limit=limit)]
    common = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if endpoint.endswith("/chat/completions"):
        return [{**common, "messages": [{"role": "user", "content": f"Summarise: {t}"}]}
                for t in texts]
    return [{**common, "prompt": t} for t in texts]


def file_payloads(path: str) -> list[dict[str, Any]]:
    """Bodies from a JSON file (one object or a list of them) or a JSON-lines file."""
    from pathlib import Path

    from slimforge.errors import DataError

    text = Path(path).read_text()
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        try:
            loaded = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is neither JSON nor JSON lines ({exc}).",
                            "write one request body per line, or a JSON list of them.") \
                from None
    bodies = loaded if isinstance(loaded, list) else [loaded]
    if not bodies or not all(isinstance(b, dict) for b in bodies):
        raise DataError(f"{path} holds no request bodies (JSON objects).",
                        "write one request body per line, or a JSON list of them.")
    return bodies


@dataclass
class _Tally:
    """What the clients saw, added up as they go."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    tokens: int = 0


async def _client(url: str, headers: dict[str, str], config: LoadConfig, bodies: Any,
                  stop: float, budget: itertools.count, tally: _Tally, tls: Any) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=config.timeout_s,
                                 limits=httpx.Limits(max_connections=1), verify=tls) as client:
        while time.monotonic() < stop:
            if config.requests is not None and next(budget) >= config.requests:
                return
            stream, body = next(bodies)
            start = time.perf_counter()
            try:
                if stream:
                    status = await _stream(client, config.endpoint, body, start, tally)
                else:
                    status = str((await client.post(config.endpoint, content=body)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            tally.statuses[status] += 1
            if status == "200":
                tally.latencies.append(time.perf_counter() - start)


async def _stream(client: httpx.AsyncClient, endpoint: str, body: bytes, start: float,
                  tally: _Tally) -> str:
    """Read one streamed generation; count its tokens and time its first one."""
    async with client.stream("POST", endpoint, content=body) as response:
        if response.status_code != 200:
            await response.aread()
            return str(response.status_code)
        texts, usage, first = 0, None, None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                return f"stream-{event['error'].get('code') or 'error'}"
            usage = event.get("usage") or usage
            choice = (event.get("choices") or [{}])[0]
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                texts += 1
                first = first or time.perf_counter()
    if first is not None:
        tally.ttfts.append(first - start)
    tally.tokens += usage["completion_tokens"] if usage else texts
    return "200"


async def loadtest(url: str, payloads: list[dict[str, Any]],
                   config: LoadConfig | None = None) -> LoadResult:
    """Send bounded concurrent load to `url` and measure it.

    Args:
        url: the server's base URL (`http://127.0.0.1:8000`).
        payloads: JSON bodies, cycled.
        config: endpoint, concurrency, bound (requests or duration), timeout, key.
    """
    config = config or LoadConfig()
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    tally = _Tally()
    # Encoded once, not per request: the client shares the cores with the server it measures.
    encoded = [(bool(b.get("stream")), json.dumps(b).encode()) for b in payloads]
    bodies, budget = itertools.cycle(encoded), itertools.count()
    # One TLS context for every client: httpx builds one per client otherwise, even for
    # http:// (it reads the CA bundle: 1.6 s of CPU for 64 clients under cProfile, inside
    # the timing).
    tls = httpx.create_ssl_context()
    start = time.monotonic()
    stop = start + (config.duration_s or float("inf"))
    await asyncio.gather(*(_client(url, headers, config, bodies, stop, budget, tally, tls)
                           for _ in range(config.concurrency)))
    seconds = time.monotonic() - start
    total = sum(tally.statuses.values())
    ms = sorted(x * 1000 for x in tally.latencies) or [float("nan")]
    ttft = sorted(x * 1000 for x in tally.ttfts)
    return LoadResult(
        requests=total, seconds=seconds, qps=len(tally.latencies) / seconds,
        ok=len(tally.latencies), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99), error_rate=1 - len(tally.latencies) / max(total, 1),
        statuses=dict(tally.statuses), concurrency=config.concurrency,
        tokens_per_s=tally.tokens / seconds if ttft else None,
        ttft_p50_ms=percentile(ttft, 50) if ttft else None,
        ttft_p95_ms=percentile(ttft, 95) if ttft else None)
