"""`v2m info`: versions, devices, backends."""

from __future__ import annotations

import json
import logging

from v2m.runtime import __version__

from .output import bundle_info, readable

log = logging.getLogger("v2m.cli")



def cmd_info(args) -> int:
    import platform

    from v2m.core.devices import cuda_device_names
    from v2m.runtime.backends import available_backends
    from v2m.runtime.versions import library_versions

    info: dict = {"v2m": __version__, "python": platform.python_version(), "platform": platform.platform()}
    info.update(library_versions())  # from package metadata: torch, onnx, triton are not imported
    info["backends"] = available_backends()
    devices = ["cpu"] + [f"cuda:{i} ({name})" for i, name in enumerate(cuda_device_names())]
    if info.get("onnxruntime"):
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    info["devices"] = devices
    if args.model is not None:
        info["model"] = bundle_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if isinstance(v, dict) and k == "model":
                print("model")
                for mk, mv in v.items():
                    print(f"  {mk:<20} {readable(mv)}")
            else:
                print(f"{k:<22} {readable(v)}")
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    n = sub.add_parser("info", help="versions, devices, backends; a bundle's sampler defaults",
                       examples=["v2m info", "v2m info --model demo", "v2m info --json"])
    n.add_argument("--model", "-m", default=None,
                   help="also describe this bundle (or `demo`): preset, encoder, and the sampler defaults "
                        "`v2m generate` uses when no option overrides them (default: none)")
    n.add_argument("--json", action="store_true", help="print as JSON")
    n.set_defaults(func=cmd_info)
