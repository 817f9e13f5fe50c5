"""Does torch.compile remove eager overhead from MiniLM at batch 1, fp32 and int8?

Times one forward at batch 1 x 32 tokens, eager and compiled (`dynamic=False`), and counts
graph breaks in the int8 model. An experiment for issue 3's batch-1 latency gap to ONNX
Runtime; not collected by pytest.

    .venv/bin/python benchmarks/compile_probe.py
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from slimforge.compress import apply_step
    from slimforge.models.load import load_model
    from slimforge.models.tasks import tokenize
    from slimforge.runtime import setup_runtime

    setup_runtime()
    base = load_model("builtin:minilm")
    int8 = apply_step(base, {"step": "quantize"})
    text = ["Return the sum of the numbers in the iterable, starting from zero."]
    batch = tokenize(int8, text, 32, pad_to_max=True)

    @torch.inference_mode()
    def ms(model: torch.nn.Module, calls: int = 50) -> float:
        for _ in range(5):
            model(**batch)
        start = time.perf_counter()
        for _ in range(calls):
            model(**batch)
        return (time.perf_counter() - start) / calls * 1000

    row = {}
    for name, loaded in (("fp32", base), ("int8", int8)):
        row[f"{name}_eager_ms"] = ms(loaded.model)
        compiled = torch.compile(loaded.model, dynamic=False)
        start = time.perf_counter()
        ms(compiled, calls=1)
        row[f"{name}_compile_s"] = time.perf_counter() - start
        row[f"{name}_compiled_ms"] = ms(compiled)
    row["int8_graph_breaks"] = torch._dynamo.explain(int8.model)(**batch).graph_break_count
    print(json.dumps(row))


if __name__ == "__main__":
    main()
