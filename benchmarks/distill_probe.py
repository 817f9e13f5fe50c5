"""One MiniLM distillation setting, measured: the probe behind the choices in
`benchmarks/distillation.py` (which layers to keep, the loss, the learning rate, frozen
embeddings, extra texts, grouped batches).

The student keeps `--keep` of all-MiniLM-L6-v2's layers and is distilled on the stdlib train
split. It prints the held-out cosine on 500 paragraphs, and the cosine on 300 training
paragraphs, whose gap shows over-fitting. With `--every N`, it also prints the cosine on 200
held-out paragraphs every N steps (a curve). `--layers` prints instead every choice of 3
layers' untrained cosine on 200 held-out paragraphs. Ends stdout with one JSON line. Not
collected by pytest.

    .venv/bin/python benchmarks/distill_probe.py --keep 0,4,5 --hidden 1 --steps 800 --every 200
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import re
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def extra_texts(texts: list[str], kind: str) -> list[str]:
    """`sentences`: each paragraph's sentences of 4+ words (where it has several);
    `cropsN`: N random crops of 12-120 words from each paragraph joined to the next;
    `augN`: N copies of each paragraph through `slimforge.data.augment` (10% of the words
    deleted, 5% swapped)."""
    if kind.startswith("aug"):
        from slimforge.data.augment import AugmentConfig, augment

        config = AugmentConfig(copies=int(kind.removeprefix("aug")), deletion=0.1, swap=0.05)
        return augment(texts, config)[len(texts):]
    if kind == "sentences":
        out = []
        for text in texts:
            parts = [p for p in re.split(r"(?<=[.!?])\s+", text) if len(p.split()) >= 4]
            out += parts if len(parts) > 1 else []
        return out
    count, rng, out = int(kind.removeprefix("crops")), random.Random(0), []
    for i, text in enumerate(texts):
        words = f"{text} {texts[(i + 1) % len(texts)]}".split()
        for _ in range(count):
            length = rng.randint(12, min(120, len(words)))
            start = rng.randint(0, len(words) - length)
            out.append(" ".join(words[start:start + length]))
    return out


def main() -> None:
    from slimforge.data.sources import load_texts
    from slimforge.evaluation.evaluate import EvalConfig, evaluate
    from slimforge.models.load import load_model
    from slimforge.models.tasks import embed
    from slimforge.train.config import TrainConfig
    from slimforge.train.distill import DistillConfig, distill, student_from_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="untrained cosine of every "
                        "choice of 3 layers, then stop")
    parser.add_argument("--keep", default="0,4,5", help="teacher layers the student keeps")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--hidden", type=float, default=0.0, help="hidden_weight")
    parser.add_argument("--extra", default="none", help="none | sentences | cropsN | augN")
    parser.add_argument("--freeze", default="", help="freeze parameters whose name has this")
    parser.add_argument("--dropout", type=float, default=0.0, help="the student's dropout "
                        "probability while it learns; negative keeps its config's (0.1 here)")
    parser.add_argument("--group", action="store_true", help="batches grouped by length")
    parser.add_argument("--every", type=int, default=0, help="curve every N steps")
    args = parser.parse_args()
    dropout = None if args.dropout < 0 else args.dropout
    teacher = load_model("builtin:minilm")
    small = EvalConfig(limit=200)
    curve_reference = evaluate(teacher, config=small)
    if args.layers:
        for keep in itertools.combinations(range(6), 3):
            student = student_from_teacher(teacher, list(keep))
            found = evaluate(student, config=small, reference=curve_reference)
            print(json.dumps({"keep": keep, "cosine": round(found.metrics["cosine_mean"], 4)}))
        return
    student = student_from_teacher(teacher, [int(x) for x in args.keep.split(",")])
    for name, param in student.model.named_parameters():
        if args.freeze and args.freeze in name:
            param.requires_grad_(False)
    texts = load_texts("builtin:stdlib-docs", "train")
    texts += [] if args.extra == "none" else extra_texts(texts, args.extra)

    def curve(model) -> float:
        found = evaluate(dataclasses.replace(student, model=model), config=small,
                         reference=curve_reference).metrics["cosine_mean"]
        print(f"curve {found:.4f}", flush=True)
        return found

    with tempfile.TemporaryDirectory() as folder:
        trained, result = distill(
            student, teacher, texts, DistillConfig(max_length=128, hidden_weight=args.hidden,
                                                   dropout=dropout),
            TrainConfig(max_steps=args.steps, batch_size=32, lr=args.lr,
                        warmup_steps=min(20, args.steps - 1),
                        checkpoint_every=args.steps, eval_every=args.every,
                        group_by_length=args.group),
            folder, evaluate=curve if args.every else None)
    held_out = evaluate(trained, config=EvalConfig(limit=500),
                        reference=evaluate(teacher, config=EvalConfig(limit=500)))
    seen = texts[:300]
    on_train = float((embed(teacher, seen) * embed(trained, seen)).sum(-1).mean())
    print(json.dumps({**vars(args), "texts": len(texts), "cosine": held_out.metrics[
        "cosine_mean"], "train_cosine": on_train, "train_seconds": result.seconds}))


if __name__ == "__main__":
    main()
