"""Recipes: one YAML file that says what `slimforge optimize` does.

Owns: `Recipe` (frozen pydantic, unknown keys are errors), `Stage`, `Axis`, `Option`,
`Budget`, `Objective`, `load_recipe`, `dump_recipe`, and the shipped recipes (`recipes/*.yaml`
inside the package; `default.yaml` is what a bare `slimforge optimize` runs). Steps are
`{"step": NAME, ...config}` and are validated against the compression registry when the
recipe loads, as are the combinations a search makes (nothing may follow a quantize step),
so a misspelled key or an impossible pipeline fails before any model is touched.

    >>> recipe = load_recipe()  # the embedded default
    >>> recipe.model
    'builtin:minilm'
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slimforge import recipes
from slimforge.bench.bench import BenchConfig
from slimforge.compress import get_step, parse_step
from slimforge.data.gate import DataRules
from slimforge.data.sources import STDLIB_DOCS
from slimforge.errors import RecipeError
from slimforge.evaluation.evaluate import EvalConfig
from slimforge.models.tasks import Task

DEFAULT_RECIPE = recipes.FOLDER / "default.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _known_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for spec in steps:
        parse_step(spec)  # raises RecipeError naming the step and the bad key
    return steps


Steps = Annotated[list[dict[str, Any]], AfterValidator(_known_steps)]
"""Compression steps, each `{step: NAME, ...its config}`, checked against the registry."""


class Stage(_Frozen):
    """One fixed candidate: the baseline transformed by `steps`, in order."""

    name: str = Field(min_length=1)
    """Row name in the report and the results."""
    steps: Steps = Field(min_length=1)
    """Compression steps, each `{step: NAME, ...its config}`."""


class Option(_Frozen):
    """One choice on a search axis; no steps (or the bare word `none`) leaves the model as
    it is on that axis."""

    name: str = Field(min_length=1)
    """Its part of a candidate's name (`prune-20+int8-weights`)."""
    steps: Steps = Field(default_factory=list)
    """Compression steps, each `{step: NAME, ...its config}`."""


class Axis(_Frozen):
    """One dimension of the search: every candidate takes exactly one of its options."""

    axis: str = Field(min_length=1)
    """What varies along it (`prune`, `quantize`, ...), for the report."""
    options: list[Option] = Field(min_length=1)
    """The choices, `none` usually first."""

    @field_validator("options", mode="before")
    @classmethod
    def _none_shorthand(cls, options: Any) -> Any:
        if isinstance(options, list):
            return [{"name": "none"} if option == "none" else option for option in options]
        return options

    @field_validator("options")
    @classmethod
    def _unique_options(cls, options: list[Option]) -> list[Option]:
        names = [option.name for option in options]
        if len(set(names)) != len(names):
            raise ValueError(f"option names repeat: {names}")
        return options


class Budget(_Frozen):
    """What a candidate may lose, judged on a bootstrap interval of the quality change, and
    the limits of the search itself."""

    min_cosine: float = Field(0.97, ge=0, le=1)
    """Embedding: lowest mean cosine to the baseline; the interval's low end must reach it."""
    max_perplexity_ratio: float = Field(1.10, ge=1)
    """Causal LM: highest perplexity as a multiple of the baseline's (the interval's high end)."""
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    """Classification: largest accuracy loss against the baseline, as a fraction (0.01 is one
    point; the interval's high end)."""
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Level of the bootstrap interval over evaluation examples."""
    resamples: int = Field(1000, ge=100)
    """Bootstrap resamples."""
    min_gain: float = Field(0.05, ge=0)
    """The guard: a candidate must beat the baseline on the objective by this share (0.05:
    5%), measured in the same run, or it is rejected however good its quality."""
    time_minutes: float | None = Field(None, gt=0)
    """Wall-clock limit of the search; candidates not started by then are skipped, and the
    report says which."""


class Objective(_Frozen):
    """What the chosen candidate is best at, measured at `bench`'s shapes and threads."""

    metric: Literal["throughput", "latency", "p95_latency", "size"] = "throughput"
    """Throughput at `bench.batch_size` x `bench.seq_len`; p50 or p95 latency at batch 1; or
    size on disk."""


class CostConfig(_Frozen):
    """Price the candidates (`bench/cost.py`): a YAML price table, and the load to plan for."""

    prices: str
    """Path of the price table (`instances: {NAME: {price_per_hour: P, replicas: N}}`)."""
    target_per_s: float | None = Field(None, gt=0)
    """The load to plan replicas and a monthly price for, in the throughput's unit."""


class Recipe(_Frozen):
    """Everything `optimize` needs: the model, the data, the stages and how to judge them."""

    model: str = "builtin:minilm"
    """Model spec (see `load_model`)."""
    task: Task | None = None
    """Task override; guessed from the model when empty."""
    data: str = STDLIB_DOCS
    """Evaluation data: `builtin:stdlib-docs` (held-out split) or a local file."""
    calibration_data: str | None = None
    """Text for data-dependent steps (e.g. `keep_float`); default: the train split of
    `data`. For a local `data` file give a separate file, or evaluation is not held out."""
    stages: list[Stage] = Field(default_factory=list)
    """Fixed candidates, measured first (one is a single pipeline)."""
    search: list[Axis] = Field(default_factory=list)
    """Axes whose every combination (all `none` aside) is a candidate; their steps apply in
    the order of the axes."""
    peer: Literal["auto", "none"] = "auto"
    """`auto`: a reference row for the strongest single-method peer, measured in the same run
    (embedding models: ONNX Runtime dynamic int8, per-channel, fused graph); never chosen."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """How quality is measured."""
    bench: BenchConfig = Field(default_factory=BenchConfig)
    """How speed, memory and size are measured."""
    budget: Budget = Field(default_factory=Budget)
    """The quality floor, the guard's margin and the time limit."""
    objective: Objective = Field(default_factory=Objective)
    """What the chosen candidate maximises or minimises."""
    output_dir: str = "runs"
    """Where run folders are written."""
    cost: CostConfig | None = None
    """With a price table: the report prices every candidate."""
    data_check: DataRules = Field(default_factory=DataRules)
    """Hard rules every local data file must meet before any model is loaded (`data/gate.py`);
    `proceed: true` runs on data that breaks them."""

    @model_validator(mode="after")
    def _candidates_make_sense(self) -> Recipe:
        names = [name for name, _ in self.candidates()]
        if "baseline" in names or len(set(names)) != len(names):
            raise ValueError("candidate names (stages, and search combinations joined by '+') "
                             "must be unique and not 'baseline'")
        for name, steps in self.candidates():
            for spec in steps[:-1]:
                if get_step(spec["step"]).final:
                    raise ValueError(f"candidate {name!r}: nothing can follow the "
                                     f"{spec['step']!r} step; put it on the last axis")
        return self

    def candidates(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Every candidate as (name, steps): the stages, then each combination of the search
        axes with fewer choices first (so a combination's parts are measured before it)."""
        combos = []
        for choice in itertools.product(*(axis.options for axis in self.search)):
            chosen = [option for option in choice if option.steps]
            if chosen:
                combos.append(("+".join(o.name for o in chosen),
                               [spec for o in chosen for spec in o.steps]))
        combos.sort(key=lambda combo: combo[0].count("+"))
        return [*((stage.name, stage.steps) for stage in self.stages), *combos]


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe from plain data (as read from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping of keys, got {type(data).__name__}.",
                          "start the file with keys such as `model:` and `stages:`.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source} is invalid: {_describe(exc)}.",
                          "fix or remove the named keys; `slimforge optimize --help` and the "
                          "default recipe show every field.") from None


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a YAML recipe; None gives the embedded default.

    Raises:
        RecipeError: a missing file, bad YAML, an unknown key or an invalid value.
    """
    import yaml

    file = Path(path) if path is not None else DEFAULT_RECIPE
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"Cannot read recipe {file}: {exc.strerror}.",
                          "check the path.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{file} is not valid YAML{where}.",
                          "fix the indentation or quoting there.") from None
    return parse_recipe(data, str(file))


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every field written out (what a run used, for its manifest)."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
