"""The manifest of an exported bundle: which graphs, their hashes, the config they came from.

`v2m export` writes `manifest.json` beside `config.json`:

```
{"format": "v2m-onnx/2", "opset": 17,
 "config_sections": {"dit": "<sha256>", "vae": "...", "encoder": "..."}, "config": {...},
 "graphs": {"fp32": {"step": {"file": "onnx/fp32/step.onnx", "sha256": "...", "precision": "fp32",
                              "data_file": null, "data_sha256": null,
                              "inputs": [{"name": "x", "dtype": "float32", "dims": ["B", 64, "L"]}, ...],
                              "outputs": [...], "profile": {"x": {"min": [...], "opt": [...], "max": [...]}},
                              "check": [...]}, "text": {...}, ...},
            "fp16": {...}},
 "versions": {"v2m": ..., "torch": ..., "onnx": ..., "onnxruntime": ...}, "created": "..."}
```

Graphs come in precision sets (`v2m export --precision fp32,fp16`): a backend takes the
set of its precision.

Backends read it here, without torch or onnx: `load_manifest` parses it and
`Manifest.verify` checks every graph file against its sha256 and the bundle's
`config.json` against the config the graphs were exported from. Only the
sections that shape the graphs (dit, vae, encoder) must match; sampler, curve
and text settings may change after export.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jsonio
from .bundle import BundleConfig
from .errors import BundleError

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ONNX_OPSET",
    "INT8_RECIPE",
    "GRAPH_SECTIONS",
    "GraphInfo",
    "Manifest",
    "sha256_file",
    "config_sections_digest",
    "load_manifest",
    "write_manifest",
]

MANIFEST_FORMAT = "v2m-onnx/2"
MANIFEST_NAME = "manifest.json"
GRAPH_SECTIONS = ("dit", "vae", "encoder")  # the config sections baked into the graphs
# The version of the int8 recipe (`v2m.export.quantize.quantize_graph`): bump it when the recipe
# changes, so that the ONNX cache does not reuse int8 graphs made by another one.
INT8_RECIPE = 2
ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on (TensorRT maps it to INormalizationLayer)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_sections_digest(cfg: BundleConfig | dict[str, Any]) -> dict[str, str]:
    """sha256 of each graph-shaping config section (canonical JSON)."""
    d = cfg.to_dict() if isinstance(cfg, BundleConfig) else cfg
    return {k: _digest(d.get(k)) for k in GRAPH_SECTIONS}


@dataclass
class GraphInfo:
    name: str
    file: str  # relative to the bundle directory
    sha256: str
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    profile: dict[str, dict[str, list[int]]]
    data_file: str | None = None  # external weights (graphs over 2 GB)
    data_sha256: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.outputs]

    def profile_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """input -> (min, opt, max) shapes."""
        return {k: (tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for k, v in self.profile.items()}


@dataclass
class Manifest:
    bundle_dir: Path
    opset: int
    config_sections: dict[str, str]
    graphs: dict[str, dict[str, GraphInfo]]  # precision -> graph name -> info
    versions: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.bundle_dir / MANIFEST_NAME

    @property
    def precisions(self) -> list[str]:
        return sorted(self.graphs)

    def graph(self, name: str, precision: str = "fp32") -> GraphInfo:
        if precision not in self.graphs:
            raise BundleError(
                f"{self.path}: no {precision} graphs (exported: {', '.join(self.precisions)}); "
                f"re-export with `v2m export --precision {precision}` (or choose --precision {self.precisions[0]})"
            )
        graphs = self.graphs[precision]
        if name not in graphs:
            raise BundleError(
                f"{self.path}: no {precision} '{name}' graph (has {', '.join(sorted(graphs)) or 'none'}); "
                "re-export with this v2m (`v2m export`)"
            )
        return graphs[name]

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        return self.bundle_dir / self.graph(name, precision).file

    def verify_config(self, cfg: BundleConfig) -> None:
        """The bundle's config.json must describe the models the graphs were exported from."""
        now = config_sections_digest(cfg)
        changed = [k for k in GRAPH_SECTIONS if self.config_sections.get(k) != now[k]]
        if changed:
            raise BundleError(
                f"{self.bundle_dir / 'config.json'} does not match the config the graphs were exported from "
                f"(section{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed); "
                "re-export with `v2m export`"
            )

    def verify_graph(self, name: str, precision: str = "fp32") -> str:
        """Check the graph file (and its external data) against the manifest; returns its sha256."""
        g = self.graph(name, precision)
        for rel, want in ((g.file, g.sha256), (g.data_file, g.data_sha256)):
            if rel is None:
                continue
            path = self.bundle_dir / rel
            if not path.is_file():
                raise BundleError(f"{path}: missing; the exported bundle is incomplete (re-export with `v2m export`)")
            got = sha256_file(path)
            if got != want:
                raise BundleError(
                    f"{path}: sha256 {got[:12]}... does not match manifest.json ({str(want)[:12]}...): "
                    "the file changed or was truncated after export; re-export with `v2m export`"
                )
        return g.sha256

    def verify_weights(self, hash_limit: int = 512 * 2**20) -> None:
        """The weight files beside the graphs (a bundle exported in place or `--with-weights`)
        must be the ones the graphs were exported from: otherwise the torch and ONNX engines
        of one bundle would run different models. Files up to `hash_limit` bytes are hashed;
        larger ones (hashing gigabytes on every load is too slow) are compared by size."""
        for name, want in (self.raw.get("weights") or {}).items():
            path = self.bundle_dir / name
            if not path.is_file():
                continue  # a lean export: the graphs alone
            size = path.stat().st_size
            same = size == want.get("bytes") and (size > hash_limit or sha256_file(path) == want.get("sha256"))
            if not same:
                raise BundleError(
                    f"{path} is not the file the ONNX graphs in {self.bundle_dir} were exported from (it changed "
                    f"after `v2m export`); re-export (`v2m export {self.bundle_dir}`) or use --backend torch"
                )

    def verify(self, cfg: BundleConfig, names: tuple[str, ...] | list[str] | None = None, precision: str = "fp32") -> None:
        """verify_config and verify_weights, then verify_graph for each of `names` (default: all of that precision)."""
        self.verify_config(cfg)
        self.verify_weights()
        for name in names or sorted(self.graphs.get(precision, {})):
            self.verify_graph(name, precision)


def _graph_from_dict(name: str, precision: str, d: dict[str, Any], where: Path) -> GraphInfo:
    try:
        return GraphInfo(
            name=name,
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            precision=precision,
            inputs=list(d["inputs"]),
            outputs=list(d["outputs"]),
            profile=dict(d.get("profile", {})),
            data_file=d.get("data_file"),
            data_sha256=d.get("data_sha256"),
        )
    except (KeyError, TypeError) as e:
        raise BundleError(f"{where}: graph '{name}' entry is malformed ({type(e).__name__}: {e})") from None


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse `<bundle_dir>/manifest.json` (one-line BundleError for every way it can be wrong)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not an exported bundle (no {MANIFEST_NAME}); "
            f"run `v2m export {bundle_dir} -o OUT` and point --model at OUT, or use --backend torch"
        )
    data = jsonio.load_file(path, BundleError, hint="; re-export with `v2m export`")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: format {got!r} is not {MANIFEST_FORMAT!r}; re-export with this v2m")
    graphs = data.get("graphs")
    if not isinstance(graphs, dict) or not graphs or not all(isinstance(v, dict) for v in graphs.values()):
        raise BundleError(f"{path}: lists no graphs; re-export with `v2m export`")
    return Manifest(
        bundle_dir=bundle_dir,
        opset=int(data.get("opset", 0)),
        config_sections=dict(data.get("config_sections", {})),
        graphs={p: {k: _graph_from_dict(k, p, v, path) for k, v in gs.items()} for p, gs in graphs.items()},
        versions=dict(data.get("versions", {})),
        raw=data,
    )


def write_manifest(bundle_dir: str | Path, data: dict[str, Any]) -> Path:
    """Write manifest.json atomically (the exporter writes it last, after every graph)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
