"""slimforge.generate on the tiny Llama: the engine's greedy tokens are transformers' own,
continuous batching does not change a sequence's tokens, the compiled step compiles once,
the quantized formats stay close, and bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch

from slimforge.errors import ModelLoadError
from slimforge.generate import Engine, GenerationError, SamplingParams
from slimforge.generate import engine as engine_module

PROMPTS = ["hello world", "def f(x): return x", "a", "The quick brown fox"]


def greedy(params: int = 12) -> SamplingParams:
    return SamplingParams(max_new_tokens=params, ignore_eos=True)


def hf_greedy(loaded, prompt: str, n: int) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_eager_greedy_equals_transformers_with_more_prompts_than_slots(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", slots=2, max_len=128,
                    compile=False)
    outs = engine.generate(PROMPTS, greedy(12))
    assert [o.tokens for o in outs] == [hf_greedy(tiny_llama, p, 12) for p in PROMPTS]
    assert all(o.finish_reason == "length" for o in outs)
    assert engine.fallback == "compile=False"


def test_compiled_step_equals_transformers_and_compiles_once(tiny_llama):
    from torch._dynamo.utils import counters

    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", slots=2, max_len=512)
    assert engine.warmup() > 0
    frames = counters["stats"]["unique_graphs"]
    # 150 tokens cross the 64, 128 and 256 attention-span buckets: still no recompile.
    outs = engine.generate(PROMPTS[:2], greedy(150))
    assert counters["stats"]["unique_graphs"] == frames
    assert engine.fallback is None
    assert [o.tokens for o in outs] == [hf_greedy(tiny_llama, p, 150) for p in PROMPTS[:2]]


def test_compiled_int4_step_equals_its_eager_step(tiny_llama):
    prompts = PROMPTS[:2]
    eager = Engine(tiny_llama.model, tiny_llama.tokenizer, "int4", slots=2, compile=False)
    compiled = Engine(tiny_llama.model, tiny_llama.tokenizer, "int4", slots=2)
    assert [o.tokens for o in compiled.generate(prompts, greedy(30))] == \
        [o.tokens for o in eager.generate(prompts, greedy(30))]
    assert compiled.fallback is None


def test_a_sequence_joining_mid_run_gets_the_tokens_it_gets_alone(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", slots=3, max_len=128,
                    compile=False)
    alone = {p: engine.generate(p, greedy(10))[0].tokens for p in PROMPTS[:2]}
    first = engine.submit(PROMPTS[0], greedy(10))
    done = {}
    for step in range(30):
        if step == 4:
            second = engine.submit(PROMPTS[1], greedy(10))
        done.update({c.request: c for c in engine.step()})
        if len(done) == 2:
            break
    assert done[first].tokens == alone[PROMPTS[0]]
    assert done[second].tokens == alone[PROMPTS[1]]
    assert not engine.busy


def test_streaming_callback_gets_every_token_and_the_text(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", compile=False)
    events = []
    out = engine.generate("hello", greedy(8), on_token=events.append)[0]
    assert [e.token for e in events] == out.tokens
    assert "".join(e.text for e in events) == out.text
    assert out.text == tiny_llama.tokenizer.decode(out.tokens, skip_special_tokens=True)


def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", compile=False)
    sample = {"max_new_tokens": 20, "temperature": 1.5, "top_p": 0.95, "ignore_eos": True}
    a = engine.generate("hello", SamplingParams(seed=1, **sample))[0].tokens
    b = engine.generate("hello", SamplingParams(seed=1, **sample))[0].tokens
    c = engine.generate("hello", SamplingParams(seed=2, **sample))[0].tokens
    assert a == b
    assert a != c
    top1 = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=1, seed=3, ignore_eos=True)
    assert engine.generate("hello", top1)[0].tokens == \
        engine.generate("hello", greedy(20))[0].tokens


def test_repetition_penalty_changes_the_greedy_path(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", compile=False)
    plain = engine.generate("aaaa", greedy(30))[0].tokens
    penalised = engine.generate("aaaa", SamplingParams(max_new_tokens=30, ignore_eos=True,
                                                       repetition_penalty=5.0))[0].tokens
    assert penalised != plain
    assert len(set(penalised)) > len(set(plain))


def test_stop_strings_end_and_are_cut_from_the_text(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", compile=False)
    free = engine.generate("hello", greedy(30))[0].text
    stop = free[5:7]  # a string the free run produces after a few characters
    out = engine.generate("hello", SamplingParams(max_new_tokens=30, stop=(stop,),
                                                  ignore_eos=True))[0]
    assert out.finish_reason == "stop"
    assert out.text == free[: free.index(stop)]


def test_end_of_sequence_and_context_limits_finish_a_sequence(tiny_llama):
    eos = tiny_llama.tokenizer.eos_token_id
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32", compile=False, max_len=16)
    out = engine.generate("hello", SamplingParams(max_new_tokens=100, ignore_eos=True))[0]
    assert out.finish_reason == "context"
    assert out.prompt_tokens + len(out.tokens) == 16
    engine.eos = {engine.generate("hello", greedy(1))[0].tokens[0]}  # its first token ends it
    out = engine.generate("hello", SamplingParams(max_new_tokens=5))[0]
    assert out.finish_reason == "stop"
    assert out.tokens == []
    assert eos in Engine(tiny_llama.model, tiny_llama.tokenizer, compile=False).eos


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_reduced_formats_stay_close_to_fp32(tiny_llama, fmt):
    ids = tiny_llama.tokenizer("The quick brown fox jumps", add_special_tokens=False).input_ids
    ref = Engine(tiny_llama.model, None, "fp32", compile=False).score(ids)
    engine = Engine(tiny_llama.model, None, fmt, compile=False)
    assert engine.weights.notes == []  # every projection took the asked-for kernel
    logits = engine.score(ids)
    cosine = torch.nn.functional.cosine_similarity(logits, ref, dim=-1).min()
    assert cosine > {"bf16": 0.999, "int8": 0.995, "int4": 0.95}[fmt]
    # The decode path (packed kernels) agrees with the prefill path (dense dequantized).
    engine.generate(ids[:-1], greedy(1))
    step = engine.generate(ids, greedy(1))[0].tokens[0]
    assert step == int(logits[-1].argmax())


def test_slimforge_int4_layers_keep_their_codes(tiny_llama):
    from slimforge.compress import apply_step

    quantized = apply_step(tiny_llama, {"step": "quantize", "method": "weight-only-int4",
                                        "group_size": 32})
    ids = torch.tensor(tiny_llama.tokenizer("hello there", add_special_tokens=False).input_ids)
    engine = Engine(quantized.model, None, "int4", compile=False)
    with torch.inference_mode():
        own = quantized.model(input_ids=ids[None].to(torch.long)).logits[0].float()
    # bf16 compute against the module's own forward on the same codes.
    assert torch.nn.functional.cosine_similarity(engine.score(ids), own, dim=-1).min() > 0.999


def test_a_compile_failure_falls_back_to_eager_and_says_why(tiny_llama, monkeypatch, caplog):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(engine_module.torch, "compile", broken)
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, "fp32")
    out = engine.generate("hello", greedy(5))[0]
    assert out.tokens == hf_greedy(tiny_llama, "hello", 5)
    assert "no C++ compiler" in engine.fallback
    assert any("decoding eagerly" in r.getMessage() for r in caplog.records)


def test_bad_input_gets_one_clear_error(tiny_llama, tiny_bert):
    with pytest.raises(GenerationError, match="temperature is -1"):
        SamplingParams(temperature=-1)
    with pytest.raises(GenerationError, match="top_p is 0"):
        SamplingParams(top_p=0)
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, compile=False, max_len=8)
    with pytest.raises(GenerationError, match="prompt has 11 tokens.*holds 8"):
        engine.submit("hello world")
    with pytest.raises(GenerationError, match="empty"):
        engine.submit([])
    with pytest.raises(ModelLoadError, match="Llama-style.*bert"):
        Engine(tiny_bert.model)
    with pytest.raises(ModelLoadError, match="Unknown generation format 'int3'"):
        Engine(tiny_llama.model, format="int3")


@pytest.mark.gpu
def test_cuda_graph_step_equals_eager_on_the_gpu(tiny_llama):
    model = tiny_llama.model.to("cuda")
    eager = Engine(model, tiny_llama.tokenizer, "fp32", compile=False)
    graphed = Engine(model, tiny_llama.tokenizer, "fp32")
    assert [o.tokens for o in graphed.generate(PROMPTS, greedy(20))] == \
        [o.tokens for o in eager.generate(PROMPTS, greedy(20))]
