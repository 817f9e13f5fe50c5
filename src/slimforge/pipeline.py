"""`optimize(recipe) -> OptimizeResult`: the one orchestrator.

Owns: the data gate on every local data file (before any model is loaded) -> baseline ->
the peer's reference row -> every candidate of the recipe (fixed stages, then the search's
combinations, fewer steps first) evaluated and benchmarked with one harness -> the budget,
the guard and the choice (`search.py`) -> the run folder (chosen model, `results.json`,
`report.md`, `report.html`, plots, the exact recipe, manifest).

Work is shared: a combination starts from the model its first steps already made (a pruned
model is pruned once, then quantized several ways), and identical step lists are measured
once. A branch stops early when its prefix already fails the budget across its whole
interval (compression steps do not give quality back). The time budget skips what was not
started in time, and says so. Every finished candidate is journaled beside the run folder,
so an interrupted search resumes where it stopped (same recipe, same `--out`). Methods plug
in through the compression registry (`compress/`), never by editing this file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimforge.bench.bench import BenchResult, benchmark
from slimforge.bench.cost import cost_table, load_prices, rows_to_json, throughput_of_bench
from slimforge.compress import apply_step, step_key
from slimforge.data.gate import GateResult, gate
from slimforge.data.sources import load_texts
from slimforge.errors import SlimforgeError
from slimforge.evaluation.evaluate import EvalResult, evaluate
from slimforge.io.run import Journal, fresh_path, write_run
from slimforge.models.load import load_model
from slimforge.models.tasks import LoadedModel
from slimforge.recipe import Objective, Recipe, dump_recipe, load_recipe
from slimforge.report.claims import claims
from slimforge.report.html import to_html
from slimforge.report.plots import latency_png, pareto_png, sensitivity_png
from slimforge.report.report import environment, optimize_report, sensitivity_file
from slimforge.search import choose, guard, objective_gain, pareto, quality, relaxations, verdict

PEER = {"embedding": ("peer-onnxruntime-int8",
                      [{"step": "onnx", "quantize": "dynamic-int8", "per_channel": True}])}
"""The strongest single-method peer per task, applied to the unmodified model: ONNX
Runtime's dynamic int8 with per-channel weights on its fused BERT graph (`shared/ANCHORS.md`).
Causal LMs have none here: llama.cpp is measured by `benchmarks/quantization.py`, not a
dependency."""


@dataclass
class OptimizeResult:
    """What `optimize` produced: every row, the choice, and where the run folder is."""

    run_dir: Path
    results: dict[str, Any]
    selected: str
    reason: str

    @property
    def report_path(self) -> Path:
        """The Markdown report inside the run folder."""
        return self.run_dir / "report.md"


def _keys(steps: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(step_key(spec) for spec in steps)


@dataclass
class _Search:
    """Runs candidates one by one, sharing prefixes, and remembers what each one found."""

    recipe: Recipe
    base: LoadedModel
    base_eval: EvalResult
    calibration: list[str]
    journal: Journal
    plan: list[tuple[str, list[dict[str, Any]], str]]
    deadline: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[tuple[str, ...], LoadedModel] = field(default_factory=dict)
    best: tuple[float, str, LoadedModel] | None = None
    failed: dict[tuple[str, ...], str] = field(default_factory=dict)

    def run(self) -> list[dict[str, Any]]:
        done = self.journal.done()
        for index, (name, steps, kind) in enumerate(self.plan):
            row = done.get(name) or self._row(name, steps, kind, index)
            if name not in done:
                self.journal.add(row)
            if row.get("hopeless"):
                self.failed[_keys(steps)] = name
            self.rows.append(row)
        return self.rows

    def _row(self, name: str, steps: list[dict[str, Any]], kind: str,
             index: int) -> dict[str, Any]:
        keys = _keys(steps)
        same = next((r for r in self.rows
                     if r.get("status") == "measured" and _keys(r["written"]) == keys), None)
        if same is not None:
            return _judged({**same, "name": name, "kind": kind, "same_as": same["name"],
                            "notes": [f"the same steps as {same['name']}: measured once",
                                      *same["notes"]]})
        skipped = {"name": name, "kind": kind, "written": steps, "steps": steps,
                   "status": "skipped", "accepted": False}
        cut = next((self.failed[keys[:k]] for k in range(len(keys) - 1, 0, -1)
                    if keys[:k] in self.failed), None)
        if cut is not None:
            return {**skipped, "reason": f"skipped: {cut} already fails the budget across its "
                                         "whole interval, and later steps do not restore it"}
        if self.deadline is not None and time.monotonic() > self.deadline:
            return {**skipped, "reason": f"skipped: the time budget "
                                         f"({self.recipe.budget.time_minutes} min) was spent"}
        loaded = self._build(steps, index)
        return self._measure(name, kind, steps, loaded)

    def _build(self, steps: list[dict[str, Any]], index: int) -> LoadedModel:
        """The candidate's model, from the longest prefix already built."""
        keys = _keys(steps)
        start = next((k for k in range(len(keys) - 1, 0, -1) if keys[:k] in self.cache), 0)
        loaded = self.cache[keys[:start]] if start else self.base
        later = [_keys(s) for _, s, _ in self.plan[index + 1 :]]
        for k in range(start, len(steps)):
            loaded = apply_step(loaded, steps[k], calibration=self.calibration)
            if k + 1 < len(steps) or any(other[: k + 1] == keys[: k + 1] and len(other) > k + 1
                                         for other in later):
                self.cache[keys[: k + 1]] = loaded
        for prefix in [p for p in self.cache if not any(o[: len(p)] == p for o in later)]:
            del self.cache[prefix]  # nothing pending starts from it any more
        return loaded

    def _measure(self, name: str, kind: str, steps: list[dict[str, Any]],
                 loaded: LoadedModel) -> dict[str, Any]:
        recipe = self.recipe
        result = evaluate(loaded, recipe.data, reference=self.base_eval, config=recipe.eval)
        bench = benchmark(loaded, recipe.bench, anchor=self.base)
        figures = quality(result, self.base_eval, recipe.budget)
        ok, hopeless, words = verdict(figures, recipe.budget)
        gain = objective_gain(bench.to_json(), recipe.objective)
        fast, speed_words = guard(gain, recipe.objective, recipe.budget)
        row = _judged(_figures(name, kind, loaded, result, bench, figures) | {
            "written": steps, "gain": gain, "hopeless": hopeless, "within_budget": ok,
            "beats_guard": fast, "verdict": f"{words}; {speed_words}"})
        if row["accepted"] and (self.best is None or gain > self.best[0]):
            self.best = (gain, name, loaded)
        return row

    def model_of(self, row: dict[str, Any]) -> LoadedModel:
        """The chosen row's model: kept in memory, or rebuilt from its steps after a resume."""
        if row["kind"] == "baseline":
            return self.base
        if self.best is not None and self.best[1] == row["name"]:
            return self.best[2]
        loaded = self.base
        for spec in row["written"]:
            loaded = apply_step(loaded, spec, calibration=self.calibration)
        return loaded


def _judged(row: dict[str, Any]) -> dict[str, Any]:
    """The row with `accepted` and `reason` set for its kind: a peer is never chosen."""
    accepted = row["within_budget"] and row["beats_guard"] and row["kind"] == "candidate"
    lead = ("reference row, never chosen" if row["kind"] == "peer"
            else "accepted" if accepted else "rejected")
    return {**row, "accepted": accepted, "reason": f"{lead}: {row['verdict']}"}


def _figures(name: str, kind: str, loaded: LoadedModel, result: EvalResult,
             bench: BenchResult, figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The fields every measured row has (`results.json`)."""
    b = bench.to_json()
    return {"name": name, "kind": kind, "status": "measured", "steps": loaded.steps,
            "quality": figures, "throughput_per_s": b["throughput_per_s"],
            "p50_ms": b["p50_ms"], "p95_ms": b["p95_ms"], "size_mb": b["size_mb"],
            "peak_rss_mb": b["peak_rss_mb"], "decode_tokens_per_s": b.get("decode_tokens_per_s"),
            "vs_baseline": b.get("vs_anchor", {}), "eval": result.to_json(), "bench": b,
            "notes": [*loaded.notes, *result.notes], "layers": loaded.layers}


def _calibration(recipe: Recipe) -> list[str]:
    source = recipe.calibration_data or recipe.data
    return load_texts(source, "train", limit=32, text_field=recipe.eval.text_field)


def _check_data(recipe: Recipe, output_dir: str, proceed: bool) -> list[GateResult]:
    """The data gate on every local file the run reads: the evaluation data, and the
    calibration data (which must not leak into it)."""
    rules = recipe.data_check.model_copy(update={"proceed": True}) if proceed \
        else recipe.data_check
    field_name = recipe.eval.text_field
    found = [gate(recipe.data, "evaluation", rules, output_dir, field_name)]
    if recipe.calibration_data is not None:
        found.append(gate(recipe.calibration_data, "calibration", rules, output_dir,
                          field_name, eval_data=recipe.data))
    return [result for result in found if result is not None]


def _plan(recipe: Recipe, task: str) -> list[tuple[str, list[dict[str, Any]], str]]:
    peer = [(*PEER[task], "peer")] if recipe.peer == "auto" and task in PEER else []
    return [*peer, *((name, steps, "candidate") for name, steps in recipe.candidates())]


def _baseline_row(base: LoadedModel, base_eval: EvalResult, rows: list[dict[str, Any]],
                  recipe: Recipe) -> dict[str, Any]:
    """The baseline's figures: from the first measured row's anchor (measured in alternating
    rounds with it), or measured alone when no row was."""
    anchor = next((r["bench"]["anchor"] for r in rows if r.get("status") == "measured"), None)
    bench = anchor or benchmark(base, recipe.bench).to_json()
    figures = quality(base_eval, base_eval, recipe.budget)
    return {"name": "baseline", "kind": "baseline", "status": "measured", "steps": [],
            "written": [], "quality": figures, "throughput_per_s": bench["throughput_per_s"],
            "p50_ms": bench["p50_ms"], "p95_ms": bench["p95_ms"], "size_mb": bench["size_mb"],
            "peak_rss_mb": bench["peak_rss_mb"],
            "decode_tokens_per_s": bench.get("decode_tokens_per_s"), "vs_baseline": {},
            "eval": base_eval.to_json(), "bench": bench, "accepted": True, "gain": 1.0,
            "reason": "the reference every candidate is compared with",
            "notes": ["the reference every candidate is compared with"], "layers": base.layers}


def _plots(rows: list[dict[str, Any]], chosen: str) -> dict[str, bytes]:
    """Every chart of the report, by file name; each quality chart draws its own front."""
    plots = {}
    for axis in ("latency", "size"):
        png = pareto_png(rows, pareto(rows, Objective(metric=axis)), axis, chosen)
        if png is not None:
            plots[f"pareto-{axis}.png"] = png
    png = latency_png(rows)
    if png is not None:
        plots["latency.png"] = png
    for row in rows:
        png = sensitivity_png(row.get("layers", {}), f"{row['name']}: per-layer quantization SQNR")
        if png is not None:
            plots[sensitivity_file(row["name"])] = png
    return plots


def optimize(recipe: Recipe | str | Path | None = None, output_dir: str | None = None,
             proceed: bool = False, out: str | Path | None = None) -> OptimizeResult:
    """Measure every candidate of a recipe against the baseline and the peer, choose the best
    within the budget, and write a run folder.

    Args:
        recipe: a Recipe, a YAML path, or None for the embedded default.
        output_dir: overrides the recipe's `output_dir` (the run gets a fresh name inside).
        proceed: run on data that breaks the recipe's `data_check` rules.
        out: the run folder itself; an interrupted run with the same `out` resumes.

    Returns:
        Every row's figures, the choice, and the run folder holding its model and report.

    Raises:
        DataError: a data file breaks a hard rule (before any model is loaded).
        SlimforgeError: `out` already holds a finished run.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    output_dir = output_dir or recipe.output_dir
    run_path = Path(out) if out is not None else fresh_path(output_dir, "optimize", recipe.model)
    if run_path.exists():
        raise SlimforgeError(f"{run_path} already holds a finished run.",
                             "choose another --out, or remove that folder.")
    prices = load_prices(recipe.cost.prices) if recipe.cost else None  # before any work
    data_checks = _check_data(recipe, str(run_path.parent), proceed)
    journal = Journal(run_path, recipe.model_dump(mode="json"))
    started = time.monotonic()
    base = load_model(recipe.model, recipe.task)
    base_eval = evaluate(base, recipe.data, config=recipe.eval)
    budget = recipe.budget.time_minutes
    search = _Search(recipe, base, base_eval, _calibration(recipe), journal,
                     _plan(recipe, base.task), started + budget * 60 if budget else None)
    rows = search.run()
    baseline = _baseline_row(base, base_eval, rows, recipe)
    every = [baseline, *rows]
    front = pareto(every, recipe.objective)
    chosen, reason = choose(rows, baseline, recipe.objective, recipe.budget)
    results = _results(recipe, every, chosen, reason, front, base_eval, data_checks, prices)
    results["reproduce"] = f"slimforge optimize {run_path}/recipe.yaml --out {run_path}-again"
    plots = _plots(every, chosen["name"])
    report = optimize_report(results, plots=list(plots))
    files = {**plots, "recipe.yaml": dump_recipe(recipe).encode(),
             "report.html": to_html(report, plots, f"slimforge optimize: {recipe.model}")
             .encode()}
    run_dir = write_run(output_dir, "optimize", recipe.model, recipe.model_dump(mode="json"),
                        results, report, model=search.model_of(chosen), files=files,
                        path=run_path, metrics_name="results.json")
    journal.close()
    return OptimizeResult(run_dir, results, chosen["name"], reason)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("written", "hopeless")}


def _results(recipe: Recipe, every: list[dict[str, Any]], chosen: dict[str, Any], reason: str,
             front: list[str], base_eval: EvalResult, data_checks: list[GateResult],
             prices: Any) -> dict[str, Any]:
    """What `results.json` holds (and the report is written from)."""
    baseline, rows = every[0], every[1:]
    peer = next((r for r in rows if r["kind"] == "peer" and r["status"] == "measured"), None)
    chosen_out = {**_public(chosen), "speedup_vs_baseline": chosen["gain"],
                  "speedup_vs_peer": chosen["gain"] / peer["gain"] if peer else None}
    results: dict[str, Any] = {
        "model": recipe.model, "task": base_eval.task, "data": base_eval.data,
        "objective": recipe.objective.model_dump(), "budget": recipe.budget.model_dump(),
        "baseline": _public(baseline),
        "candidates": [_public(r) for r in rows if r["kind"] == "candidate"],
        "peer": _public(peer) if peer else None, "chosen": chosen_out, "reason": reason,
        "pareto": front, "relax": relaxations(rows, recipe.budget) if chosen is baseline else [],
        "claims": claims(every), "environment": environment(baseline["bench"]["threads"]),
    }
    if data_checks:
        results["data_check"] = [result.to_json() for result in data_checks]
    if recipe.cost is not None and prices is not None:
        measured = [throughput_of_bench(r["name"], r["bench"]) for r in every
                    if r["status"] == "measured"]
        results["cost"] = rows_to_json(cost_table(measured, prices, recipe.cost.target_per_s))
    return results
