"""`create_app(loaded, config) -> FastAPI`: the inference server.

Owns: `ServeConfig`, `create_app` and the HTTP contract: OpenAI-compatible `/v1/embeddings`
and `/v1/models`, `/v1/predict` (classifiers and custom models), `/healthz`, `/readyz` and
`/metrics`. Every input goes through the dynamic batcher (`batcher.py`) and the batch runner
(`runner.py`); every request through the gate (`gate.py`: request ids, `X-Process-Time`,
body limit, API keys, request metrics). Every error is one JSON object in OpenAI's shape
(`{"error": {"message", "type", "code"}}`) with the status that names it: 401 bad or missing
key, 404 unknown model, 413 body too large, 422 malformed, empty, too many or too long
inputs, 429 queue full (with `Retry-After`), 503 draining, 504 deadline passed. No stack trace
reaches a client. `/healthz`, `/readyz` and `/metrics` need no key (probes and scrapers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slimforge.models.tasks import LoadedModel
from slimforge.serve.batcher import BatchConfig, DrainingError, DynamicBatcher, QueueFullError
from slimforge.serve.gate import ApiError, Gate, error_body, error_response
from slimforge.serve.generate import (
    GenerationRequest,
    Generator,
    GeneratorBusyError,
    GeneratorClosedError,
)
from slimforge.serve.metrics import ServerMetrics
from slimforge.serve.runner import BatchRunner

log = logging.getLogger("slimforge.serve")
INLINE_CHARS = 4096
"""Requests with up to this many characters are tokenized on the event loop (~0.1 ms);
larger ones on a thread, so one big request does not stall every other."""
INLINE_VECTORS = 16
"""Responses with up to this many vectors are encoded on the event loop; larger on a thread."""


class ServeConfig(BaseModel):
    """How the server batches, limits and authenticates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str | None = None
    """The id clients send as `model`; default: the spec the model was loaded from."""
    api_keys: list[str] = Field(default_factory=list)
    """Accepted bearer keys; empty: no authentication."""
    batch: BatchConfig = BatchConfig()
    max_body_bytes: int = Field(1 << 20, ge=1)
    """Largest request body (413 beyond)."""
    max_inputs: int = Field(256, ge=1)
    """Most inputs in one request (422 beyond)."""
    max_input_tokens: int = Field(256, ge=1)
    """Longest input in tokens, special tokens included (422 beyond, unless `truncate`)."""
    truncate: bool = False
    """Cut inputs longer than `max_input_tokens` instead of refusing them."""
    max_tokens: int = Field(256, ge=1)
    """Generation: the cap on `max_tokens` a request may ask for."""
    engine: Literal["auto", "eager", "transformers"] = "auto"
    """Generation: `auto` decodes Llama-style models on the CPU with slimforge's compiled
    engine (others with transformers), `eager` runs that engine uncompiled, `transformers`
    always uses the model's own forward."""
    max_context: int = Field(1024, ge=2)
    """Generation through slimforge's engine: tokens per sequence, prompt and output (capped
    at the model's context); the KV cache holds `max_batch_size` sequences of this length."""
    request_timeout_s: float = Field(30.0, gt=0)
    """A request not answered by then gets 504."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On shutdown, how long accepted requests may take to finish."""


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request (text inputs)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class _SamplingRequest(BaseModel):
    """What every generation request shares: the model and how to pick tokens."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stream: bool = False
    seed: int | None = None


class CompletionRequest(_SamplingRequest):
    """OpenAI's completions request (one text prompt)."""

    prompt: str
    max_tokens: int = Field(16, ge=1)


class ChatRequest(_SamplingRequest):
    """OpenAI's chat completions request."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class PredictRequest(BaseModel):
    """Inputs for a classifier (texts) or a custom model (lists of numbers)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] | list[list[float]]
    model: str | None = None


class _Server:
    """The model, its batcher and metrics, and what the handlers need of them."""

    def __init__(self, loaded: LoadedModel, config: ServeConfig, model_info: dict[str, str]):
        self.loaded, self.config = loaded, config
        self.name = config.model_name or loaded.spec
        gpu = (loaded.device.index or 0) if loaded.device.type == "cuda" else None
        self.metrics = ServerMetrics(model_info, config.batch.max_queue, gpu)
        self.runner = BatchRunner(loaded)
        self.batcher = DynamicBatcher(self.runner, config.batch, self.metrics.observe_batch)
        self.ready = False
        self.generator = (Generator(loaded, self.metrics, config.batch.max_queue,
                                    config.batch.max_batch_size, engine=config.engine,
                                    max_len=config.max_context)
                          if loaded.task == "causal-lm" else None)

    async def token_ids(self, texts: list[str]) -> list[list[int]]:
        """`_token_ids` on the event loop for a small request; a large one (over
        `INLINE_CHARS` characters) is tokenized on a thread, so the loop keeps serving."""
        if sum(len(t) for t in texts) <= INLINE_CHARS:
            return self._token_ids(texts)
        return await asyncio.to_thread(self._token_ids, texts)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids (special tokens included), tokenized once here and batched
        as ids; 422 for a text over `max_input_tokens`, unless the server truncates."""
        tokenizer, limit = self.loaded.tokenizer, self.config.max_input_tokens
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        too_long = [i for i, x in enumerate(ids) if len(x) > limit]
        if too_long and not self.config.truncate:
            raise ApiError(422, f"Input {too_long[0]} has {len(ids[too_long[0]])} tokens; this "
                           f"server takes at most {limit} per input.",
                           "invalid_request_error", "input_too_long")
        if too_long:  # cut properly: the special tokens at the end survive
            cut = tokenizer([texts[i] for i in too_long], add_special_tokens=True,
                            truncation=True, max_length=limit)["input_ids"]
            for i, x in zip(too_long, cut, strict=True):
                ids[i] = x
        return ids

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.name:
            raise ApiError(404, f"The model {name!r} is not served here; this server serves "
                           f"{self.name!r}.", "invalid_request_error", "model_not_found")

    def check_inputs(self, inputs: list[Any]) -> None:
        if not inputs:
            raise ApiError(422, "The input is empty; send at least one input.",
                           "invalid_request_error", "empty_input")
        if len(inputs) > self.config.max_inputs:
            raise ApiError(422, f"{len(inputs)} inputs in one request; this server takes at "
                           f"most {self.config.max_inputs}.", "invalid_request_error",
                           "too_many_inputs")
        if any(isinstance(x, str) and not x.strip() for x in inputs):
            raise ApiError(422, "An input is an empty string.", "invalid_request_error",
                           "empty_input")

    async def run(self, payloads: list[Any], tokens: list[int]) -> list[Any]:
        """Batch the inputs through the model; map the batcher's refusals to API errors."""
        self.metrics.queue_depth.set(self.batcher.depth)
        try:
            return await self.batcher.submit(payloads, tokens, self.config.request_timeout_s)
        except QueueFullError as full:
            self.metrics.rejected.labels("queue_full").inc()
            retry = max(1, math.ceil(full.retry_after_s))
            raise ApiError(429, f"The server is at capacity; retry after {retry} s.",
                           "rate_limit_error", "queue_full",
                           {"Retry-After": str(retry)}) from None
        except DrainingError:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(503, "The server is shutting down.", "server_error",
                           "draining") from None
        except TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            raise self._deadline_error() from None
        finally:
            self.metrics.queue_depth.set(self.batcher.depth)


    async def embeddings(self, body: EmbeddingRequest) -> Response:
        """POST /v1/embeddings."""
        self.check_model(body.model)
        if self.loaded.task != "embedding":
            raise ApiError(404, f"{self.name} is a {self.loaded.task} model; it serves no "
                           "embeddings.", "invalid_request_error", "wrong_endpoint")
        texts = [body.input] if isinstance(body.input, str) else body.input
        self.check_inputs(texts)
        ids = await self.token_ids(texts)
        tokens = [len(x) for x in ids]
        self.metrics.tokens_in.inc(sum(tokens))
        vectors = await self.run(ids, tokens)
        content = {"object": "list", "model": self.name,
                   "data": [{"object": "embedding", "index": i,
                             "embedding": _encode(v, body.encoding_format)}
                            for i, v in enumerate(vectors)],
                   "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}
        return await _json_off_loop(len(vectors) > INLINE_VECTORS, content)

    async def predict(self, body: PredictRequest) -> Response:
        """POST /v1/predict: classifier logits or a custom model's outputs."""
        self.check_model(body.model)
        if self.loaded.task not in ("classification", "custom"):
            raise ApiError(404, f"{self.name} is a {self.loaded.task} model; use its "
                           "OpenAI endpoint.", "invalid_request_error", "wrong_endpoint")
        self.check_inputs(body.inputs)
        texts = self.loaded.tokenizer is not None
        if texts != all(isinstance(x, str) for x in body.inputs):
            raise ApiError(422, "A model with a tokenizer takes texts; a plain module takes "
                           "lists of numbers.", "invalid_request_error", "invalid_input_type")
        payloads: list[Any] = (await self.token_ids(list(body.inputs)) if texts
                               else list(body.inputs))
        tokens = [len(x) for x in payloads] if texts else [1] * len(payloads)
        if texts:
            self.metrics.tokens_in.inc(sum(tokens))
        outputs = await self.run(payloads, tokens)
        return _json({"model": self.name, "outputs": [o.tolist() for o in outputs]})


    def _require_generator(self) -> None:
        if self.generator is None:
            raise ApiError(404, f"{self.name} is a {self.loaded.task} model; it does not "
                           "generate text.", "invalid_request_error", "wrong_endpoint")

    def _prompt_ids(self, prompt: str, max_tokens: int) -> list[int]:
        self._require_generator()
        if not prompt.strip():
            raise ApiError(422, "The prompt is empty.", "invalid_request_error", "empty_input")
        if max_tokens > self.config.max_tokens:
            raise ApiError(422, f"max_tokens {max_tokens} is over this server's cap of "
                           f"{self.config.max_tokens}.", "invalid_request_error",
                           "max_tokens_too_large")
        ids = self.loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert self.generator is not None
        context = self.generator.context
        if len(ids) + max_tokens > context:
            raise ApiError(422, f"The prompt has {len(ids)} tokens; with max_tokens "
                           f"{max_tokens} that is over this server's context of {context} "
                           "(the model's, or --max-context).",
                           "invalid_request_error", "input_too_long")
        self.metrics.tokens_in.inc(len(ids))
        return ids

    async def completions(self, body: CompletionRequest, received: float) -> Response:
        """POST /v1/completions."""
        self.check_model(body.model)
        ids = self._prompt_ids(body.prompt, body.max_tokens)
        return await self._generate(ids, body.max_tokens, body, received, chat=False)

    async def chat(self, body: ChatRequest, received: float) -> Response:
        """POST /v1/chat/completions: the prompt is the tokenizer's chat template."""
        self.check_model(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        self._require_generator()
        if not getattr(self.loaded.tokenizer, "chat_template", None):
            raise ApiError(404, f"{self.name} has no chat template; send a prompt to "
                           "/v1/completions instead.", "invalid_request_error",
                           "no_chat_template")
        prompt = self.loaded.tokenizer.apply_chat_template(
            [m.model_dump() for m in body.messages], tokenize=False,
            add_generation_prompt=True)
        ids = self._prompt_ids(prompt, max_tokens)
        return await self._generate(ids, max_tokens, body, received, chat=True)

    async def _generate(self, ids: list[int], max_tokens: int, body: Any, received: float,
                        chat: bool) -> Response:
        request = GenerationRequest(ids, max_tokens, body.temperature, body.top_p, body.seed,
                                    self.config.request_timeout_s)
        events = self.generator.stream(request, received)
        try:
            first = await anext(events)
        except GeneratorBusyError:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, "The server is at capacity; retry after 1 s.",
                           "rate_limit_error", "queue_full", {"Retry-After": "1"}) from None
        except GeneratorClosedError:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(503, "The server is shutting down.", "server_error",
                           "draining") from None
        envelope = _Envelope(self.name, chat, len(ids), self._deadline_error())
        if first == ("finish", ("timeout", 0)):  # still waiting when the deadline passed
            self.metrics.rejected.labels("deadline").inc()
            raise envelope.timeout
        if body.stream:
            return StreamingResponse(envelope.sse(first, events),
                                     media_type="text/event-stream")
        return _json(await envelope.whole(first, events))

    def _deadline_error(self) -> ApiError:
        return ApiError(504, f"No answer within {self.config.request_timeout_s} s.",
                        "timeout_error", "deadline_exceeded")


class _Envelope:
    """OpenAI's response shapes for one generation, whole or as server-sent events."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int, timeout: ApiError) -> None:
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.timeout = timeout  # what a generation cut by its deadline answers
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _usage(self, completion: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _head(self, stream: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if stream:
            delta = {} if text is None else {"role": "assistant", "content": text}
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text or ""},
                "finish_reason": finish}

    async def whole(self, first: tuple[str, Any], rest: AsyncIterator) -> dict[str, Any]:
        pieces, finish, count = [], "length", 0
        async for kind, value in _chain(first, rest):
            if kind == "text":
                pieces.append(value)
            else:
                finish, count = value
        if finish == "timeout":
            raise self.timeout
        return {**self._head(False), "choices": [self._choice("".join(pieces), finish, False)],
                "usage": self._usage(count)}

    async def sse(self, first: tuple[str, Any], rest: AsyncIterator) -> AsyncIterator[str]:
        """The events; a failure after the first byte (deadline, shutdown, a crash) can no
        longer change the status, so it ends the stream as an `error` event."""
        try:
            async for kind, value in _chain(first, rest):
                yield f"data: {json.dumps(self._chunk(kind, value))}\n\n"
        except Exception as exc:
            if not isinstance(exc, ApiError | GeneratorClosedError):
                log.exception("a generation stream failed")
            error = exc if isinstance(exc, ApiError) else ApiError(
                503 if isinstance(exc, GeneratorClosedError) else 500,
                "The generation stopped early; the server log has the details.", "server_error")
            yield f"data: {json.dumps(error_body(error))}\n\n"
        yield "data: [DONE]\n\n"

    def _chunk(self, kind: str, value: Any) -> dict[str, Any]:
        if kind == "text":
            return {**self._head(True), "choices": [self._choice(value, None, True)]}
        finish, count = value
        if finish == "timeout":
            raise self.timeout
        return {**self._head(True), "choices": [self._choice(None, finish, True)],
                "usage": self._usage(count)}


async def _chain(first: tuple[str, Any], rest: AsyncIterator) -> AsyncIterator[tuple[str, Any]]:
    yield first
    async for event in rest:
        yield event


async def _json_off_loop(large: bool, content: dict[str, Any]) -> Response:
    """`_json`, on a thread when the content is large (hundreds of vectors: tens of ms)."""
    return await asyncio.to_thread(_json, content) if large else _json(content)


def _json(content: dict[str, Any]) -> Response:
    # Plain json.dumps: FastAPI's default encoder walks every float of every vector in Python.
    return Response(json.dumps(content), media_type="application/json")


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def create_app(loaded: LoadedModel, config: ServeConfig | None = None,
               model_info: dict[str, str] | None = None) -> FastAPI:
    """A FastAPI app serving `loaded`; mount it in your own app or run it with uvicorn.

    Args:
        loaded: the model (an artifact or any spec, loaded).
        config: batching, limits and keys.
        model_info: labels for `slimforge_model_info` (spec, variant, sha256).
    """
    config = config or ServeConfig()
    info = model_info or {"spec": loaded.spec, "task": loaded.task,
                          "variant": "+".join(s["step"] for s in loaded.steps) or "base"}
    server = _Server(loaded, config, info)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if loaded.task != "causal-lm":
            calls = await asyncio.to_thread(server.runner.warm_up, config.batch.max_batch_size,
                                            config.max_input_tokens)
            cost = await asyncio.to_thread(server.runner.calibrate)
            log.info("warmed up with %d calls; one call costs as much as %.0f tokens of "
                     "compute", calls, cost)
        if server.generator is not None:
            seconds = await asyncio.to_thread(server.generator.warm_up)
            log.info("generation: %s%s", server.generator.engine_note,
                     f", decode step compiled in {seconds:.1f} s" if seconds else "")
        server.batcher.start()
        server.ready = True
        yield
        server.ready = False  # /readyz says 503 from here on; new requests get 503
        finished = await server.batcher.drain(config.drain_timeout_s)
        if server.generator is not None:
            finished &= await asyncio.to_thread(server.generator.close, config.drain_timeout_s)
        log.info("drained %s", "every accepted request" if finished else "until the timeout")

    app = FastAPI(title="slimforge serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _install_handlers(app, server)
    _install_routes(app, server)
    app.add_middleware(Gate, metrics=server.metrics, api_keys=config.api_keys,
                       max_body_bytes=config.max_body_bytes)
    return app


def _install_handlers(app: FastAPI, server: _Server) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        return error_response(ApiError(422, f"Malformed request: {problems}.",
                                       "invalid_request_error", "invalid_body"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(exc.status_code, str(exc.detail),
                                       "invalid_request_error"))


def _install_routes(app: FastAPI, server: _Server) -> None:
    _install_probes(app, server)
    _install_inference(app, server)


def _install_probes(app: FastAPI, server: _Server) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not server.ready:
            return JSONResponse({"status": "not ready: starting or draining"}, status_code=503)
        if server.batcher.saturated:
            return JSONResponse({"status": "not ready: queue full"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        server.metrics.queue_depth.set(server.batcher.depth)
        return Response(server.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def _install_inference(app: FastAPI, server: _Server) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.name, "object": "model",
                                            "created": 0, "owned_by": "slimforge"}]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        return await server.embeddings(body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        return await server.completions(body, time.monotonic())

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Response:
        return await server.chat(body, time.monotonic())

    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> Response:
        return await server.predict(body)
