"""`serve(spec, ...)`: load a model and run `create_app` under uvicorn.

Owns: `model_info`, `plan_workers` and `serve`. One process loads the model once and serves
it; the server keeps no state between requests, so replicas scale out behind any load
balancer (one `slimforge serve` per replica, each on its own cores). Within a process,
embedding and classification batches compute `workers` at a time, each on `threads` cores:
by default one core per batch worker on a CPU (up to 8 workers), where small batches scale
poorly across cores (all-MiniLM-L6-v2 on 2 cores: 2 workers x 1 thread 1.5x the texts/s of
1 worker x 2 threads; docs/benchmarks.md), and one worker on a GPU. Generation runs one
request at a time on every core. On SIGTERM or Ctrl-C uvicorn stops accepting connections,
`/readyz` turns 503, and accepted requests (queued or running) finish before the process
exits, up to `drain_timeout_s`.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimforge.models.tasks import LoadedModel
from slimforge.serve.app import ServeConfig

MAX_AUTO_WORKERS = 8
"""Beyond 8 cores, automatic planning gives each batch worker several threads instead."""


def model_info(loaded: LoadedModel) -> dict[str, str]:
    """Labels for `slimforge_model_info`: spec, task, variant (compression steps) and, for a
    run folder, the sha256 of its weights as its manifest records them."""
    variant = "+".join(step["step"] + (f":{step['method']}" if "method" in step else "")
                       for step in loaded.steps) or "base"
    sha = ""
    manifest = Path(loaded.spec) / "manifest.json"
    if manifest.is_file():
        files = json.loads(manifest.read_text()).get("files", {})
        weights = [v for k, v in sorted(files.items()) if k.startswith("model/model.")]
        sha = weights[0] if weights else ""
    return {"spec": loaded.spec, "task": loaded.task, "variant": variant, "sha256": sha}


def plan_workers(task: str, device: str, cores: int, workers: int | None,
                 threads: int | None) -> tuple[int, int]:
    """(batch workers, intra-op threads per worker) for a model on `cores` cores.

    What is given is kept; what is not fills the cores. Generation and GPUs get one worker.
    """
    if task == "causal-lm" or device != "cpu":
        return 1, threads or cores
    if workers is None:
        workers = max(1, cores // threads) if threads else min(cores, MAX_AUTO_WORKERS)
    return workers, threads or max(1, cores // workers)


def serve(spec: str, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
          task: str | None = None, threads: int | None = None,
          verify_key: str | None = None) -> None:
    """Load `spec` and serve it until SIGTERM/SIGINT, then drain and exit.

    `config.batch.workers` and `threads` left None are planned by `plan_workers`;
    `verify_key` (an Ed25519 public key) makes a valid signature on the artifact required.
    """
    import torch
    import uvicorn

    from slimforge.models.load import load_model
    from slimforge.runtime import setup_runtime
    from slimforge.serve.app import create_app

    runtime = setup_runtime(threads=threads)
    loaded = load_model(spec, task=task, verify_key=verify_key)
    workers, per_worker = plan_workers(loaded.task, loaded.device.type, runtime.threads,
                                       config.batch.workers, threads)
    torch.set_num_threads(per_worker)
    config = config.model_copy(update={
        "batch": config.batch.model_copy(update={"workers": workers})})
    app = create_app(loaded, config, model_info(loaded))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=int(config.drain_timeout_s) + 1)
