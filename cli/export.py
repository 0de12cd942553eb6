"""`v2m export` (ONNX graphs of a bundle) and `v2m build` (TensorRT engines)."""

from __future__ import annotations

import logging
from pathlib import Path

from v2m.core.errors import InputError, require

log = logging.getLogger("v2m.cli")



def cmd_export(args) -> int:
    require("torch", "onnx", what="`v2m export`", extra="export")
    if not args.no_check:
        require("onnxruntime", what="`v2m export`'s check against PyTorch (or pass --no-check)", extra="export")
    if not Path(args.bundle).is_dir():
        raise InputError(f"bundle {args.bundle} is not a directory; pass a PyTorch bundle (v2m init-model)")
    from v2m.export.exporter import export_bundle

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    bad = [p for p in precisions if p not in ("fp32", "fp16", "bf16", "int8")]
    if bad or not precisions:
        raise InputError(f"--precision {args.precision!r}: give fp32, fp16, bf16 and/or int8, comma-separated")
    res = export_bundle(
        args.bundle, args.output, opset=args.opset, check=not args.no_check, with_weights=args.with_weights,
        on_check=lambda r: print(r.line(), flush=True), precisions=precisions,
    )
    print(f"wrote {res.out_dir} ({', '.join(sorted(res.graphs))} graphs, {res.manifest.name}) "
          f"in {res.seconds['total']:.1f} s")
    return 0


def cmd_build(args) -> int:
    from v2m.runtime.backends.trt_build import build_engines

    kind, _, idx = args.device.partition(":")
    if kind != "cuda" or (idx and not idx.isdigit()):
        raise InputError(f"--device {args.device!r}: TensorRT engines are built on a CUDA device (cuda or cuda:N)")
    paths = build_engines(args.bundle, precision=args.precision, cache_dir=args.cache_dir,
                          device_id=int(idx or 0), force=args.force)
    for name, path in paths.items():
        print(f"{name:<8} {path}")
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    x = sub.add_parser("export", help="export a bundle's networks to ONNX (checked against PyTorch)",
                       description="Export a PyTorch bundle to ONNX graphs plus a manifest. Needs the [export] extra.",
                       examples=["v2m export tiny-bundle -o tiny-onnx",
                                 "v2m export full-bundle -o full-onnx --no-check --with-weights"])
    x.add_argument("bundle", help="a PyTorch bundle directory")
    x.add_argument("-o", "--output", required=True, help="the exported bundle (may be the bundle itself)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer")
    x.add_argument("--precision", default="fp32", metavar="P[,P]",
                   help="graph sets to write, comma-separated: fp32 (ONNX Runtime on CPU), fp16, bf16 (strongly typed "
                        "graphs with fp32 islands for TensorRT and ONNX Runtime's CUDA provider), int8 (ONNX Runtime on "
                        "CPU, with fp32; refused below its accuracy gate) (default: fp32)")
    x.add_argument("--with-weights", action="store_true",
                   help="copy the .safetensors too (the torch backend can then run it)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("build", help="build TensorRT engines for an exported bundle",
                       description="Build TensorRT engines for an exported bundle on this GPU. Needs the [trt] extra.",
                       examples=["v2m build tiny-onnx", "v2m build full-onnx --precision bf16 --device cuda:1"])
    b.add_argument("bundle", help="an exported bundle directory (v2m export)")
    b.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"], help="engine precision")
    b.add_argument("--cache-dir", default=None, help="where engines live (default: BUNDLE/engines)")
    b.add_argument("--device", default="cuda", help="cuda or cuda:N")
    b.add_argument("--force", action="store_true", help="rebuild even when a matching engine exists")
    b.set_defaults(func=cmd_build)
