"""What a model is for, and how to run it for that purpose.

Owns: the `Task` names, `LoadedModel` (a model with its tokenizer, task and provenance), and
the inference helpers each task needs: `embed` (mean or CLS pooling, then L2 normalisation,
as sentence-transformers does), `classify` and `tokenize`. Metrics live in `evaluate/`,
timing in `bench/`; both call these helpers so they run the model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from slimforge.errors import SlimforgeError
from slimforge.progress import track

Task = Literal["embedding", "causal-lm", "classification", "custom"]
TASKS: tuple[str, ...] = ("embedding", "causal-lm", "classification", "custom")
Pooling = Literal["mean", "cls"]

AUTO_CLASS = {
    "embedding": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
}


@dataclass
class LoadedModel:
    """A model ready to run, with what is needed to rebuild it from an artifact.

    Attributes:
        model: the module, in eval mode.
        tokenizer: a Hugging Face tokenizer, or None for plain modules.
        task: what the model is for; picks the metric and the inference helper.
        spec: the spec it was loaded from (`builtin:minilm`, a path, a hub id, ...).
        source: where the weights really came from, for the manifest.
        architecture: how to rebuild the empty architecture: `{"kind": "hf", "auto_class":
            ..., }` or `{"kind": "module", "factory": "pkg.mod:fn"}`.
        steps: compression steps applied since the base model, as `{"step": name, ...config}`.
        base_spec: the spec of the uncompressed model, the default fidelity reference.
        pooling: how token states become one embedding (embedding task only).
        notes: what compression decided on the way (e.g. layers kept in float), for reports.
        layers: per-layer figures compression measured, by module name (e.g. `sqnr_db`: the
            layer's output against its float self on calibration text; `alone_sqnr_db`: the
            model's output with only that layer quantized). Saved in the artifact.
    """

    model: torch.nn.Module
    tokenizer: Any
    task: Task
    spec: str
    source: str
    architecture: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    base_spec: str | None = None
    pooling: Pooling = "mean"
    notes: list[str] = field(default_factory=list)
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def derive(self, model: torch.nn.Module, step: dict[str, Any],
               notes: list[str] | None = None,
               layers: dict[str, dict[str, float]] | None = None) -> LoadedModel:
        """A new LoadedModel for `model`, produced from this one by compression `step`;
        `layers` replaces the per-layer figures (they describe the latest step)."""
        return LoadedModel(
            model=model, tokenizer=self.tokenizer, task=self.task, spec=self.spec,
            source=self.source, architecture=self.architecture, steps=[*self.steps, step],
            base_spec=self.base_spec or self.spec, pooling=self.pooling,
            notes=[*self.notes, *(notes or [])], layers=dict(layers or {}),
        )

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (CPU when it has none)."""
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            return tensor.device
        return torch.device("cpu")


def task_for_architectures(architectures: Sequence[str] | None) -> Task:
    """Guess the task from a Hugging Face config's `architectures` list."""
    names = list(architectures or [])
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return "causal-lm"
    if any(name.endswith("ForSequenceClassification") for name in names):
        return "classification"
    return "embedding"


def tokenize(
    loaded: LoadedModel, texts: Sequence[str], max_length: int, pad_to_max: bool = False
) -> dict[str, torch.Tensor]:
    """Tokenize a batch with truncation; padded to the longest text, or to `max_length`."""
    if loaded.tokenizer is None:
        raise SlimforgeError(
            f"{loaded.spec} has no tokenizer, so it cannot take text.",
            "load a Hugging Face model, or give plain modules tensors.",
        )
    batch = loaded.tokenizer(
        list(texts), padding="max_length" if pad_to_max else True, truncation=True,
        max_length=max_length, return_tensors="pt",
    )
    if loaded.task == "causal-lm":  # decoders take no segment ids
        batch.pop("token_type_ids", None)
    return {k: v.to(loaded.device) for k, v in batch.items()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Token states `[batch, seq, dim]` -> one L2-normalised float32 vector per text (summed
    in float32: a bf16 sum over hundreds of tokens would lose the low bits)."""
    hidden = hidden.float()
    if pooling == "cls":
        vectors = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(vectors, p=2, dim=-1)


@torch.inference_mode()
def embed(
    loaded: LoadedModel, texts: Sequence[str], batch_size: int = 32, max_length: int = 128
) -> torch.Tensor:
    """Sentence embeddings `[len(texts), dim]`, L2-normalised, in float32 on the CPU."""
    out = []
    starts = range(0, len(texts), batch_size)
    for start in track(starts, f"embedding {len(texts)} texts"):
        batch = tokenize(loaded, texts[start : start + batch_size], max_length)
        hidden = loaded.model(**batch).last_hidden_state
        out.append(pool(hidden, batch["attention_mask"], loaded.pooling).cpu())
    return torch.cat(out)


@torch.inference_mode()
def classify(loaded: LoadedModel, inputs: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
    """Predicted class ids for texts (with a tokenizer) or feature vectors (plain modules)."""
    preds = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        if loaded.tokenizer is not None:
            logits = loaded.model(**tokenize(loaded, chunk, 128)).logits
        else:
            features = torch.as_tensor(chunk, dtype=torch.float32, device=loaded.device)
            output = loaded.model(features)
            logits = getattr(output, "logits", output)
        preds.append(logits.argmax(-1).cpu())
    return torch.cat(preds)
