"""compress/sensitivity.py: ranking layers, and `keep_float` resolved into `skip`."""

from __future__ import annotations

import torch

from slimforge.compress import apply_step
from slimforge.compress.quantize import QuantConfig, quantize, quantized_layers
from slimforge.compress.sensitivity import rank_layers
from slimforge.io.run import write_run
from slimforge.models.load import load_model

TEXTS = ["Return the sum of the numbers.", "Open the file and read every line of it."]
PLANTED = "encoder.layer.1.output.dense"


def _with_outliers(loaded):
    """One layer gets an outlier weight in every row: its int8 scale is ruined."""
    with torch.no_grad():
        loaded.model.get_submodule(PLANTED).weight[:, 0] *= 400.0
    return loaded


def test_only_and_skip_choose_the_layers(tiny_bert):
    everything = quantized_layers(tiny_bert.model, QuantConfig())
    assert "embeddings.word_embeddings" in everything
    only = quantized_layers(tiny_bert.model, QuantConfig(only=["encoder.layer.0.*"]))
    assert only
    assert all(name.startswith("encoder.layer.0.") for name in only)
    both = QuantConfig(only=["encoder.layer.0.*"], skip=["*.attention.*"])
    assert all(".attention." not in n for n in quantized_layers(tiny_bert.model, both))
    q = quantize(tiny_bert.model, QuantConfig(only=["pooler.dense"]))
    assert type(q.encoder.layer[0].output.dense) is torch.nn.Linear


def test_the_planted_layer_ranks_first(tiny_bert):
    ranking = rank_layers(_with_outliers(tiny_bert), QuantConfig(embeddings=False), TEXTS)
    assert ranking[0].name == PLANTED
    assert [r.sqnr_db for r in ranking] == sorted(r.sqnr_db for r in ranking)
    assert len(ranking) == len(quantized_layers(tiny_bert.model, QuantConfig(embeddings=False)))


def test_keep_float_is_resolved_into_skip_and_reloads_without_data(tiny_bert, tmp_path):
    loaded = _with_outliers(tiny_bert)
    mixed = apply_step(loaded, {"step": "quantize", "keep_float": 1}, calibration=TEXTS)
    assert type(mixed.model.get_submodule(PLANTED)) is torch.nn.Linear
    assert mixed.steps[-1]["keep_float"] == 0
    assert mixed.steps[-1]["skip"] == [PLANTED]
    assert PLANTED in mixed.notes[0]
    again = load_model(str(write_run(tmp_path, "t", "builtin:tiny-bert", {}, {}, "#\n", mixed)))
    batch = loaded.tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert torch.equal(again.model(**batch).last_hidden_state,
                           mixed.model(**batch).last_hidden_state)


def test_every_quantized_layer_gets_its_sqnr_and_it_travels_with_the_artifact(tiny_bert,
                                                                             tmp_path):
    loaded = _with_outliers(tiny_bert)
    q = apply_step(loaded, {"step": "quantize", "embeddings": False}, calibration=TEXTS)
    names = quantized_layers(loaded.model, QuantConfig(embeddings=False))
    assert set(q.layers) == set(names)
    worst = min(q.layers, key=lambda name: q.layers[name]["sqnr_db"])
    assert worst == PLANTED
    assert all(figures["sqnr_db"] > 20 for name, figures in q.layers.items() if name != PLANTED)
    again = load_model(str(write_run(tmp_path, "t", "builtin:tiny-bert", {}, {}, "#\n", q)))
    assert again.layers == q.layers


def test_keep_float_records_the_ranking_of_every_layer(tiny_bert):
    mixed = apply_step(_with_outliers(tiny_bert), {"step": "quantize", "keep_float": 1},
                       calibration=TEXTS)
    ranked = {name for name, f in mixed.layers.items() if "alone_sqnr_db" in f}
    assert ranked == set(quantized_layers(tiny_bert.model, QuantConfig()))
    assert "sqnr_db" not in mixed.layers[PLANTED]  # kept in float: ranked, not quantized
