"""serve/gate.py: the envelope every request passes, on a small FastAPI app in-process."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from slimforge.serve.gate import Gate, authorized
from slimforge.serve.metrics import ServerMetrics


def _app(keys: list[str]) -> tuple[FastAPI, ServerMetrics]:
    app = FastAPI()
    metrics = ServerMetrics({"spec": "test"})

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internal detail")

    app.add_middleware(Gate, metrics=metrics, api_keys=keys, max_body_bytes=64)
    return app, metrics


def _call(app: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_a_crashing_route_gets_a_json_500_with_headers_and_no_traceback(caplog):
    app, metrics = _app([])
    response = _call(app, "GET", "/boom", headers={"X-Request-ID": "abc-1"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] == "abc-1"
    assert float(response.headers["x-process-time"]) >= 0
    assert "secret internal detail" in caplog.text  # the log keeps what the client does not see
    assert 'slimforge_requests_total{endpoint="/boom",status="500"} 1.0' in (
        metrics.exposition().decode())


def test_keys_limits_and_ids():
    app, _ = _app(["Key-1"])
    auth = {"Authorization": "Bearer Key-1"}
    assert _call(app, "POST", "/echo", json={"a": 1}).status_code == 401
    assert _call(app, "POST", "/echo", json={"a": 1},
                 headers={"Authorization": "Bearer key-1"}).status_code == 401
    ok = _call(app, "POST", "/echo", json={"a": 1}, headers=auth)
    assert ok.status_code == 200
    assert ok.json() == {"a": 1}
    assert len(ok.headers["x-request-id"]) == 32  # none given: a fresh one
    big = _call(app, "POST", "/echo", json={"a": "x" * 100}, headers=auth)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "body_too_large"
    odd = _call(app, "POST", "/echo", json={}, headers={**auth, "X-Request-ID": "bad id!"})
    assert odd.headers["x-request-id"] != "bad id!"


def test_authorized_needs_the_bearer_scheme_and_an_exact_key():
    assert authorized(None, [])
    assert authorized("Bearer k2", ["k1", "k2"])
    assert not authorized("Basic k1", ["k1"])
    assert not authorized("Bearer ", ["k1"])
    assert not authorized("Bearer K1", ["k1"])
