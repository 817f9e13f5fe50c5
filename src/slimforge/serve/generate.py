"""Text generation for the server: continuous batching, streamed token by token.

Owns: `GenerationRequest`, `Generator`, `GeneratorBusyError`. One decode thread keeps a batch
of running sequences and advances them all by one token per model call. A request that
arrives while the batch decodes joins it at the next step (continuous batching): its prompt is
prefilled alone, its key/value cache is left-padded to the batch's length and stacked onto
the batch, and from then on it decodes with the others; a sequence that ends (end of text,
`max_tokens`, or its deadline) leaves the batch at once. Left padding is masked out and every
sequence gets its own position ids, so a sequence's tokens do not depend on its batch-mates
beyond float rounding. On a CPU one decode step reads every weight once whatever the batch
size, so sequences decoded together cost little more than one. Models whose cache is not
plain full attention (sliding windows) decode one request at a time. A Llama-style model on
the CPU takes `slimforge.generate.Engine` instead (its compiled step over a static cache, the
same joining and leaving between steps), unless the server is told `--engine transformers`.

Up to `max_running` sequences decode at once; up to `max_waiting` more wait, beyond that the
server answers 429. Each request's tokens are pushed to its own asyncio queue as they are
produced, so the HTTP layer streams them as server-sent events; time to first token and the
time between tokens go to the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from slimforge.generate import Engine, SamplingParams, format_of, not_served_by_engine
from slimforge.models.tasks import LoadedModel
from slimforge.serve.metrics import ServerMetrics

log = logging.getLogger("slimforge.serve")

Emit = Callable[[tuple[str, Any]], None]
"""Sends one event to the request's stream: ("token", id), ("stop" | "length" | "timeout",
None), ("error", exception) or ("done", None)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's decoding settings."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    timeout_s: float = 30.0


class GeneratorBusyError(Exception):
    """Too many generation requests are already waiting."""


class GeneratorClosedError(Exception):
    """The generator stopped (server shutdown) before the request could finish."""


@dataclass
class _Sequence:
    request: GenerationRequest
    emit: Emit
    deadline: float  # time.monotonic()
    sampler: torch.Generator | None
    length: int = 0  # tokens in the cache (prompt + generated)
    produced: int = 0
    next_token: int = -1
    finished: bool = False
    cancelled: bool = False  # set by the event loop when nobody reads the stream any more


def _pick(logits: torch.Tensor, request: GenerationRequest,
          sampler: torch.Generator | None) -> int:
    if request.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        ordered, index = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < request.top_p
        probs = torch.zeros_like(probs).scatter(-1, index[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=sampler))


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _kv(cache: DynamicCache | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values)."""
    assert cache is not None
    return [(layer.keys, layer.values) for layer in cache.layers]


class _Batch:
    """The running sequences' shared key/value cache and attention mask."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.sequences: list[_Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [batch, cached tokens], 0 = left padding


    def join(self, sequence: _Sequence, cache: DynamicCache) -> None:
        """Stack a prefilled sequence onto the batch, left-padding the shorter side."""
        mask = torch.ones(1, sequence.length, dtype=torch.long,
                          device=cache.layers[0].keys.device)
        if self.cache is None:
            self.cache, self.mask, self.sequences = cache, mask, [sequence]
            return
        assert self.mask is not None
        width = max(self.mask.shape[1], sequence.length)
        layers = [(torch.cat([_left_pad(k0, width, 2), _left_pad(k1, width, 2)]),
                   torch.cat([_left_pad(v0, width, 2), _left_pad(v1, width, 2)]))
                  for (k0, v0), (k1, v1) in zip(_kv(self.cache), _kv(cache), strict=True)]
        self.cache = DynamicCache(layers, config=self.config)
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.sequences.append(sequence)

    def keep_running(self) -> None:
        """Drop finished sequences, then the columns that are padding for every one left."""
        keep = [i for i, s in enumerate(self.sequences) if not s.finished]
        if len(keep) == len(self.sequences):
            return
        if not keep:
            self.cache, self.mask, self.sequences = None, None, []
            return
        assert self.mask is not None
        rows = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[rows]
        start = int((mask.sum(0) > 0).nonzero()[0])
        layers = [(k[rows, :, start:], v[rows, :, start:]) for k, v in _kv(self.cache)]
        self.cache = DynamicCache(layers, config=self.config)
        self.mask = mask[:, start:]
        self.sequences = [self.sequences[i] for i in keep]


class Generator:
    """Decodes many requests at once on one thread and streams each one's text.

    With `engine` `auto`, a Llama-style model on the CPU decodes through
    `slimforge.generate.Engine` (static cache, compiled step, packed weight-only kernels;
    `max_running` slots of `max_len` tokens), compiled by `warm_up` before the server says
    it is ready; `eager` runs that engine uncompiled; `transformers`, and any other model,
    use the model's own forward with a growing cache.
    """

    def __init__(self, loaded: LoadedModel, metrics: ServerMetrics, max_waiting: int,
                 max_running: int = 16, engine: str = "transformers",
                 max_len: int = 1024) -> None:
        self.loaded, self.metrics = loaded, metrics
        self.max_waiting, self.max_running = max_waiting, max_running
        self.eos = {loaded.tokenizer.eos_token_id} - {None}
        self.engine: Engine | None = None
        self.engine_note = "transformers (asked for)"
        self.context = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
        """Most tokens a sequence may hold, prompt included."""
        if engine != "transformers":
            reason = not_served_by_engine(loaded.model, loaded.device)
            if reason is None:
                self.engine = Engine(loaded.model, loaded.tokenizer,
                                     format_of(loaded.model), slots=max_running,
                                     max_len=max_len, compile=engine != "eager")
                self.context = self.engine.max_len
                self.engine_note = (f"slimforge engine, {self.engine.weights.format}, "
                                    f"{max_running} x {self.engine.max_len} tokens of KV cache "
                                    f"({self.engine.cache.nbytes() / 1e6:.0f} MB)")
            else:
                self.engine_note = f"transformers ({reason})"
                log.info("generation: %s", self.engine_note)
        self._incoming: queue.SimpleQueue[_Sequence] = queue.SimpleQueue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._thread = threading.Thread(
            target=self._run if self.engine is None else self._run_engine,
            name="slimforge-decode", daemon=True)
        self._thread.start()

    def warm_up(self) -> float | None:
        """Compile the engine's decode step (seconds taken; None without one, or eager)."""
        if self.engine is None:
            return None
        return self.engine.warmup()

    # -- the decode thread, through the engine -------------------------------------------

    def _run_engine(self) -> None:
        assert self.engine is not None
        live: dict[int, _Sequence] = {}  # engine request id -> sequence
        while not self._abort.is_set():
            self._admit_engine(live)
            if not live:
                if self._closing.is_set() and self._incoming.empty():
                    return
                continue
            self._engine_step(live)
        for request in live:
            self.engine.cancel(request)
        self._fail_left(live.values())

    def _engine_step(self, live: dict[int, _Sequence]) -> None:
        """Drop requests past their deadline or abandoned, then advance the rest a token."""
        assert self.engine is not None
        now = time.monotonic()
        for request, sequence in list(live.items()):
            if sequence.cancelled or now > sequence.deadline:
                self.engine.cancel(request)
                del live[request]
                if not sequence.cancelled:
                    self._finish(sequence, "timeout")
        try:
            completions = self.engine.step()
        except Exception as exc:  # fails the running requests, not the server
            for request, sequence in live.items():
                self.engine.cancel(request)
                self._finish(sequence, "error", exc)
            live.clear()
            return
        for completion in completions:
            reason = "stop" if completion.finish_reason == "stop" else "length"
            self._finish(live.pop(completion.request), reason)

    def _admit_engine(self, live: dict[int, _Sequence]) -> None:
        """Hand waiting requests to the engine (it prefills them at its next step)."""
        assert self.engine is not None
        while len(live) < self.max_running:  # the rest wait here, counted for the 429 bound
            sequence = self._next_incoming(idle=not live)
            if sequence is None:
                return
            request = sequence.request
            try:
                params = SamplingParams(max_new_tokens=request.max_tokens,
                                        temperature=request.temperature, top_p=request.top_p,
                                        seed=request.seed)
                emit = sequence.emit
                live[self.engine.submit(request.prompt_ids, params,
                                        lambda event, emit=emit: emit(("token", event.token)))
                     ] = sequence
            except Exception as exc:
                self._finish(sequence, "error", exc)

    # -- the decode thread, through transformers -------------------------------------------

    def _run(self) -> None:
        batch = _Batch(self.loaded.model.config)
        while not self._abort.is_set():
            self._admit(batch)
            if not batch.sequences:
                if self._closing.is_set() and self._incoming.empty():
                    return
                continue
            try:
                self._step(batch)
            except Exception as exc:  # fails the running requests, not the server
                for sequence in batch.sequences:
                    self._finish(sequence, "error", exc)
            batch.keep_running()
        self._fail_left(batch.sequences)

    def _next_incoming(self, idle: bool) -> _Sequence | None:
        """The next submitted request, waiting briefly when nothing decodes (`idle`);
        None when there is none."""
        try:
            sequence = self._incoming.get(timeout=0.05) if idle else self._incoming.get_nowait()
        except queue.Empty:
            return None
        with self._lock:
            self._waiting -= 1
        return sequence

    def _fail_left(self, running: Iterable[_Sequence]) -> None:
        """On stopping: fail the running sequences and every request not yet taken."""
        for sequence in running:
            self._finish(sequence, "error", GeneratorClosedError())
        while not self._incoming.empty():
            self._finish(self._incoming.get(), "error", GeneratorClosedError())

    def _admit(self, batch: _Batch) -> None:
        """Prefill waiting requests into the batch (block briefly when it is empty)."""
        while len(batch.sequences) < self.max_running:
            sequence = self._next_incoming(idle=not batch.sequences)
            if sequence is None:
                return
            try:
                self._prefill(batch, sequence)
            except Exception as exc:
                self._finish(sequence, "error", exc)

    @torch.inference_mode()
    def _prefill(self, batch: _Batch, sequence: _Sequence) -> None:
        if sequence.cancelled:
            return
        if time.monotonic() > sequence.deadline:
            self._finish(sequence, "timeout")
            return
        ids = torch.tensor([sequence.request.prompt_ids], device=self.loaded.device)
        out = self.loaded.model(input_ids=ids, use_cache=True)
        sequence.length = ids.shape[1]
        self._advance(sequence, out.logits[0, -1])
        if any(type(layer) is not DynamicLayer for layer in out.past_key_values.layers):
            self.max_running = 1  # sliding-window or other caches: no stacking, one at a time
        if not sequence.finished:
            batch.join(sequence, out.past_key_values)

    @torch.inference_mode()
    def _step(self, batch: _Batch) -> None:
        assert batch.mask is not None
        device = batch.mask.device
        ids = torch.tensor([[s.next_token] for s in batch.sequences], device=device)
        positions = torch.tensor([[s.length] for s in batch.sequences], device=device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(ids), 1)], dim=1)
        out = self.loaded.model(input_ids=ids, attention_mask=batch.mask,
                                position_ids=positions, past_key_values=batch.cache,
                                use_cache=True)
        batch.cache = out.past_key_values
        now = time.monotonic()
        for row, sequence in enumerate(batch.sequences):
            sequence.length += 1
            if sequence.cancelled:  # the client went away: stop spending steps on it
                sequence.finished = True
            elif now > sequence.deadline:
                self._finish(sequence, "timeout")
            else:
                self._advance(sequence, out.logits[row, -1])

    def _advance(self, sequence: _Sequence, logits: torch.Tensor) -> None:
        """Pick the sequence's next token and send it, or end the sequence."""
        token = _pick(logits, sequence.request, sequence.sampler)
        if token in self.eos:
            self._finish(sequence, "stop")
            return
        sequence.emit(("token", token))
        sequence.produced += 1
        sequence.next_token = token
        if sequence.produced >= sequence.request.max_tokens:
            self._finish(sequence, "length")

    @staticmethod
    def _finish(sequence: _Sequence, reason: str, error: Exception | None = None) -> None:
        sequence.finished = True
        sequence.emit(("error", error) if error is not None else (reason, None))
        sequence.emit(("done", None))

    # -- the event loop side -----------------------------------------------------------

    async def stream(self, request: GenerationRequest, received: float
                     ) -> AsyncIterator[tuple[str, Any]]:
        """Yield `("text", piece)` as tokens arrive, then `("finish", (reason, tokens))`
        with reason `stop` (end of sequence), `length` (`max_tokens` reached) or `timeout`
        (the request's deadline passed).

        Raises:
            GeneratorBusyError: `max_waiting` requests are already waiting.
            GeneratorClosedError: the server shut down first.
        """
        with self._lock:
            if self._closing.is_set():
                raise GeneratorClosedError()
            if self._waiting >= self.max_waiting:
                raise GeneratorBusyError()
            self._waiting += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sampler = None if request.seed is None else torch.Generator().manual_seed(request.seed)
        sequence = _Sequence(
            request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            received + request.timeout_s, sampler)
        self._incoming.put(sequence)
        try:
            async for item in self._read(events, received):
                yield item
        finally:  # finished, failed, or the reader stopped (a client that disconnected)
            sequence.cancelled = True

    async def _read(self, events: asyncio.Queue, received: float
                    ) -> AsyncIterator[tuple[str, Any]]:
        tokens: list[int] = []
        text, last = "", None
        while (event := await events.get())[0] != "done":
            kind, value = event
            if kind == "error":
                raise value
            if kind != "token":
                yield "finish", (kind, len(tokens))
                continue
            now = time.monotonic()
            if last is None:
                self.metrics.ttft.observe(now - received)
            else:
                self.metrics.inter_token.observe(now - last)
            last = now
            self.metrics.tokens_out.inc()
            tokens.append(value)
            # Decode the whole tail so multi-byte characters come out whole.
            full = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
            if len(full) > len(text) and not full.endswith("\ufffd"):
                yield "text", full[len(text):]
                text = full

    def close(self, timeout_s: float = 30.0) -> bool:
        """Take no new requests, let accepted ones finish (up to `timeout_s`), then stop;
        True if every one finished in time."""
        self._closing.set()
        self._thread.join(timeout_s)
        finished = not self._thread.is_alive()
        self._abort.set()
        self._thread.join()
        return finished
