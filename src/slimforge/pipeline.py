"""`optimize(recipe) -> OptimizeResult`: the one orchestrator.

Owns: the data gate on every local data file (before any model is loaded) -> baseline ->
each stage's compression steps -> evaluate and benchmark every stage ->
pick the winner within the quality floor -> write the run folder (winner's model, metrics,
report, manifest). Every stage is benchmarked against the baseline in the same run, so its
speed-up is a ratio the noisy machine cancels out of. Methods plug in through the compression
registry (`compress/`), never by editing this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimforge.bench.bench import BenchResult, benchmark
from slimforge.bench.cost import cost_table, load_prices, rows_to_json, throughput_of_bench
from slimforge.compress import apply_step
from slimforge.data.gate import GateResult, gate
from slimforge.data.sources import load_texts
from slimforge.errors import SlimforgeError
from slimforge.evaluation.evaluate import EvalResult, evaluate
from slimforge.io.run import write_run
from slimforge.models.load import load_model
from slimforge.models.tasks import LoadedModel
from slimforge.recipe import Recipe, Selection, Stage, load_recipe
from slimforge.report.plots import sensitivity_png
from slimforge.report.report import optimize_report, sensitivity_file


@dataclass
class StageResult:
    """One stage's model and figures, and whether it met the quality floor."""

    name: str
    loaded: LoadedModel
    eval: EvalResult
    bench: BenchResult
    passed: bool
    verdict: str
    notes: list[str]

    def to_json(self, selected: bool) -> dict[str, Any]:
        """The stage as written to metrics.json."""
        return {"name": self.name, "steps": self.loaded.steps, "eval": self.eval.to_json(),
                "bench": self.bench.to_json(), "passed": self.passed, "verdict": self.verdict,
                "selected": selected, "notes": self.notes, "layers": self.loaded.layers}


@dataclass
class OptimizeResult:
    """What `optimize` produced: every stage, the winner, and where the run folder is."""

    run_dir: Path
    stages: list[StageResult]
    selected: str
    reason: str

    @property
    def report_path(self) -> Path:
        """The Markdown report inside the run folder."""
        return self.run_dir / "report.md"


def _judge(stage: EvalResult, base: EvalResult, select: Selection) -> tuple[bool, str]:
    m, b = stage.metrics, base.metrics
    if "cosine_mean" in m:
        ok = m["cosine_mean"] >= select.min_cosine
        return ok, f"cosine {m['cosine_mean']:.4f} {'≥' if ok else '<'} {select.min_cosine}"
    if "perplexity" in m:
        ratio = m["perplexity"] / b["perplexity"]
        ok = ratio <= select.max_perplexity_ratio
        return ok, f"perplexity ×{ratio:.3f} {'≤' if ok else '>'} ×{select.max_perplexity_ratio}"
    if "accuracy" in m:
        ratio = m["accuracy"] / max(b["accuracy"], 1e-12)
        ok = ratio >= select.min_accuracy_ratio
        return ok, f"accuracy ×{ratio:.3f} {'≥' if ok else '<'} ×{select.min_accuracy_ratio}"
    raise SlimforgeError(f"No quality metric to judge stage {stage.spec} by.",
                         "evaluate with a task that has a metric.")


def _score(stage: StageResult, objective: str) -> float:
    bench = stage.bench
    return {"latency": bench.p50_ms, "size": bench.size_mb,
            "throughput": -bench.throughput_per_s}[objective]


def _pick(stages: list[StageResult], select: Selection) -> tuple[StageResult, str]:
    passing = [s for s in stages if s.passed]
    best = min(passing, key=lambda s: _score(s, select.objective))
    failed = [s.name for s in stages if not s.passed]
    reason = f"best {select.objective} among stages within the quality floor"
    if failed:
        reason += f"; below the floor: {', '.join(failed)}"
    return best, reason


def _calibration(recipe: Recipe) -> list[str]:
    source = recipe.calibration_data or recipe.data
    return load_texts(source, "train", limit=32, text_field=recipe.eval.text_field)


def _run_stage(stage: Stage, base: LoadedModel, base_eval: EvalResult, recipe: Recipe,
               calibration: list[str]) -> StageResult:
    loaded = base
    for step in stage.steps:
        loaded = apply_step(loaded, step, calibration=calibration)
    result = evaluate(loaded, recipe.data, reference=base_eval, config=recipe.eval)
    bench = benchmark(loaded, recipe.bench, anchor=base)
    passed, verdict = _judge(result, base_eval, recipe.select)
    return StageResult(stage.name, loaded, result, bench, passed, verdict,
                       [*loaded.notes, *result.notes])


def _sensitivity_plots(stages: list[StageResult]) -> dict[str, bytes]:
    """One per-layer SQNR chart per stage that recorded per-layer figures, by file name."""
    plots = {}
    for stage in stages:
        png = sensitivity_png(stage.loaded.layers, f"{stage.name}: per-layer quantization SQNR")
        if png is not None:
            plots[sensitivity_file(stage.name)] = png
    return plots


def _check_data(recipe: Recipe, output_dir: str, proceed: bool) -> list[GateResult]:
    """The data gate on every local file the run reads: the evaluation data, and the
    calibration data (which must not leak into it)."""
    rules = recipe.data_check.model_copy(update={"proceed": True}) if proceed \
        else recipe.data_check
    field = recipe.eval.text_field
    found = [gate(recipe.data, "evaluation", rules, output_dir, field)]
    if recipe.calibration_data is not None:
        found.append(gate(recipe.calibration_data, "calibration", rules, output_dir, field,
                          eval_data=recipe.data))
    return [result for result in found if result is not None]


def optimize(recipe: Recipe | str | Path | None = None, output_dir: str | None = None,
             proceed: bool = False) -> OptimizeResult:
    """Compare the baseline with every stage of a recipe, pick the winner, write a run.

    Args:
        recipe: a Recipe, a YAML path, or None for the embedded default.
        output_dir: overrides the recipe's `output_dir`.
        proceed: run on data that breaks the recipe's `data_check` rules.

    Returns:
        Every stage's figures, the winner and the run folder holding its model and report.

    Raises:
        DataError: a data file breaks a hard rule (before any model is loaded).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    output_dir = output_dir or recipe.output_dir
    prices = load_prices(recipe.cost.prices) if recipe.cost else None  # before any work
    data_checks = _check_data(recipe, output_dir, proceed)
    base_model = load_model(recipe.model, recipe.task)
    base_eval = evaluate(base_model, recipe.data, config=recipe.eval)
    calibration = _calibration(recipe)
    stages = [_run_stage(stage, base_model, base_eval, recipe, calibration)
              for stage in recipe.stages]
    # Each stage was timed against the baseline in alternating rounds; the first stage's
    # anchor figures are the baseline's row, so it is not measured a second time.
    base_bench = stages[0].bench.anchor if stages else benchmark(base_model, recipe.bench)
    stages.insert(0, StageResult("baseline", base_model, base_eval, base_bench, True,
                                 "reference", ["the reference every stage is compared with"]))
    winner, reason = _pick(stages, recipe.select)
    summary = {"model": recipe.model, "data": base_eval.data, "selected": winner.name,
               "reason": reason, "stages": [s.to_json(s is winner) for s in stages]}
    if data_checks:
        summary["data_check"] = [result.to_json() for result in data_checks]
    if recipe.cost is not None and prices is not None:
        measured = [throughput_of_bench(s["name"], s["bench"]) for s in summary["stages"]]
        summary["cost"] = rows_to_json(cost_table(measured, prices, recipe.cost.target_per_s))
    plots = _sensitivity_plots(stages)
    run_dir = write_run(output_dir, "optimize", recipe.model,
                        recipe.model_dump(mode="json"), summary,
                        optimize_report(summary, plots=list(plots)), model=winner.loaded,
                        files=plots)
    return OptimizeResult(run_dir, stages, winner.name, reason)
