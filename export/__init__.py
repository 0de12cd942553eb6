"""Conversion: ONNX export (`exporter`, needs torch and onnx).

Importing this package imports neither torch nor onnx. The export contracts are data in
`v2m.core.contracts` (and each family's, `v2m.families`); TensorRT engines are built by the
TensorRT backend's own builder, `v2m.runtime.backends.trt_build`, since the runtime builds
them on first use.
"""

from __future__ import annotations

__all__ = ["export_bundle", "ExportResult", "ExportError", "enable_first_use_export"]


def enable_first_use_export() -> None:
    """Let `--backend auto` (and onnxruntime) export a bundle without ONNX graphs on first use,
    into the runtime's content-keyed cache (`v2m.runtime.backends.onnx_cache`). Cheap: the
    exporter (torch, onnx) is imported only when a bundle is actually exported."""
    from v2m.runtime.backends import onnx_cache

    def export(src, out, names=None, precisions=("fp32",)):
        from .exporter import export_bundle

        return export_bundle(src, out, names=names, precisions=precisions)

    onnx_cache.register_exporter(export)


def __getattr__(name: str):
    if name in ("export_bundle", "ExportResult", "ExportError"):
        from . import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'v2m.export' has no attribute {name!r}")
