"""The recipes shipped with slimforge, and how a recipe argument names one.

Owns: `FOLDER`, `shipped`, `resolve`. Kept free of heavy imports: the CLI lists these names
in its help.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
"""Where the shipped `*.yaml` recipes lie; `default.yaml` is what a bare `optimize` runs."""


def shipped() -> list[str]:
    """The shipped recipes' names (file names without `.yaml`)."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def resolve(name: str | None) -> str | None:
    """A recipe argument as a path: an existing file as it is, a shipped recipe's name as its
    file, and anything else unchanged (so the loader names what is missing)."""
    if name is None or Path(name).exists() or name not in shipped():
        return name
    return str(FOLDER / f"{name}.yaml")
