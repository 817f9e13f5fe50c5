"""`slimforge serve` as users run it: a real uvicorn process on 127.0.0.1, real HTTP, the
official `openai` client, and real Prometheus exposition parsed by prometheus-client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import Server, serve_fixture

KEY = "sk-test-Secret_1"


@pytest.fixture(scope="module")
def tiny() -> Iterator[Server]:
    yield from serve_fixture("builtin:tiny-bert", "--max-inputs", "8", "--max-input-tokens", "64",
                       "--max-body-bytes", "4096", keys=f"other-key,{KEY}")


@pytest.fixture(scope="module")
def minilm_server() -> Iterator[Server]:
    # inputs of at most 128 tokens: start-up runs every batch shape up to it (warm_up), and
    # these tests send short texts
    yield from serve_fixture("builtin:minilm", "--model-name", "all-MiniLM-L6-v2",
                             "--max-input-tokens", "128")


def _post(server: Server, body: dict, key: str | None = KEY, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{server.url}/v1/embeddings", json=body, headers=headers, timeout=30)


def test_openai_client_gets_real_minilm_embeddings(minilm_server):
    import numpy as np
    from openai import OpenAI

    from slimforge.models.load import load_model
    from slimforge.models.tasks import embed

    client = OpenAI(base_url=f"{minilm_server.url}/v1", api_key="unused")
    texts = ["Return the sum of the numbers.", "Open the file and read every line of it."]
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    got = np.array([d.embedding for d in result.data])
    assert got.shape == (2, 384)
    expected = embed(load_model("builtin:minilm"), texts).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert result.usage.prompt_tokens > 10
    assert [m.id for m in client.models.list().data] == ["all-MiniLM-L6-v2"]
    # a large request (tokenized and encoded off the event loop) gives the same vectors
    many = [f"{texts[i % 2]} Item {i} of a longer request, padded out with words." * 4
            for i in range(40)]
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=many)
    got = np.array([d.embedding for d in result.data])
    assert got.shape == (40, 384)
    assert np.allclose(got, embed(load_model("builtin:minilm"), many).numpy(), atol=1e-4)


def test_every_response_carries_a_request_id_and_process_time(tiny):
    response = _post(tiny, {"model": "builtin:tiny-bert", "input": "hello"},
                     **{"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"
    assert float(response.headers["x-process-time"]) > 0
    generated = httpx.get(f"{tiny.url}/healthz").headers["x-request-id"]
    assert len(generated) == 32


@pytest.mark.parametrize(("body", "key", "status", "code"), [
    ({"model": "builtin:tiny-bert", "input": "x"}, None, 401, "invalid_api_key"),
    ({"model": "builtin:tiny-bert", "input": "x"}, "sk-test-secret_1", 401, "invalid_api_key"),
    ({"model": "gpt-4", "input": "x"}, KEY, 404, "model_not_found"),
    ({"model": "builtin:tiny-bert", "input": []}, KEY, 422, "empty_input"),
    ({"model": "builtin:tiny-bert", "input": ""}, KEY, 422, "empty_input"),
    ({"model": "builtin:tiny-bert", "input": ["a"] * 9}, KEY, 422, "too_many_inputs"),
    ({"model": "builtin:tiny-bert", "input": "word " * 70}, KEY, 422, "input_too_long"),
    ({"model": "builtin:tiny-bert", "input": 42}, KEY, 422, "invalid_body"),
    ({"input": "x"}, KEY, 422, "invalid_body"),
    ({"model": "builtin:tiny-bert", "input": "x" * 5000}, KEY, 413, "body_too_large"),
])
def test_bad_requests_get_their_exact_status_and_a_json_error(tiny, body, key, status, code):
    response = _post(tiny, body, key=key)
    assert response.status_code == status, response.text
    assert {"x-request-id", "x-process-time"} <= set(response.headers)
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text


def test_keys_are_case_sensitive_and_probes_need_none(tiny):
    assert _post(tiny, {"model": "builtin:tiny-bert", "input": "x"},
                 key=KEY.upper()).status_code == 401
    assert _post(tiny, {"model": "builtin:tiny-bert", "input": "x"},
                 key="other-key").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{tiny.url}{path}").status_code == 200


def test_metrics_follow_prometheus_naming_and_count_requests(tiny):
    _post(tiny, {"model": "builtin:tiny-bert", "input": ["one", "two"]})
    text = httpx.get(f"{tiny.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in families:
        assert ":" not in name
        assert name.startswith(("slimforge_", "process_")), name
    assert families["slimforge_request_duration_seconds"].type == "histogram"
    assert families["slimforge_batch_size"].type == "histogram"
    assert families["slimforge_requests"].type == "counter"  # exposed as _total samples
    assert "slimforge_requests_total{" in text
    ok = [s for s in families["slimforge_requests"].samples
          if s.name == "slimforge_requests_total" and s.labels["endpoint"] == "/v1/embeddings"
          and s.labels["status"] == "200"]
    assert ok
    assert ok[0].value >= 1
    info = families["slimforge_model_info"].samples[0].labels
    assert info["spec"] == "builtin:tiny-bert"
    assert info["variant"] == "base"
    assert families["slimforge_input_tokens"].samples[0].value > 0


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: `make tools` installs Debian's prometheus package")
def test_metrics_pass_promtool_check_metrics(tiny):
    _post(tiny, {"model": "builtin:tiny-bert", "input": ["one", "two"]})
    _post(tiny, {"model": "nope", "input": "x"})  # an error status too
    text = httpx.get(f"{tiny.url}/metrics").text
    assert "slimforge_request_duration_seconds_bucket" in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""  # no lint remark at all


def test_overload_gets_429_with_retry_after_fast_and_no_5xx():
    server = Server("builtin:tiny-bert", "--max-queue", "4", "--max-batch-size", "2",
                    "--max-wait-ms", "20")
    try:
        async def burst():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {"model": "builtin:tiny-bert", "input": ["a b c", "d e f"]}
                return await asyncio.gather(*(client.post("/v1/embeddings", json=body)
                                              for _ in range(40)))

        responses = asyncio.run(burst())
    finally:
        server.stop()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    assert statuses.count(200) >= 2
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert all(float(r.headers["x-process-time"]) < 0.05 for r in refused)


def test_sigterm_finishes_every_accepted_request():
    server = Server("builtin:tiny-bert", "--max-wait-ms", "400", "--max-batch-size", "64")

    async def load_then_stop():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            body = {"model": "builtin:tiny-bert", "input": "drain me"}
            pending = [asyncio.ensure_future(client.post("/v1/embeddings", json=body))
                       for _ in range(20)]
            await asyncio.sleep(0.2)  # accepted and queued: the batch waits 400 ms
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*pending)

    responses = asyncio.run(load_then_stop())
    assert [r.status_code for r in responses] == [200] * 20
    # uvicorn drains, then re-raises the signal it caught: the exit is SIGTERM's own
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.process.stderr.read()


def test_sigterm_lets_running_generations_finish_their_streams():
    import json

    server = Server("builtin:tiny-llama", "--max-tokens", "600")
    body = {"model": "builtin:tiny-llama", "prompt": "Hello", "max_tokens": 600,
            "temperature": 0, "stream": True}

    async def stream(client: httpx.AsyncClient, first_byte: asyncio.Event) -> list[str]:
        lines = []
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                first_byte.set()
                if line.startswith("data: "):
                    lines.append(line.removeprefix("data: "))
        return lines

    async def stream_then_stop():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            started = [asyncio.Event() for _ in range(3)]
            pending = [asyncio.ensure_future(stream(client, e)) for e in started]
            await asyncio.gather(*(e.wait() for e in started))
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*pending)

    for lines in asyncio.run(stream_then_stop()):
        assert lines[-1] == "[DONE]"
        finish = json.loads(lines[-2])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")  # ended by the model, not cut by the shutdown
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.process.stderr.read()


def test_a_bad_server_option_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "slimforge", "serve", "builtin:tiny-bert",
                           "--max-batch-size", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Bad server option: max_batch_size" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_loadtest_command_reports_qps_latency_and_statuses():
    server = Server("builtin:tiny-bert", "--truncate", keys=KEY)  # corpus paragraphs are long
    env = {**os.environ, "SLIMFORGE_API_KEY": KEY}
    try:
        done = subprocess.run([sys.executable, "-m", "slimforge", "loadtest", server.url,
                               "--model", "builtin:tiny-bert", "--concurrency", "4",
                               "--requests", "40"], capture_output=True, text=True,
                              timeout=120, env=env)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] == 40
    assert result["statuses"] == {"200": 40}
    assert result["qps"] > 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]


def test_predict_serves_a_custom_module_and_refuses_texts():
    server = Server("module:slimforge.models.tiny:TinyMLP")
    try:
        ok = httpx.post(f"{server.url}/v1/predict", json={"inputs": [[0.5] * 16, [1.0] * 16]})
        wrong = httpx.post(f"{server.url}/v1/predict", json={"inputs": ["a text"]})
        embeddings = _post(server, {"model": "x", "input": "t"}, key=None)
    finally:
        server.stop()
    assert ok.status_code == 200, ok.text
    outputs = ok.json()["outputs"]
    assert len(outputs) == 2
    assert len(outputs[0]) == 4
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "invalid_input_type"
    assert embeddings.status_code == 404


@pytest.fixture(scope="module")
def tiny_llm() -> Iterator[Server]:
    yield from serve_fixture("builtin:tiny-llama", "--max-tokens", "32")


def test_completions_whole_and_streamed_agree_under_greedy_decoding(tiny_llm):
    import json

    body = {"model": "builtin:tiny-llama", "prompt": "Hello there", "max_tokens": 12,
            "temperature": 0}
    whole = httpx.post(f"{tiny_llm.url}/v1/completions", json=body, timeout=60)
    assert whole.status_code == 200, whole.text
    result = whole.json()
    assert result["object"] == "text_completion"
    assert result["usage"]["completion_tokens"] <= 12
    pieces, finish = [], None
    with httpx.stream("POST", f"{tiny_llm.url}/v1/completions", json={**body, "stream": True},
                      timeout=60) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        choice = json.loads(line.removeprefix("data: "))["choices"][0]
        pieces.append(choice["text"])
        finish = choice["finish_reason"] or finish
    assert "".join(pieces) == result["choices"][0]["text"]
    assert finish == result["choices"][0]["finish_reason"]
    metrics = httpx.get(f"{tiny_llm.url}/metrics").text
    assert "slimforge_time_to_first_token_seconds_count" in metrics


def test_loadtest_measures_streamed_generation_and_reads_payload_files(tiny_llm, tmp_path):
    import json

    def run(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "slimforge", "loadtest", tiny_llm.url,
                               "--model", "builtin:tiny-llama", "--concurrency", "3", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    streamed = run("--endpoint", "/v1/completions", "--requests", "9", "--max-tokens", "8")
    assert streamed["statuses"] == {"200": 9}
    assert streamed["tokens_per_s"] > 0
    assert 0 < streamed["ttft_p50_ms"] <= streamed["ttft_p95_ms"] <= streamed["p95_ms"]
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps(
        {"model": "builtin:tiny-llama", "prompt": q, "max_tokens": 4, "stream": True})
        for q in ("Hi", "Hello there")))
    from_file = run("--endpoint", "/v1/completions", "--requests", "4",
                    "--payload", str(bodies))
    assert from_file["statuses"] == {"200": 4}
    assert from_file["ttft_p50_ms"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "slimforge", "loadtest", tiny_llm.url,
                           "--model", "m", "--payload", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "neither JSON nor JSON lines" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/completions", {"model": "builtin:tiny-llama", "prompt": "x", "max_tokens": 33},
     422, "max_tokens_too_large"),
    ("/v1/completions", {"model": "builtin:tiny-llama", "prompt": "  "}, 422, "empty_input"),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model_not_found"),
    ("/v1/embeddings", {"model": "builtin:tiny-llama", "input": "x"}, 404, "wrong_endpoint"),
    ("/v1/chat/completions", {"model": "builtin:tiny-llama", "messages": []}, 422,
     "invalid_body"),
    ("/v1/chat/completions", {"model": "builtin:tiny-llama",
                              "messages": [{"role": "user", "content": "hi"}]}, 404,
     "no_chat_template"),
])
def test_generation_refusals(tiny_llm, path, body, status, code):
    response = httpx.post(f"{tiny_llm.url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_openai_client_streams_a_chat_completion_from_smollm2():
    from openai import OpenAI

    # slimforge's engine uncompiled (compiling takes a minute on a slow CPU; the compiled
    # step is checked against transformers in test_generate.py)
    server = Server("builtin:smollm2", "--model-name", "smollm2", "--engine", "eager")
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        stream = client.chat.completions.create(
            model="smollm2", stream=True, max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        whole = client.chat.completions.create(
            model="smollm2", max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
    finally:
        server.stop()
    assert len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "Paris" in text
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens <= 24


def test_a_chunked_body_over_the_limit_is_refused_while_read(tiny):
    def chunks():  # no Content-Length: the server only learns the size by reading
        yield b'{"model": "builtin:tiny-bert", "input": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(f"{tiny.url}/v1/embeddings", content=chunks(), timeout=30,
                          headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert "x-request-id" in response.headers


def test_an_expired_deadline_gets_504_for_embeddings_and_generation():
    import json

    bert = Server("builtin:tiny-bert", "--request-timeout-s", "0.001", "--max-wait-ms", "50")
    llm = Server("builtin:tiny-llama", "--request-timeout-s", "0.3", "--max-tokens", "1000")
    try:
        late = httpx.post(f"{bert.url}/v1/embeddings",
                          json={"model": "builtin:tiny-bert", "input": "hello"}, timeout=30)
        body = {"model": "builtin:tiny-llama", "prompt": "Hello", "max_tokens": 1000,
                "temperature": 0}
        whole = httpx.post(f"{llm.url}/v1/completions", json=body, timeout=30)
        with httpx.stream("POST", f"{llm.url}/v1/completions", json={**body, "stream": True},
                          timeout=30) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        metrics = httpx.get(f"{llm.url}/metrics").text
    finally:
        bert.stop()
        llm.stop()
    assert late.status_code == 504
    assert late.json()["error"]["code"] == "deadline_exceeded"
    # tiny-llama's greedy text from "Hello" never reaches end-of-text: the deadline cuts it
    assert whole.status_code == 504, whole.text[:200]
    assert whole.json()["error"]["code"] == "deadline_exceeded"
    assert streamed.status_code == 200
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["error"]["code"] == "deadline_exceeded"
    assert len(lines) > 3  # tokens were streamed before the cut
    assert 'slimforge_requests_total{endpoint="/v1/completions",status="504"} 1.0' in metrics
