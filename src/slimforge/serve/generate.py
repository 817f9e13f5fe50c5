"""Text generation for the server: one decode loop per request, streamed token by token.

Owns: `GenerationRequest`, `Generator`. Requests run one at a time on a dedicated worker
thread (the model already uses every core), in arrival order; up to `max_waiting` more may
wait, beyond that the server answers 429. This is neither continuous nor batched generation
yet: a request that arrives during a decode waits for it to finish. Each request's tokens are
pushed to its own asyncio queue as they are produced, so the HTTP layer can stream them as
server-sent events; time to first token and the time between tokens go to the metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from slimforge.models.tasks import LoadedModel
from slimforge.serve.metrics import ServerMetrics


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's decoding settings."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class GeneratorBusyError(Exception):
    """Too many generation requests are already waiting."""


_DONE = object()


class Generator:
    """Runs decode loops for a causal LM on one worker thread and streams their text."""

    def __init__(self, loaded: LoadedModel, metrics: ServerMetrics, max_waiting: int) -> None:
        self.loaded, self.metrics, self.max_waiting = loaded, metrics, max_waiting
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimforge-decode")
        self._waiting = 0
        self._lock = threading.Lock()
        self.eos = {loaded.tokenizer.eos_token_id} - {None}

    def _pick(self, logits: torch.Tensor, request: GenerationRequest,
              generator: torch.Generator | None) -> int:
        if request.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / request.temperature, dim=-1)
        if request.top_p < 1.0:
            ordered, index = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < request.top_p
            probs = torch.zeros_like(probs).scatter(-1, index[keep], ordered[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    @torch.inference_mode()
    def _decode(self, request: GenerationRequest, emit: Callable[[tuple], None]) -> None:
        model = self.loaded.model
        generator = None
        if request.seed is not None:
            generator = torch.Generator().manual_seed(request.seed)
        ids = torch.tensor([request.prompt_ids], device=self.loaded.device)
        out = model(input_ids=ids, use_cache=True)
        for _ in range(request.max_tokens):
            token = self._pick(out.logits[0, -1], request, generator)
            if token in self.eos:
                emit(("stop", None))
                return
            emit(("token", token))
            step = torch.tensor([[token]], device=self.loaded.device)
            out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
        emit(("length", None))

    async def stream(self, request: GenerationRequest, received: float
                     ) -> AsyncIterator[tuple[str, Any]]:
        """Yield `("text", piece)` as tokens arrive, then `("finish", (reason, tokens))`
        with reason `stop` (end of sequence) or `length` (`max_tokens` reached).

        Raises:
            GeneratorBusyError: `max_waiting` requests are already waiting.
        """
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise GeneratorBusyError()
            self._waiting += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple[str, int | None]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def run() -> None:
            with self._lock:
                self._waiting -= 1
            try:
                self._decode(request, emit)
            except Exception as exc:  # surfaced to the request, not the worker
                emit(("error", exc))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        loop.run_in_executor(self._pool, run)
        tokens: list[int] = []
        text, last = "", None
        while (event := await queue.get()) is not _DONE:
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

    def close(self) -> None:
        """Let running decodes finish, then stop the worker."""
        self._pool.shutdown(wait=True)
