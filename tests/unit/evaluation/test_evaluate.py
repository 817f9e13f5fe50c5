"""evaluate/evaluate.py on tiny seeded models: each task's metric and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from slimforge.errors import DataError, SlimforgeError
from slimforge.evaluation.evaluate import EvalConfig, evaluate
from slimforge.models.load import load_model

SMALL = EvalConfig(limit=24, batch_size=8, max_length=32, max_tokens=300, window=64, stride=32)


def test_embedding_against_itself_is_faithful(tiny_bert):
    result = evaluate(tiny_bert, reference=tiny_bert, config=SMALL)
    assert result.metrics["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["knn_overlap_at_10"] == pytest.approx(1.0)
    assert 0.0 <= result.metrics["retrieval_at_1"] <= 1.0
    assert result.samples == 24
    assert result.outputs.shape == (24, 32)
    assert result.data["sha256"]


def test_an_earlier_result_serves_as_reference(tiny_bert):
    first = evaluate(tiny_bert, config=SMALL)
    assert "cosine_mean" not in first.metrics
    assert "no reference" in first.notes[0]
    again = evaluate(tiny_bert, reference=first, config=SMALL)
    assert again.metrics["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    other = evaluate(load_model("builtin:tiny-bert"), reference=evaluate(
        _reseeded_bert(), config=SMALL), config=SMALL)
    assert other.metrics["cosine_mean"] < 0.99  # different weights are measurably different


def _reseeded_bert():
    from slimforge.models.tiny import tiny_bert

    loaded = load_model("builtin:tiny-bert")
    loaded.model = tiny_bert(seed=1)
    return loaded


def test_perplexity_is_finite_and_window_independent_when_one_window_covers_all(tiny_llama):
    whole = evaluate(tiny_llama, config=SMALL.model_copy(update={"window": 512, "stride": 64}))
    alone = evaluate(tiny_llama, config=SMALL.model_copy(update={"window": 512, "stride": 512}))
    assert whole.metrics["perplexity"] == pytest.approx(alone.metrics["perplexity"], rel=1e-5)
    assert 1.0 < whole.metrics["perplexity"] < 10 * 128  # random weights, vocab of 128
    strided = evaluate(tiny_llama, config=SMALL)
    assert strided.metrics["tokens"] == whole.metrics["tokens"] == 299  # every token once


def test_stride_larger_than_window_is_refused(tiny_llama):
    with pytest.raises(SlimforgeError, match="stride 64 is larger than window 32"):
        evaluate(tiny_llama, config=SMALL.model_copy(update={"window": 32, "stride": 64}))


def test_classification_accuracy_on_features(tmp_path):
    loaded = load_model("module:slimforge.models.tiny:TinyMLP")
    torch.manual_seed(0)
    features = torch.randn(40, 16)
    labels = loaded.model(features).argmax(-1)
    labels[:10] = (labels[:10] + 1) % 4  # exactly 10 of 40 wrong
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"features": f.tolist(), "label": int(y)})
                              for f, y in zip(features, labels, strict=True)))
    result = evaluate(loaded, str(path), config=SMALL.model_copy(update={"limit": None}))
    assert result.metrics["accuracy"] == pytest.approx(0.75)
    assert 0.0 < result.metrics["macro_f1"] <= 1.0


def test_classification_needs_labels(tmp_path):
    loaded = load_model("module:slimforge.models.tiny:TinyMLP")
    with pytest.raises(DataError, match="has no labels"):
        evaluate(loaded, config=SMALL)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"features": [0.0] * 16, "label": "spam"}))
    with pytest.raises(DataError, match="class ids or names"):
        evaluate(loaded, str(path), config=SMALL)


def test_perplexity_equals_transformers_own_loss_on_one_window(tiny_llama):
    """Known answer: with one window, perplexity is exp of the model's built-in LM loss."""
    from slimforge.data.sources import load_texts

    config = SMALL.model_copy(update={"window": 200, "stride": 200, "max_tokens": 200})
    result = evaluate(tiny_llama, config=config)
    text = "\n\n".join(load_texts("builtin:stdlib-docs", "eval"))
    ids = tiny_llama.tokenizer(text, return_tensors="pt").input_ids[:, :200]
    with torch.inference_mode():
        loss = tiny_llama.model(input_ids=ids, labels=ids).loss
    assert result.metrics["perplexity"] == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_classification_fairness_by_group_and_against_a_reference(tmp_path):
    loaded = load_model("module:slimforge.models.tiny:TinyMLP")
    torch.manual_seed(0)
    features = torch.randn(40, 16)
    labels = loaded.model(features).argmax(-1)
    labels[:10] = (labels[:10] + 1) % 4  # the 10 errors all fall in group "a"
    groups = ["a"] * 20 + ["b"] * 20
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"features": f.tolist(), "label": int(y), "g": g})
                              for f, y, g in zip(features, labels, groups, strict=True)))
    config = SMALL.model_copy(update={"limit": None, "group_field": "g"})
    result = evaluate(loaded, str(path), loaded, config).to_json()  # itself as the reference
    assert result["fairness"]["groups"]["a"]["accuracy"] == pytest.approx(0.5)
    assert result["fairness"]["groups"]["b"]["accuracy"] == pytest.approx(1.0)
    assert result["fairness"]["accuracy_gap"] == pytest.approx(0.5)
    assert "demographic_parity_difference" in result
    assert result["fairness_deltas"]["groups"]["a"]["accuracy"] == 0  # same model, no change
    other = load_model("module:slimforge.models.tiny:TinyMLP")  # other random weights
    against = evaluate(loaded, str(path), other, config).to_json()
    assert against["fairness_deltas"]["groups"]["b"]["accuracy"] == pytest.approx(
        1.0 - against["fairness_reference"]["groups"]["b"]["accuracy"])
    from slimforge.report.report import eval_report

    assert "## Fairness across groups" in eval_report(result)


def test_classification_robust_accuracy_is_reported(tmp_path):
    from slimforge.trust.attacks import AttackConfig

    loaded = load_model("module:slimforge.models.tiny:TinyMLP")
    torch.manual_seed(0)
    features = torch.randn(40, 16)
    labels = loaded.model(features).argmax(-1)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"features": f.tolist(), "label": int(y)})
                              for f, y in zip(features, labels, strict=True)))
    config = SMALL.model_copy(update={"limit": None, "attack": AttackConfig(eps=0.5, steps=5)})
    result = evaluate(loaded, str(path), config=config).to_json()
    assert result["accuracy"] == 1.0
    assert result["robust_accuracy"] < 1.0
    assert result["attack"]["eps"] == 0.5
