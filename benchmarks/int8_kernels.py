"""Which int8 GEMM for which call size: fbgemm against oneDNN, per MiniLM layer shape.

The figures behind `QuantConfig.kernel: auto` (`ONEDNN_FROM_ROWS`). For each of
all-MiniLM-L6-v2's Linear shapes and 32 to 4,096 rows: PyTorch's dynamic int8 linear packed
for fbgemm and for oneDNN (same codes, same scales), fp32 `nn.functional.linear` as the
anchor, and bf16 `linear` on the dequantized weight (what weight-only int8 runs for 16+ rows).
Kernels alternate within each round; the median of 5 rounds is printed. Ends stdout with one
JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/int8_kernels.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch

SHAPES = {"attention (384 -> 384)": (384, 384), "intermediate (384 -> 1536)": (384, 1536),
          "output (1536 -> 384)": (1536, 384)}
ROWS = (32, 128, 512, 4096)


def _ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def _packed(codes: torch.Tensor, scale: torch.Tensor, engine: str):
    from slimforge.compress.codes import torch_qweight

    qweight = torch_qweight(codes, scale)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return torch.ops.quantized.linear_prepack(qweight, None)
    finally:
        torch.backends.quantized.engine = previous


def measure(k: int, n: int, rows: int) -> dict[str, float]:
    """Median ms per call of each kernel for a [rows, k] x [k, n] product."""
    torch.manual_seed(0)
    weight, x = torch.randn(n, k), torch.randn(rows, k)
    scale = weight.abs().amax(1) / 127
    codes = torch.round(weight / scale[:, None]).to(torch.int8)
    packs = {engine: _packed(codes, scale, engine) for engine in ("fbgemm", "onednn")}
    xb, wb = x.bfloat16(), (codes.float() * scale[:, None]).bfloat16()
    kernels = {
        "fp32": lambda: torch.nn.functional.linear(x, weight),
        "int8 fbgemm": lambda: torch.ops.quantized.linear_dynamic(x, packs["fbgemm"], False),
        "int8 onednn": lambda: torch.ops.quantized.linear_dynamic(x, packs["onednn"], False),
        "bf16": lambda: torch.nn.functional.linear(xb, wb),
    }
    calls = max(5, 20_000 // rows)
    samples = {name: [] for name in kernels}
    for _ in range(5):
        for name, fn in kernels.items():
            samples[name].append(_ms(fn, calls))
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    results = []
    print("| layer | rows | fp32 ms | fbgemm ms | oneDNN ms | bf16 ms | oneDNN / fbgemm speed |")
    print("|---|---|---|---|---|---|---|")
    for label, (k, n) in SHAPES.items():
        for rows in ROWS:
            ms = measure(k, n, rows)
            ratio = ms["int8 fbgemm"] / ms["int8 onednn"]
            print(f"| {label} | {rows} | {ms['fp32']:.3f} | {ms['int8 fbgemm']:.3f} | "
                  f"{ms['int8 onednn']:.3f} | {ms['bf16']:.3f} | {ratio:.2f}× |")
            results.append({"layer": label, "rows": rows, "ms": ms, "onednn_speedup": ratio})
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
