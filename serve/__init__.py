"""v2m serving: an HTTP service over a loaded pipeline, and the same code on a Ray cluster.

- `v2m.serve.engine`: the engine: one loaded `Pipeline`, one device thread that runs every
  backend call, request batching, per-request temporary directories. No web framework here.
- `v2m.serve.app`: the FastAPI app over an engine (`v2m serve`): upload parsing, limits,
  errors, auth, Prometheus metrics (`pip install 'v2m-runtime[serve]'`).
- `v2m.serve.ray_app`: the same app as a Ray Serve deployment; `v2m.serve.ray_batch`: batch
  jobs (`v2m generate DIR -o OUT --ray`) over Ray Data (`pip install 'v2m-runtime[ray]'`).

Importing this package imports nothing heavy: no torch, fastapi or ray.
"""

from __future__ import annotations

__all__ = ["ServeConfig"]


def __getattr__(name: str):
    if name == "ServeConfig":
        from .config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'v2m.serve' has no attribute {name!r}")
