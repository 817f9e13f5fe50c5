"""Serving, issue 6: slimforge serve against the naive per-request FastAPI route.

Same machine, same run, same model file. An int8 all-MiniLM-L6-v2 artifact is made first
(weight-only int8 with bf16 compute: the default recipe's winner on AMX CPUs). Then, in
alternating rounds, three servers each take the same load from `slimforge.serve.loadtest`
(64 concurrent clients, one held-out paragraph per request, cut at 256 tokens):
the naive route (`benchmarks/naive_server.py`) serving fp32 MiniLM, the naive route serving
the int8 artifact, and `slimforge serve` serving the int8 artifact. Each server runs in its
own process with every core; the client runs in this one. Then overload (a small queue and
8x the clients: how many 429s, any 5xx) and a soak at steady load (RSS growth, 5xx).

Ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/serving.py            # 5-minute soak
    .venv/bin/python benchmarks/serving.py --soak-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server process on a free loopback port, ready when /docs or /readyz answers."""

    def __init__(self, argv: Callable[[int], list[str]], probe: str) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self.process = subprocess.Popen(argv(self.port), stdout=subprocess.DEVNULL,
                                        stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(self.log.read().decode()[-2000:])
            try:
                if httpx.get(self.url + probe, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{argv(self.port)} did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def naive(spec: str) -> Process:
    return Process(lambda port: [sys.executable, "benchmarks/naive_server.py", spec,
                                 str(port)], "/docs")


def slimforge(spec: str, *options: str) -> Process:
    return Process(lambda port: [sys.executable, "-m", "slimforge", "serve", spec,
                                 "--port", str(port), "--model-name", "minilm", "--truncate",
                                 *options], "/readyz")


def load(server: Process, payloads: list, concurrency: int, requests: int | None = None,
         duration_s: float | None = None) -> dict:
    from slimforge.serve.loadtest import LoadConfig, loadtest

    config = LoadConfig(concurrency=concurrency, requests=requests, duration_s=duration_s)
    return asyncio.run(loadtest(server.url, payloads, config)).to_json()


def int8_artifact(folder: str) -> str:
    from slimforge.compress import apply_step
    from slimforge.io.run import write_run
    from slimforge.models.load import load_model

    base = load_model("builtin:minilm")
    q = apply_step(base, {"step": "quantize", "method": "weight-only-int8", "dense_cache": True})
    return str(write_run(folder, "serving-benchmark", "builtin:minilm", {}, {}, "#\n", q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-s", type=float, default=300.0)
    args = parser.parse_args()

    from slimforge.serve.loadtest import corpus_payloads

    payloads = corpus_payloads("minilm")
    phases: dict[str, list[dict]] = {"naive fp32": [], "naive int8": [], "slimforge int8": []}
    with tempfile.TemporaryDirectory() as folder:
        artifact = int8_artifact(folder)
        starters = {"naive fp32": lambda: naive("builtin:minilm"),
                    "naive int8": lambda: naive(artifact),
                    "slimforge int8": lambda: slimforge(artifact)}
        for _ in range(args.rounds):
            for label, start in starters.items():
                server = start()
                try:
                    load(server, payloads, 8, requests=64)  # warm-up
                    phases[label].append(load(server, payloads, 64, requests=args.requests))
                finally:
                    server.stop()
                print(label, json.dumps(phases[label][-1]), file=sys.stderr)

        server = slimforge(artifact, "--max-queue", "64")
        try:
            overload = load(server, payloads, 512, requests=4 * args.requests)
        finally:
            server.stop()

        server = slimforge(artifact)
        try:
            load(server, payloads, 16, requests=200)
            rss_start = server.rss_mb()
            soak = load(server, payloads, 16, duration_s=args.soak_s)
            rss_end = server.rss_mb()
        finally:
            server.stop()

    def median(label: str, key: str) -> float:
        return statistics.median(run[key] for run in phases[label])

    statuses = overload["statuses"]
    five_xx = sum(n for s, n in statuses.items() if s.startswith("5"))
    soak_5xx = sum(n for s, n in soak["statuses"].items() if s.startswith("5"))
    print("| server (64 clients) | QPS | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|")
    for label in phases:
        print(f"| {label} | {median(label, 'qps'):.1f} | {median(label, 'p50_ms'):.1f} | "
              f"{median(label, 'p95_ms'):.1f} | {median(label, 'error_rate'):.3f} |")
    print(f"overload: {statuses}; soak {args.soak_s:.0f} s: RSS {rss_start:.0f} -> "
          f"{rss_end:.0f} MB, statuses {soak['statuses']}")
    print(json.dumps({
        "qps": median("slimforge int8", "qps"), "p95_ms": median("slimforge int8", "p95_ms"),
        "naive_fp32_qps": median("naive fp32", "qps"),
        "naive_fp32_p95_ms": median("naive fp32", "p95_ms"),
        "naive_int8_qps": median("naive int8", "qps"),
        "naive_int8_p95_ms": median("naive int8", "p95_ms"),
        "qps_vs_naive_fp32": median("slimforge int8", "qps") / median("naive fp32", "qps"),
        "qps_vs_naive_int8": median("slimforge int8", "qps") / median("naive int8", "qps"),
        "overload_429_fraction": statuses.get("429", 0) / max(overload["requests"], 1),
        "overload_5xx": five_xx, "soak_rss_growth": rss_end / rss_start - 1,
        "soak_5xx": soak_5xx, "soak_s": args.soak_s, "phases": phases, "overload": overload,
        "soak": soak, "soak_rss_mb": [rss_start, rss_end],
    }))


if __name__ == "__main__":
    main()
