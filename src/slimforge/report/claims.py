"""The report's claims check: figures commonly promised for each technique, beside what this
run measured for the candidates that used that technique alone.

Owns: `CLAIMS`, `claims`. A claim is checked only on single-step rows (candidates and the
peer), so the measured figure belongs to that one technique. Figures come in as result rows;
nothing here measures anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

INT8 = {"dynamic-int8", "static-int8", "torchao-int8-dynamic", "weight-only-int8"}


def _is_int8(step: dict[str, Any]) -> bool:
    return ((step["step"] == "quantize" and step.get("method") in INT8)
            or (step["step"] == "onnx" and step.get("quantize") == "dynamic-int8"))


def _is_int4(step: dict[str, Any]) -> bool:
    return step["step"] == "quantize" and step.get("method") == "weight-only-int4"


def _is_sparse(step: dict[str, Any]) -> bool:
    return step["step"] == "prune"


def _is_structured(step: dict[str, Any]) -> bool:
    return step["step"] == "prune_structured"


def _size_cut(row: Row, base: Row) -> tuple[float, str]:
    cut = 1 - row["size_mb"] / base["size_mb"]
    return cut, f"size -{cut:.0%} ({base['size_mb']:.1f} -> {row['size_mb']:.1f} MB)"


def _speed(row: Row, _base: Row) -> tuple[float, str]:
    ratios = row.get("vs_baseline", {})
    thr, lat = ratios.get("throughput_ratio", 1.0), ratios.get("latency_speedup", 1.0)
    return max(thr, lat), f"throughput x{thr:.2f}, p50 latency x{lat:.2f}"


def _quality_loss(row: Row, _base: Row) -> tuple[float, str]:
    """The loss as a share: 1 - cosine, perplexity ratio - 1, or the accuracy drop."""
    metric, q = next(iter(row["quality"].items()))
    loss = {"cosine_mean": 1 - q["value"], "perplexity_ratio": q["value"] - 1,
            "accuracy_drop": q["value"]}[metric]
    return loss, f"{metric} {q['value']:.4f} (loss {loss:.2%})"


@dataclass(frozen=True)
class Claim:
    """One commonly promised figure, and how to hold a row's measurements against it."""

    technique: str
    promise: str
    source: str
    uses: Callable[[dict[str, Any]], bool]
    measure: Callable[[Row, Row], tuple[float, str]]
    holds: Callable[[float], bool]


CLAIMS = (
    Claim("int8", "cuts model size by 75%", "4 bytes per fp32 weight -> 1", _is_int8,
          _size_cut, lambda cut: cut >= 0.675),
    Claim("int8", "2-4x faster than fp32 on CPU",
          "vendor material; Intel Neural Compressor reports 2.2x for BERT-class int8 on Xeon",
          _is_int8, _speed, lambda x: x >= 2.0),
    Claim("int8", "loses under 1% quality", "the usual promise of post-training int8",
          _is_int8, _quality_loss, lambda loss: loss <= 0.01),
    Claim("int4 weight-only", "cuts model size by 87.5%", "4 bytes per fp32 weight -> 0.5",
          _is_int4, _size_cut, lambda cut: cut >= 0.78),
    Claim("unstructured sparsity", "pruned weights are skipped: faster in proportion",
          "a frequent reading of sparsity figures; dense kernels still multiply the zeros",
          _is_sparse, _speed, lambda x: x >= 1.2),
    Claim("structured pruning", "removing heads and neurons makes the model faster",
          "smaller matrices for a dense kernel (e.g. FLAP, An et al. 2024)", _is_structured,
          _speed, lambda x: x >= 1.05),
)


def claims(rows: list[Row]) -> list[dict[str, Any]]:
    """Each claim that applies to a single-step measured row (once per measurement: a row
    that copies another's is left out), with the row's figure and whether the promise held
    here. `rows[0]` is the baseline."""
    base, out = rows[0], []
    for row in rows[1:]:
        if row.get("status") != "measured" or len(row["steps"]) != 1 or row.get("same_as"):
            continue
        for claim in CLAIMS:
            if claim.uses(row["steps"][0]):
                value, words = claim.measure(row, base)
                out.append({"technique": claim.technique, "promise": claim.promise,
                            "source": claim.source, "row": row["name"], "measured": words,
                            "holds": claim.holds(value)})
    return out
