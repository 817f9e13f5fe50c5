"""Compression steps: a typed config in, a new model out, registered by name.

Owns: `StepConfig` (the base of every step's config), `CompressionStep` (the registry entry:
config type, `apply` and `restructure`), the `STEPS` registry and `apply_step`. A step's
`apply(model, config)` returns a new model and never mutates its input, so the pipeline can
compare stages side by side. `restructure(model, config)` turns a freshly built float model
into the compressed structure with placeholder values, so an artifact can be rebuilt and then
filled from its safetensors. An optional `prepare(loaded, config, calibration)` resolves
data-dependent choices (which layers to keep in float, say) into a plain config before
`apply`; that resolved config is what gets recorded, so a replay needs no data. An optional
`inspect(loaded, compressed, calibration)` measures the result per layer (SQNR against float),
and those figures travel with the artifact. Providers
register themselves in their own module; this module imports them explicitly in
`_providers()` (no package scanning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from slimforge.errors import RecipeError, SlimforgeError, validation_problems
from slimforge.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from slimforge.models.tasks import LoadedModel


class StepConfig(BaseModel):
    """Base of every compression step's config: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class CompressionStep:
    """A registered step: its config type, its transform, and its structural replay."""

    name: str
    config_type: type[StepConfig]
    apply: Callable[[nn.Module, Any], nn.Module]
    restructure: Callable[[nn.Module, Any], nn.Module]
    tasks: tuple[str, ...]
    prepare: Prepare | None = None
    inspect: Inspect | None = None
    final: bool = False
    """Its output is no longer a float torch model (quantized, ONNX): no step may follow."""


@dataclass(frozen=True)
class Prepared:
    """What a step's `prepare` hook resolved before the step runs."""

    config: Any
    """The config to apply and record (data-dependent choices made explicit)."""
    notes: list[str] = field(default_factory=list)
    """What was decided, for reports."""
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-layer figures measured on the way (e.g. sensitivity), saved in the artifact."""


Prepare = Callable[[Any, Any, Sequence[str]], Prepared]
"""(loaded, config, calibration texts) -> Prepared."""
Inspect = Callable[[Any, Any, Sequence[str]], dict[str, dict[str, float]]]
"""(loaded before the step, model after it, calibration texts) -> per-layer figures."""
STEPS = Registry[CompressionStep]("compression step")


ALL_TASKS = ("embedding", "causal-lm", "classification", "custom")


def register_step(
    name: str,
    config_type: type[StepConfig],
    restructure: Callable[[nn.Module, Any], nn.Module],
    tasks: tuple[str, ...] = ALL_TASKS,
    prepare: Prepare | None = None,
    inspect: Inspect | None = None,
    final: bool = False,
) -> Callable[[Callable[[nn.Module, Any], nn.Module]], Callable[[nn.Module, Any], nn.Module]]:
    """Decorator for a step's `apply` function: registers it under `name` for `tasks`.
    `prepare` makes data-dependent choices before it runs; `inspect` measures the result
    layer by layer after it; nothing may follow a `final` step."""

    def decorate(apply: Callable[[nn.Module, Any], nn.Module]):
        entry = CompressionStep(name, config_type, apply, restructure, tasks, prepare, inspect,
                                final)
        STEPS.register(name)(entry)
        return apply

    return decorate


def _providers() -> None:
    """Import every module that registers steps (explicit, no scanning)."""
    import slimforge.compress.export  # noqa: F401
    import slimforge.compress.prune  # noqa: F401
    import slimforge.compress.quantize  # noqa: F401
    import slimforge.compress.structured  # noqa: F401


def get_step(name: str) -> CompressionStep:
    """The step registered as `name`; an unknown name lists the known ones."""
    _providers()
    return STEPS.get(name)


def step_names() -> list[str]:
    """Every registered step name."""
    _providers()
    return STEPS.names()


def parse_step(spec: dict[str, Any]) -> tuple[CompressionStep, StepConfig]:
    """Validate `{"step": name, **config}` into the step and its typed config.

    Raises:
        RecipeError: no `step` key, an unknown step, or a config that does not validate.
    """
    from pydantic import ValidationError

    fields = dict(spec)
    name = fields.pop("step", None)
    if not isinstance(name, str):
        raise RecipeError(f"A step needs a `step:` name, got {spec!r}.",
                          f"write `- step: NAME` with NAME one of {step_names()}.")
    try:
        step = get_step(name)
    except Exception as exc:  # the registry's miss carries the list of known names
        raise RecipeError(str(exc)) from None
    try:
        return step, step.config_type.model_validate(fields)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise RecipeError(f"Step {name!r} has a bad config: {problems}.",
                          f"see the fields of {step.config_type.__name__}.") from None


def step_key(spec: dict[str, Any]) -> str:
    """A canonical form of one step (its name and full validated config), so two specs that
    differ only in spelled-out defaults are recognised as the same work."""
    import json

    step, config = parse_step(spec)
    return json.dumps({"step": step.name, **config.model_dump(mode="json")}, sort_keys=True)


def default_calibration() -> list[str]:
    """32 paragraphs of the stdlib corpus's train split: never the held-out evaluation text."""
    from slimforge.data.sources import STDLIB_DOCS, load_texts

    return load_texts(STDLIB_DOCS, "train", limit=32)


def apply_step(loaded: LoadedModel, spec: dict[str, Any],
               calibration: Sequence[str] | None = None) -> LoadedModel:
    """Run one step on a LoadedModel; returns a new LoadedModel that records the step.

    Args:
        loaded: the model to compress (left untouched).
        spec: `{"step": NAME, ...config}`.
        calibration: text for data-dependent choices; default `default_calibration()`.
    """
    step, config = parse_step(spec)
    if loaded.task not in step.tasks:
        raise SlimforgeError(f"Step {step.name!r} does not apply to {loaded.task} models "
                             f"({loaded.spec}); it covers: {', '.join(step.tasks)}.",
                             "choose another step for this model, e.g. quantize.")
    # The corpus is built only for steps that read calibration text (onnx does not).
    texts = calibration or (default_calibration() if step.prepare or step.inspect else [])
    prepared = step.prepare(loaded, config, texts) if step.prepare else Prepared(config)
    model = step.apply(loaded.model, prepared.config)
    layers = {name: dict(figures) for name, figures in prepared.layers.items()}
    for name, figures in (step.inspect(loaded, model, texts) if step.inspect else {}).items():
        layers.setdefault(name, {}).update(figures)
    return loaded.derive(model, {"step": step.name, **prepared.config.model_dump(mode="json")},
                         prepared.notes, layers)


def restructure(model: nn.Module, steps: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded steps' structure on a fresh float model, ready for `load_state_dict`."""
    for spec in steps:
        step, config = parse_step(spec)
        model = step.restructure(model, config)
    return model
