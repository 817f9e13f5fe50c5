"""MiniLM fp32 against dynamic int8 variants, in one run: what each choice buys.

Variants, cumulatively: per-tensor weight scales with 7-bit activations (the classic torch
default), per-channel scales, 8-bit activations (CPUs with VNNI), int8 embedding tables.

Fidelity on held-out standard-library paragraphs against the fp32 model; speed measured with
fp32 as the anchor in alternating rounds, so the speed-ups are ratios from the same run.
Ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/minilm_int8.py --limit 500 --repeats 40
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.compress import apply_step
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="paragraphs for fidelity")
    parser.add_argument("--repeats", type=int, default=40, help="latency repeats")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds vs fp32")
    args = parser.parse_args()

    base = load_model("builtin:minilm")
    eval_config = EvalConfig(limit=args.limit)
    bench_config = BenchConfig(repeats=args.repeats, rounds=args.rounds, throughput_repeats=24)
    reference = evaluate(base, config=eval_config)
    rows = []
    variants = {
        "per-tensor, 7-bit act.": {"granularity": "per-tensor", "activation_range": "reduced",
                                   "embeddings": False},
        "per-channel, 7-bit act.": {"activation_range": "reduced", "embeddings": False},
        "per-channel, 8-bit act.": {"activation_range": "full", "embeddings": False},
        "+ int8 embeddings (default)": {"activation_range": "auto", "embeddings": True},
    }
    for label, options in variants.items():
        variant = apply_step(base, {"step": "quantize", **options})
        quality = evaluate(variant, reference=reference, config=eval_config).metrics
        speed = benchmark(variant, bench_config, anchor=base)
        rows.append({"variant": label, **quality,
                     **{k: getattr(speed, k) for k in ("p50_ms", "p95_ms", "throughput_per_s",
                                                       "size_mb")},
                     **speed.vs_anchor, "anchor_p50_ms": speed.anchor.p50_ms,
                     "anchor_throughput_per_s": speed.anchor.throughput_per_s,
                     "anchor_size_mb": speed.anchor.size_mb})
    print("| variant | cosine | top-10 overlap | spearman | p50 ms | items/s | size MB "
          "| latency speed-up | throughput ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    first = rows[0]
    print(f"| fp32 (anchor, first run) | 1 | 1 | 1 | {first['anchor_p50_ms']:.2f} | "
          f"{first['anchor_throughput_per_s']:.1f} | {first['anchor_size_mb']:.1f} | 1.00× | "
          "1.00× |")
    for r in rows:
        print(f"| {r['variant']} | {r['cosine_mean']:.4f} | {r['knn_overlap_at_10']:.3f} | "
              f"{r['spearman']:.4f} | {r['p50_ms']:.2f} | {r['throughput_per_s']:.1f} | "
              f"{r['size_mb']:.1f} | {r['latency_speedup']:.2f}× | "
              f"{r['throughput_ratio']:.2f}× |")
    print(json.dumps({"benchmark": "minilm_int8", "limit": args.limit, "rows": rows}))


if __name__ == "__main__":
    main()
