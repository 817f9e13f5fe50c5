"""Quantization side by side, in one run: MiniLM on CPU and SmolLM2 decode.

MiniLM (`builtin:minilm`, 500 held-out paragraphs): torch fp32 (the anchor); slimforge's
int8 artifacts (per-channel, int8 tables): dynamic int8 on fbgemm, on oneDNN, and with the
kernel `auto` picks here (by call size where the CPU has AMX), also with the most sensitive
layer kept in float; static int8 (activation ranges calibrated on the train split); the
torchao route (per-token activations); weight-only int8 computed in bf16; fp8 (emulated on
the CPU: its fidelity is what a Hopper GPU would give, its speed means nothing); ONNX Runtime
fp32 and dynamic int8 per-channel on the fused graph. Fidelity against fp32; every variant
timed against fp32 in alternating rounds, and slimforge's best against ORT int8 in the same
way.

SmolLM2 (`builtin:smollm2`, held-out text): fp32, weight-only int8, weight-only int4 (group
32): perplexity ratio to fp32, decode tokens/s at batch 1 against fp32 in alternating rounds,
and the memory-bandwidth ceiling (measured copy bandwidth / weight bytes read per token).
With `--llamacpp`, llama.cpp on the same GGUF (llama-cpp-python, installed by this script
into the running environment if missing; it is not a project dependency).

Ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/quantization.py --llamacpp
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def minilm(limit: int, repeats: int) -> dict:
    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.compress import apply_step
    from slimforge.compress.quantize import ONEDNN_FROM_ROWS, int8_engine
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model

    base = load_model("builtin:minilm")
    auto = (f"oneDNN from {ONEDNN_FROM_ROWS} rows, fbgemm below"
            if int8_engine(full_range=True) == "onednn" else "fbgemm")
    eval_config = EvalConfig(limit=limit)
    bench_config = BenchConfig(repeats=repeats, rounds=4, throughput_repeats=24)
    reference = evaluate(base, config=eval_config)
    variants = {
        "slimforge dynamic int8, fbgemm kernel": {"step": "quantize", "kernel": "fbgemm"},
        "slimforge dynamic int8, oneDNN kernel": {"step": "quantize", "kernel": "onednn"},
        f"slimforge dynamic int8, kernel auto ({auto})": {"step": "quantize"},
        "slimforge dynamic int8, kernel auto, 1 layer in float": {"step": "quantize",
                                                                  "keep_float": 1},
        "slimforge static int8, calibrated on 32 train paragraphs": {
            "step": "quantize", "method": "static-int8"},
        "slimforge torchao int8, per-token activations (eager)": {
            "step": "quantize", "method": "torchao-int8-dynamic"},
        "slimforge weight-only int8, bf16 compute": {
            "step": "quantize", "method": "weight-only-int8", "dense_cache": True},
        "slimforge fp8 e4m3, emulated on the CPU (fidelity only)": {
            "step": "quantize", "method": "fp8"},
        "ORT fp32 fused": {"step": "onnx", "quantize": "none"},
        "ORT dynamic int8 per-channel": {"step": "onnx", "per_channel": True},
    }
    rows, models = {}, {}
    for label, step in variants.items():
        models[label] = apply_step(base, step)
        quality = evaluate(models[label], reference=reference, config=eval_config).metrics
        speed = benchmark(models[label], bench_config, anchor=base)
        rows[label] = {**{k: quality[k] for k in ("cosine_mean", "knn_overlap_at_10")},
                       "p50_ms": speed.p50_ms, "throughput_per_s": speed.throughput_per_s,
                       "size_mb": speed.size_mb, "fp32_p50_ms": speed.anchor.p50_ms,
                       "fp32_throughput_per_s": speed.anchor.throughput_per_s,
                       "fp32_size_mb": speed.anchor.size_mb, **speed.vs_anchor}
    best = _best(rows)
    head_to_head = benchmark(models[best], bench_config,
                             anchor=models["ORT dynamic int8 per-channel"])
    return {"rows": rows, "best": best, "vs_ort": head_to_head.vs_anchor}


def _best(rows: dict) -> str:
    """The fastest slimforge variant meeting issue 3's floor (cosine >= 0.99, top-10 >= 0.9),
    else the one with the highest cosine."""
    ours = {k: r for k, r in rows.items() if k.startswith("slimforge") and "emulated" not in k}
    passing = [k for k, r in ours.items()
               if r["cosine_mean"] >= 0.99 and r["knn_overlap_at_10"] >= 0.9]
    if passing:
        return max(passing, key=lambda k: ours[k]["throughput_per_s"])
    return max(ours, key=lambda k: ours[k]["cosine_mean"])


def bandwidth_gb_s() -> float:
    """Sustained copy bandwidth: bytes read plus bytes written per second, best of 5."""
    import torch

    src = torch.ones(256 * 1024 * 1024 // 4)  # 256 MiB, far beyond any cache
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def bytes_per_token(model) -> int:
    """Weight bytes a decode step reads: every matrix once; embedding tables one row only."""
    import torch

    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) or type(module).__name__ == "Int8Embedding":
            continue
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


# ggml's AMX path repacks Q4_1 weights and then crashes in decode on this machine kind (seen
# 2026-11-22 with llama-cpp-python 0.3.36), so on AMX CPUs the anchor is built without it,
# with every other x86 extension on.
NO_AMX = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
          "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
          "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")

_LLAMACPP_PROBE = """
import sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=2, n_ctx=512, verbose=False)
def timed(n):
    llm.reset()
    start = time.perf_counter()
    llm.create_completion("The Python standard library provides", max_tokens=n,
                          temperature=0.0)
    return time.perf_counter() - start
timed(4)
n = int(sys.argv[2])
samples = sorted(timed(n + 1) - timed(1) for _ in range(3))
print(n / samples[1])
"""


def llamacpp_decode(gguf: str, tokens: int) -> float | None:
    """llama.cpp decode tokens/s at batch 1, 2 threads: n / (t(1 + n) - t(1)), median of 3.
    Runs in a subprocess so a crash of the anchor is reported, not fatal."""
    if importlib.util.find_spec("llama_cpp") is None:
        from slimforge.compress.quantize import cpu_flags

        env, extra = dict(os.environ), []
        if "amx_tile" in cpu_flags():
            env["CMAKE_ARGS"] = NO_AMX
            extra = ["--no-cache-dir"]  # a cached wheel may be a native (AMX) build
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra,
                        "llama-cpp-python"], check=True, env=env)
    done = subprocess.run([sys.executable, "-c", _LLAMACPP_PROBE, gguf, str(tokens)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        print(f"llama.cpp anchor failed (exit {done.returncode}): {done.stderr[-300:]}",
              file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def smollm2(max_tokens: int, with_llamacpp: bool) -> dict:
    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.compress import apply_step
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model, smollm2_gguf

    base = load_model("builtin:smollm2")
    eval_config = EvalConfig(max_tokens=max_tokens, window=1024, stride=1024)
    bench_config = BenchConfig(repeats=64, decode_tokens=32, batch_size=4, prefill_len=256,
                               warmup=1, rounds=2)
    fp32_ppl = evaluate(base, config=eval_config).metrics["perplexity"]
    gb_s = bandwidth_gb_s()
    rows = {"fp32": {"perplexity": fp32_ppl, "bytes_per_token": bytes_per_token(base.model)}}
    for label, step in {"weight-only int8": {"method": "weight-only-int8"},
                        "weight-only int4 g32": {"method": "weight-only-int4",
                                                 "group_size": 32}}.items():
        model = apply_step(base, {"step": "quantize", **step})
        ppl = evaluate(model, config=eval_config).metrics["perplexity"]
        speed = benchmark(model, bench_config, anchor=base)
        rows[label] = {"perplexity": ppl, "ppl_ratio": ppl / fp32_ppl,
                       "decode_tokens_per_s": speed.decode_tokens_per_s,
                       "prefill_tokens_per_s": speed.prefill_tokens_per_s,
                       "size_mb": speed.size_mb, "bytes_per_token": bytes_per_token(model.model)}
        rows["fp32"].setdefault("decode_tokens_per_s", speed.anchor.decode_tokens_per_s)
        rows["fp32"].setdefault("prefill_tokens_per_s", speed.anchor.prefill_tokens_per_s)
        del model
    gguf = smollm2_gguf()
    anchor = llamacpp_decode(str(gguf), 64) if with_llamacpp else None
    if anchor is not None:
        rows["llama.cpp Q4_1"] = {"decode_tokens_per_s": anchor,
                                  "bytes_per_token": gguf.stat().st_size}
    for row in rows.values():
        row["ceiling_tokens_per_s"] = gb_s * 1e9 / row["bytes_per_token"]
    return {"rows": rows, "bandwidth_gb_s": gb_s}


def _print_tables(mini: dict, llm: dict) -> None:
    print("| MiniLM variant | cosine | top-10 | p50 ms (fp32) | items/s (fp32) | size MB "
          "| throughput vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for label, r in mini["rows"].items():
        print(f"| {label} | {r['cosine_mean']:.4f} | {r['knn_overlap_at_10']:.3f} | "
              f"{r['p50_ms']:.2f} ({r['fp32_p50_ms']:.2f}) | {r['throughput_per_s']:.1f} "
              f"({r['fp32_throughput_per_s']:.1f}) | {r['size_mb']:.1f} | "
              f"{r['throughput_ratio']:.2f}× |")
    vs_ort = mini["vs_ort"]
    print(f"{mini['best']} vs ORT int8, same run: throughput "
          f"{vs_ort['throughput_ratio']:.2f}×, batch-1 latency {vs_ort['latency_speedup']:.2f}×")
    print(f"\n| SmolLM2 variant | perplexity | ratio | decode tok/s | ceiling tok/s "
          f"(at {llm['bandwidth_gb_s']:.1f} GB/s) |")
    print("|---|---|---|---|---|")
    for label, r in llm["rows"].items():
        print(f"| {label} | {r.get('perplexity', float('nan')):.2f} | "
              f"{r.get('ppl_ratio', 1.0 if label == 'fp32' else float('nan')):.3f} | "
              f"{r['decode_tokens_per_s']:.1f} | {r['ceiling_tokens_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="MiniLM fidelity paragraphs")
    parser.add_argument("--repeats", type=int, default=40, help="latency repeats")
    parser.add_argument("--max-tokens", type=int, default=8192, help="SmolLM2 perplexity tokens")
    parser.add_argument("--llamacpp", action="store_true", help="measure the llama.cpp anchor")
    args = parser.parse_args()

    mini = minilm(args.limit, args.repeats)
    llm = smollm2(args.max_tokens, args.llamacpp)
    _print_tables(mini, llm)
    best = mini["rows"][mini["best"]]
    decode = {k: r["decode_tokens_per_s"] for k, r in llm["rows"].items()}
    ours = max(v for k, v in decode.items() if not k.startswith("llama.cpp"))
    print(json.dumps({
        "minilm_best_int8_variant": mini["best"],
        "minilm_best_int8_cosine": best["cosine_mean"],
        "minilm_best_int8_knn_overlap_at_10": best["knn_overlap_at_10"],
        "minilm_best_int8_size_ratio": best["size_mb"] / best["fp32_size_mb"],
        "minilm_best_int8_speedup": best["throughput_ratio"],
        "minilm_best_vs_ort_int8": mini["vs_ort"]["throughput_ratio"],
        "minilm_best_vs_ort_int8_latency": mini["vs_ort"]["latency_speedup"],
        "smollm2_int8_ppl_ratio": llm["rows"]["weight-only int8"]["ppl_ratio"],
        "smollm2_int4_ppl_ratio": llm["rows"]["weight-only int4 g32"]["ppl_ratio"],
        "smollm2_decode_tokens_per_s": decode,
        "smollm2_best_decode_vs_llamacpp": (ours / decode["llama.cpp Q4_1"]
                                            if "llama.cpp Q4_1" in decode else None),
        "bandwidth_ceiling_tokens_per_s": {k: r["ceiling_tokens_per_s"]
                                           for k, r in llm["rows"].items()},
        "bandwidth_gb_s": llm["bandwidth_gb_s"],
        "minilm": mini, "smollm2": llm,
    }))


if __name__ == "__main__":
    main()
