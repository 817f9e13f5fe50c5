"""`benchmark(model, config, anchor) -> BenchResult`: latency, throughput, memory and size.

Owns: `BenchConfig`, `BenchResult`, `benchmark`. What is timed, per task:
- encoders (embedding, classification): one forward pass at batch 1 x `latency_seq_len`
  tokens of real text (latency), and at `batch_size` x `seq_len` tokens (throughput, texts/s);
- causal LMs: each greedy decode step with a KV cache at batch 1 after a `latency_seq_len`
  prompt (latency, decode tokens/s), a `prefill_len` prompt (prefill tokens/s), and decode
  steps at `batch_size` (throughput, tokens/s), through slimforge's generation engine where it
  runs the model (`BenchConfig.engine`; its compile time is reported, not timed), else
  through transformers;
- plain modules: forward on their `example_inputs(batch_size)`.
Every measurement warms up first and synchronizes CUDA. When an anchor is named, the two
models are measured in alternating rounds in this process, so drift on a noisy machine hits
both, and the result carries their ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimforge.bench import measure
from slimforge.bench.resources import ResourceSampler
from slimforge.data.sources import STDLIB_DOCS, load_texts
from slimforge.errors import SlimforgeError
from slimforge.generate import Engine, SamplingParams, format_of, not_served_by_engine
from slimforge.models.load import load_model
from slimforge.models.tasks import LoadedModel, tokenize
from slimforge.progress import track
from slimforge.runtime import setup_runtime


class BenchConfig(BaseModel):
    """What to time and how often."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    warmup: int = Field(3, ge=0)
    """Untimed calls before each measurement."""
    repeats: int = Field(20, ge=1)
    """Timed calls for latency (decode: prompts, each of `decode_tokens` steps)."""
    batch_size: int = Field(32, ge=1)
    """Batch for the throughput measurement."""
    seq_len: int = Field(128, ge=1)
    """Tokens per text for the throughput measurement."""
    latency_seq_len: int = Field(32, ge=1)
    """Tokens per text (encoders) or prompt tokens (causal LMs) for latency."""
    prefill_len: int = Field(512, ge=1)
    """Causal LMs: prompt tokens for the prefill measurement."""
    decode_tokens: int = Field(32, ge=1)
    """Causal LMs: greedy decode steps timed per prompt."""
    threads: int | None = None
    """Intra-op threads; None uses every core this process may use."""
    rounds: int = Field(2, ge=1)
    """With an anchor: alternating rounds, each with a share of the repeats."""
    throughput_repeats: int = Field(8, ge=1)
    """Timed calls of the throughput batch (and of the prefill), shared over the rounds."""
    engine: Literal["auto", "eager", "transformers"] = "auto"
    """Causal LMs: `auto` times slimforge's generation engine (compiled decode step, static
    cache, packed weight-only kernels) where it runs the model (Llama-style, on the CPU),
    `eager` that engine uncompiled, `transformers` the model's own forward with its cache."""


@dataclass
class BenchResult:
    """What a benchmark measured; `to_json()` is the machine-readable form."""

    spec: str
    task: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latency_shape: str
    throughput_per_s: float
    throughput_unit: str
    throughput_shape: str
    peak_rss_mb: float
    size_mb: float
    parameters: int
    sparsity: float
    threads: int
    device: str
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    cuda_peak_mb: float | None = None
    engine: str | None = None
    """Causal LMs: what generated (`slimforge int4, compiled` or `transformers ...`)."""
    compile_s: float | None = None
    """Causal LMs: seconds compiling the engine's decode steps (paid once, not timed)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """CPU %, RSS and (where NVML answers) GPU utilisation, memory and energy, sampled every
    0.1 s while measuring (`bench/resources.py`)."""
    latency_samples_ms: list[float] = field(default_factory=list)
    """Every timed latency call (decode: every step), for distribution plots."""
    anchor: BenchResult | None = None
    vs_anchor: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Every figure, with the anchor's figures nested under `anchor`."""
        out = asdict(self)
        out["anchor"] = self.anchor.to_json() if self.anchor else None
        return {k: v for k, v in out.items() if v is not None}


Call = Callable[[], object]


@dataclass
class _Plan:
    """The calls to time for one model, and the samples gathered so far."""

    loaded: LoadedModel
    latency: Call
    throughput: Call
    prefill: Call | None
    engine: str | None = None
    compile_s: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    resources: ResourceSampler = field(default_factory=ResourceSampler)  # every round's samples
    peak_rss: float = 0.0
    cuda_peak: float = 0.0


def _texts(n: int) -> list[str]:
    texts = load_texts(STDLIB_DOCS, "eval", limit=None)
    return [texts[i % len(texts)] for i in range(n)]


def _forward(loaded: LoadedModel, batch: int, seq: int) -> Call:
    if loaded.tokenizer is None:
        example = getattr(loaded.model, "example_inputs", None)
        if example is None:
            raise SlimforgeError(f"{loaded.spec} has no tokenizer and no example_inputs().",
                                 "give the module an example_inputs(batch_size) method.")
        inputs = example(batch)
        return lambda: loaded.model(*inputs)
    inputs = tokenize(loaded, _texts(batch), seq, pad_to_max=True)
    return lambda: loaded.model(**inputs)


def _decode(loaded: LoadedModel, batch: int, prompt: int, steps: int) -> Call:
    """A call that prefills `prompt` tokens, then runs `steps` greedy decode steps;
    it records each step's time in `step_ms` (prefill not included)."""
    import time

    ids = tokenize(loaded, _texts(batch), prompt, pad_to_max=True)["input_ids"]
    step_ms: list[float] = []

    def run() -> list[float]:
        step_ms.clear()
        out = loaded.model(input_ids=ids, use_cache=True)
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            out = loaded.model(input_ids=token, past_key_values=out.past_key_values,
                               use_cache=True)
            step_ms.append((time.perf_counter() - start) * 1000.0)
        return step_ms

    return run


def _engine_decode(engine: Engine, prompts: list[list[int]], steps: int) -> Call:
    """A call that prefills `prompts` (one per slot) and takes a first step untimed, then
    times `steps` decode steps of the engine, all sequences together."""
    import time

    params = SamplingParams(max_new_tokens=steps + 2, ignore_eos=True)
    step_ms: list[float] = []

    def run() -> list[float]:
        step_ms.clear()
        for prompt in prompts:
            engine.submit(prompt, params)
        engine.step()
        for _ in range(steps):
            start = time.perf_counter()
            engine.step()
            step_ms.append((time.perf_counter() - start) * 1000.0)
        while engine.busy:
            engine.step()
        return step_ms

    return run


def _engine_plan(loaded: LoadedModel, config: BenchConfig) -> _Plan | None:
    """The causal-LM plan through slimforge's engine, or None where it does not run."""
    if config.engine == "transformers" or \
            not_served_by_engine(loaded.model, loaded.device) is not None:
        return None
    fmt, compiled = format_of(loaded.model), config.engine == "auto"
    longest = max(config.prefill_len, config.latency_seq_len + config.decode_tokens + 2) + 1
    ids = tokenize(loaded, _texts(config.batch_size), config.latency_seq_len,
                   pad_to_max=True)["input_ids"].tolist()
    one = Engine(loaded.model, loaded.tokenizer, fmt, slots=1, max_len=longest,
                 compile=compiled)
    wide = Engine(loaded.model, loaded.tokenizer, fmt, slots=config.batch_size,
                  max_len=config.latency_seq_len + 8, compile=compiled)
    compile_s = sum(filter(None, (one.warmup(), wide.warmup())))
    prefill_ids = tokenize(loaded, _texts(1), config.prefill_len, pad_to_max=True)["input_ids"]
    fallback = one.fallback or wide.fallback
    return _Plan(loaded, _engine_decode(one, ids[:1], config.decode_tokens),
                 _engine_decode(wide, ids, 4), lambda: one.score(prefill_ids[0], last_only=True),
                 engine=f"slimforge {fmt}, " + (f"eager ({fallback})" if fallback else
                                                "compiled"),
                 compile_s=compile_s if not fallback else None)


def _plan(loaded: LoadedModel, config: BenchConfig) -> _Plan:
    if loaded.task == "causal-lm":
        through_engine = _engine_plan(loaded, config)
        if through_engine is not None:
            return through_engine
        prefill = _forward(loaded, 1, config.prefill_len)
        return _Plan(loaded, _decode(loaded, 1, config.latency_seq_len, config.decode_tokens),
                     _decode(loaded, config.batch_size, config.latency_seq_len, 4), prefill,
                     engine="transformers, eager")
    return _Plan(loaded, _forward(loaded, 1, config.latency_seq_len),
                 _forward(loaded, config.batch_size, config.seq_len), None)


def _steps_of(call: Call, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        call()
    out: list[float] = []
    for _ in range(repeats):
        out.extend(call())  # type: ignore[arg-type]
    return out


@torch.inference_mode()
def _measure_round(plan: _Plan, config: BenchConfig, repeats: int, heavy: int,
                   sync: bool) -> None:
    measure.reset_peak_rss()
    if sync:
        torch.cuda.reset_peak_memory_stats()
    causal = plan.loaded.task == "causal-lm"
    gpu = (plan.loaded.device.index or 0) if sync else None
    with ResourceSampler(gpu_index=gpu) as sampler:
        if causal:
            prompts = -(-repeats // config.decode_tokens)  # enough prompts for `repeats`
            lat = _steps_of(plan.latency, min(config.warmup, 1), prompts)
            thr = _steps_of(plan.throughput, 1, heavy)
            pre = measure.time_calls(plan.prefill, 1, heavy, sync)
            plan.samples.setdefault("prefill", []).extend(pre)
        else:
            lat = measure.time_calls(plan.latency, config.warmup, repeats, sync)
            thr = measure.time_calls(plan.throughput, 1, heavy, sync)
    plan.resources.samples.extend(sampler.samples)
    plan.samples.setdefault("latency", []).extend(lat)
    plan.samples.setdefault("throughput", []).extend(thr)
    plan.peak_rss = max(plan.peak_rss, measure.peak_rss_mb())
    if sync:
        plan.cuda_peak = max(plan.cuda_peak, torch.cuda.max_memory_allocated() / 1e6)


def _result(plan: _Plan, config: BenchConfig, threads: int, device: str) -> BenchResult:
    loaded, lat = plan.loaded, plan.samples["latency"]
    thr_ms = measure.percentile(plan.samples["throughput"], 50)
    params, sparsity = measure.parameter_stats(loaded.model)
    causal = loaded.task == "causal-lm"
    result = BenchResult(
        spec=loaded.spec, task=loaded.task,
        p50_ms=measure.percentile(lat, 50), p95_ms=measure.percentile(lat, 95),
        p99_ms=measure.percentile(lat, 99),
        latency_shape=(f"decode step, batch 1, {config.latency_seq_len}-token prompt" if causal
                       else f"batch 1 x {config.latency_seq_len} tokens"),
        throughput_per_s=config.batch_size * 1000.0 / thr_ms,
        throughput_unit="tokens/s" if causal else "items/s",
        throughput_shape=(f"decode, batch {config.batch_size}" if causal
                          else f"batch {config.batch_size} x {config.seq_len} tokens"),
        peak_rss_mb=plan.peak_rss, size_mb=measure.size_on_disk_mb(loaded.model),
        parameters=params, sparsity=sparsity, threads=threads, device=device,
        resources=plan.resources.summary(), latency_samples_ms=[round(x, 4) for x in lat],
    )
    if causal:
        result.engine, result.compile_s = plan.engine, plan.compile_s
        result.decode_tokens_per_s = 1000.0 / (sum(lat) / len(lat))
        result.prefill_tokens_per_s = (config.prefill_len * 1000.0
                                       / measure.percentile(plan.samples["prefill"], 50))
    if device == "cuda":
        result.cuda_peak_mb = plan.cuda_peak
    return result


def _ratios(model: BenchResult, anchor: BenchResult) -> dict[str, float]:
    ratios = {
        "latency_speedup": anchor.p50_ms / model.p50_ms,
        "throughput_ratio": model.throughput_per_s / anchor.throughput_per_s,
        "size_ratio": model.size_mb / anchor.size_mb,
    }
    if model.decode_tokens_per_s and anchor.decode_tokens_per_s:
        ratios["decode_ratio"] = model.decode_tokens_per_s / anchor.decode_tokens_per_s
    return ratios


def benchmark(
    model: str | LoadedModel,
    config: BenchConfig | None = None,
    anchor: str | LoadedModel | None = None,
) -> BenchResult:
    """Measure latency, throughput, peak memory, size and parameters of a model.

    Args:
        model: a spec (see `load_model`) or a loaded model.
        config: shapes, repeats and threads; defaults to `BenchConfig()`.
        anchor: a second model measured in alternating rounds in the same run; the result
            carries its figures and the ratios (`latency_speedup` > 1 means faster).

    Returns:
        The figures; `to_json()` for machines.
    """
    config = config or BenchConfig()
    runtime = setup_runtime(threads=config.threads)
    plans = [_plan(m if isinstance(m, LoadedModel) else load_model(m), config)
             for m in ([model] if anchor is None else [model, anchor])]
    device = plans[0].loaded.device.type  # where the model is, not what the machine has
    sync = device == "cuda"
    rounds = config.rounds if anchor is not None else 1
    per_round = max(1, config.repeats // rounds)
    heavy = max(1, config.throughput_repeats // rounds)
    schedule = [plan for _ in range(rounds) for plan in plans]  # alternate model and anchor
    for plan in track(schedule, "benchmarking"):
        _measure_round(plan, config, per_round, heavy, sync)
    results = [_result(p, config, runtime.threads, device) for p in plans]
    if anchor is not None:
        results[0].anchor = results[1]
        results[0].vs_anchor = _ratios(results[0], results[1])
    return results[0]
