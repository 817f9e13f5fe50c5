"""What every request passes through before and after its route: the HTTP envelope.

Owns: `ApiError`, `error_body` and `error_response` (OpenAI's error shape) and `Gate`, a plain ASGI
middleware (no per-request task group, unlike `@app.middleware("http")`). For each request it
picks the request id (the client's `X-Request-ID` when well-formed, else a fresh one), refuses
a declared body over the limit before reading a byte and a chunked one as soon as it grows
over, checks the API key (in constant time, against every key), counts the request in flight,
stamps `X-Request-ID` and `X-Process-Time` (seconds to the response headers) on the response,
and records duration and status by route. An exception that escapes a route becomes a JSON
500 here, with the same headers, and its traceback goes to the log, never to the client.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from slimforge.serve.metrics import ServerMetrics

log = logging.getLogger("slimforge.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
UNAUTHENTICATED = ("/healthz", "/readyz", "/metrics")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiError(Exception):
    """An error with the HTTP status and OpenAI error type that name it."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}


def error_body(exc: ApiError) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`: OpenAI's error shape."""
    return {"error": {"message": exc.message, "type": exc.kind, "param": None,
                      "code": exc.code}}


def error_response(exc: ApiError) -> JSONResponse:
    """The error as a JSON response with its status and headers."""
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


def authorized(header: str | None, keys: list[str]) -> bool:
    """Whether an `Authorization` header carries one of `keys` (any, when there are none)."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Compare against every key, without stopping at a match, each in constant time.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    return any(matches)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body over {limit} bytes; send fewer or shorter inputs.",
                    "invalid_request_error", "body_too_large")


class Gate:
    """ASGI middleware around the FastAPI app: ids, limits, auth, headers, request metrics."""

    def __init__(self, app: Any, metrics: ServerMetrics, api_keys: list[str],
                 max_body_bytes: int) -> None:
        self.app, self.metrics = app, metrics
        self.keys, self.limit = api_keys, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500, "started": False}

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode()),
                                      (b"x-process-time",
                                       f"{time.perf_counter() - start:.6f}".encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope["path"], headers)
            if refusal is not None:
                await error_response(refusal)(scope, receive, stamped)
            else:
                await self._pass(scope, receive, stamped)
        except Exception:
            log.exception("request %s failed", request_id)
            if not status["started"]:
                crash = ApiError(500, "Internal error; the server log has the details.",
                                 "server_error")
                await error_response(crash)(scope, receive, stamped)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "other")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.duration.labels(route, str(status["code"])).observe(elapsed)

    def _refusal(self, path: str, headers: dict[str, str]) -> ApiError | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return _too_large(self.limit)
        if path not in UNAUTHENTICATED and not authorized(headers.get("authorization"),
                                                          self.keys):
            return ApiError(401, "Missing or wrong API key; send `Authorization: Bearer KEY`.",
                            "authentication_error", "invalid_api_key")
        return None

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; a body without a declared length is read first, up to the limit (a
        body is at most `limit` bytes, so holding it is a cost the limit already allows)."""
        if any(k == b"content-length" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await error_response(_too_large(self.limit))(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def buffered() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)
