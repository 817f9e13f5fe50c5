"""`slimforge serve`: an OpenAI-compatible inference server with dynamic batching.

Modules: `batcher.py` (the four batching knobs, back-pressure, draining), `metrics.py`
(Prometheus metrics on an explicit registry), `app.py` (`create_app`, the HTTP contract),
`server.py` (`serve`: load a model and run it under uvicorn with graceful shutdown).
"""
