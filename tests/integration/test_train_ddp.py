"""torchrun with 2 CPU processes (gloo) trains to the same parameters as 1 process with the
same global batch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from slimforge.train.config import TrainConfig
from tests.unit.train.test_engine import FP32, Tokens, _data, _model

SCRIPT = """
import sys
import torch
import torch.distributed as dist
from slimforge.train.config import TrainConfig
from slimforge.train.engine import fit
from slimforge.train.state import save_weights
from tests.unit.train.test_engine import FP32, Tokens, _data, _model

dist.init_process_group("gloo")
model = _model()
config = TrainConfig(max_steps=4, batch_size=2, accumulation=2, **FP32)  # x 2 processes
fit(model, _data(), Tokens(), config, sys.argv[1])
if dist.get_rank() == 0:
    save_weights(__import__("pathlib").Path(sys.argv[2]), model, {})
dist.destroy_process_group()
"""


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone",
         "--nproc_per_node", "2", str(script), str(tmp_path / "run"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=Path(__file__).parents[2], env={**__import__("os").environ,
                                            "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr[-3000:]
    single = _model()
    from slimforge.train.config import TrainConfig
    from slimforge.train.engine import fit

    fit(single, _data(), Tokens(), TrainConfig(max_steps=4, batch_size=4, accumulation=2,
                                               **FP32), tmp_path / "single")
    two = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.allclose(two["weight"], single.weight, atol=1e-6)
    assert torch.allclose(two["bias"], single.bias, atol=1e-6)


FSDP_SCRIPT = """
import sys
import torch.distributed as dist
from slimforge.train.engine import fit
from slimforge.train.state import save_weights
from tests.integration.test_train_ddp import FSDP, llama_windows

dist.init_process_group("gloo")
model, windows, objective = llama_windows()
steps, resume = int(sys.argv[3]), sys.argv[4] == "resume"
fit(model, windows, objective, FSDP.model_copy(update={"max_steps": steps}), sys.argv[1],
    resume=resume)
if dist.get_rank() == 0:
    save_weights(__import__("pathlib").Path(sys.argv[2]), model, {})
dist.destroy_process_group()
"""


def llama_windows():
    """A tiny Llama, 16 token windows of 16 and its next-token objective."""
    from slimforge.models.tiny import tiny_llama
    from slimforge.train.objectives import NextToken

    torch.manual_seed(0)
    windows = [torch.randint(0, 64, (16,)) for _ in range(16)]
    return tiny_llama(), windows, NextToken(torch.device("cpu"))


# x 2 processes: a global batch of 8 windows, AdamW state that the resume must restore
FSDP = TrainConfig(max_steps=4, batch_size=2, accumulation=2, lr=1e-2, precision="fp32",
                   schedule="constant", strategy="fsdp", checkpoint_every=2)


def test_fsdp_in_two_processes_checkpoints_resumes_and_matches_one_process(tmp_path):
    from safetensors.torch import load_file

    from slimforge.train.engine import fit

    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    for steps, how in ((2, "fresh"), (4, "resume")):  # two launches: the second resumes
        done = subprocess.run(
            [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone",
             "--nproc_per_node", "2", str(script), str(tmp_path / "run"), str(tmp_path / "out"),
             str(steps), how],
            capture_output=True, text=True, timeout=300, check=False,
            cwd=Path(__file__).parents[2], env={**__import__("os").environ,
                                                "PYTHONPATH": str(Path(__file__).parents[2])})
        assert done.returncode == 0, done.stderr[-3000:]
    model, windows, objective = llama_windows()
    fit(model, windows, objective, FSDP.model_copy(update={"batch_size": 4}), tmp_path / "one")
    two = load_file(tmp_path / "out" / "model.safetensors")
    one = model.state_dict()
    assert two.keys() <= one.keys()
    assert all(torch.allclose(two[k], one[k], atol=1e-5) for k in two)
    assert not torch.equal(two["model.layers.0.mlp.up_proj.weight"],
                           llama_windows()[0].state_dict()["model.layers.0.mlp.up_proj.weight"])


def test_the_train_command_runs_under_torchrun_and_only_rank_0_writes(tmp_path):
    import json

    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "train", limit=30)
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone",
         "--nproc_per_node", "2", "-m", "slimforge", "train", "builtin:tiny-llama",
         "--data", "good.jsonl", "--steps", "3", "--batch-size", "2", "--max-length", "32",
         "--strategy", "fsdp", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # rank 0 alone reports
    assert results[0]["train"]["steps"] == 3
    assert len(list((tmp_path / "runs").glob("*-train-builtin-tiny-llama"))) == 1
    assert len(list((tmp_path / "runs").glob("*-data-check-*"))) == 1
