"""Weights files and run artifacts: safe to load, verified, written atomically.

Owns: reading a state dict from a file (safetensors preferred; pickles only through
`torch.load(weights_only=True)`), writing a model folder (`model.safetensors` + config +
tokenizer + `slimforge.json`), and the run manifest (`manifest.json`: what was run, with which
versions, and the sha256 of every file). Does not own: rebuilding an architecture from the
model folder (that is `models/load.py`, which needs the compression registry).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from slimforge.errors import CheckpointError

MANIFEST = "manifest.json"
MODEL_DIR = "model"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
MODEL_META = "slimforge.json"
FORMAT = "slimforge-run/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TRACKED_PACKAGES = ("slimforge", "torch", "torchao", "transformers", "tokenizers", "safetensors",
                    "onnxruntime", "numpy")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_safetensors(path: Path) -> None:
    """Open a safetensors file's header and every tensor's bounds, without loading data.

    Raises:
        CheckpointError: the file is truncated or corrupt.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}).",
            "the file is truncated or corrupt: copy or download it again.",
        ) from exc


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Read a state dict from `.safetensors`, or from a pickle with `weights_only=True`.

    Raises:
        CheckpointError: missing, corrupt, an unknown format, or a pickle holding objects.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"Weights file {file} does not exist.", "check the path.")
    if file.suffix == ".safetensors":
        check_safetensors(file)
        from safetensors.torch import load_file

        return load_file(str(file))
    if file.suffix in PICKLE_SUFFIXES:
        return _load_pickle_weights_only(file)
    raise CheckpointError(
        f"{file} has an unknown weights format {file.suffix!r}.",
        "save weights with safetensors (`safetensors.torch.save_model`).",
    )


def _load_pickle_weights_only(file: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{file} is a pickle that holds more than tensors; slimforge refuses to unpickle it "
            "because unpickling runs arbitrary code.",
            "re-save it as a plain state dict, preferably with safetensors "
            "(`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`).",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file} could not be read as a PyTorch checkpoint ({exc}).",
            "the file is truncated or corrupt: save or copy it again.",
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{file} holds a {type(state).__name__}, not a state dict.",
            "save `model.state_dict()`, not the model object.",
        )
    return state


def save_model_dir(model_dir: Path, loaded: Any) -> None:
    """Write a LoadedModel into `model_dir`: weights, HF config, tokenizer, slimforge.json."""
    from safetensors.torch import save_model

    model_dir.mkdir(parents=True, exist_ok=True)
    architecture = loaded.architecture
    if hasattr(loaded.model, "onnx_bytes"):  # an ONNX Runtime model: the graph is the model
        (model_dir / ONNX).write_bytes(loaded.model.onnx_bytes)
        architecture = {"kind": "onnx"}
    else:
        save_model(loaded.model, str(model_dir / WEIGHTS), metadata={"format": "pt"})
    config = getattr(loaded.model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(model_dir)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(model_dir)
    meta = {
        "task": loaded.task, "spec": loaded.spec, "source": loaded.source,
        "architecture": architecture, "steps": loaded.steps,
        "base_spec": loaded.base_spec, "pooling": loaded.pooling,
        "notes": loaded.notes, "layers": loaded.layers,
    }
    (model_dir / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the slimforge checkout this code runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_manifest(run_dir: Path, command: str, spec: str, config: dict[str, Any]) -> dict:
    """Hash every file under `run_dir` and write `manifest.json` beside them."""
    files = {
        str(path.relative_to(run_dir)): sha256_file(path)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format": FORMAT, "command": command, "spec": spec, "config": config,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(), "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "files": files,
    }
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(run_dir: Path) -> dict[str, Any]:
    """Check every file a run's manifest lists against its sha256.

    Returns:
        The manifest.

    Raises:
        CheckpointError: the manifest is unreadable, a file is missing, or a hash differs.
    """
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is missing or not a slimforge manifest ({exc}).",
            "point at a run folder written by slimforge, or re-run the command that made it.",
        ) from exc
    for name, expected in files.items():
        file = run_dir / name
        if not file.is_file():
            raise CheckpointError(f"{file} is listed in the manifest but missing.",
                                  "the run folder is incomplete: re-run the command.")
        if sha256_file(file) != expected:
            raise CheckpointError(
                f"{file} does not match the sha256 in {path}: it was changed or corrupted.",
                "re-run the command that produced it, or restore the original file.",
            )
    return manifest
