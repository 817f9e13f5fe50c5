"""Run folders: what every command that produces a model or figures leaves behind.

Owns: `write_run`. A run folder holds `manifest.json` (command, spec, config, versions, git
commit, sha256 of every file), `metrics.json`, `report.md`, plots the report links to, and
`model/` when a model was produced. It is assembled under a temporary name and renamed into
place, so an interrupted run leaves nothing half-written. `load_model(run_folder)` verifies
the hashes on the way in.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from slimforge.io.atomic import atomic_dir
from slimforge.io.checkpoint import MODEL_DIR, save_model_dir, write_manifest


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.split("/")[-1]).strip("-")[:40] or "model"


def _fresh_path(output_dir: Path, command: str, spec: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = output_dir / f"{stamp}-{command}-{_slug(spec)}"
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
    """
    path = _fresh_path(Path(output_dir), command, spec)
    with atomic_dir(path) as tmp:
        if model is not None:
            save_model_dir(tmp / MODEL_DIR, model)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (tmp / "report.md").write_text(report)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        write_manifest(tmp, command, spec, config)
    return path
