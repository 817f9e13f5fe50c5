"""recipe.py: the embedded default validates; every mistake names its key."""

from __future__ import annotations

import pytest

from slimforge.errors import RecipeError
from slimforge.recipe import dump_recipe, load_recipe, parse_recipe


def test_default_recipe_searches_pruning_times_quantization():
    recipe = load_recipe()
    assert recipe.model == "builtin:minilm"
    names = [name for name, _ in recipe.candidates()]
    assert names[:3] == ["int8-dynamic", "int8-weights", "onnx-int8"]  # one step first
    assert "ffn-12+int8-weights" in names
    assert len(names) == 3 + 2 + 2 * 3
    assert parse_recipe(__import__("yaml").safe_load(dump_recipe(recipe))) == recipe


def test_candidates_combine_axes_in_order():
    recipe = parse_recipe({
        "stages": [{"name": "fixed", "steps": [{"step": "quantize"}]}],
        "search": [{"axis": "prune", "options": ["none", {"name": "p", "steps": [
                       {"step": "prune_structured", "ffn": 0.1}]}]},
                   {"axis": "quantize", "options": ["none", {"name": "q", "steps": [
                       {"step": "quantize", "method": "weight-only-int8"}]}]}]})
    found = recipe.candidates()
    assert [name for name, _ in found] == ["fixed", "q", "p", "p+q"]
    assert [s["step"] for s in found[-1][1]] == ["prune_structured", "quantize"]


@pytest.mark.parametrize(("data", "message"), [
    ({"modle": "builtin:minilm"}, "modle: unknown key"),
    ({"eval": {"limt": 5}}, "eval.limt: unknown key"),
    ({"bench": {"repeats": 0}}, "bench.repeats"),
    ({"stages": [{"name": "x", "steps": [{"step": "quantize", "bits": 3}]}]}, "bits"),
    ({"stages": [{"name": "x", "steps": [{"step": "squash"}]}]}, "Unknown compression step"),
    ({"stages": [{"name": "baseline", "steps": [{"step": "quantize"}]}]}, "not 'baseline'"),
    ({"objective": {"metric": "vibes"}}, "objective.metric"),
    ({"budget": {"min_cosine": 2}}, "budget.min_cosine"),
    ({"budget": {"time_minutes": 0}}, "budget.time_minutes"),
    ({"search": [{"axis": "q", "options": [{"name": "a", "steps": [{"step": "quantize"}]}]},
                 {"axis": "p", "options": [{"name": "b", "steps": [{"step": "prune"}]}]}]},
     "nothing can follow the 'quantize' step"),
    ({"search": [{"axis": "q", "options": ["none", "none"]}]}, "option names repeat"),
    ({"search": [{"axis": "q", "options": [{"name": "baseline",
                                            "steps": [{"step": "quantize"}]}]}]},
     "not 'baseline'"),
    ({"search": [{"axis": "q", "options": [{"name": "x", "steps": [{"step": "quantize",
                                                                    "bits": 3}]}]}]}, "bits"),
    (["model"], "must be a mapping"),
])
def test_mistakes_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="Cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\n  stages: [\n")
    with pytest.raises(RecipeError, match="not valid YAML at line 2"):
        load_recipe(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty).model == "builtin:minilm"
