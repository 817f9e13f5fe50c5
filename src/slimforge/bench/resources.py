"""What a process uses while it works: CPU, resident memory, and the GPU through NVML.

Owns: `gpu_reading`, `ResourceSampler`. A background thread samples every `interval_s`: the
process' CPU time (all threads; 100% = one core busy), its resident memory, and where NVML
answers (`nvidia-ml-py`, a CUDA device present) the GPU's utilisation, memory in use and
energy counter. Without a GPU the GPU fields are absent, not zero: a dashboard must not
read "0% utilisation" on a machine that has no GPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATM = Path("/proc/self/statm")


def rss_bytes() -> int | None:
    """The process' resident memory now (Linux), or None."""
    try:
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def gpu_reading(index: int = 0) -> dict[str, float] | None:
    """Utilisation (0-1), memory used and total (bytes) and the energy counter (joules) of
    GPU `index` from NVML; None without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver library: no GPU to read
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        reading = {"utilization": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
                   "memory_used_bytes": float(memory.used),
                   "memory_total_bytes": float(memory.total)}
        with contextlib.suppress(pynvml.NVMLError):  # not every board reports energy
            reading["energy_j"] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000
        return reading
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


@dataclass
class ResourceSampler:
    """`with ResourceSampler() as s: work()`, then `s.summary()`."""

    interval_s: float = 0.1
    gpu_index: int | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        last_cpu, last_at = time.process_time(), time.monotonic()
        stopped = False
        while not stopped:  # one last sample at the stop: short work gets one too
            stopped = self._stop.wait(self.interval_s)
            cpu, at = time.process_time(), time.monotonic()
            sample = {"cpu_percent": 100 * (cpu - last_cpu) / max(at - last_at, 1e-9)}
            last_cpu, last_at = cpu, at
            rss = rss_bytes()
            if rss is not None:
                sample["rss_mb"] = rss / 2**20
            gpu = gpu_reading(self.gpu_index) if self.gpu_index is not None else None
            if gpu is not None:
                sample.update({f"gpu_{k}": v for k, v in gpu.items()})
            self.samples.append(sample)

    def __enter__(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._sample, name="slimforge-resources",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Mean CPU %, mean and peak RSS; GPU utilisation (mean), peak memory and energy
        used only when NVML answered."""
        if not self.samples:
            return {}
        out: dict[str, Any] = {"samples": len(self.samples), "interval_s": self.interval_s}
        cpu = [s["cpu_percent"] for s in self.samples]
        out["cpu_percent_mean"] = sum(cpu) / len(cpu)
        rss = [s["rss_mb"] for s in self.samples if "rss_mb" in s]
        if rss:
            out["rss_mb_mean"], out["rss_mb_max"] = sum(rss) / len(rss), max(rss)
        util = [s["gpu_utilization"] for s in self.samples if "gpu_utilization" in s]
        if util:
            out["gpu_utilization_mean"] = sum(util) / len(util)
            out["gpu_memory_mb_max"] = max(s["gpu_memory_used_bytes"]
                                           for s in self.samples) / 2**20
            energy = [s["gpu_energy_j"] for s in self.samples if "gpu_energy_j" in s]
            if len(energy) > 1:
                out["gpu_energy_j"] = energy[-1] - energy[0]
        return out
