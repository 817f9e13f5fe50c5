"""monitor/: the alert rules pass `promtool check rules`, and every rule fires on a bad
replica and stays silent on a good one under `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
import yaml

from slimforge.monitor.rules import Thresholds, alert_rules, write_rules
from tests.integration.servers import Server

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing: `make tools` installs Debian's prometheus package")
JOB = 'job="slimforge"'


def _series(metric: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f'{metric}{{{JOB},instance="{instance}"{extra}}}', "values": values}


def _buckets(instance: str, per_minute: dict[str, int]) -> list[dict[str, str]]:
    return [_series("slimforge_request_duration_seconds_bucket", instance, f"0+{n}x30",
                    endpoint="/v1/embeddings", status="200", le=le)
            for le, n in per_minute.items()]


# alert -> (input series for a bad and a good replica, evaluation time)
CASES = {
    "SlimforgeDown": ([_series("up", "bad", "0x30"), _series("up", "good", "1x30")], "5m"),
    "SlimforgeLatencyP95High": (
        _buckets("bad", {"0.1": 0, "0.5": 0, "1.0": 100, "+Inf": 100})
        + _buckets("good", {"0.1": 100, "0.5": 100, "1.0": 100, "+Inf": 100}), "15m"),
    "SlimforgeErrorRateHigh": ([
        _series("slimforge_requests_total", "bad", "0+5x30", endpoint="/v1/embeddings",
                status="500"),
        _series("slimforge_requests_total", "bad", "0+95x30", endpoint="/v1/embeddings",
                status="200"),
        _series("slimforge_requests_total", "good", "0+100x30", endpoint="/v1/embeddings",
                status="200"),
        _series("slimforge_requests_total", "good", "0+0x30", endpoint="/v1/embeddings",
                status="500")], "15m"),
    "SlimforgeQueueSaturated": ([
        _series("slimforge_queue_depth", "bad", "60x30"),
        _series("slimforge_queue_capacity", "bad", "64x30"),
        _series("slimforge_queue_depth", "good", "10x30"),
        _series("slimforge_queue_capacity", "good", "64x30")], "15m"),
    "SlimforgeMemoryHigh": ([
        _series("process_resident_memory_bytes", "bad", "95x30"),
        _series("slimforge_memory_limit_bytes", "bad", "100x30"),
        _series("process_resident_memory_bytes", "good", "50x30"),
        _series("slimforge_memory_limit_bytes", "good", "100x30")], "15m"),
    "SlimforgeNoTraffic": ([  # scrapes of /metrics are not traffic
        _series("slimforge_requests_total", "bad", "0+1x40", endpoint="/metrics",
                status="200"),
        _series("slimforge_requests_in_flight", "bad", "0x40"),
        _series("slimforge_requests_total", "good", "0+10x40", endpoint="/v1/embeddings",
                status="200"),
        _series("slimforge_requests_in_flight", "good", "0x40")], "25m"),
    "SlimforgeGpuUnderused": ([
        _series("slimforge_gpu_utilization_ratio", "bad", "0.1x40"),
        _series("slimforge_gpu_utilization_ratio", "good", "0.8x40")], "35m"),
}


def test_every_rule_has_a_case():
    names = {r["alert"] for r in alert_rules(Thresholds())["groups"][0]["rules"]}
    assert names == set(CASES)


def test_thresholds_are_overridable_and_unknown_ones_refused():
    rules = alert_rules(Thresholds(p95_latency_s=0.25, job="embed"))["groups"][0]["rules"]
    latency = next(r for r in rules if r["alert"] == "SlimforgeLatencyP95High")
    assert latency["expr"].endswith("> 0.25")
    assert 'job="embed"' in latency["expr"]
    with pytest.raises(ValueError, match="p95_latency"):
        Thresholds(p95_latency=1)


@needs_promtool
def test_rules_pass_promtool_check_and_fire_only_on_the_bad_replica(tmp_path):
    rules = alert_rules(Thresholds())["groups"][0]["rules"]
    write_rules(tmp_path / "rules.yml")
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tests = []
    for rule in rules:
        series, at = CASES[rule["alert"]]
        summary = rule["annotations"]["summary"]
        tests.append({"interval": "1m", "input_series": series, "alert_rule_test": [{
            "eval_time": at, "alertname": rule["alert"], "exp_alerts": [{
                "exp_labels": {**rule["labels"], "job": "slimforge", "instance": "bad"},
                "exp_annotations": {"summary": summary,
                                    "description": f"{summary} on bad."}}]}]})
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests},
        sort_keys=False))
    tested = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _traffic(url: str, seconds: float) -> None:
    import time

    import httpx

    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < end:
            client.post("/v1/embeddings", json={"model": "builtin:tiny-bert",
                                                "input": ["one text", "another one"]})


@pytest.fixture(scope="module")
def tiny_server():
    server = Server("builtin:tiny-bert")
    yield server
    server.stop()


def test_the_dashboard_reads_only_metrics_the_server_exports(tiny_server):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from slimforge.monitor.dashboard import dashboard, metric_names
    from slimforge.serve.metrics import GPU_METRICS

    _traffic(tiny_server.url, 0.5)
    text = httpx.get(f"{tiny_server.url}/metrics").text
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "info": ("_info",)}
    exported = {f.name + suffix for f in text_string_to_metric_families(text)
                for suffix in suffixes.get(f.type, ("",))}  # with or without samples yet
    board = dashboard()
    wanted = metric_names(board)
    assert len(wanted) >= 15
    assert wanted - GPU_METRICS <= exported, wanted - GPU_METRICS - exported
    assert not exported & GPU_METRICS  # no GPU here: absent, not zero
    assert len(board["panels"]) == 14


def test_watch_reports_live_rates(tiny_server):
    import json
    import sys
    import threading

    load = threading.Thread(target=_traffic, args=(tiny_server.url, 3.0))
    load.start()
    done = subprocess.run([sys.executable, "-m", "slimforge", "monitor", "watch",
                           tiny_server.url, "--interval-s", "1", "--duration-s", "2"],
                          capture_output=True, text=True, timeout=60)
    load.join()
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["requests_per_s"] > 0
    assert figures["error_share"] == 0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert figures["mean_batch"] >= 1
    assert figures["rss_mb"] > 0
    assert figures["queue_capacity"] == 1024
    assert "req/s" in done.stderr  # the live table


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus missing: `make tools` installs Debian's package")
def test_a_real_prometheus_scrapes_the_server_and_answers_p95(tiny_server, tmp_path):
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_rules(tmp_path / "rules.yml")
    target = tiny_server.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "slimforge",
                            "static_configs": [{"targets": [target]}]}]}))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1"
    query = ('histogram_quantile(0.95, sum by (le) (rate(slimforge_request_duration_seconds_'
             'bucket{job="slimforge", endpoint=~"/v1/.+"}[1m])))')
    def ask(promql: str) -> str | None:
        try:
            found = httpx.get(f"{api}/query", params={"query": promql}).json()["data"]
        except httpx.HTTPError:
            return None  # still starting
        return found["result"][0]["value"][1] if found["result"] else None

    def poll(promql: str, good: Callable[[str], bool]) -> str | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = ask(promql)
            if value is not None and good(value):
                return value
            time.sleep(0.5)
        return None

    try:
        assert poll('up{job="slimforge"}', lambda v: v == "1") == "1"  # scraping
        _traffic(tiny_server.url, 4.0)  # scraped every second meanwhile
        p95 = poll(query, lambda v: v not in ("NaN", "+Inf"))
        rules = httpx.get(f"{api}/rules").json()["data"]["groups"][0]["rules"]
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
    assert p95 is not None
    assert 0 < float(p95) < 10
    assert len(rules) == 7
    assert {r["health"] for r in rules} == {"ok"}
