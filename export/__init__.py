"""Conversion: ONNX export (`exporter`, needs torch and onnx) and TensorRT engines (`tensorrt_build`).

Importing this package imports neither torch nor onnx: the export contracts and
the TensorRT engine builder are used by the lean runtime too.
"""

from __future__ import annotations

__all__ = ["CONTRACTS", "ExportContract", "export_bundle", "ExportResult", "ExportError", "build_engines"]


def __getattr__(name: str):
    if name in ("CONTRACTS", "ExportContract"):
        from . import contracts

        return getattr(contracts, name)
    if name in ("export_bundle", "ExportResult", "ExportError"):
        from . import exporter

        return getattr(exporter, name)
    if name == "build_engines":
        from . import tensorrt_build

        return tensorrt_build.build_engines
    raise AttributeError(f"module 'v2m.export' has no attribute {name!r}")
