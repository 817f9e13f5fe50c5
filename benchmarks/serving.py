"""Serving, issue 6: slimforge serve against the naive per-request FastAPI route.

Same machine, same run, same model file. Two int8 all-MiniLM-L6-v2 artifacts are made first:
the faster on this CPU of slimforge's own int8 forms, measured the way the server runs them
(weight-only int8 with bf16 compute wins on AMX CPUs, dynamic int8 on AVX2-only ones; the
choice and each form's rate are printed), and ONNX Runtime's int8 model (the peer runtime).
Then, in alternating rounds, five servers each take the same load from
`slimforge.serve.loadtest` (64 concurrent clients, one held-out paragraph per request, cut at
256 tokens): the naive route (`benchmarks/naive_server.py`) serving fp32 MiniLM, the naive
route and `slimforge serve` each serving the int8 artifact, and each serving the ONNX Runtime
model. Each server runs in its own process with every core; the client runs in this one. The
chosen form's compute rate on every core, with no HTTP and no client, is reported as the
ceiling no server here can pass. Then overload (a small queue and 8x the clients: how many
429s, any 5xx) and a soak at steady load (RSS growth, 5xx).

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


INT8_FORMS = {
    "weight-only int8 (bf16 compute where native)": {
        "step": "quantize", "method": "weight-only-int8", "embeddings": True,
        "dense_cache": True},
    "dynamic int8": {"step": "quantize", "method": "dynamic-int8", "granularity": "per-channel",
                     "embeddings": True, "activation_range": "auto"},
}
"""slimforge's own int8 forms of the default recipe (PyTorch modules in safetensors). Which is
faster depends on the CPU: bf16 compute on AMX, PyTorch's int8 kernels on AVX2-only CPUs."""
ORT_INT8 = {"step": "onnx", "quantize": "dynamic-int8", "per_channel": True}
"""The peer runtime's int8 (the default recipe's reference row), measured beside them."""


def int8_artifacts(folder: str, texts: list[str], rounds: int = 2) -> tuple[str, str, dict]:
    """Write the fastest of `INT8_FORMS` and the ONNX Runtime int8 model, and measure each
    form as `slimforge serve` runs it: batches of 32 held-out paragraphs, sorted and split by
    `BatchRunner`, on one thread (one batch worker's share), alternating rounds, best kept.

    Returns the chosen artifact, the ONNX Runtime artifact and each form's texts/s."""
    import torch

    from slimforge.compress import apply_step
    from slimforge.io.run import write_run
    from slimforge.models.load import load_model
    from slimforge.serve.runner import BatchRunner

    base = load_model("builtin:minilm")
    ids = base.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    batches = [sorted(ids[i:i + 32], key=len) for i in range(0, len(ids), 32)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runners = {label: BatchRunner(apply_step(base, step))
                   for label, step in {**INT8_FORMS, "ONNX Runtime int8": ORT_INT8}.items()}
        for runner in runners.values():
            runner.calibrate()
            runner(batches[0])  # warm-up
        rates: dict[str, float] = dict.fromkeys(runners, 0.0)
        for _ in range(rounds):
            for label, runner in runners.items():
                start = time.perf_counter()
                for batch in batches:
                    runner(batch)
                rates[label] = max(rates[label], len(ids) / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    chosen = max(INT8_FORMS, key=rates.__getitem__)
    paths = [str(write_run(f"{folder}/{name}", "serving-benchmark", "builtin:minilm", {}, {},
                           "#\n", runners[label].loaded))
             for name, label in (("int8", chosen), ("ort", "ONNX Runtime int8"))]
    return paths[0], paths[1], {"chosen": chosen, "texts_per_s_one_thread": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-s", type=float, default=300.0)
    args = parser.parse_args()

    from slimforge.runtime import setup_runtime
    from slimforge.serve.loadtest import corpus_payloads

    cores = setup_runtime().threads  # every core this process may use, as `serve` counts them

    payloads = corpus_payloads("minilm")
    with tempfile.TemporaryDirectory() as folder:
        artifact, ort, int8 = int8_artifacts(folder, [p["input"][0] for p in payloads[:256]])
        print("int8 forms:", json.dumps(int8), file=sys.stderr)
        starters = {"naive fp32": lambda: naive("builtin:minilm"),
                    "naive int8": lambda: naive(artifact),
                    "slimforge int8": lambda: slimforge(artifact),
                    "naive ORT int8": lambda: naive(ort),
                    "slimforge ORT int8": lambda: slimforge(ort)}
        phases: dict[str, list[dict]] = {label: [] for label in starters}
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

    # What the chosen form computes on every core with nothing else running (no HTTP, no
    # client): no server on this machine can answer faster than this.
    ceiling = int8["texts_per_s_one_thread"][int8["chosen"]] * cores
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
        "soak": soak, "soak_rss_mb": [rss_start, rss_end], "int8": int8,
        "ort_qps": median("slimforge ORT int8", "qps"),
        "naive_ort_qps": median("naive ORT int8", "qps"),
        "ort_qps_vs_naive_fp32": median("slimforge ORT int8", "qps") / median("naive fp32", "qps"),
        "ort_qps_vs_naive_ort": (median("slimforge ORT int8", "qps")
                                 / median("naive ORT int8", "qps")),
        "int8_compute_ceiling_qps": ceiling,
        "ceiling_vs_naive_fp32": ceiling / median("naive fp32", "qps"),
    }))


if __name__ == "__main__":
    main()
