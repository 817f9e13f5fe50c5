"""The resumable state of a training run, written so that a kill at any moment loses at most
the steps since the last checkpoint and never corrupts one.

Owns: `save_state`, `load_state`, `save_weights`, `load_weights`. A checkpoint is a folder:
`model.safetensors` (the weights), `state.pt` (optimizer, schedule, gradient scaler, every RNG
state, the step and the data position) and `meta.json`, built under a temporary name and
renamed into place (`atomic_dir`), so `last/` is always a complete checkpoint. `state.pt`
holds only tensors and plain Python values and is read back with `weights_only=True`: no
pickled code is ever run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimforge.errors import TrainingError
from slimforge.io.atomic import atomic_dir

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype("int64")), position, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(folder: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write the model's weights (and `meta`) as a complete folder, atomically."""
    from safetensors.torch import save_model

    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return folder


def load_weights(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load a folder written by `save_weights` into `model`; returns its meta."""
    from safetensors.torch import load_model

    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (RuntimeError, OSError) as exc:
        raise TrainingError(f"The checkpoint {folder} does not fit this model "
                            f"({str(exc).splitlines()[0]}).",
                            "resume with the same model and config, or start afresh.") from None
    return json.loads((folder / META).read_text())


def save_state(folder: Path, model: nn.Module, parts: dict[str, Any], meta: dict[str, Any]
               ) -> Path:
    """Write a resumable checkpoint: weights, `parts` (objects with `state_dict()`, or plain
    values), every RNG state, and `meta`."""
    from safetensors.torch import save_model

    state = {name: part.state_dict() if hasattr(part, "state_dict") else part
             for name, part in parts.items()}
    state["rng"] = _rng_state()
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return folder


def load_state(folder: Path, model: nn.Module, parts: dict[str, Any]) -> dict[str, Any]:
    """Restore a checkpoint written by `save_state` into `model` and `parts` (in place) and
    the RNGs; returns the plain values and the meta."""
    meta = load_weights(folder, model)
    try:
        state = torch.load(folder / STATE, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: refuse, never unpickle code
        raise TrainingError(f"{folder / STATE} is not a slimforge training state ({exc}).",
                            "start afresh, or resume from another checkpoint.") from None
    values = {}
    for name, part in parts.items():
        if hasattr(part, "load_state_dict"):
            part.load_state_dict(state[name])
        else:
            values[name] = state[name]
    _set_rng_state(state["rng"])
    return {**values, "meta": meta}
