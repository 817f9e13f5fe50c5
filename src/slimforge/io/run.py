"""Run folders: what every command that produces a model or figures leaves behind.

Owns: `write_run`, `fresh_path`, `Journal`. A run folder holds `manifest.json` (command, spec,
config, versions, git commit, sha256 of every file), `metrics.json` (`results.json` for
optimize), `report.md`, plots the report links to, and `model/` when a model was produced. It
is assembled under a temporary name and renamed into place, so an interrupted run leaves
nothing half-written; a long run journals what it finished beside it (`Journal`), so it can
resume. `load_model(run_folder)` verifies the hashes on the way in.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

from slimforge.errors import SlimforgeError
from slimforge.io.atomic import atomic_dir, atomic_write_text
from slimforge.io.checkpoint import MODEL_DIR, save_model_dir, write_manifest


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.split("/")[-1]).strip("-")[:40] or "model"


def fresh_path(output_dir: str | Path, command: str, spec: str) -> Path:
    """A new run folder's path under `output_dir`: timestamp, command and model, unused."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / f"{stamp}-{command}-{_slug(spec)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_run(
    output_dir: str | Path,
    command: str,
    spec: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    report: str,
    model: Any = None,
    files: dict[str, bytes] | None = None,
    path: Path | None = None,
    metrics_name: str = "metrics.json",
) -> Path:
    """Write a complete run folder atomically and return its path.

    Args:
        output_dir: parent folder (created if needed); the run gets a fresh timestamped name.
        command: the slimforge command that ran (`optimize`, `bench`, `evaluate`, ...).
        spec: the model spec the run was about.
        config: the full configuration used, recorded in the manifest.
        metrics: the figures, written as `metrics.json`.
        report: the Markdown report, written as `report.md`.
        model: a LoadedModel to save under `model/`, or None for figures-only runs.
        files: more files by name (plots the report links to), hashed like the rest.
        path: the run folder itself, instead of a fresh name under `output_dir`.
        metrics_name: the file name of `metrics`.
    """
    path = path or fresh_path(output_dir, command, spec)
    with atomic_dir(path) as tmp:
        if model is not None:
            save_model_dir(tmp / MODEL_DIR, model)
        (tmp / metrics_name).write_text(json.dumps(metrics, indent=2, default=str))
        (tmp / "report.md").write_text(report)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        write_manifest(tmp, command, spec, config)
    return path


class Journal:
    """What a long run finished so far, kept beside its future folder (`RUN.partial/`), one
    atomically written JSON file per finished item, so an interrupted run resumes where it
    stopped. A journal belongs to one configuration: another one refuses to continue it."""

    def __init__(self, run_path: Path, config: dict[str, Any]) -> None:
        self.path = run_path.with_name(run_path.name + ".partial")
        recorded = self.path / "config.json"
        if recorded.exists():
            if json.loads(recorded.read_text()) != json.loads(json.dumps(config, default=str)):
                raise SlimforgeError(
                    f"{self.path} holds an interrupted run of a different configuration.",
                    f"resume it with the same recipe, or remove {self.path} to start afresh.")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(recorded, json.dumps(config, indent=2, default=str))

    def done(self) -> dict[str, dict[str, Any]]:
        """Every finished item by name, as it was added."""
        items = [json.loads(p.read_text()) for p in sorted(self.path.glob("item-*.json"))]
        return {item["name"]: item for item in items}

    def add(self, item: dict[str, Any]) -> None:
        """Record one finished item (a dict with a `name`)."""
        number = len(list(self.path.glob("item-*.json")))
        atomic_write_text(self.path / f"item-{number:04d}.json",
                          json.dumps(item, indent=1, default=str))

    def close(self) -> None:
        """The run is complete: the journal goes."""
        shutil.rmtree(self.path, ignore_errors=True)
