"""`slimforge profile` on the real models: SmolLM2's batch-1 decode and MiniLM at 32 x 128,
classified with the numbers behind the verdict."""

from __future__ import annotations

import json
import subprocess
import sys

from slimforge.bench.profile import OVERHEAD_SHARE


def _profile(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "slimforge", "profile", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "-bound" in done.stderr  # the verdict, in words
    return json.loads(done.stdout.strip().splitlines()[-1])


def _consistent(result: dict) -> None:
    shares = (result["achieved_flops_share"], result["achieved_bandwidth_share"])
    if max(shares) < OVERHEAD_SHARE:
        assert result["bound"] == "overhead"
    else:
        roofline = result["arithmetic_intensity"] >= result["machine_balance"]
        assert result["bound"] == ("compute" if roofline else "memory")


def test_smollm2_decode_sits_under_the_machine_balance():
    result = _profile("builtin:smollm2")
    assert result["workload"].startswith("decode step, batch 1")
    assert result["arithmetic_intensity"] < 1 < result["machine_balance"]  # ~2 FLOPs/weight
    assert result["bound"] in ("memory", "overhead")
    assert result["bytes"] > 500e6  # 135M fp32 weights read per token
    _consistent(result)


def test_minilm_at_32_by_128_sits_over_the_machine_balance():
    result = _profile("builtin:minilm", "--batch", "32", "--seq", "128")
    assert result["workload"] == "forward, batch 32 x 128 tokens"
    assert result["arithmetic_intensity"] > result["machine_balance"]
    assert result["bound"] in ("compute", "overhead")
    _consistent(result)
    assert {op["op"] for op in result["top_ops"]} & {"aten::addmm", "aten::mm"}
