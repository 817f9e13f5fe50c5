"""ONNX export and the ONNX Runtime backend: `onnx` step -> an `OrtModule`.

Owns: `OnnxConfig`, `OrtModule`, `to_onnx`. The step exports a Hugging Face encoder with the
legacy TorchScript exporter and eager attention (ONNX Runtime's BERT fusions only recognise
that graph), runs ONNX Runtime's transformer optimizer (fused attention, skip-layernorm,
GELU), and optionally quantizes the fused graph to dynamic int8 with per-channel weight
scales. The result is an `nn.Module` wrapping an `InferenceSession`, so `evaluate`, `bench`,
run folders and `load_model` take it like any other model; its saved form is `model.onnx`.
onnx and onnxruntime are imported only here, inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from slimforge.compress import StepConfig, register_step
from slimforge.errors import SlimforgeError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxConfig(StepConfig):
    """How to export and what ONNX Runtime does to the graph."""

    quantize: Literal["none", "dynamic-int8"] = "dynamic-int8"
    """none: the fused fp32 graph; dynamic-int8: int8 weights and per-batch activations."""
    per_channel: bool = True
    """dynamic-int8: one weight scale per output channel (keeps fidelity) or per matrix."""
    optimize: bool = True
    """Run ONNX Runtime's transformer optimizer (operator fusion) before quantizing."""
    opset: int = Field(17, ge=14)
    """ONNX opset of the export."""


class OrtModule(nn.Module):
    """An ONNX Runtime session behind a Hugging Face-style `forward`.

    The session's intra-op thread count follows `torch.set_num_threads` (or `threads`, when
    given): it is rebuilt when the two differ at a call. A server that runs one batch per
    core (`slimforge serve`) therefore gets one single-threaded session per worker's share
    instead of two thread pools of every core fighting for the same cores.
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None) -> None:
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.fixed_threads = threads
        self._lock = threading.Lock()
        self.session = self._session(threads or torch.get_num_threads())
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(self.onnx_bytes, options,
                                       providers=["CPUExecutionProvider"])
        self.threads = threads
        return session

    def _current(self) -> Any:
        wanted = self.fixed_threads or torch.get_num_threads()
        if wanted != self.threads:
            with self._lock:
                if wanted != self.threads:
                    self.session = self._session(wanted)
        return self.session

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: given[name].cpu().numpy() for name in self.input_names}
        (hidden,) = self._current().run(["last_hidden_state"], feeds)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModule:
        return OrtModule(self.onnx_bytes, self.fixed_threads)

    def stored_values(self) -> int:
        """Values held in the graph's initializers (the ONNX form of parameters)."""
        import onnx

        graph = onnx.load_from_string(self.onnx_bytes).graph
        return sum(math.prod(t.dims) for t in graph.initializer)

    def extra_repr(self) -> str:
        return f"onnx={len(self.onnx_bytes) / 1e6:.1f} MB, inputs={self.input_names}"


class _ByKeyword(nn.Module):
    """Calls an HF encoder by keyword: its positional order differs between versions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _export(model: nn.Module, path: Path, opset: int) -> None:
    model = copy.deepcopy(model).float().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # fusions match the eager attention graph
    ids = torch.ones(1, 8, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    # The legacy exporter is deprecated upstream, but ORT's BERT fusions match only its graph.
    # The tracer also flags the mask-padding branch of transformers' masking code: it is
    # constant for us (the mask is always as long as the sequence), so the warning is noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(_ByKeyword(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                          str(path),
                          input_names=list(INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)


def _optimize(src: Path, dst: Path, config: Any) -> None:
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(str(src), model_type="bert",
                                     num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size, opt_level=1)
    fused.save_model_to_file(str(dst))


def _quantize(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = src.with_name("prepared.onnx")
    # Symbolic shape inference knows the fused com.microsoft operators; plain ONNX shape
    # inference does not, and the quantizer then cannot type their outputs.
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8,
                     per_channel=per_channel)


def to_onnx(model: nn.Module, config: OnnxConfig) -> bytes:
    """The ONNX bytes of `model` after export, fusion and (optionally) int8 quantization."""
    hf_config = getattr(model, "config", None)
    if hf_config is None or getattr(hf_config, "model_type", "") not in {"bert", "roberta",
                                                                         "distilbert"}:
        raise SlimforgeError("The onnx step supports BERT-family encoders (embedding task) "
                             "for now.", "use the quantize step for other models.")
    # The exporter and ORT's optimizer print progress; stdout stays for results.
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        work = Path(folder)
        current = work / "exported.onnx"
        _export(model, current, config.opset)
        if config.optimize:
            _optimize(current, work / "fused.onnx", hf_config)
            current = work / "fused.onnx"
        if config.quantize == "dynamic-int8":
            _quantize(current, work / "int8.onnx", config.per_channel)
            current = work / "int8.onnx"
        return current.read_bytes()


def _restructure(model: nn.Module, config: OnnxConfig) -> nn.Module:
    raise SlimforgeError("An onnx artifact is rebuilt from its model.onnx, not replayed.",
                         "load the run folder with load_model; it reads model.onnx.")


@register_step("onnx", OnnxConfig, restructure=_restructure, tasks=("embedding",),
               final=True)
def onnx_export(model: nn.Module, config: OnnxConfig) -> nn.Module:
    """Return an `OrtModule` running `model` through ONNX Runtime; the input is untouched.

    Args:
        model: a Hugging Face BERT-family encoder.
        config: fusion and quantization choices.

    Returns:
        A module whose forward runs the ONNX Runtime session.

    Raises:
        SlimforgeError: a model family the exporter path does not cover.
    """
    return OrtModule(to_onnx(model, config))
