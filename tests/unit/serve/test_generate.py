"""serve/generate.py: continuous batching gives each request the tokens it gets alone,
requests join a running batch, deadlines cut decoding short, and closing drains."""

from __future__ import annotations

import asyncio
import time

import pytest

from slimforge.serve.generate import (
    GenerationRequest,
    Generator,
    GeneratorBusyError,
    GeneratorClosedError,
)
from slimforge.serve.metrics import ServerMetrics


class Counting:
    """Wraps the model: records the batch size of every decode step (one new token)."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def __call__(self, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            self.steps.append(kwargs["input_ids"].shape[0])
        return self.model(**kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


async def _tokens(generator: Generator, request: GenerationRequest, delay: float = 0.0):
    await asyncio.sleep(delay)
    pieces, finish = [], None
    async for kind, value in generator.stream(request, time.monotonic()):
        if kind == "text":
            pieces.append(value)
        else:
            finish = value
    return "".join(pieces), finish


@pytest.fixture
def generator(tiny_llama):
    tiny_llama.model = Counting(tiny_llama.model)
    made = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=16, max_running=8)
    yield made
    made.close(5)


def test_batched_requests_get_the_tokens_they_get_alone(generator, tiny_llama):
    tok = tiny_llama.tokenizer
    generator.eos = set()  # each request runs to its max_tokens: the first one outlasts
    prompts = ["Hello there", "A much longer prompt than the first one", "Hi"]
    requests = [GenerationRequest(tok(p)["input_ids"], max_tokens=n)
                for p, n in zip(prompts, (400, 12, 30), strict=True)]

    async def alone():
        return [await _tokens(generator, r) for r in requests]

    async def together():  # the later ones arrive while the first decodes
        return await asyncio.gather(*(_tokens(generator, r, delay=0.02 * i)
                                      for i, r in enumerate(requests)))

    expected = asyncio.run(alone())
    assert max(tiny_llama.model.steps) == 1
    tiny_llama.model.steps.clear()
    assert asyncio.run(together()) == expected
    assert max(tiny_llama.model.steps) >= 2  # later ones joined the first one's decode
    assert [finish for _, finish in expected] == [("length", 400), ("length", 12),
                                                  ("length", 30)]


def test_a_request_past_its_deadline_ends_with_timeout(generator, tiny_llama):
    generator.eos = set()  # decode until cut off
    request = GenerationRequest(tiny_llama.tokenizer("Hello")["input_ids"], max_tokens=10_000,
                                timeout_s=0.2)
    _, (reason, _) = asyncio.run(_tokens(generator, request))
    assert reason == "timeout"


def test_close_finishes_accepted_requests_then_refuses(tiny_llama):
    generator = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=16)
    request = GenerationRequest(tiny_llama.tokenizer("Hello")["input_ids"], max_tokens=20)

    async def go():
        running = asyncio.ensure_future(_tokens(generator, request))
        await asyncio.sleep(0.01)
        closed = asyncio.get_running_loop().run_in_executor(None, generator.close, 10)
        return await running, await closed

    (_, (reason, _)), finished = asyncio.run(go())
    with pytest.raises(GeneratorClosedError):
        asyncio.run(_tokens(generator, request))
    assert reason in ("stop", "length")
    assert finished


def test_close_past_its_timeout_fails_what_is_left(tiny_llama):
    generator = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=16)
    generator.eos = set()  # decode until cut off
    request = GenerationRequest(tiny_llama.tokenizer("Hello")["input_ids"],
                                max_tokens=1_000_000)

    async def go():
        running = asyncio.ensure_future(_tokens(generator, request))
        await asyncio.sleep(0.05)
        assert not await asyncio.get_running_loop().run_in_executor(None, generator.close, 0.1)
        return await running

    with pytest.raises(GeneratorClosedError):
        asyncio.run(go())


def test_a_reader_that_goes_away_stops_its_decode(generator, tiny_llama):
    generator.eos = set()
    request = GenerationRequest(tiny_llama.tokenizer("Hello")["input_ids"], max_tokens=100_000,
                                timeout_s=60)

    async def go():
        events = generator.stream(request, time.monotonic())
        for _ in range(3):
            await anext(events)
        await events.aclose()  # what a disconnected streaming client amounts to
        await asyncio.sleep(0.2)
        after_close = len(tiny_llama.model.steps)
        await asyncio.sleep(0.3)
        return after_close, len(tiny_llama.model.steps)

    after_close, later = asyncio.run(go())
    assert later == after_close  # no decode step since
    assert later < 1000  # far from the 100,000 asked for


@pytest.fixture
def engine_generator(tiny_llama):
    made = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=16, max_running=4,
                     engine="eager", max_len=512)
    yield made
    made.close(5)


def test_the_engine_path_gives_transformers_tokens_alone_and_together(engine_generator,
                                                                      tiny_llama):
    assert engine_generator.engine_note.startswith("slimforge engine, fp32, 4 x 512 tokens")
    assert engine_generator.context == 512
    engine_generator.engine.eos = set()
    reference = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=16)
    reference.eos = set()
    tok = tiny_llama.tokenizer
    requests = [GenerationRequest(tok(p)["input_ids"], max_tokens=n)
                for p, n in (("Hello there", 200), ("A much longer prompt", 12), ("Hi", 30))]

    async def alone(generator):
        return [await _tokens(generator, r) for r in requests]

    async def together():
        return await asyncio.gather(*(_tokens(engine_generator, r, delay=0.01 * i)
                                      for i, r in enumerate(requests)))

    try:
        expected = asyncio.run(alone(reference))
    finally:
        reference.close(5)
    assert asyncio.run(alone(engine_generator)) == expected
    assert asyncio.run(together()) == expected


def test_the_engine_path_times_out_and_frees_the_slot(engine_generator, tiny_llama):
    engine_generator.engine.eos = set()
    ids = tiny_llama.tokenizer("Hello")["input_ids"]
    _, (reason, _) = asyncio.run(_tokens(engine_generator,
                                         GenerationRequest(ids, max_tokens=400, timeout_s=0.05)))
    assert reason == "timeout"
    _, (reason, count) = asyncio.run(_tokens(engine_generator,
                                             GenerationRequest(ids, max_tokens=5)))
    assert (reason, count) == ("length", 5)
    assert not engine_generator.engine.busy


def test_the_engine_path_keeps_requests_beyond_its_slots_counted_as_waiting(tiny_llama):
    made = Generator(tiny_llama, ServerMetrics({"spec": "t"}), max_waiting=1, max_running=1,
                     engine="eager", max_len=512)
    made.engine.eos = set()
    ids = tiny_llama.tokenizer("Hello")["input_ids"]

    async def go():
        first = asyncio.ensure_future(_tokens(made, GenerationRequest(ids, max_tokens=300)))
        await asyncio.sleep(0.05)  # the first one holds the only slot
        second = asyncio.ensure_future(_tokens(made, GenerationRequest(ids, max_tokens=3)))
        await asyncio.sleep(0.05)  # the second one waits for it
        with pytest.raises(GeneratorBusyError):
            await _tokens(made, GenerationRequest(ids, max_tokens=3))
        return await first, await second

    try:
        (_, first), (_, second) = asyncio.run(go())
    finally:
        made.close(5)
    assert first == ("length", 300)
    assert second == ("length", 3)
