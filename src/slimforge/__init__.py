"""slimforge: make a real PyTorch / Hugging Face model smaller and faster, and measure it.

Public API only. Names resolve lazily on first use, so `import slimforge` stays cheap: it
imports neither torch nor transformers, never initializes CUDA, and never imports fastapi,
onnxruntime, opacus or matplotlib.

    >>> import slimforge
    >>> loaded = slimforge.load_model("builtin:tiny-bert")
    >>> loaded.task
    'embedding'
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from slimforge.errors import SlimforgeError

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed; on a CPU build of torch torchao logs
# that its CUDA-only extensions cannot load, and torch warns about how torchao registers its
# enums. Both are import noise on every command, not problems, so only errors get through.
for _logger in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_logger).setLevel(logging.ERROR)

_LAZY = {
    "load_model": "slimforge.models.load",
    "LoadedModel": "slimforge.models.tasks",
    "evaluate": "slimforge.evaluation.evaluate",
    "EvalConfig": "slimforge.evaluation.evaluate",
    "EvalResult": "slimforge.evaluation.evaluate",
    "benchmark": "slimforge.bench.bench",
    "BenchConfig": "slimforge.bench.bench",
    "BenchResult": "slimforge.bench.bench",
    "quantize": "slimforge.compress.quantize",
    "QuantConfig": "slimforge.compress.quantize",
    "optimize": "slimforge.pipeline",
    "OptimizeResult": "slimforge.pipeline",
    "Recipe": "slimforge.recipe",
    "load_recipe": "slimforge.recipe",
    "dump_recipe": "slimforge.recipe",
    "load_texts": "slimforge.data.sources",
}

__all__ = ["SlimforgeError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'slimforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
