"""`profile(loaded)`: where a model's time goes, and what bounds it on this machine.

Owns: `Peaks`, `measure_peaks`, `Profile` and `profile`. One representative step is measured
three ways:

- **Time**: the median wall time of the step (an encoder forward at `batch x seq` on held-out
  text; a causal LM's greedy decode step with a KV cache after a prompt).
- **Work**: FLOPs from PyTorch's own counter (`FlopCounterMode`: matmuls, attention,
  convolutions), and bytes moved, counted by a dispatch mode as every aten op's inputs and
  outputs, each weight counted once per step (what an unfused eager run reads and writes).
- **Ops**: `torch.profiler` over a few steps: self time, calls and memory by operator; by
  module (hooks): time, weights held and activations returned; a Chrome trace.

Against this machine's measured peaks (`measure_peaks`: a large GEMM in the model's dtype
and a large read or copy, best of three, on the same threads) that gives a roofline: arithmetic
intensity (FLOPs per byte) under the machine balance (peak FLOP/s per byte/s) means the step
could at best be memory-bound, over it compute-bound. But when the step reaches neither
peak (under `OVERHEAD_SHARE` of both) the bound is the overhead between the kernels:
dispatch, Python and small ops. The verdict says which, with the numbers.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from slimforge.bench.bench import _forward, _texts
from slimforge.models.tasks import LoadedModel, tokenize

OVERHEAD_SHARE = 0.4
"""A step using less than 40% of both peak FLOP/s and peak bandwidth is overhead-bound."""


@dataclass(frozen=True)
class Peaks:
    """What this machine can do at best, measured on the threads in use."""

    flops_per_s: float
    bytes_per_s: float
    dtype: str
    threads: int

    @property
    def balance(self) -> float:
        """FLOPs the machine can do per byte it can move (the roofline's ridge point)."""
        return self.flops_per_s / self.bytes_per_s


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def measure_peaks(dtype: torch.dtype = torch.float32, gemm: int = 2048,
                  copy_mb: int = 512) -> Peaks:
    """Peak FLOP/s (a `gemm`-cubed matmul in `dtype`) and bandwidth: the better of reading
    a `copy_mb` MB buffer (a sum) and copying it (read + write), far larger than any cache."""
    a, b = torch.randn(gemm, gemm, dtype=dtype), torch.randn(gemm, gemm, dtype=dtype)
    flops = 2 * gemm**3 / _best(lambda: a @ b)
    src = torch.ones(copy_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    copied = 2 * src.nbytes / _best(lambda: dst.copy_(src))
    read = src.nbytes / _best(src.sum)
    return Peaks(flops, max(copied, read), str(dtype).removeprefix("torch."),
                 torch.get_num_threads())


class _Traffic(TorchDispatchMode):
    """Counts the bytes every aten op reads and writes; a tensor seen as a parameter or
    buffer is counted once per step (weights are read once, whatever reuses them)."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.bytes = 0
        self.weights, self._seen = weights, set()

    def _count(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            return
        key = value.untyped_storage().data_ptr()
        if key in self.weights:
            if key in self._seen:
                return
            self._seen.add(key)
        self.bytes += value.numel() * value.element_size()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):  # a view moves no data
            return out
        flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
        for value in flat:
            self._count(value)
        return out


@dataclass
class Profile:
    """What `profile` found."""

    spec: str
    workload: str
    step_ms: float
    flops: float
    bytes: float
    arithmetic_intensity: float
    machine_balance: float
    achieved_flops_share: float
    achieved_bandwidth_share: float
    bound: str
    verdict: str
    peaks: dict[str, Any]
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    top_modules: list[dict[str, Any]] = field(default_factory=list)
    trace: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The profile as a plain dict."""
        return asdict(self)


def _step(loaded: LoadedModel, batch: int, seq: int) -> tuple[str, Callable[[], object]]:
    if loaded.task != "causal-lm":
        return f"forward, batch {batch} x {seq} tokens", _forward(loaded, batch, seq)
    ids = tokenize(loaded, _texts(batch), seq, pad_to_max=True)["input_ids"]
    prefix = loaded.model(input_ids=ids.to(loaded.device), use_cache=True)
    token = prefix.logits[:, -1:].argmax(-1)

    def decode() -> object:
        out = loaded.model(input_ids=token, past_key_values=prefix.past_key_values,
                           use_cache=True)
        prefix.past_key_values.crop(-1)  # drop the step's token: every step sees one cache
        return out

    return f"decode step, batch {batch}, after a {seq}-token prompt", decode


def _bound(intensity: float, peaks: Peaks, flops_share: float, bw_share: float) -> str:
    if max(flops_share, bw_share) < OVERHEAD_SHARE:
        return "overhead"
    return "compute" if intensity >= peaks.balance else "memory"


def _verdict(bound: str, workload: str, p: dict[str, float], top: list[dict]) -> str:
    lead = f" {top[0]['op']} takes {top[0]['share']:.0%} of the time." if top else ""
    numbers = (f"{p['gflops']:.1f} GFLOP/s of {p['peak_gflops']:.0f} peak "
               f"({p['flops_share']:.0%}), {p['gbs']:.1f} GB/s of {p['peak_gbs']:.1f} peak "
               f"({p['bw_share']:.0%}); intensity {p['intensity']:.1f} FLOP/byte against a "
               f"machine balance of {p['balance']:.1f}.")
    advice = {
        "compute": "it does as much arithmetic as the cores allow: cheaper arithmetic "
                   "(bf16/int8 GEMMs) or less of it (pruning, distillation) helps most.",
        "memory": "it waits on memory: fewer bytes per weight (weight-only int8/int4) or "
                  "larger batches per weight read help most.",
        "overhead": "it reaches neither peak: time goes to dispatch, Python and small ops "
                    "between kernels; compile the step, use a static cache, or batch more "
                    "before quantizing further.",
    }[bound]
    return f"The {workload} is {bound}-bound: {advice} {numbers}{lead}"


def _ops(call: Callable[[], object], steps: int, trace: Path | None) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                       profile_memory=True, with_flops=True) as prof:
        for _ in range(steps):
            call()
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return [{"op": e.key, "calls": e.count // steps,
             "ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "share": e.self_cpu_time_total / total,
             "memory_mb_per_step": max(e.self_cpu_memory_usage, 0) / 2**20 / steps}
            for e in ops]


def _tensor_bytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(value)
               if isinstance(t, torch.Tensor))


def _module_times(model: torch.nn.Module, call: Callable[[], object], steps: int,
                  depth: int = 3) -> list[dict[str, Any]]:
    """Time and memory of every module down to `depth` levels: inclusive wall time (share of
    the step), the weights it holds and the activations it returns per step."""
    spent: dict[str, float] = defaultdict(float)
    produced: dict[str, int] = defaultdict(int)
    started: dict[str, float] = {}
    weights: dict[str, int] = {}
    handles = []

    def done(name: str, output: Any) -> None:
        spent[name] += time.perf_counter() - started[name]
        produced[name] += _tensor_bytes(output)

    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue
        weights[name] = _tensor_bytes([*module.parameters(), *module.buffers()])
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(lambda _m, _a, o, n=name: done(n, o)))
    try:
        start = time.perf_counter()
        for _ in range(steps):
            call()
        total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    ranked = sorted(spent.items(), key=lambda kv: -kv[1])[:10]
    return [{"module": name, "ms_per_step": t * 1000 / steps, "share": t / total,
             "weights_mb": weights[name] / 2**20,
             "activations_mb_per_step": produced[name] / 2**20 / steps}
            for name, t in ranked]


@torch.inference_mode()
def profile(loaded: LoadedModel, batch: int | None = None, seq: int | None = None,
            trace: str | Path | None = None, peaks: Peaks | None = None) -> Profile:
    """Profile one representative step of `loaded` and classify what bounds it.

    Args:
        loaded: the model.
        batch: inputs per step (default: 1 for a causal LM's decode, 32 for an encoder).
        seq: encoder sequence length (default 128), or the decode prompt length (32).
        trace: where to write a Chrome trace (chrome://tracing, Perfetto).
        peaks: this machine's peaks (measured here when not given).
    """
    decoder = loaded.task == "causal-lm"
    batch, seq = batch or (1 if decoder else 32), seq or (32 if decoder else 128)
    workload, call = _step(loaded, batch, seq)
    dtype = next(loaded.model.parameters()).dtype
    peaks = peaks or measure_peaks(dtype if dtype.is_floating_point else torch.float32)
    for _ in range(3):
        call()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    weights = {t.untyped_storage().data_ptr()
               for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    with _Traffic(weights) as traffic:
        call()
    flops, moved = float(counter.get_total_flops()), float(traffic.bytes)
    top_ops = _ops(call, 3, Path(trace) if trace else None)
    top_modules = _module_times(loaded.model, call, 3)
    numbers = {"gflops": flops / step / 1e9, "peak_gflops": peaks.flops_per_s / 1e9,
               "flops_share": flops / step / peaks.flops_per_s, "gbs": moved / step / 1e9,
               "peak_gbs": peaks.bytes_per_s / 1e9, "bw_share": moved / step / peaks.bytes_per_s,
               "intensity": flops / max(moved, 1.0), "balance": peaks.balance}
    bound = _bound(numbers["intensity"], peaks, numbers["flops_share"], numbers["bw_share"])
    return Profile(
        spec=loaded.spec, workload=workload, step_ms=step * 1000, flops=flops, bytes=moved,
        arithmetic_intensity=numbers["intensity"], machine_balance=peaks.balance,
        achieved_flops_share=numbers["flops_share"],
        achieved_bandwidth_share=numbers["bw_share"], bound=bound,
        verdict=_verdict(bound, workload, numbers, top_ops),
        peaks={**asdict(peaks), "balance": peaks.balance}, top_ops=top_ops,
        top_modules=top_modules, trace=str(trace) if trace else None)
