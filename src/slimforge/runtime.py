"""One place that picks device, thread count and seed, and says why.

Owns: `Runtime` (what was chosen and the reason) and `setup_runtime()`. Everything that runs a
model calls this first, so a benchmark and an evaluation of the same model run under the same
settings. Importing this module does not import torch or touch CUDA; `setup_runtime` does.

    >>> rt = setup_runtime(threads=2, seed=0)
    >>> rt.device, rt.threads
    ('cpu', 2)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Literal

DeviceChoice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Runtime:
    """The settings a run used, each with the reason it was chosen."""

    device: str
    threads: int
    seed: int
    reasons: tuple[str, ...]


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup_runtime(
    device: DeviceChoice = "auto", threads: int | None = None, seed: int = 0
) -> Runtime:
    """Fix threads and seeds, choose the device, and record why.

    Args:
        device: "auto" takes CUDA when present, else the CPU.
        threads: intra-op threads; None means every core this process may use.
        seed: seeds Python, NumPy and torch so runs repeat.

    Returns:
        The chosen settings and their reasons.
    """
    import numpy as np
    import torch

    reasons = []
    n = threads or _default_threads()
    torch.set_num_threads(n)
    reasons.append(
        f"threads={n}: " + ("asked for" if threads else "every core this process may use")
    )
    if device == "auto":
        chosen = "cuda" if torch.cuda.is_available() else "cpu"
        reasons.append(f"device={chosen}: auto, CUDA {'present' if chosen == 'cuda' else 'absent'}")
    else:
        chosen = device
        reasons.append(f"device={chosen}: asked for")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    reasons.append(f"seed={seed}")
    return Runtime(device=chosen, threads=n, seed=seed, reasons=tuple(reasons))
