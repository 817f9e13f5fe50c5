"""torchrun with 2 CPU processes (gloo) trains to the same parameters as 1 process with the
same global batch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

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
