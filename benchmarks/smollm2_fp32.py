"""SmolLM2-135M-Instruct (the bundled GGUF, expanded to fp32): perplexity, prefill, decode.

Perplexity over the first 20,480 held-out tokens in 20 non-overlapping windows of 1,024
(stride = window), the method of the anchor in shared/ANCHORS.md. Ends stdout with one JSON
line. Not collected by pytest.

    .venv/bin/python benchmarks/smollm2_fp32.py
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=20480)
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args()

    model = load_model("builtin:smollm2")
    quality = evaluate(model, config=EvalConfig(max_tokens=args.max_tokens, window=args.window,
                                                stride=args.window))
    speed = benchmark(model, BenchConfig(repeats=64, decode_tokens=32, batch_size=8))
    row = {"perplexity": quality.metrics["perplexity"], "tokens": quality.samples,
           **{k: getattr(speed, k) for k in ("decode_tokens_per_s", "prefill_tokens_per_s",
                                             "p50_ms", "p95_ms", "throughput_per_s",
                                             "peak_rss_mb", "size_mb")}}
    print("| perplexity | tokens | decode tok/s (b1) | 512-token prefill tok/s | "
          "decode step p50 / p95 ms | decode tok/s (b8) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['perplexity']:.2f} | {row['tokens']} | {row['decode_tokens_per_s']:.1f} | "
          f"{row['prefill_tokens_per_s']:.0f} | {row['p50_ms']:.1f} / {row['p95_ms']:.1f} | "
          f"{row['throughput_per_s']:.1f} | {row['peak_rss_mb']:.0f} |")
    print(json.dumps({"benchmark": "smollm2_fp32", **row}))


if __name__ == "__main__":
    main()
