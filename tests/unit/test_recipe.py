"""recipe.py: the embedded default validates; every mistake names its key."""

from __future__ import annotations

import pytest

from slimforge.errors import RecipeError
from slimforge.recipe import dump_recipe, load_recipe, parse_recipe


def test_default_recipe():
    recipe = load_recipe()
    assert recipe.model == "builtin:minilm"
    assert recipe.stages[0].steps[0]["step"] == "quantize"
    assert load_recipe.__module__
    assert parse_recipe(__import__("yaml").safe_load(
        dump_recipe(recipe))) == recipe


@pytest.mark.parametrize(("data", "message"), [
    ({"modle": "builtin:minilm"}, "modle: unknown key"),
    ({"eval": {"limt": 5}}, "eval.limt: unknown key"),
    ({"bench": {"repeats": 0}}, "bench.repeats"),
    ({"stages": [{"name": "x", "steps": [{"step": "quantize", "bits": 3}]}]}, "bits"),
    ({"stages": [{"name": "x", "steps": [{"step": "squash"}]}]}, "Unknown compression step"),
    ({"stages": [{"name": "baseline", "steps": [{"step": "quantize"}]}]}, "not 'baseline'"),
    ({"select": {"objective": "vibes"}}, "select.objective"),
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
