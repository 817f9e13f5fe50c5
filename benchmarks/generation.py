"""SmolLM2-135M generation: slimforge's engine against transformers and llama.cpp, one run.

`builtin:smollm2` (the bundled Q4_1 GGUF), 2 threads. Variants: transformers eager
`generate` (fp32, bf16: the status quo), and slimforge's engine (compiled decode step over a
static KV cache) in fp32, bf16, int8 weight-only and int4 weight-only (groups of 32, the
GGUF's own blocks; int8 output head); and llama.cpp on the same GGUF (llama-cpp-python in a
separate virtual environment, built there by this script if missing; not a project
dependency). llama.cpp runs in its own process, kept loaded, driven over a pipe, so every
variant is timed in alternating rounds in the same run and ratios cancel the machine's noise.

Measured:
- decode tokens/s at batch 1: (n - 1) tokens / time from the first generated token to the
  last (prefill excluded), 128 greedy tokens after a 32-token prompt, median of the rounds;
- perplexity over held-out docstring text (windows of 1,024, each token scored once) for
  every engine format, and for llama.cpp from its own logits; the ratio is to slimforge fp32,
  which equals transformers fp32 (the GGUF's 4-bit weights expanded);
- 512-token prefill seconds (median of 3) for the best variant and llama.cpp;
- compile seconds of each variant's decode step (once per engine: every span shares it);
- batch 8: 8 prompts of different lengths, 64 new tokens each, generated tokens / wall time.

`best_variant` is the fastest slimforge variant within perplexity x1.05. Ends stdout with one
JSON object. Not collected by pytest.

    .venv/bin/python benchmarks/generation.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quantization import NO_AMX  # noqa: E402  (benchmarks/ is sys.path[0] when run)

LLAMACPP_VENV = Path.home() / ".cache" / "slimforge" / "llamacpp-venv"
LLAMACPP_VERSION = "0.3.36"
PPL_CEILING = 1.05
THREADS = 2

# The llama.cpp side: a loop reading one command per line, answering one JSON line.
_LLAMACPP_WORKER = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=2, n_threads_batch=2, n_ctx=2048, n_batch=512,
            logits_all=True, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "decode":  # greedy tokens after a prompt; time after the first token
        llm.reset()
        llm.eval(cmd["prompt"])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(cmd["n"] - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out = {"tokens_per_s": (cmd["n"] - 1) / (time.perf_counter() - start)}
    elif cmd["op"] == "prefill":
        llm.reset()
        start = time.perf_counter()
        llm.eval(cmd["prompt"])
        out = {"seconds": time.perf_counter() - start}
    elif cmd["op"] == "nll":  # summed NLL of tokens[1:] given the window
        llm.reset()
        llm.eval(cmd["tokens"])
        logits = np.asarray(llm.scores[: len(cmd["tokens"]) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        target = np.asarray(cmd["tokens"][1:])
        out = {"nll": (-logp[np.arange(len(target)), target]).tolist()}
    print(json.dumps(out), flush=True)
"""


def llamacpp_python() -> Path:
    """The llama-cpp-python interpreter, building it into its own venv when missing."""
    python = LLAMACPP_VENV / "bin" / "python"
    if not python.exists():
        print("building llama-cpp-python (about 7 minutes, once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LLAMACPP_VENV)], check=True)
        env = {**os.environ, "CMAKE_ARGS": NO_AMX}  # ggml's AMX path crashes here (quantization.py)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir",
                        f"llama-cpp-python=={LLAMACPP_VERSION}", "numpy"], check=True, env=env)
    return python


class LlamaCpp:
    """llama.cpp kept loaded in a child process."""

    def __init__(self, gguf: Path) -> None:
        self.proc = subprocess.Popen([str(llamacpp_python()), "-c", _LLAMACPP_WORKER, str(gguf)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp worker exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def held_out_ids(tokenizer, tokens: int) -> list[int]:
    from slimforge.data.sources import STDLIB_DOCS, load_texts

    text = "\n\n".join(load_texts(STDLIB_DOCS, "eval", None, "text"))
    return tokenizer(text)["input_ids"][:tokens]


def perplexity(logits_of, ids, window: int) -> float:
    import torch

    from slimforge.evaluation.evaluate import window_losses

    nll, scored = window_losses(torch.tensor(ids), logits_of, window, window)
    return math.exp(sum(nll) / sum(scored))


def hf_decode(model, prompt: list[int], n: int) -> float:
    """transformers eager generate: tokens/s after the first token (a streamer clocks it)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    with torch.inference_mode():
        model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, streamer=clock)
    # put() is called once with the prompt, then once per new token.
    return (n - 1) / (clock.times[-1] - clock.times[1])


def engine_decode(engine, prompt: list[int], n: int) -> float:
    from slimforge.generate import SamplingParams

    times: list[float] = []
    engine.generate(prompt, SamplingParams(max_new_tokens=n, ignore_eos=True),
                    on_token=lambda event: times.append(time.perf_counter()))
    return (n - 1) / (times[-1] - times[0])


def main() -> None:
    import torch

    from slimforge.generate import Engine, SamplingParams
    from slimforge.models.load import load_model, smollm2_gguf
    from slimforge.runtime import setup_runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--ppl-windows", type=int, default=8)
    parser.add_argument("--no-llamacpp", action="store_true")
    args = parser.parse_args()
    setup_runtime()
    torch.set_num_threads(THREADS)

    loaded = load_model("builtin:smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    text_ids = held_out_ids(tokenizer, args.ppl_windows * 1024)
    prompt = text_ids[:32]
    long_prompt = text_ids[:512]
    gguf = smollm2_gguf()
    llama = None if args.no_llamacpp else LlamaCpp(gguf)

    engines, compile_s, ppl, notes, weight_mb = {}, {}, {}, {}, {}
    for fmt in ("fp32", "bf16", "int8", "int4"):
        engine = Engine(model, tokenizer, format=fmt, slots=1, max_len=1024)
        compile_s[f"slimforge-{fmt}"] = engine.warmup()
        engines[f"slimforge-{fmt}"] = engine
        ppl[f"slimforge-{fmt}"] = perplexity(engine.score, text_ids, 1024)
        weight_mb[f"slimforge-{fmt}"] = engine.weights.decode_bytes() / 1e6
        notes[f"slimforge-{fmt}"] = engine.weights.notes + (
            [f"fallback: {engine.fallback}"] if engine.fallback else [])
    if llama is not None:  # the same windows, scored by llama.cpp's own logits
        nll = [value for begin in range(0, len(text_ids), 1024)
               for value in llama.ask(op="nll", tokens=text_ids[begin:begin + 1024])["nll"]]
        ppl["llamacpp"] = math.exp(sum(nll) / len(nll))
    bf16_model = None

    decode: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        decode.setdefault("transformers-fp32", []).append(hf_decode(model, prompt, 32))
        if bf16_model is None:
            import copy
            bf16_model = copy.deepcopy(model).to(torch.bfloat16)
        decode.setdefault("transformers-bf16", []).append(hf_decode(bf16_model, prompt, 32))
        for name, engine in engines.items():
            decode.setdefault(name, []).append(engine_decode(engine, prompt, args.new_tokens))
        if llama is not None:
            decode.setdefault("llamacpp", []).append(
                llama.ask(op="decode", prompt=prompt, n=args.new_tokens)["tokens_per_s"])
    median = {name: statistics.median(v) for name, v in decode.items()}
    reference = ppl["slimforge-fp32"]
    ratio = {name: value / reference for name, value in ppl.items()}
    eligible = [n for n in engines if ratio[n] <= PPL_CEILING]
    best = max(eligible, key=median.get)
    per_round = [ours / theirs for ours, theirs in
                 zip(decode[best], decode.get("llamacpp", []), strict=False)]

    engine = engines[best]
    prefill_ours = []
    for _ in range(3):
        start = time.perf_counter()
        engine.score(long_prompt)
        prefill_ours.append(time.perf_counter() - start)
    prefill_llama = [llama.ask(op="prefill", prompt=long_prompt)["seconds"]
                     for _ in range(3)] if llama is not None else []

    batch8 = {}
    prompts8 = [text_ids[i * 100: i * 100 + 16 + 8 * i] for i in range(8)]
    for fmt in ("bf16", best.removeprefix("slimforge-")):
        wide = Engine(model, tokenizer, format=fmt, slots=8, max_len=256)
        wide.warmup()
        start = time.perf_counter()
        outs = wide.generate(prompts8, SamplingParams(max_new_tokens=64, ignore_eos=True))
        batch8[f"slimforge-{fmt}"] = sum(len(o.tokens) for o in outs) / \
            (time.perf_counter() - start)
    if llama is not None:
        llama.close()

    result = {
        "benchmark": "generation", "model": "builtin:smollm2", "threads": THREADS,
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "decode_tokens_per_s": median, "decode_rounds": decode,
        "perplexity": ppl, "ppl_ratio": ratio,
        "best_variant": best, "best_ppl_ratio": ratio[best],
        "best_vs_llamacpp": statistics.median(per_round) if per_round else None,
        "prefill_512_s": {best: statistics.median(prefill_ours),
                          **({"llamacpp": statistics.median(prefill_llama)}
                             if prefill_llama else {})},
        "prefill_vs_llamacpp": (statistics.median(prefill_llama) / statistics.median(
            prefill_ours)) if prefill_llama else None,
        "compile_seconds": compile_s,
        "weight_mb_read_per_token": weight_mb,
        "batch8_tokens_per_s": batch8,
        "batch1_tokens_per_s": {name: median[name] for name in batch8},
        "notes": notes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
