"""The shipped demo bundle: a small trained V2M-Zero model installed with the package.

`--model demo` (and `Pipeline.from_pretrained("demo")`) resolve here: the bundle
in `v2m/runtime/demo_bundle/` (package data), made by one command from a seed
(`v2m train demo`; docs/demo-model.md). Its frame encoder is the weight-free
cut encoder, so it runs with numpy and the torch or ONNX Runtime backend alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from v2m.core.errors import BundleError

__all__ = ["DEMO_NAME", "demo_bundle_path", "resolve_model"]

log = logging.getLogger("v2m.demo")

DEMO_NAME = "demo"


def demo_bundle_path() -> Path:
    """The installed demo bundle's directory (BundleError if the package data is missing)."""
    from importlib import resources

    path = Path(str(resources.files("v2m.runtime") / "demo_bundle"))
    if not (path / "config.json").is_file():
        raise BundleError(f"the demo bundle is not installed ({path} is missing); reinstall v2m-runtime "
                          "or make it with `v2m train demo`")
    return path


def resolve_model(path: str | Path) -> Path:
    """A bundle path; the name `demo` is the installed demo bundle unless ./demo is a bundle itself."""
    p = Path(path)
    if str(path) == DEMO_NAME and not (p / "config.json").is_file():
        p = demo_bundle_path()
        log.info("model demo: the installed demo bundle %s", p)
    return p
