"""Every shipped recipe validates and runs end to end on a tiny model (a dry run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimforge.io.checkpoint import verify_manifest
from slimforge.models.load import load_model
from slimforge.pipeline import optimize
from slimforge.recipe import load_recipe
from slimforge.recipes import FOLDER

RECIPES = sorted(FOLDER.glob("*.yaml"))
TINY_MODEL = {"builtin:minilm": "builtin:tiny-bert", "builtin:smollm2": "builtin:tiny-llama"}
TINY = {"eval": {"limit": 16, "batch_size": 8, "max_length": 32, "max_tokens": 128,
                 "window": 64, "stride": 32},
        "bench": {"warmup": 1, "repeats": 2, "batch_size": 2, "seq_len": 16,
                  "latency_seq_len": 8, "prefill_len": 16, "decode_tokens": 2, "threads": 1},
        "budget": {"min_cosine": 0.5, "max_perplexity_ratio": 10.0, "resamples": 200}}
FILES = {"manifest.json", "results.json", "report.md", "report.html", "recipe.yaml", "model"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_runs_on_a_tiny_model(path: Path, tmp_path):
    recipe = load_recipe(path)
    tiny = recipe.model_copy(update={
        "model": TINY_MODEL[recipe.model], "eval": recipe.eval.model_copy(update=TINY["eval"]),
        "bench": recipe.bench.model_copy(update=TINY["bench"]),
        "budget": recipe.budget.model_copy(update=TINY["budget"]),
    })
    result = optimize(tiny, output_dir=str(tmp_path))
    names = {p.name for p in result.run_dir.iterdir()}
    plots = {n for n in names if n.endswith(".png")}
    assert names - plots == FILES
    manifest = verify_manifest(result.run_dir)
    assert plots <= set(manifest["files"])
    assert manifest["config"]["model"] == TINY_MODEL[recipe.model]
    assert {"model/model.safetensors", "model/model.onnx"} & set(manifest["files"])
    assert load_recipe(result.run_dir / "recipe.yaml") == tiny  # the exact recipe, dump = load
    results = json.loads((result.run_dir / "results.json").read_text())
    planned = [name for name, _ in recipe.candidates()]
    assert [c["name"] for c in results["candidates"]] == planned
    for row in [results["baseline"], *results["candidates"]]:
        assert {"name", "steps", "accepted", "reason"} <= set(row)
        if row.get("status") == "measured":
            assert {"quality", "throughput_per_s", "p95_ms", "size_mb", "peak_rss_mb"} <= set(row)
    assert {"speedup_vs_baseline", "speedup_vs_peer"} <= set(results["chosen"])
    report = result.report_path.read_text()
    for row in results["candidates"]:
        assert f"| {row['name']}" in report
    for plot in plots:  # every chart written is linked from the report
        assert f"]({plot})" in report
    assert load_model(str(result.run_dir)).task == load_model(TINY_MODEL[recipe.model]).task
