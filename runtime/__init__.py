"""v2m runtime: video in, music out.

Importing this package never imports torch, onnx or tensorrt: a backend imports
its engine when it is created.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Pipeline", "GenerationResult", "Request"]


def __getattr__(name: str):
    # Lazy, so `import v2m.runtime` stays cheap and torch-free.
    if name in ("Pipeline", "GenerationResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "Request":
        from .request import Request

        return Request
    raise AttributeError(f"module 'v2m.runtime' has no attribute {name!r}")
