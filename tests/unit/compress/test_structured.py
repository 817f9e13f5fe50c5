"""compress/structured.py: the right heads, neurons and layers leave, and nothing else moves."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from slimforge.compress import apply_step
from slimforge.compress.structured import StructuredConfig, blocks, prune_structured
from slimforge.models.load import load_model

CALIBRATION = ["a few words of calibration text", "and a second, slightly longer one here"]


def _out(loaded, text="structured pruning keeps these outputs"):
    batch = loaded.tokenizer([text], return_tensors="pt")
    if loaded.task == "causal-lm":
        batch.pop("token_type_ids", None)
    with torch.inference_mode():
        result = loaded.model(**batch)
    return result.logits if loaded.task == "causal-lm" else result.last_hidden_state


def _silence(loaded, neuron: int, group: int) -> None:
    """Make FFN neuron `neuron` and head (KV group) `group` of layer 0 contribute nothing."""
    layer = blocks(loaded.model)[0]
    with torch.no_grad():
        if loaded.task == "causal-lm":
            attn, ffn_out = layer.self_attn, layer.mlp.down_proj
            width = attn.head_dim * attn.num_key_value_groups
            attn.o_proj.weight[:, group * width:(group + 1) * width] = 0
        else:
            ffn_out = layer.output.dense
            width = layer.attention.self.attention_head_size
            layer.attention.output.dense.weight[:, group * width:(group + 1) * width] = 0
        ffn_out.weight[:, neuron] = 0


@pytest.mark.parametrize("spec", ["builtin:tiny-bert", "builtin:tiny-llama"])
def test_cutting_what_contributes_nothing_changes_no_output(spec):
    loaded = load_model(spec)
    _silence(loaded, neuron=5, group=1)
    cut = apply_step(loaded, {"step": "prune_structured", "remove_heads": {0: [1]},
                              "remove_neurons": {0: [5]}})
    assert torch.allclose(_out(cut), _out(loaded), atol=1e-5)
    layer = blocks(cut.model)[0]
    ffn = layer.mlp.down_proj if spec.endswith("llama") else layer.output.dense
    assert ffn.in_features == 63


@pytest.mark.parametrize("spec", ["builtin:tiny-bert", "builtin:tiny-llama"])
def test_activation_importance_finds_the_silent_parts_and_layers_shrink(spec):
    loaded = load_model(spec)
    _silence(loaded, neuron=7, group=0)
    cut = apply_step(loaded, {"step": "prune_structured", "heads": 0.5, "ffn": 0.02,
                              "layers": 1}, calibration=CALIBRATION)
    step = cut.steps[-1]
    assert step["remove_heads"]["0"] == [0]
    assert step["remove_neurons"]["0"] == [7]  # the lowest score of 64
    assert len(step["remove_layers"]) == 1
    assert len(blocks(cut.model)) == 1
    assert "1 of 2 layers" in cut.notes[-1]
    assert cut.layers["layer.0"]["heads"] == 1
    _out(cut)  # still runs


def test_magnitude_scores_need_no_data_but_cannot_rank_layers():
    loaded = load_model("builtin:tiny-bert")
    cut = apply_step(loaded, {"step": "prune_structured", "score": "magnitude", "ffn": 0.5})
    assert blocks(cut.model)[0].intermediate.dense.out_features == 32
    with pytest.raises(ValidationError, match="measured on data"):
        StructuredConfig(score="magnitude", layers=1)
    with pytest.raises(Exception, match="no BERT- or Llama-style layers"):
        prune_structured(torch.nn.Linear(2, 2), StructuredConfig(remove_layers=[0]))


def test_a_constant_neuron_is_folded_into_the_bias_and_chosen_first():
    loaded = load_model("builtin:tiny-bert")
    layer = blocks(loaded.model)[0]
    with torch.no_grad():  # neuron 9 outputs gelu(2.0) for every token: no fluctuation
        layer.intermediate.dense.weight[9] = 0
        layer.intermediate.dense.bias[9] = 2.0
    chosen = apply_step(loaded, {"step": "prune_structured", "heads": 0, "ffn": 0.02},
                        calibration=CALIBRATION)
    assert chosen.steps[-1]["remove_neurons"]["0"] == [9]  # no fluctuation: nothing lost
    assert "means" not in chosen.steps[-1]  # the compensation is in the saved bias
    cut = apply_step(loaded, {"step": "prune_structured", "heads": 0,
                              "remove_neurons": {0: [9]}}, calibration=CALIBRATION)
    assert torch.allclose(_out(cut), _out(loaded), atol=1e-5)
    plain = apply_step(loaded, {"step": "prune_structured", "heads": 0, "compensate": False,
                                "remove_neurons": {0: [9]}})
    assert not torch.allclose(_out(plain), _out(loaded), atol=1e-3)
