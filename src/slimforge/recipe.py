"""Recipes: one YAML file that says what `slimforge optimize` does.

Owns: `Recipe` (frozen pydantic, unknown keys are errors), `Stage`, `Selection`, `load_recipe`,
`dump_recipe`, and the embedded default (`recipes/default.yaml` inside the package). Stage
steps are `{"step": NAME, ...config}` and are validated against the compression registry when
the recipe loads, so a misspelled key fails before any model is touched.

    >>> recipe = load_recipe()  # the embedded default
    >>> recipe.model
    'builtin:minilm'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slimforge.bench.bench import BenchConfig
from slimforge.compress import parse_step
from slimforge.data.gate import DataRules
from slimforge.data.sources import STDLIB_DOCS
from slimforge.errors import RecipeError
from slimforge.evaluation.evaluate import EvalConfig
from slimforge.models.tasks import Task

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stage(_Frozen):
    """One candidate: the baseline transformed by `steps`, in order."""

    name: str = Field(min_length=1)
    """Row name in the report and the metrics."""
    steps: list[dict[str, Any]] = Field(min_length=1)
    """Compression steps, each `{step: NAME, ...its config}`."""

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for spec in steps:
            parse_step(spec)  # raises RecipeError naming the step and the bad key
        return steps


class Selection(_Frozen):
    """Which stage wins: the best by `objective` among those within the quality floor."""

    min_cosine: float = Field(0.97, ge=0, le=1)
    """Embedding: lowest mean cosine to the baseline a stage may have."""
    max_perplexity_ratio: float = Field(1.10, ge=1)
    """Causal LM: highest perplexity as a multiple of the baseline's."""
    min_accuracy_ratio: float = Field(0.99, ge=0, le=1)
    """Classification: lowest accuracy as a share of the baseline's."""
    objective: Literal["latency", "throughput", "size"] = "latency"
    """What the winner is best at: p50 latency, throughput, or size on disk."""


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
    """Candidates compared against the baseline."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """How quality is measured."""
    bench: BenchConfig = Field(default_factory=BenchConfig)
    """How speed, memory and size are measured."""
    select: Selection = Field(default_factory=Selection)
    """Quality floor and objective for choosing the winner."""
    output_dir: str = "runs"
    """Where run folders are written."""
    cost: CostConfig | None = None
    """With a price table: the report prices every candidate."""
    data_check: DataRules = Field(default_factory=DataRules)
    """Hard rules every local data file must meet before any model is loaded (`data/gate.py`);
    `proceed: true` runs on data that breaks them."""

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        if "baseline" in names or len(set(names)) != len(names):
            raise ValueError("stage names must be unique and not 'baseline'")
        return stages


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
