"""The command line under torchrun: join the process group it set up, and leave it.

Owns: `torchrun_group`. `slimforge train` and `slimforge distill` run unchanged under
`torchrun --nproc_per_node N` (with `--nnodes` and a rendezvous endpoint for several
machines): torchrun starts N copies and sets WORLD_SIZE, RANK and the rendezvous address in
their environment; each copy joins the group, `fit` wraps the model in DDP or FSDP
(`TrainConfig.strategy`) and gives each process its share of every global batch. Only rank 0
checks the data, measures quality and writes the run folder; the others train. The commands
load models on the CPU, so the group uses gloo; NCCL is for code that puts the model on a GPU
and calls `fit` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torchrun_group() -> Iterator[int]:
    """Under torchrun (WORLD_SIZE > 1): join the gloo process group for the block and leave
    it afterwards; yields this process's rank (0 when run alone)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0
        return
    if dist.is_initialized():  # the caller already joined: theirs to leave
        yield dist.get_rank()
        return
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()
