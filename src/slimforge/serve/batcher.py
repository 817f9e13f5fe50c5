"""Dynamic batching: many small requests in, few large model calls out.

Owns: `BatchConfig`, `DynamicBatcher`, `QueueFullError`, `DrainingError`. Requests put items
(one input text each, with its token count) on a bounded queue and await a future. One
batcher task takes the oldest item, then keeps adding items until one of the caps is hit:
`max_batch_size` items, `max_batch_tokens` tokens (the batch's longest item times its size,
which is what padding makes the model compute), or the `max_wait_ms` deadline counted on the
monotonic clock from the first item. The batch is sorted by length and run in a worker
thread, off the event loop, so the server keeps accepting while the model computes; up to
`workers` batches compute at once, each on its own thread (on a CPU, two batches on one
thread each beat one batch on two threads: small GEMMs scale poorly across cores, and the
model's Python dispatch overlaps with the other batch's kernels). Items whose request
deadline passed while queued fail with `TimeoutError` instead of running.

A full queue raises `QueueFullError` at once with a `retry_after_s` estimated from the recent
drain rate, so an overloaded server answers 429 in microseconds instead of timing out.
`drain()` refuses new items (`DrainingError`) and waits until everything accepted has been
answered: the graceful-shutdown half of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BatchConfig(BaseModel):
    """The four batching knobs, and how many batches compute at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(32, ge=1)
    """Most items in one model call."""
    max_wait_ms: float = Field(5.0, ge=0)
    """Longest a first item waits for company before its batch runs."""
    max_queue: int = Field(1024, ge=1)
    """Most items waiting; beyond it new requests get 429."""
    max_batch_tokens: int = Field(16384, ge=1)
    """Token budget of one call: longest item's tokens x items (what padding computes)."""
    workers: int | None = Field(None, ge=1, le=64)
    """Batches computed at once, each on its own thread (None: 1 here; `slimforge serve`
    plans it from the cores)."""


class QueueFullError(Exception):
    """The queue cannot take the request; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"queue full; retry after {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


class DrainingError(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class Item:
    """One input waiting for the model."""

    payload: Any
    tokens: int
    deadline: float  # time.monotonic() after which the answer is no longer wanted
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)


RunBatch = Callable[[Sequence[Any]], Sequence[Any]]
"""Runs the model on payloads (sorted by length) and returns one result per payload."""


class DynamicBatcher:
    """Forms batches from queued items under the `BatchConfig` caps and runs them."""

    def __init__(self, run_batch: RunBatch, config: BatchConfig,
                 on_batch: Callable[[int, int, list[float]], None] | None = None) -> None:
        """`on_batch(items, tokens, queue_seconds)` is told about every batch (for metrics)."""
        self.config = config
        self._run = run_batch
        self._on_batch = on_batch
        self._queue: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        self._draining = False
        self._task: asyncio.Task | None = None
        self._done: deque[tuple[float, int]] = deque(maxlen=64)  # (finish time, items)
        self._in_batch = 0  # items being computed, over all running batches
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._workers = config.workers or 1
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="slimforge-batch")

    @property
    def depth(self) -> int:
        """Items waiting (not counting the batch being computed)."""
        return len(self._queue)

    @property
    def saturated(self) -> bool:
        """Whether the queue is full."""
        return len(self._queue) >= self.config.max_queue

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._slots = asyncio.Semaphore(self._workers)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, payloads: Sequence[Any], tokens: Sequence[int],
                     timeout_s: float) -> list[Any]:
        """Queue one request's items and wait for all their results.

        Raises:
            DrainingError: the server is shutting down.
            QueueFullError: not enough room for the request's items.
            TimeoutError: the deadline passed before the items ran.
        """
        if self._draining:
            raise DrainingError()
        if len(self._queue) + len(payloads) > self.config.max_queue:
            raise QueueFullError(self.retry_after_s(len(payloads)))
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        items = [Item(p, t, deadline, loop.create_future())
                 for p, t in zip(payloads, tokens, strict=True)]
        self._queue.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    def retry_after_s(self, extra: int = 1) -> float:
        """Seconds until the queue has drained enough for `extra` more items, from the
        throughput of the last batches (1 s when there is no history yet)."""
        if len(self._done) < 2:
            return 1.0
        span = self._done[-1][0] - self._done[0][0]
        rate = sum(n for _, n in list(self._done)[1:]) / span if span > 0 else 0.0
        if rate <= 0:
            return 1.0
        excess = len(self._queue) + extra - self.config.max_queue + self.config.max_batch_size
        return max(0.05, math.ceil(max(excess, 1) / rate * 100) / 100)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new items and wait until every accepted one is answered; True if done in
        time. The batching task is stopped afterwards."""
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._in_batch) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        finished = not (self._queue or self._in_batch)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:  # only left when the drain timed out
            if not item.future.done():
                item.future.set_exception(DrainingError())
        self._executor.shutdown(wait=False)
        return finished

    def _take_batch(self) -> list[Item]:
        batch: list[Item] = []
        longest = 0
        while self._queue and len(batch) < self.config.max_batch_size:
            candidate = self._queue[0]
            widest = max(longest, candidate.tokens)
            if batch and widest * (len(batch) + 1) > self.config.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest = widest
        return batch

    def _batch_full(self) -> bool:
        if len(self._queue) >= self.config.max_batch_size:
            return True
        longest = max(item.tokens for item in self._queue)
        return longest * len(self._queue) >= self.config.max_batch_tokens

    async def _wait_for_batch(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].enqueued + self.config.max_wait_ms / 1000
        while not self._batch_full() and time.monotonic() < deadline:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())

    @staticmethod
    def _live(batch: list[Item], now: float) -> list[Item]:
        """The items still wanted; those past their deadline fail with TimeoutError."""
        live = []
        for item in batch:
            if item.future.done():  # the request already failed (a sibling item, say)
                continue
            if now > item.deadline:
                item.future.set_exception(TimeoutError())
            else:
                live.append(item)
        return sorted(live, key=lambda item: item.tokens)

    async def _execute(self, live: list[Item], formed: float) -> None:
        self._in_batch += len(live)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, [item.payload for item in live])
        except Exception as exc:  # one failed batch fails its requests, not the server
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            self._in_batch -= len(live)
            assert self._slots is not None
            self._slots.release()
        self._done.append((time.monotonic(), len(live)))
        if self._on_batch is not None:
            self._on_batch(len(live), live[-1].tokens * len(live),
                           [formed - item.enqueued for item in live])

    async def _loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # a worker is free: form the next batch
            try:
                await self._wait_for_batch()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            now = time.monotonic()
            live = self._live(self._take_batch(), now)
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(live, now))
            self._running.add(task)  # held until done: the loop keeps no other reference
            task.add_done_callback(self._running.discard)
