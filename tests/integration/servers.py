"""Test helper: a real `slimforge serve` process on 127.0.0.1 (integration tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`slimforge serve SPEC` in its own process on a free loopback port, ready when
    /readyz says so."""

    def __init__(self, spec: str, *args: str, keys: str = "") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SLIMFORGE_API_KEYS": keys, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slimforge", "serve", spec, "--port", str(self.port),
             "--threads", "1", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def serve_fixture(spec: str, *args: str, keys: str = "") -> Iterator[Server]:
    """Body of a fixture: the server for the fixture's scope, stopped afterwards."""
    server = Server(spec, *args, keys=keys)
    try:
        yield server
    finally:
        server.stop()
