"""The baseline issue 6 measures against: the common FastAPI route that runs the model once
per request and adds an `X-Process-Time` header. No batching, no queue, no limits.

    .venv/bin/python benchmarks/naive_server.py SPEC PORT
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402

from slimforge.models.load import load_model  # noqa: E402
from slimforge.models.tasks import pool, tokenize  # noqa: E402

loaded = load_model(sys.argv[1])
app = FastAPI()


@app.middleware("http")
async def process_time(request: Request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Process-Time"] = str(time.perf_counter() - start)
    return response


@app.post("/v1/embeddings")
def embeddings(body: dict) -> dict:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    with torch.inference_mode():
        batch = tokenize(loaded, texts, 256)
        hidden = loaded.model(**batch).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], loaded.pooling)
    return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                       for i, v in enumerate(vectors.tolist())]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
