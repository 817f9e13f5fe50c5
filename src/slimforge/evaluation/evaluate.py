"""`evaluate(model, data, reference) -> EvalResult`: the quality metric of each task.

Owns: `EvalConfig`, `EvalResult`, `evaluate`. Per task:
- embedding: fidelity against a reference (mean cosine, top-10 neighbour overlap, Spearman of
  pairwise similarities), plus half-paragraph retrieval@1 as a quality figure of its own;
- causal-lm: perplexity over held-out text in strided windows;
- classification: accuracy and macro-F1 over labelled records; with `attack`, accuracy under
  FGSM/PGD too (`trust/attacks.py`); with `group_field`, per-group fairness figures
  (`trust/fairness.py`), and their change against the reference (an artifact's base model
  by default), since compression can cost small groups first.
The reference of an embedding model defaults to the uncompressed model it came from (an
artifact's `base_spec`); a plain model with no reference gets retrieval only, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimforge.data.sources import STDLIB_DOCS, describe, load_records, load_texts
from slimforge.errors import DataError, SlimforgeError
from slimforge.evaluation import metrics
from slimforge.models.load import load_model
from slimforge.models.tasks import LoadedModel, classify, embed
from slimforge.progress import track
from slimforge.runtime import setup_runtime
from slimforge.trust.attacks import AttackConfig


class EvalConfig(BaseModel):
    """How much data to evaluate on, and in what shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int | None = Field(500, ge=2)
    """Most texts (embedding) or records (classification) to evaluate on."""
    max_tokens: int = Field(8192, ge=16)
    """Causal LMs: held-out tokens scored for perplexity."""
    window: int = Field(1024, ge=8)
    """Causal LMs: tokens of context per forward pass."""
    stride: int = Field(512, ge=1)
    """Causal LMs: new tokens scored per window (the rest is context)."""
    batch_size: int = Field(32, ge=1)
    """Texts per forward pass (embedding, classification)."""
    max_length: int = Field(128, ge=8)
    """Tokens per text (embedding, classification); longer texts are truncated."""
    text_field: str = "text"
    """Column holding the text in local data files."""
    label_field: str = "label"
    """Column holding the label in local data files (classification)."""
    threads: int | None = None
    """Intra-op threads; None uses every core this process may use."""
    attack: AttackConfig | None = None
    """Classification: also measure accuracy under this adversarial attack."""
    group_field: str | None = None
    """Classification: the column holding a sensitive attribute, for fairness figures."""
    positive_label: int = 1
    """Classification fairness: the class whose selection rate and error rates are compared."""


@dataclass
class EvalResult:
    """What an evaluation measured. `outputs` (embeddings) can serve as a later reference."""

    task: str
    spec: str
    metrics: dict[str, float]
    samples: int
    data: dict[str, Any]
    reference: str | None = None
    notes: list[str] = field(default_factory=list)
    outputs: torch.Tensor | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict)
    """Structured figures beyond single numbers (`fairness`, `attack`)."""
    per_example: dict[str, list[float]] = field(default_factory=dict, repr=False)
    """What each example (text, record, or perplexity window) scored, for intervals:
    `cosine` (embedding, with a reference), `nll` and `tokens` (causal LM), `correct`
    (classification). Not in `to_json()`."""

    def to_json(self) -> dict[str, Any]:
        """The metrics at the top level, plus provenance; `outputs` are left out."""
        return {**self.metrics, "task": self.task, "spec": self.spec, "samples": self.samples,
                "data": self.data, "reference": self.reference, "notes": self.notes,
                **self.details}


def _as_loaded(model: str | LoadedModel) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def _halves(texts: list[str]) -> tuple[list[str], list[str]]:
    split = [t.split() for t in texts]
    return ([" ".join(w[: len(w) // 2]) for w in split],
            [" ".join(w[len(w) // 2 :]) for w in split])


def _embedding(loaded: LoadedModel, data: str, reference: Any, config: EvalConfig) -> EvalResult:
    texts = load_texts(data, "eval", config.limit, config.text_field)
    if len(texts) < 2:
        raise DataError(f"{data} gave {len(texts)} text; embedding fidelity needs two or more.",
                        "use more data or a larger limit.")
    run = {"batch_size": config.batch_size, "max_length": config.max_length}
    emb = embed(loaded, texts, **run)
    firsts, seconds = _halves(texts)
    values = {"retrieval_at_1": metrics.retrieval_at_1(embed(loaded, firsts, **run),
                                                       embed(loaded, seconds, **run))}
    notes, ref_name, per_example = [], None, {}
    if reference is None and loaded.base_spec:
        reference = loaded.base_spec
        notes.append(f"reference: the base model {loaded.base_spec}")
    if isinstance(reference, EvalResult):
        ref_emb, ref_name = reference.outputs, reference.spec
    elif reference is not None:
        ref_loaded = _as_loaded(reference)
        ref_emb, ref_name = embed(ref_loaded, texts, **run), ref_loaded.spec
    else:
        ref_emb = None
        notes.append("no reference: fidelity needs --reference (the model to compare with)")
    if ref_emb is not None:
        if ref_emb.shape != emb.shape:
            raise SlimforgeError(f"Reference outputs {tuple(ref_emb.shape)} do not match the "
                                 f"model's {tuple(emb.shape)}.", "evaluate both on the same data.")
        per_example["cosine"] = metrics.cosines(emb, ref_emb).tolist()
        values.update(cosine_mean=metrics.cosine_mean(emb, ref_emb),
                      knn_overlap_at_10=metrics.knn_overlap(emb, ref_emb, 10),
                      spearman=metrics.pairwise_spearman(emb, ref_emb))
    return EvalResult("embedding", loaded.spec, values, len(texts), describe(data), ref_name,
                      notes, outputs=emb, per_example=per_example)


@torch.inference_mode()
def window_losses(ids: torch.Tensor, logits_of: Callable[[torch.Tensor], torch.Tensor],
                  window: int, stride: int) -> tuple[list[float], list[float]]:
    """Summed negative log-likelihood and token count per strided window of `ids`, each
    token scored once (later windows score only tokens no earlier one did, with the rest as
    context). `logits_of` maps a 1-D chunk of ids to its logits `[len, vocab]`, so any engine
    (transformers, slimforge.generate, ...) is scored by the same rule."""
    nll, scored, end = [], [], 0
    for begin in track(range(0, len(ids) - 1, stride), "perplexity windows"):
        stop = min(begin + window, len(ids))
        chunk = ids[begin:stop]
        logits = logits_of(chunk)[:-1].float()
        losses = torch.nn.functional.cross_entropy(logits, chunk[1:].to(logits.device),
                                                   reduction="none")
        fresh = losses[-(stop - max(end, begin + 1)) :]  # tokens no earlier window scored
        nll.append(float(fresh.sum()))
        scored.append(float(len(fresh)))
        end = stop
        if stop == len(ids):
            break
    return nll, scored


def _causal_lm(loaded: LoadedModel, data: str, config: EvalConfig) -> EvalResult:
    if config.stride > config.window:
        raise SlimforgeError(f"stride {config.stride} is larger than window {config.window}.",
                             "use a stride at most the window (half the window is usual).")
    text = "\n\n".join(load_texts(data, "eval", None, config.text_field))
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0][: config.max_tokens]
    if len(ids) < 2:
        raise DataError(f"{data} gave fewer than 2 tokens.", "use more text.")
    def logits_of(chunk: torch.Tensor) -> torch.Tensor:
        return loaded.model(input_ids=chunk[None].to(loaded.device)).logits[0]

    nll, scored = window_losses(ids, logits_of, config.window, config.stride)
    value = metrics.perplexity(sum(nll), int(sum(scored)))
    if not math.isfinite(value):
        raise SlimforgeError(f"Perplexity of {loaded.spec} is {value}: the model outputs "
                             "non-finite logits.", "check the model's weights and dtype.")
    return EvalResult("causal-lm", loaded.spec, {"perplexity": value, "tokens": sum(scored)},
                      int(sum(scored)), describe(data),
                      notes=[f"window {config.window}, stride {config.stride}"],
                      per_example={"nll": nll, "tokens": scored})


def _label_ids(loaded: LoadedModel, labels: list[Any]) -> torch.Tensor:
    mapping = getattr(getattr(loaded.model, "config", None), "label2id", None) or {}
    try:
        return torch.tensor([mapping[x] if x in mapping else int(x) for x in labels])
    except (TypeError, ValueError):
        raise DataError(f"Labels must be class ids or names the model knows; got {labels[:3]}.",
                        "map labels to integers 0..C-1.") from None


def _classification(loaded: LoadedModel, data: str, reference: Any,
                    config: EvalConfig) -> EvalResult:
    if data == STDLIB_DOCS:
        raise DataError(f"{data} has no labels.", "pass a labelled .jsonl/.csv/.parquet file.")
    records = load_records(data, config.limit)
    field_name = config.text_field if loaded.tokenizer is not None else "features"
    wanted = (field_name, config.label_field, *([config.group_field] if config.group_field
                                                  else []))
    missing = [f for f in wanted if f not in records[0]]
    if missing:
        raise DataError(f"{data} records lack {missing} (fields: {list(records[0])}).",
                        "name the columns with text_field=, label_field= and group_field=.")
    preds = _predictions(loaded, records, config)
    labels = _label_ids(loaded, [r[config.label_field] for r in records])
    values = {"accuracy": metrics.accuracy(preds, labels),
              "macro_f1": metrics.macro_f1(preds, labels)}
    result = EvalResult("classification", loaded.spec, values, len(records), describe(data),
                        per_example={"correct": (preds == labels).float().tolist()})
    if config.attack is not None:
        _robustness(loaded, records, labels, config, result)
    if config.group_field is not None:
        _fairness(loaded, records, labels, preds, reference, config, result)
    return result


def _predictions(loaded: LoadedModel, records: list[dict[str, Any]],
                 config: EvalConfig) -> torch.Tensor:
    """Class ids for the records' texts (models with a tokenizer) or features."""
    field_name = config.text_field if loaded.tokenizer is not None else "features"
    return classify(loaded, [r[field_name] for r in records], config.batch_size)


def _robustness(loaded: LoadedModel, records: list[dict[str, Any]], labels: torch.Tensor,
                config: EvalConfig, result: EvalResult) -> None:
    from slimforge.train.objectives import Classify
    from slimforge.trust.attacks import robust_accuracy

    attack = config.attack
    labelled = [{**r, config.label_field: int(y)} for r, y in zip(records, labels, strict=False)]
    objective = Classify(loaded.device, loaded.tokenizer, config.text_field,
                         label_field=config.label_field, max_length=config.max_length)
    figures = robust_accuracy(loaded.model, objective, labelled, attack, config.batch_size)
    result.metrics["robust_accuracy"] = figures["robust_accuracy"]
    result.details["attack"] = attack.model_dump()
    space = "input" if loaded.tokenizer is None else "word-embedding"
    steps = "1 step" if attack.method == "fgsm" else f"{attack.steps} steps"
    result.notes.append(f"{attack.method.upper()} in {space} space, L-inf eps {attack.eps}, "
                        f"{steps}: accuracy {figures['clean_accuracy']:.4f} clean, "
                        f"{figures['robust_accuracy']:.4f} under attack")


def _fairness(loaded: LoadedModel, records: list[dict[str, Any]],
              labels: torch.Tensor, preds: torch.Tensor, reference: Any, config: EvalConfig,
              result: EvalResult) -> None:
    from slimforge.trust.fairness import fairness_deltas, group_fairness

    groups = [r[config.group_field] for r in records]
    report = group_fairness(labels.tolist(), preds.tolist(), groups, config.positive_label)
    result.metrics.update(
        demographic_parity_difference=report["demographic_parity_difference"],
        equalized_odds_difference=report["equalized_odds_difference"])
    result.details["fairness"] = report
    if reference is None and loaded.base_spec:
        reference = loaded.base_spec
    if isinstance(reference, EvalResult):  # measured earlier on the same records
        if "fairness" in reference.details:
            result.reference = reference.spec
            result.details["fairness_deltas"] = fairness_deltas(report,
                                                                reference.details["fairness"])
        return
    if reference is None:
        return
    ref_loaded = _as_loaded(reference)
    ref_report = group_fairness(labels.tolist(), _predictions(ref_loaded, records, config).tolist(),
                                groups, config.positive_label)
    result.reference = ref_loaded.spec
    result.details["fairness_reference"] = ref_report
    result.details["fairness_deltas"] = fairness_deltas(report, ref_report)


def evaluate(
    model: str | LoadedModel,
    data: str = STDLIB_DOCS,
    reference: str | LoadedModel | EvalResult | None = None,
    config: EvalConfig | None = None,
) -> EvalResult:
    """Measure a model's quality with its task's metric.

    Args:
        model: a spec (see `load_model`) or a loaded model.
        data: `builtin:stdlib-docs` (held-out split) or a local data file.
        reference: the model (or, for embeddings, an earlier EvalResult) to compare with;
            defaults to the model's uncompressed base when it has one. Embeddings: fidelity;
            classification with `group_field`: per-group fairness deltas.
        config: data limits and shapes; defaults to `EvalConfig()`.

    Returns:
        The metrics, sample count and data provenance.

    Raises:
        SlimforgeError: bad data, a task without a metric, or non-finite results.
    """
    config = config or EvalConfig()
    setup_runtime(threads=config.threads)
    loaded = _as_loaded(model)
    if loaded.task == "embedding":
        return _embedding(loaded, data, reference, config)
    if loaded.task == "causal-lm":
        return _causal_lm(loaded, data, config)
    if loaded.task == "classification":
        return _classification(loaded, data, reference, config)
    raise SlimforgeError(f"Task {loaded.task!r} has no built-in metric.",
                         "load it with task='embedding', 'causal-lm' or 'classification'.")
