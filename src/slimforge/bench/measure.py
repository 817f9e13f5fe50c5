"""Measurement primitives: timed calls, percentiles, peak memory, size on disk, parameters.

Owns: `time_calls`, `percentile`, `reset_peak_rss`, `peak_rss_mb`, `size_on_disk_mb`,
`parameter_stats`. Peak RSS is read from `VmHWM` in `/proc/self/status` inside the measured
process (a child's `ru_maxrss` can report the parent's peak); writing 5 to
`/proc/self/clear_refs` resets it, so each measurement's peak is its own. Where /proc is not
available, the lifetime peak from `getrusage` is used and the result says so.
"""

from __future__ import annotations

import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, sync: bool) -> list[float]:
    """Run `fn` `warmup` times untimed, then `repeats` times; each call's wall time in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS counter; False where the OS does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM; lifetime ru_maxrss as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def size_on_disk_mb(model: torch.nn.Module) -> float:
    """Bytes of the model's weights written as safetensors (shared tensors once), in MB;
    for an ONNX Runtime model, the bytes of its graph."""
    from safetensors.torch import save_model

    if hasattr(model, "onnx_bytes"):
        return len(model.onnx_bytes) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size / 1e6


def parameter_stats(model: torch.nn.Module) -> tuple[int, float]:
    """(stored values, sparsity): every unique tensor counted once; sparsity is the share
    of exact zeros in weight matrices (tensors of 2 or more dimensions). ONNX Runtime models
    report their initializers' size and no sparsity."""
    if hasattr(model, "stored_values"):
        return model.stored_values(), 0.0
    seen: set[int] = set()
    total, zeros, matrix_values = 0, 0, 0
    for tensor in model.state_dict().values():
        if not isinstance(tensor, torch.Tensor) or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel()
        if tensor.dim() >= 2:
            matrix_values += tensor.numel()
            zeros += int((tensor == 0).sum())
    return total, (zeros / matrix_values if matrix_values else 0.0)
