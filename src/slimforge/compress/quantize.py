"""Quantization steps: `quantize(model, QuantConfig(...)) -> new model`.

Owns: `QuantConfig`, `DynamicInt8Linear`, `Int8Embedding` and `quantize`. Dynamic int8 on every
`nn.Linear`: weights stored as int8 with symmetric per-output-channel (or per-tensor) scales;
activations quantized on the fly per batch by PyTorch's int8 kernels (oneDNN on AMX CPUs for
large calls, fbgemm elsewhere; `QuantConfig.kernel`). Embedding tables
can be stored as int8 too (one scale per row, weight-only): they dominate an encoder's size.
Every module's state is plain tensors, so it saves to safetensors and reloads without pickles;
the kernel's packed form is rebuilt lazily. On CUDA the modules run dequantized (correct, not
faster).

Activation range: the x86 kernel multiplies uint8 activations by int8 weights in pairs into
int16 on CPUs without VNNI, which can saturate; 7-bit activations ("reduced") avoid that at a
real cost in accuracy (all-MiniLM-L6-v2: mean cosine 0.976 reduced vs 0.993 full). With VNNI
the products accumulate in int32 and full 8-bit activations are exact, so "auto" uses them
there. The choice is stored in each module, and a machine without VNNI falls back to reduced.

Try it:
    >>> from slimforge.models.tiny import tiny_bert
    >>> q = quantize(tiny_bert(), QuantConfig())
    >>> type(q.encoder.layer[0].output.dense).__name__
    'DynamicInt8Linear'
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from slimforge.compress import StepConfig, register_step
from slimforge.compress.codes import (
    KernelCache,
    fill_int8_linear,
    init_int8_linear,
    int8_symmetric,
    torch_qweight,
)
from slimforge.compress.fp8 import Float8Linear
from slimforge.compress.static_int8 import StaticInt8Conv2d, StaticInt8Linear, calibrate_static
from slimforge.compress.torchao_int8 import TorchaoInt8Linear
from slimforge.compress.weight_only import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from slimforge.errors import SlimforgeError


class QuantConfig(StepConfig):
    """How to quantize a model."""

    method: Literal["dynamic-int8", "static-int8", "torchao-int8-dynamic", "weight-only-int8",
                    "weight-only-int4", "fp8"] = "dynamic-int8"
    """dynamic-int8: int8 weights and per-batch int8 activations by PyTorch's kernels
    (compute-bound encoders); static-int8: int8 activations over ranges fixed by calibration,
    for Linear and Conv2d layers; torchao-int8-dynamic: the same through torchao, with per-token
    activation scales; weight-only-int8/-int4: only weights shrink (memory-bound LLM decode,
    or bf16 compute on AMX CPUs); fp8: float8 e4m3 weights and per-token activations, fast on
    CUDA GPUs of compute capability 8.9+ (Hopper), emulated elsewhere."""
    granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    """Weight scales: one per output channel (keeps MiniLM fidelity) or one per matrix."""
    skip: list[str] = Field(default_factory=list)
    """Module names (glob patterns, e.g. `lm_head` or `*.attention.*`) to keep in float."""
    only: list[str] = Field(default_factory=list)
    """Module names (glob patterns) to quantize; empty: every eligible module."""
    keep_float: int = Field(0, ge=0)
    """Mixed precision: keep the N layers whose quantization alone hurts the output most
    (ranked on calibration text) in float. Resolved into `skip` when the step runs."""
    embeddings: bool = True
    """Also store `nn.Embedding` tables as int8, one scale per row (weight-only)."""
    activation_range: Literal["auto", "full", "reduced"] = "auto"
    """dynamic-int8: 8-bit (full) or 7-bit (reduced) activations; auto: full with VNNI."""
    activation_qparams: dict[str, list[float]] = Field(default_factory=dict)
    """static-int8: per layer, the input's int8 scale and zero point (and the output's, for
    Conv2d). Left empty, the step's `prepare` hook calibrates them on the calibration text
    and records them here, so a replay needs no data; `calibrate_static` does it for any
    model and inputs."""
    kernel: Literal["auto", "fbgemm", "onednn"] = "auto"
    """dynamic-int8: PyTorch's int8 GEMM. auto: where the CPU has AMX int8 and activations
    are 8-bit, oneDNN (AMX tiles) for calls of `ONEDNN_FROM_ROWS` rows or more and fbgemm
    for fewer (faster at batch 1); fbgemm everywhere else. Stored in the model: the kernels
    round activations slightly differently."""
    group_size: Literal[32, 64, 128, 256] = 32
    """weight-only-int4: input columns sharing one scale and zero."""
    dense_cache: bool = False
    """weight-only: keep each layer's dequantized weight in memory for calls of 16 rows or
    more (batched encoders, prefill) instead of rebuilding it per call. Faster at small
    batches (all-MiniLM-L6-v2, batch 1: see docs/benchmarks.md); costs 2 bytes per weight
    of RAM in bfloat16, while the saved artifact stays int8/int4."""
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of activations and float layers; auto: bfloat16 for weight-only methods where
    the CPU has native bf16 (their kernels need it to be fast), else float32."""


    @model_validator(mode="after")
    def _options_fit_the_method(self) -> QuantConfig:
        weight_only = self.method.startswith("weight-only")
        if self.dense_cache and not weight_only:
            raise ValueError("dense_cache applies to the weight-only methods only")
        fixed_channel = weight_only or self.method in ("fp8", "static-int8")
        if self.granularity != "per-channel" and fixed_channel:
            raise ValueError(f"{self.method} scales are per channel (int8) or per group "
                             "(int4); drop granularity")
        if self.kernel != "auto" and self.method != "dynamic-int8":
            raise ValueError("kernel applies to dynamic-int8 only")
        if self.kernel == "onednn" and self.activation_range == "reduced":
            raise ValueError("the onednn kernel takes 8-bit activations; use fbgemm for "
                             "reduced (7-bit) ones")
        if self.activation_range != "auto" and self.method not in ("dynamic-int8",
                                                                   "static-int8"):
            raise ValueError(f"activation_range applies to dynamic-int8 and static-int8 only; "
                             f"{self.method} keeps activations in float or quantizes them per "
                             "token")
        if self.activation_qparams and self.method != "static-int8":
            raise ValueError("activation_qparams applies to static-int8 only")
        return self


def cpu_flags() -> list[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        return Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (int8 dot products accumulated in int32)."""
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def cpu_has_amx_int8() -> bool:
    """Whether this CPU has AMX int8 tiles (Sapphire Rapids and later Xeons)."""
    return "amx_int8" in cpu_flags()


ONEDNN_FROM_ROWS = 64
"""Rows from which `kernel: auto` uses oneDNN on AMX CPUs. Measured per MiniLM layer on a
2-core Xeon with AMX (benchmarks/int8_kernels.py, docs/benchmarks.md): oneDNN 1.6-2.0x
fbgemm at 4,096 rows and 1.3-1.9x at 128, but 0.78-1.22x at 32; in the whole model at batch 1
(32 rows) fbgemm gave 4.3 ms against oneDNN's 5.7."""


def int8_engine(full_range: bool) -> str:
    """The PyTorch quantized engine `kernel: auto` picks for large calls on this CPU.

    oneDNN runs int8 GEMMs on AMX tiles; it takes 8-bit activations only, so 7-bit ones and
    CPUs without AMX keep fbgemm.
    """
    return "onednn" if full_range and cpu_has_amx_int8() else "fbgemm"


_ENGINE_LOCK = threading.Lock()


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    # The engine is process-global and read when packing; the packed weight keeps its kernel.
    with _ENGINE_LOCK:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = name
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


def compute_dtype(config: QuantConfig) -> torch.dtype:
    """The dtype a model quantized with `config` computes in on this machine."""
    if config.compute_dtype == "auto":
        fast_bf16 = config.method.startswith("weight-only") and cpu_has_bf16()
        return torch.bfloat16 if fast_bf16 else torch.float32
    return getattr(torch, config.compute_dtype)


def _full_range(config: QuantConfig) -> bool:
    return config.activation_range == "full" or (
        config.activation_range == "auto" and cpu_has_vnni())


def _onednn_from_rows(config: QuantConfig) -> int:
    """0: fbgemm always; N: oneDNN for calls of N rows or more, fbgemm below."""
    if config.kernel == "auto":
        return ONEDNN_FROM_ROWS if int8_engine(_full_range(config)) == "onednn" else 0
    return 1 if config.kernel == "onednn" else 0


class DynamicInt8Linear(KernelCache):
    """A Linear with int8 weights and dynamically quantized int8 activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool, channels: int) -> None:
        super().__init__()
        init_int8_linear(self, in_features, out_features, bias, channels)
        self.register_buffer("full_range", torch.tensor(False))
        # 0: fbgemm for every call; N: oneDNN for calls of N rows or more (QuantConfig.kernel)
        self.register_buffer("onednn_from_rows", torch.tensor(0))

    @classmethod
    def from_float(
        cls, linear: nn.Linear, per_channel: bool, full_range: bool = False,
        onednn_from_rows: int = 0,
    ) -> DynamicInt8Linear:
        """Quantize a float Linear's weight symmetrically to int8 ([-127, 127])."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     linear.out_features if per_channel else 1)
        fill_int8_linear(module, linear, per_channel)
        module.full_range.fill_(full_range)
        module.onednn_from_rows.fill_(onednn_from_rows)
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this module computes with (int8 times scale)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _engine(self, rows: int) -> str:
        start = int(self.onednn_from_rows)
        return "onednn" if start and rows >= start else "fbgemm"

    def _reduce_range(self) -> bool:
        return not (bool(self.full_range) and cpu_has_vnni())  # see the module docstring

    def _pack(self, engine: str) -> Any:
        qweight = torch_qweight(self.weight_int8, self.weight_scale)
        bias = None if self.bias is None else self.bias.float().cpu()
        with _quantized_engine(engine):
            return torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            weight = self.dequantized_weight().to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, weight, bias)
        engine = self._engine(x.numel() // self.in_features)
        packed = self.cached(engine, lambda: self._pack(engine))
        out = torch.ops.quantized.linear_dynamic(x.float(), packed, self._reduce_range())
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        kind = "per-channel" if len(self.weight_scale) > 1 else "per-tensor"
        bits = "8-bit" if bool(self.full_range) else "7-bit"
        start = int(self.onednn_from_rows)
        kernel = ("fbgemm" if not start else "onednn" if start == 1
                  else f"onednn from {start} rows, fbgemm below")
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                f"{bits} activations, {kernel} kernel")


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 with one scale per row; rows are dequantized on lookup."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        table = torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        self.register_buffer("weight_int8", table)
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> Int8Embedding:
        """Quantize each row symmetrically to int8 ([-127, 127])."""
        codes, scale = int8_symmetric(embedding.weight)
        module = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        module.weight_int8.copy_(codes)
        module.weight_scale.copy_(scale)
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table, for code that reads `embedding.weight` (it is a copy)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale  # its dtype is the model's compute dtype
        rows = nn.functional.embedding(ids, self.weight_int8).to(scale.dtype)
        return rows * nn.functional.embedding(ids, scale[:, None])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _targets(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Module]]:
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
    if config.method == "static-int8":
        kinds += (nn.Conv2d,)
    if config.embeddings:
        kinds += (nn.Embedding,)
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in kinds and not _matches(name, config.skip)
        and (not config.only or _matches(name, config.only))
    ]


def quantized_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Names of the modules `quantize(model, config)` would replace."""
    return [name for name, _ in _targets(model, config)]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _static(name: str, module: nn.Module, config: QuantConfig) -> nn.Module:
    qparams = config.activation_qparams.get(name)
    if qparams is None:
        raise SlimforgeError(
            f"static-int8 has no calibrated activation range for {name}.",
            "quantize through a recipe or apply_step (they calibrate), or pass "
            "activation_qparams from slimforge.compress.static_int8.calibrate_static.")
    layer = StaticInt8Conv2d if isinstance(module, nn.Conv2d) else StaticInt8Linear
    return layer.from_float(module, qparams, _full_range(config))


def _quantized(name: str, module: nn.Module, config: QuantConfig) -> nn.Module:
    if isinstance(module, nn.Embedding):
        return Int8Embedding.from_float(module)
    if config.method == "static-int8":
        return _static(name, module, config)
    if config.method.startswith("weight-only"):
        layer = (WeightOnlyInt8Linear.from_float(module) if config.method == "weight-only-int8"
                 else WeightOnlyInt4Linear.from_float(module, config.group_size))
        layer.keep_dense.fill_(config.dense_cache)
        return layer
    if config.method == "fp8":
        return Float8Linear.from_float(module)
    per_channel = config.granularity == "per-channel"
    if config.method == "torchao-int8-dynamic":
        return TorchaoInt8Linear.from_float(module, per_channel)
    return DynamicInt8Linear.from_float(module, per_channel, _full_range(config),
                                        _onednn_from_rows(config))


def _placeholder(name: str, module: nn.Module, config: QuantConfig) -> nn.Module:
    if isinstance(module, nn.Embedding):
        return Int8Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx)
    if isinstance(module, nn.Conv2d):
        return StaticInt8Conv2d(module)
    shape = (module.in_features, module.out_features, module.bias is not None)
    if config.method == "weight-only-int8":
        return WeightOnlyInt8Linear(*shape)
    if config.method == "weight-only-int4":
        return WeightOnlyInt4Linear(*shape, config.group_size)
    if config.method == "fp8":
        return Float8Linear(*shape)
    if config.method == "static-int8":
        return StaticInt8Linear(*shape)
    channels = module.out_features if config.granularity == "per-channel" else 1
    if config.method == "torchao-int8-dynamic":
        return TorchaoInt8Linear(*shape, channels)
    return DynamicInt8Linear(*shape, channels)


def _shape_rule(config: QuantConfig) -> tuple[Any, str, str] | None:
    """(does a Linear fit, what the kernel needs, the fix) for methods with shape limits."""
    if config.method == "fp8":  # the GPU's fp8 GEMM works in tiles of 16
        return (lambda m: m.in_features % 16 == 0 and m.out_features % 16 == 0,
                "in_features and out_features must be multiples of 16", "add them to `skip`")
    if config.method == "weight-only-int4":  # the CPU int4 kernel: 16-row tiles, whole groups
        return (lambda m: m.in_features % config.group_size == 0 and m.out_features % 16 == 0,
                "in_features must be a multiple of group_size and out_features a multiple "
                "of 16", "use a group_size that divides their in_features, or add them to "
                "`skip`")
    return None


def _check_shapes(targets: list[tuple[str, nn.Module]], config: QuantConfig) -> None:
    rule = _shape_rule(config)
    if rule is None:
        return
    fits, need, fix = rule
    odd = [name for name, m in targets if isinstance(m, nn.Linear) and not fits(m)]
    if odd:
        group = f" with group_size {config.group_size}" if "int4" in config.method else ""
        raise SlimforgeError(
            f"{config.method}{group} cannot pack {', '.join(odd[:5])}"
            f"{' ...' if len(odd) > 5 else ''}: {need}.", f"{fix}.")


def _replace_modules(model: nn.Module, config: QuantConfig, with_values: bool) -> nn.Module:
    build = _quantized if with_values else _placeholder
    targets = _targets(model, config)
    _check_shapes(targets, config)
    for name, module in targets:
        _swap(model, name, build(name, module, config))
    return model.to(compute_dtype(config))


def _restructure(model: nn.Module, config: QuantConfig) -> nn.Module:
    return _replace_modules(model, config, with_values=False)


def _prepare(loaded: Any, config: QuantConfig, calibration: Any) -> Any:
    # Imported here: sensitivity builds on quantize, so a top-level import would be circular.
    from slimforge.compress.sensitivity import keep_sensitive_in_float
    from slimforge.models.tasks import tokenize

    if config.method == "static-int8" and not config.activation_qparams:
        texts = list(calibration)
        batches = (tokenize(loaded, texts[i:i + 8], 128) for i in range(0, len(texts), 8))
        layers = [name for name, m in _targets(loaded.model, config)
                  if not isinstance(m, nn.Embedding)]
        qparams = calibrate_static(loaded.model, layers, batches, _full_range(config))
        config = config.model_copy(update={"activation_qparams": qparams})
    return keep_sensitive_in_float(loaded, config, calibration)


def _inspect(loaded: Any, compressed: nn.Module, calibration: Any) -> dict[str, dict[str, float]]:
    from slimforge.compress.sensitivity import layer_sqnr

    return layer_sqnr(loaded, compressed, calibration)


@register_step("quantize", QuantConfig, restructure=_restructure, prepare=_prepare,
               inspect=_inspect, final=True)
def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Return a quantized copy of `model`; the input is left untouched.

    Args:
        model: any module; every `nn.Linear` (and, with `config.embeddings`, every
            `nn.Embedding`) that matches `config.only` (when given) and not `config.skip`
            is replaced.
        config: method, weight-scale granularity, activation range, group size, compute
            dtype and the modules to quantize or skip. `keep_float` is not read here: the
            step's `prepare` hook resolves it into `skip` before this runs.

    Returns:
        A new model with quantized layers in place of float ones, in `compute_dtype(config)`.

    Raises:
        SlimforgeError: int4 on a layer whose inputs are not a multiple of `group_size` or
            whose outputs are not a multiple of 16.
    """
    return _replace_modules(copy.deepcopy(model).eval(), config, with_values=True)
