"""Loading a pipeline from plain options (what a Ray actor or replica receives)."""

from __future__ import annotations

__all__ = ["load_pipeline"]


def load_pipeline(options: dict):
    """`Pipeline.load(**options)` with the first-use ONNX export the CLI has too."""
    from v2m.export import enable_first_use_export
    from v2m.runtime.pipeline import Pipeline

    enable_first_use_export()
    return Pipeline.load(**options)
