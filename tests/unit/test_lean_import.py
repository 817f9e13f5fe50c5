"""`import slimforge` stays light: no torch, no heavy optional packages, no CUDA."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "fastapi", "onnxruntime", "matplotlib", "opacus")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_import_pulls_in_nothing_heavy():
    out = _run(f"import sys, slimforge; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out == "[]"


def test_using_the_api_does_not_initialise_cuda_or_import_server_deps():
    out = _run(
        "import sys, slimforge\n"
        "loaded = slimforge.load_model('builtin:tiny-bert')\n"
        "slimforge.quantize(loaded.model, slimforge.QuantConfig())\n"
        "import torch\n"
        "print(torch.cuda.is_initialized(), "
        "[m for m in ('fastapi', 'onnxruntime', 'matplotlib', 'opacus') if m in sys.modules])"
    )
    assert out == "False []"


def test_public_api_names_resolve():
    import slimforge

    for name in slimforge.__all__:
        assert getattr(slimforge, name) is not None, name


def test_subpackages_do_not_shadow_api_functions():
    """Importing a subpackage sets it as an attribute of its parent; none may be named like
    an API function, or `slimforge.evaluate(...)` would become a module call."""
    import importlib
    import types

    import slimforge

    for module in ("slimforge.evaluation.evaluate", "slimforge.bench.bench",
                   "slimforge.compress.quantize", "slimforge.pipeline", "slimforge.recipe"):
        importlib.import_module(module)
    for name in ("load_model", "evaluate", "benchmark", "quantize", "optimize", "load_recipe"):
        value = getattr(slimforge, name)
        assert callable(value), name
        assert not isinstance(value, types.ModuleType), name
