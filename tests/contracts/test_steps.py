"""Every registered compression step honours the contract the pipeline relies on:
forward works, the input is untouched, output stays above a quality floor, size does not
grow, and save -> load through a run folder gives identical outputs."""

from __future__ import annotations

import copy
import typing

import pytest
import torch

from slimforge.bench.measure import size_on_disk_mb
from slimforge.compress import apply_step, get_step, step_names
from slimforge.io.run import write_run
from slimforge.models.load import load_model

SQNR_FLOOR_DB = 12.0  # int4 on random tiny weights is the hardest case


TINY = {"embedding": "builtin:tiny-bert", "causal-lm": "builtin:tiny-llama"}


def _variants() -> list[tuple[dict, str]]:
    """Every step with every value of its config's `method` field (when it has one), on a
    tiny model of every task the step covers."""
    variants = []
    for name in step_names():
        step = get_step(name)
        field = step.config_type.model_fields.get("method")
        methods = typing.get_args(field.annotation) if field else ()
        specs = [{"step": name, "method": m} for m in methods] or [{"step": name}]
        variants += [(spec, TINY[task]) for spec in specs for task in TINY if task in step.tasks]
    return variants


def _forward(loaded, texts=("contract checks for every step", "a second sentence")):
    batch = loaded.tokenizer(list(texts), return_tensors="pt", padding=True)
    if loaded.task == "causal-lm":
        batch.pop("token_type_ids", None)
        return loaded.model(**batch).logits
    return loaded.model(**batch).last_hidden_state


@pytest.mark.parametrize(("step", "spec"), _variants(),
                         ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict)
                         else v.removeprefix("builtin:"))
def test_step_contract(step, spec, tmp_path):
    base = load_model(spec)
    before = copy.deepcopy(base.model.state_dict())
    with torch.inference_mode():
        ref = _forward(base)
        compressed = apply_step(base, step)
        out = _forward(compressed).float()
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, before[key]), f"{step} changed its input ({key})"
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())
    assert sqnr > SQNR_FLOOR_DB, f"{step}: {sqnr:.1f} dB"
    assert size_on_disk_mb(compressed.model) <= size_on_disk_mb(base.model)

    run = write_run(tmp_path, "contract", spec, {}, {}, "# contract\n", model=compressed)
    again = load_model(str(run))
    assert again.steps == compressed.steps
    assert again.base_spec == spec
    with torch.inference_mode():
        assert torch.equal(_forward(again).float(), out)
