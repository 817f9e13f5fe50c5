"""Serving generation, issue 6: continuous batching against one request at a time.

Same machine, same run, same model (SmolLM2-135M-Instruct, the bundled GGUF expanded to
fp32): `slimforge serve builtin:smollm2` twice, once with `--max-batch-size 1` (each request
decodes alone, in arrival order: what a per-request server does) and once with the default
(up to 32 sequences decode together; a request that arrives mid-decode joins at the next
step). Each takes the same streamed chat load from `slimforge.serve.loadtest`: `--clients`
concurrent users, greedy, `--max-tokens` tokens each. Reports generated tokens/s, time to
first token and request latency; ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/generation_serving.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from serving import Process

from slimforge.serve.loadtest import LoadConfig, generation_payloads, loadtest

ENDPOINT = "/v1/chat/completions"


def server(*options: str) -> Process:
    return Process(lambda port: [sys.executable, "-m", "slimforge", "serve", "builtin:smollm2",
                                 "--port", str(port), "--model-name", "smollm2", *options],
                   "/readyz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    payloads = generation_payloads("smollm2", ENDPOINT, args.max_tokens)
    config = LoadConfig(endpoint=ENDPOINT, concurrency=args.clients, requests=args.requests,
                        timeout_s=600)
    results = {}
    for label, options in (("one at a time", ("--max-batch-size", "1")),
                           ("continuous batching", ())):
        process = server(*options)
        try:
            warm = LoadConfig(endpoint=ENDPOINT, concurrency=2, requests=2, timeout_s=600)
            asyncio.run(loadtest(process.url, payloads, warm))
            results[label] = asyncio.run(loadtest(process.url, payloads, config)).to_json()
        finally:
            process.stop()
        print(label, json.dumps(results[label]), file=sys.stderr)

    print(f"| SmolLM2 serve ({args.clients} clients, {args.max_tokens} tokens) | tokens/s | "
          "TTFT p50 ms | TTFT p95 ms | latency p95 ms | errors |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
              f"{r['ttft_p95_ms']:.0f} | {r['p95_ms']:.0f} | {r['error_rate']:.3f} |")
    one, batched = results["one at a time"], results["continuous batching"]
    print(json.dumps({
        "tokens_per_s": batched["tokens_per_s"], "one_at_a_time_tokens_per_s":
        one["tokens_per_s"], "tokens_per_s_ratio": batched["tokens_per_s"] / one["tokens_per_s"],
        "ttft_p95_ms": batched["ttft_p95_ms"], "one_at_a_time_ttft_p95_ms": one["ttft_p95_ms"],
        "results": results}))


if __name__ == "__main__":
    main()
