"""Progress bars for long work, on stderr so stdout stays machine-readable.

Owns: `track`. Bars are transient rich progress bars; they are drawn only on a terminal and
are silent in CI logs, pipes and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def track(items: Sequence[T] | range, description: str) -> Iterable[T]:
    """Iterate `items`, drawing a progress bar on stderr when it is a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return iter(items)
    from rich.progress import track as rich_track

    return rich_track(items, description=description, console=console, transient=True)
