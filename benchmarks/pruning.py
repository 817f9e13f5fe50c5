"""Pruning side by side, in one run: what each way of pruning buys, measured.

MiniLM (`builtin:minilm`): structured removal of 30% of the FFN neurons and 25% of the
attention heads of every layer (`prune_structured`, importance from 32 train-split
paragraphs), timed against the unpruned model in alternating rounds at batch 32 x 128 tokens
and at batch 1; fidelity as the mean cosine to the unpruned embeddings on the held-out
split; unstructured 50% magnitude beside it, to show that zeros alone buy no speed on a CPU.
The saved pruned model is reloaded in a new process and must give identical outputs. Then
recovery: the pruned model is distilled from the unpruned one (representation loss, 1 - cos
+ MSE of the pooled embeddings, plus 10 x every layer's hidden states against the unpruned
layer's; no dropout; AdamW, warmup then cosine decay, bf16 autocast where the CPU has it,
batches grouped by length) on the train split, and its held-out cosine is measured again.

SmolLM2 (`builtin:smollm2`, fp32): held-out perplexity of the dense model and at 50%
unstructured sparsity by magnitude and by Wanda (input norms from 32 train-split
paragraphs), and 2:4 (Wanda scores); embeddings and `lm_head` stay dense in all.

Ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/pruning.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RELOAD = """
import sys, torch
from slimforge.models.load import load_model
from slimforge.models.tasks import tokenize
loaded = load_model(sys.argv[1])
batch = tokenize(loaded, ["Return the number of items in a container."], 64)
with torch.inference_mode():
    out = loaded.model(**batch).last_hidden_state
torch.save({"out": out, "ffn": loaded.model.encoder.layer[0].intermediate.dense.out_features,
            "heads": loaded.model.encoder.layer[0].attention.self.num_attention_heads},
           sys.argv[2])
"""


def recover(model, base, steps: int, lr: float) -> tuple:
    """Distil the pruned model from the unpruned one; (recovered model, train seconds)."""
    from slimforge.data.sources import load_texts
    from slimforge.train.config import TrainConfig
    from slimforge.train.distill import DistillConfig, distill

    texts = load_texts("builtin:stdlib-docs", "train")
    with tempfile.TemporaryDirectory() as folder:
        recovered, result = distill(
            model, base, texts, DistillConfig(max_length=128, hidden_weight=10.0),
            TrainConfig(max_steps=steps, batch_size=32, lr=lr, warmup_steps=20,
                        checkpoint_every=steps, group_by_length=True), folder)
    return recovered, result.seconds, result.precision


def minilm(limit: int, recovery_steps: int, recovery_lr: float) -> dict:
    import torch

    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.compress import apply_step
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.io.run import write_run
    from slimforge.models.load import load_model
    from slimforge.models.tasks import tokenize

    base = load_model("builtin:minilm")
    eval_config = EvalConfig(limit=limit)
    bench_config = BenchConfig(repeats=40, rounds=4, throughput_repeats=24, batch_size=32,
                               seq_len=128)
    reference = evaluate(base, config=eval_config)
    rows = {}
    for label, step in {
            "structured: 30% FFN neurons, 25% heads": {"step": "prune_structured", "ffn": 0.3,
                                                       "heads": 0.25},
            "unstructured 50% magnitude": {"step": "prune", "sparsity": 0.5}}.items():
        model = apply_step(base, step)
        quality = evaluate(model, config=eval_config, reference=reference)
        speed = benchmark(model, bench_config, anchor=base)
        rows[label] = {"cosine": quality.metrics["cosine_mean"],
                       "batch32_speedup": speed.vs_anchor["throughput_ratio"],
                       "batch1_speedup": speed.vs_anchor["latency_speedup"],
                       "size_mb": speed.size_mb, "anchor_size_mb": speed.anchor.size_mb,
                       "parameters": speed.parameters, "notes": model.notes}
        if step["step"] == "prune_structured":
            with tempfile.TemporaryDirectory() as folder:
                run = write_run(folder, "pruning", "builtin:minilm", {}, {}, "#\n", model=model)
                out_file = os.path.join(folder, "out.pt")
                subprocess.run([sys.executable, "-c", RELOAD, str(run), out_file], check=True)
                again = torch.load(out_file, weights_only=True)
            with torch.inference_mode():
                batch = tokenize(model, ["Return the number of items in a container."], 64)
                here = model.model(**batch).last_hidden_state
            rows[label]["reload_identical"] = bool(torch.equal(again["out"], here))
            rows[label]["reloaded_shapes"] = {"ffn": again["ffn"], "heads": again["heads"]}
            if recovery_steps:
                recovered, seconds, precision = recover(model, base, recovery_steps,
                                                        recovery_lr)
                quality = evaluate(recovered, config=eval_config, reference=reference)
                rows[label].update({"cosine_recovered": quality.metrics["cosine_mean"],
                                    "recovery_steps": recovery_steps,
                                    "recovery_seconds": seconds,
                                    "recovery_precision": precision})
    return rows


def smollm2(max_tokens: int) -> dict:
    from slimforge.compress import apply_step
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model

    base = load_model("builtin:smollm2")
    eval_config = EvalConfig(max_tokens=max_tokens, window=1024, stride=1024)
    rows = {"fp32": evaluate(base, config=eval_config).metrics["perplexity"]}
    for label, step in {"magnitude 50%": {"sparsity": 0.5},
                        "wanda 50%": {"method": "wanda", "sparsity": 0.5},
                        "2:4 (wanda)": {"method": "wanda", "pattern": "2:4"}}.items():
        model = apply_step(base, {"step": "prune", **step})
        rows[label] = evaluate(model, config=eval_config).metrics["perplexity"]
        del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="MiniLM held-out paragraphs")
    parser.add_argument("--max-tokens", type=int, default=8192, help="SmolLM2 eval tokens")
    parser.add_argument("--recovery-steps", type=int, default=1000, help="0: no recovery")
    parser.add_argument("--recovery-lr", type=float, default=3e-4)
    args = parser.parse_args()
    started = time.perf_counter()
    mini = minilm(args.limit, args.recovery_steps, args.recovery_lr)
    llm = smollm2(args.max_tokens)
    structured = mini["structured: 30% FFN neurons, 25% heads"]
    for label, row in mini.items():
        print(f"| {label} | {row['cosine']:.4f} | {row['batch32_speedup']:.2f}x | "
              f"{row['batch1_speedup']:.2f}x | {row['size_mb']:.1f} MB |", file=sys.stderr)
    for label, ppl in llm.items():
        print(f"| {label} | {ppl:.2f} |", file=sys.stderr)
    print(json.dumps({
        "minilm_structured_speedup": structured["batch32_speedup"],
        "minilm_structured_batch1_speedup": structured["batch1_speedup"],
        "minilm_structured_cosine": structured["cosine"],
        "minilm_structured_cosine_recovered": structured.get("cosine_recovered"),
        "minilm_structured_recovery_seconds": structured.get("recovery_seconds"),
        "minilm_structured_reload_identical": structured["reload_identical"],
        "minilm_rows": mini,
        "smollm2_fp32_ppl": llm["fp32"], "smollm2_magnitude50_ppl": llm["magnitude 50%"],
        "smollm2_wanda50_ppl": llm["wanda 50%"], "smollm2_2of4_ppl": llm["2:4 (wanda)"],
        "seconds": round(time.perf_counter() - started),
        "date": time.strftime("%Y-%m-%d"),
    }, default=str))


if __name__ == "__main__":
    main()
