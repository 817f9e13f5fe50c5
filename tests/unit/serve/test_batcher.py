"""serve/batcher.py: the four caps, deadlines, back-pressure and draining, on a plain
function standing in for the model (it records the batches it was given)."""

from __future__ import annotations

import asyncio
import time

import pytest

from slimforge.serve.batcher import BatchConfig, DrainingError, DynamicBatcher, QueueFullError


class Recorder:
    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.seconds = seconds

    def __call__(self, payloads):
        self.batches.append(list(payloads))
        time.sleep(self.seconds)
        return [p.upper() for p in payloads]


def _run(coro):
    return asyncio.run(coro)


async def _with(batcher: DynamicBatcher, coro):
    batcher.start()
    try:
        return await coro
    finally:
        await batcher.drain(5)


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_answer():
    model = Recorder()
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=8, max_wait_ms=50))

    async def go():
        return await asyncio.gather(*(batcher.submit([f"t{i}"], [3], 5) for i in range(6)))

    answers = _run(_with(batcher, go()))
    assert answers == [[f"T{i}"] for i in range(6)]
    assert len(model.batches) == 1
    assert sorted(model.batches[0]) == [f"t{i}" for i in range(6)]


def test_batch_size_and_token_budget_cap_a_batch():
    model = Recorder()
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=4, max_wait_ms=20,
                                                max_batch_tokens=30))

    async def go():
        await asyncio.gather(batcher.submit([f"s{i}" for i in range(10)], [2] * 10, 5),
                             batcher.submit(["long", "long2"], [20, 20], 5))

    _run(_with(batcher, go()))
    assert all(len(b) <= 4 for b in model.batches)
    assert sum(len(b) for b in model.batches) == 12
    # two 20-token items cost 40 > 30: never in one batch
    assert not any({"long", "long2"} <= set(b) for b in model.batches)


def test_a_batch_is_sorted_by_length():
    model = Recorder()
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=8, max_wait_ms=30))

    async def go():
        await batcher.submit(["ccc", "a", "bb"], [3, 1, 2], 5)

    _run(_with(batcher, go()))
    assert model.batches == [["a", "bb", "ccc"]]


def test_full_queue_refuses_at_once_with_a_retry_estimate():
    batcher = DynamicBatcher(Recorder(seconds=0.05), BatchConfig(max_batch_size=1,
                                                                 max_queue=3, max_wait_ms=0))

    async def go():
        first = asyncio.ensure_future(batcher.submit(["a", "b", "c"], [1, 1, 1], 5))
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(QueueFullError) as refused:
            await batcher.submit(["d", "e"], [1, 1], 5)
        assert time.perf_counter() - start < 0.01
        assert refused.value.retry_after_s > 0
        return await first

    assert _run(_with(batcher, go())) == ["A", "B", "C"]


def test_an_expired_deadline_fails_with_timeout_instead_of_running():
    model = Recorder(seconds=0.2)
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=1, max_wait_ms=0))

    async def go():
        slow = asyncio.ensure_future(batcher.submit(["first"], [1], 5))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await batcher.submit(["late"], [1], 0.05)
        await slow

    _run(_with(batcher, go()))
    assert ["late"] not in model.batches


def test_drain_answers_everything_accepted_then_refuses():
    model = Recorder(seconds=0.02)
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=2, max_wait_ms=5))

    async def go():
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([f"x{i}"], [1], 5)) for i in range(7)]
        await asyncio.sleep(0)
        drained = await batcher.drain(5)
        with pytest.raises(DrainingError):
            await batcher.submit(["after"], [1], 5)
        return drained, await asyncio.gather(*pending)

    drained, answers = _run(go())
    assert drained
    assert answers == [[f"X{i}"] for i in range(7)]


def test_a_failing_batch_fails_its_requests_not_the_batcher():
    calls = []

    def flaky(payloads):
        calls.append(payloads)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return payloads

    batcher = DynamicBatcher(flaky, BatchConfig(max_wait_ms=0))

    async def go():
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(["a"], [1], 5)
        return await batcher.submit(["b"], [1], 5)

    assert _run(_with(batcher, go())) == ["b"]


def test_free_memory_is_released_where_the_c_library_is_glibc():
    import platform

    from slimforge.serve.memory import release_free_memory

    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")


def test_workers_compute_batches_at_once():
    """Two workers: two batches run concurrently (each waits for the other at a barrier,
    which with one worker would never be reached)."""
    import threading

    barrier = threading.Barrier(2, timeout=5)

    def model(payloads):
        barrier.wait()
        return [p.upper() for p in payloads]

    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=1, max_wait_ms=0, workers=2))

    async def go():
        return await asyncio.gather(batcher.submit(["a"], [1], 5), batcher.submit(["b"], [1], 5))

    assert _run(_with(batcher, go())) == [["A"], ["B"]]


def test_drain_waits_for_every_running_batch():
    model = Recorder(seconds=0.2)
    batcher = DynamicBatcher(model, BatchConfig(max_batch_size=1, max_wait_ms=0, workers=3))

    async def go():
        batcher.start()
        answers = [asyncio.ensure_future(batcher.submit([f"x{i}"], [1], 5)) for i in range(5)]
        await asyncio.sleep(0.05)  # three batches running, two queued
        assert await batcher.drain(5)
        return [a.result() for a in answers]

    assert _run(go()) == [[f"X{i}"] for i in range(5)]
