"""`serve(spec, ...)`: load a model and run `create_app` under uvicorn.

Owns: `model_info` and `serve`. One process loads the model once and serves it; the server
keeps no state between requests, so replicas scale out behind any load balancer (run one
`slimforge serve` per replica, each with its own cores: the model already uses every thread
it is given). On SIGTERM or Ctrl-C uvicorn stops accepting connections, `/readyz` turns 503,
and accepted requests (queued or running) finish before the process exits, up to
`drain_timeout_s`.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimforge.models.tasks import LoadedModel
from slimforge.serve.app import ServeConfig


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


def serve(spec: str, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
          task: str | None = None, threads: int | None = None) -> None:
    """Load `spec` and serve it until SIGTERM/SIGINT, then drain and exit."""
    import uvicorn

    from slimforge.models.load import load_model
    from slimforge.runtime import setup_runtime
    from slimforge.serve.app import create_app

    setup_runtime(threads=threads)
    loaded = load_model(spec, task=task)
    app = create_app(loaded, config, model_info(loaded))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=int(config.drain_timeout_s) + 1)
