"""Conversion: ONNX export (`exporter`, needs torch and onnx).

Importing this package imports neither torch nor onnx. The export contracts are data in
`v2m.core.contracts` (and each family's, `v2m.families`); TensorRT engines are built by the
TensorRT backend's own builder, `v2m.runtime.backends.trt_build`, since the runtime builds
them on first use.
"""

from __future__ import annotations

__all__ = ["export_bundle", "ExportResult", "ExportError"]


def __getattr__(name: str):
    if name in ("export_bundle", "ExportResult", "ExportError"):
        from . import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'v2m.export' has no attribute {name!r}")
