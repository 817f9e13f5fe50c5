"""The error types users see.

Owns: `SlimforgeError(message, fix)`, its few subclasses, and `validation_problems` (a
pydantic error in one line). Every failure a user can cause
(a bad spec, a corrupt file, an empty dataset, a malformed recipe) is raised as one of these at
the boundary where it is detected, so the CLI can print one line, never a traceback.
Does not own: how errors are rendered (that is `cli.py`).
"""

from __future__ import annotations

from typing import Any


def validation_problems(exc: Any) -> str:
    """A pydantic `ValidationError` as one line: `field.path: what is wrong; ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


class SlimforgeError(Exception):
    """A problem the user can fix: what happened, and what to do about it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


class ModelLoadError(SlimforgeError):
    """A model spec that cannot be resolved or loaded."""


class CheckpointError(SlimforgeError):
    """A weights file or run artifact that is missing, corrupt, tampered with or unsafe."""


class DataError(SlimforgeError):
    """A dataset that is missing, unreadable, malformed or empty."""


class RecipeError(SlimforgeError):
    """A recipe file that does not parse or does not validate."""


class TrainingError(SlimforgeError):
    """A training run that cannot go on: a NaN or infinite loss, a checkpoint that does not
    fit, a precision the device cannot do."""


class SlimforgeWarning(UserWarning):
    """Something worth knowing that does not stop the run."""
