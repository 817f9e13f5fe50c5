"""Distillation, measured: a 3-layer MiniLM and a half-depth SmolLM2, each taught by its
teacher through `slimforge.train`.

MiniLM (`builtin:minilm`, 6 layers): the student keeps the 3 teacher layers whose untrained
student best matches the teacher on 64 training paragraphs (`pick_layers`; the
`prune_structured` step, initialised from the teacher's weights) and is distilled on the
stdlib train split (representation loss: 1 - cos + MSE of the pooled embeddings, plus every
student layer's token states against the teacher layer that ends the span it stands in for,
at weight 10; no dropout; AdamW at 5e-4, warmup then cosine decay; bf16 autocast where the
CPU has it; batches grouped by length) for about `--minutes`. Held-out fidelity (mean cosine
to the teacher's embeddings) before and after; throughput of student vs teacher at batch 32 x
128 tokens, in alternating rounds of one run.

SmolLM2 (`builtin:smollm2`, 30 layers): the student keeps every other layer; held-out
perplexity of the truncated model before distillation and after a brief logit distillation
(KL at T=2 x T^2, mixed half and half with the next-token loss) on the train split.

Ends stdout with one JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/distillation.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def minilm(minutes: float, step_seconds: float, limit: int, lr: float) -> dict:
    from slimforge.bench.bench import BenchConfig, benchmark
    from slimforge.data.sources import load_texts
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model
    from slimforge.train.config import TrainConfig
    from slimforge.train.distill import (
        DistillConfig,
        distill,
        pick_layers,
        student_from_teacher,
    )

    teacher = load_model("builtin:minilm")
    eval_config = EvalConfig(limit=limit)
    reference = evaluate(teacher, config=eval_config)
    texts = load_texts("builtin:stdlib-docs", "train")
    tick = time.perf_counter()
    layers = pick_layers(teacher, 3, texts[:64])
    pick_seconds = time.perf_counter() - tick
    student = student_from_teacher(teacher, layers)
    before = evaluate(student, config=eval_config, reference=reference).metrics["cosine_mean"]
    steps = max(20, int(minutes * 60 / step_seconds))  # the time budget, in steps
    with tempfile.TemporaryDirectory() as folder:
        trained, result = distill(student, teacher, texts,
                                  DistillConfig(max_length=128, hidden_weight=10.0),
                                  TrainConfig(max_steps=steps, batch_size=32, lr=lr,
                                              warmup_steps=20, checkpoint_every=steps,
                                              group_by_length=True), folder)
    after = evaluate(trained, config=eval_config, reference=reference).metrics["cosine_mean"]
    speed = benchmark(trained, BenchConfig(repeats=20, rounds=4, throughput_repeats=16,
                                           batch_size=32, seq_len=128), anchor=teacher)
    return {"layers": 3, "kept": layers, "pick_seconds": pick_seconds,
            "cosine_before": before, "cosine": after, "steps": result.steps,
            "train_seconds": result.seconds, "precision": result.precision,
            "speedup": speed.vs_anchor["throughput_ratio"],
            "batch1_speedup": speed.vs_anchor["latency_speedup"]}


def smollm2(steps: int, max_tokens: int, lr: float) -> dict:
    from slimforge.data.sources import load_texts
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model
    from slimforge.train.config import TrainConfig
    from slimforge.train.distill import DistillConfig, distill, student_from_teacher

    teacher = load_model("builtin:smollm2")
    eval_config = EvalConfig(max_tokens=max_tokens, window=1024, stride=1024)
    teacher_ppl = evaluate(teacher, config=eval_config).metrics["perplexity"]
    student = student_from_teacher(teacher, list(range(0, 30, 2)))
    truncated = evaluate(student, config=eval_config).metrics["perplexity"]
    texts = load_texts("builtin:stdlib-docs", "train")
    with tempfile.TemporaryDirectory() as folder:
        trained, result = distill(student, teacher, texts, DistillConfig(max_length=256),
                                  TrainConfig(max_steps=steps, batch_size=4, lr=lr,
                                              warmup_steps=5, checkpoint_every=steps), folder)
    distilled = evaluate(trained, config=eval_config).metrics["perplexity"]
    return {"layers": 15, "teacher_ppl": teacher_ppl, "truncated_ppl": truncated,
            "distilled_ppl": distilled, "steps": result.steps,
            "train_seconds": result.seconds, "precision": result.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=9.0, help="MiniLM training budget")
    parser.add_argument("--step-seconds", type=float, default=0.31,
                        help="measured seconds per MiniLM step here (turns minutes into steps)")
    parser.add_argument("--limit", type=int, default=500, help="MiniLM held-out paragraphs")
    parser.add_argument("--minilm-lr", type=float, default=5e-4)
    parser.add_argument("--smollm2-steps", type=int, default=60)
    parser.add_argument("--smollm2-lr", type=float, default=1e-4)
    parser.add_argument("--max-tokens", type=int, default=8192, help="SmolLM2 eval tokens")
    args = parser.parse_args()
    mini = minilm(args.minutes, args.step_seconds, args.limit, args.minilm_lr)
    print(f"MiniLM 3 layers: cosine {mini['cosine_before']:.4f} -> {mini['cosine']:.4f} in "
          f"{mini['train_seconds']:.0f} s; {mini['speedup']:.2f}x at batch 32", file=sys.stderr)
    llm = smollm2(args.smollm2_steps, args.max_tokens, args.smollm2_lr)
    print(f"SmolLM2 15 layers: ppl {llm['truncated_ppl']:.1f} -> {llm['distilled_ppl']:.1f} "
          f"(teacher {llm['teacher_ppl']:.2f})", file=sys.stderr)
    print(json.dumps({
        "minilm_student_layers": mini["layers"], "minilm_student_cosine": mini["cosine"],
        "minilm_student_cosine_before": mini["cosine_before"],
        "minilm_student_speedup": mini["speedup"], "train_seconds": mini["train_seconds"],
        "minilm": mini, "smollm2_truncated_ppl": llm["truncated_ppl"],
        "smollm2_distilled_ppl": llm["distilled_ppl"], "smollm2": llm,
        "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
