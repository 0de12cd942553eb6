"""TensorRT engines from an exported bundle's ONNX graphs, cached by content.

```python
from v2m.runtime.backends.trt_build import build_engines
paths = build_engines("tiny-onnx", precision="fp16")   # {"encoder": .../engines/encoder-<key16>.engine, ...}
```

An engine is only valid for the exact graph, precision, optimization profile,
TensorRT version and GPU architecture it was built for, so its file name
carries a key over all five:

    key = sha256({onnx_sha256, precision, profile shapes, TensorRT version,
                  GPU compute capability, builder revision})
    <cache>/<graph>-<key[:16]>.engine   + <graph>-<key[:16]>.json (sidecar: the same fields,
                                          the engine's own sha256, GPU name, build date)

`EngineCache.lookup` loads an engine only when its sidecar matches every field
and the engine file matches its sha256; anything else is logged as stale (with
the reason) and rebuilt, never loaded because a file exists. One timing cache per
TensorRT version and GPU architecture (`<cache>/timing-trt<ver>-sm<cc>.cache`)
is reused across builds.

Precision lives in the graph: every engine is built from a strongly typed network
(TensorRT 11 has no other kind; 10.x gets the STRONGLY_TYPED creation flag), parsed
from the exported graph set of that precision (`v2m export --precision fp16`), whose
fp32 islands (norm statistics, timestep features, the solver state) are explicit
casts. No builder precision flag, no per-layer precision: TensorRT 10 and 11 build the
same engine from the same graph. fp32 builds turn TF32 off (parity with the fp32
references) where the builder still has that flag.

This module imports neither torch nor onnx: the lean runtime rebuilds engines
with only tensorrt and cuda-python installed. tensorrt itself is imported when
a build starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from v2m.core.bundle import load_config
from v2m.core.errors import BackendUnavailable, BundleError
from v2m.core.manifest import GraphInfo, load_manifest, sha256_file

__all__ = [
    "PRECISIONS",
    "BUILDER_REVISION",
    "EngineMeta",
    "EngineCache",
    "engine_key",
    "stale_reasons",
    "import_tensorrt",
    "check_tensorrt_version",
    "import_cudart",
    "gpu_info",
    "build_engine",
    "build_engines",
]

log = logging.getLogger("v2m.tensorrt")

PRECISIONS = ("fp32", "fp16", "bf16")
SUPPORTED_MAJOR = (10, 11)  # the [trt] extra bounds tensorrt to >=10,<12
# Bump when the build recipe (flags, network creation) changes: old engines become stale.
BUILDER_REVISION = 2
ENGINE_FORMAT = "v2m-engine/1"


# --- optional imports ----------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "TensorRT is not installed: the tensorrt backend and `v2m build` need TensorRT 10 and an NVIDIA GPU "
            "(pip install 'v2m-runtime[trt]'); use --backend onnxruntime or torch"
        ) from None
    check_tensorrt_version(trt.__version__)
    return trt


def check_tensorrt_version(version: str) -> int:
    """The major version, if v2m supports it; else one line saying what to install."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise BackendUnavailable(f"cannot read the TensorRT version {version!r}") from None
    if major not in SUPPORTED_MAJOR:
        raise BackendUnavailable(
            f"TensorRT {version} is not supported: v2m builds strongly typed networks with TensorRT 10.x or 11.x "
            "(pip install 'v2m-runtime[trt]' installs tensorrt>=10,<12)"
        )
    return major


def import_cudart():
    """cuda-python's runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            raise BackendUnavailable(
                "the tensorrt backend needs cuda-python for device memory: pip install 'v2m-runtime[trt]'"
            ) from None
    return cudart


def cuda_check(cudart, result):
    """Unpack a cuda-python call's (err, *values), raising on an error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise BackendUnavailable(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def gpu_info(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    cudart = import_cudart()
    count = cuda_check(cudart, cudart.cudaGetDeviceCount())
    if device_id >= count:
        raise BackendUnavailable(f"no CUDA device {device_id} (found {count}); TensorRT needs an NVIDIA GPU")
    attr = cudart.cudaDeviceAttr
    major = cuda_check(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device_id))
    minor = cuda_check(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device_id))
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device_id))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return name, f"{major}.{minor}"


# --- the cache key -------------------------------------------------------------------------
ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class EngineMeta:
    """What an engine was (or is to be) built for; its sha256 is the cache key."""

    name: str
    onnx_sha256: str
    precision: str
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max]
    tensorrt: str
    compute_capability: str
    builder_revision: int = BUILDER_REVISION

    KEY_FIELDS = ("onnx_sha256", "precision", "profile", "tensorrt", "compute_capability", "builder_revision")

    def key(self) -> str:
        return engine_key(self.onnx_sha256, self.precision, self.profile, self.tensorrt,
                          self.compute_capability, self.builder_revision)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("name", *self.KEY_FIELDS)}


def _profile_lists(profile: ProfileShapes | dict[str, Any]) -> dict[str, list[list[int]]]:
    return {k: [list(map(int, s)) for s in v] for k, v in sorted(profile.items())}


def engine_key(
    onnx_sha256: str,
    precision: str,
    profile: ProfileShapes | dict[str, Any],
    tensorrt_version: str,
    compute_capability: str,
    builder_revision: int = BUILDER_REVISION,
) -> str:
    """sha256 over everything an engine depends on (canonical JSON)."""
    payload = {
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "profile": _profile_lists(profile),
        "tensorrt": tensorrt_version,
        "compute_capability": compute_capability,
        "builder_revision": builder_revision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stale_reasons(sidecar: dict[str, Any], expected: EngineMeta) -> list[str]:
    """Why an engine with this sidecar must not be used for `expected` (empty: it matches)."""
    if sidecar.get("format") != ENGINE_FORMAT:
        return [f"sidecar format {sidecar.get('format')!r} is not {ENGINE_FORMAT!r}"]
    reasons = []
    cc = sidecar.get("compute_capability")
    if cc != expected.compute_capability:
        reasons.append(f"built for compute capability {cc} ({sidecar.get('gpu', '?')}), this GPU is {expected.compute_capability}")
    if sidecar.get("tensorrt") != expected.tensorrt:
        reasons.append(f"built with TensorRT {sidecar.get('tensorrt')}, this is {expected.tensorrt}")
    got = str(sidecar.get("onnx_sha256"))
    if got != expected.onnx_sha256:
        reasons.append(f"built from another ONNX graph (sha256 {got[:12]}..., now {expected.onnx_sha256[:12]}...)")
    if sidecar.get("precision") != expected.precision:
        reasons.append(f"built for {sidecar.get('precision')}, {expected.precision} asked for")
    if _profile_lists(sidecar.get("profile") or {}) != expected.profile:
        reasons.append("built for other optimization profile shapes")
    if sidecar.get("builder_revision") != expected.builder_revision:
        reasons.append(f"built by builder revision {sidecar.get('builder_revision')}, this is {expected.builder_revision}")
    if not reasons and sidecar.get("key") != expected.key():
        reasons.append("its key does not match its fields (edited sidecar)")
    return reasons


class EngineCache:
    """A directory of `<graph>-<key16>.engine` files with JSON sidecars."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def paths(self, meta: EngineMeta) -> tuple[Path, Path]:
        stem = f"{meta.name}-{meta.key()[:16]}"
        return self.dir / f"{stem}.engine", self.dir / f"{stem}.json"

    def lookup(self, meta: EngineMeta, verify_bytes: bool = True) -> Path | None:
        """The engine built for exactly `meta`, or None (after logging why others do not fit)."""
        engine, sidecar = self.paths(meta)
        for other in sorted(self.dir.glob(f"{meta.name}-*.engine")):
            if other != engine:
                why = self._reasons(other.with_suffix(".json"), meta)
                log.info("not using %s: %s", other, "; ".join(why) or "another key")
        if not engine.is_file():
            return None
        why = self._reasons(sidecar, meta)
        if not why and verify_bytes:
            data = json.loads(sidecar.read_text())
            if sha256_file(engine) != data.get("engine_sha256"):
                why = ["the engine file does not match its sidecar's sha256 (truncated or replaced)"]
        if why:
            log.warning("engine %s is stale (%s); rebuilding it", engine, "; ".join(why))
            return None
        return engine

    @staticmethod
    def _reasons(sidecar: Path, meta: EngineMeta) -> list[str]:
        if not sidecar.is_file():
            return ["no sidecar (cannot tell what it was built for)"]
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError) as e:
            return [f"unreadable sidecar ({e})"]
        if not isinstance(data, dict):
            return ["malformed sidecar"]
        return stale_reasons(data, meta)

    def store(self, meta: EngineMeta, engine_bytes: bytes | memoryview, gpu: str = "") -> Path:
        """Write the engine and then its sidecar, each atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        engine, sidecar = self.paths(meta)
        tmp = engine.with_suffix(".engine.tmp")
        with open(tmp, "wb") as f:
            f.write(engine_bytes)
        os.replace(tmp, engine)
        side = {
            "format": ENGINE_FORMAT,
            **meta.as_dict(),
            "key": meta.key(),
            "gpu": gpu,
            "engine_sha256": sha256_file(engine),
            "engine_bytes": engine.stat().st_size,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = sidecar.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(side, indent=2) + "\n")
        os.replace(tmp, sidecar)
        return engine


def engine_meta(graph: GraphInfo, tensorrt_version: str, compute_capability: str) -> EngineMeta:
    """What an engine of `graph` (of its precision set) is built for."""
    return EngineMeta(
        name=graph.name,
        onnx_sha256=graph.sha256,
        precision=graph.precision,
        profile=_profile_lists(graph.profile_shapes()),
        tensorrt=tensorrt_version,
        compute_capability=compute_capability,
    )


# --- building ----------------------------------------------------------------------------------
def strongly_typed_network(trt, builder):
    """A strongly typed network on TensorRT 10 (the creation flag) and 11 (always; the flag is
    accepted and ignored, and absent in some builds)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def build_engine(
    onnx_path: str | Path,
    profile: ProfileShapes,
    precision: str,
    timing_cache: str | Path | None = None,
    workspace_bytes: int | None = None,
) -> bytes:
    """Parse an ONNX graph into a strongly typed network and build a serialized engine with one
    optimization profile.

    Args:
        profile: input name -> (min, opt, max) shape.
        precision: the graph set's precision (the graph's own types decide every layer); fp32
            also turns TF32 off where the builder has that flag.
        timing_cache: file to read tactic timings from and write them back to.
    """
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = strongly_typed_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse it ({errors[:300]}); re-export with `v2m export`")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # parity with the fp32 references
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise BundleError(f"{onnx_path}: input {name!r} has no optimization profile in the manifest; re-export")
        opt_profile.set_shape(name, *profile[name])
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, False):  # a cache from another GPU or TensorRT: start afresh
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    log.info("built %s (%s, strongly typed) in %.1f s", Path(onnx_path).name, precision, time.perf_counter() - t0)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    return bytes(memoryview(serialized))


def build_engines(
    bundle_dir: str | Path,
    precision: str = "fp16",
    cache_dir: str | Path | None = None,
    names: tuple[str, ...] | None = None,
    device_id: int = 0,
    force: bool = False,
) -> dict[str, Path]:
    """Engines for an exported bundle, built only where none matches (see the module docstring).

    Args:
        bundle_dir: an exported bundle (`v2m export`).
        precision: fp32, fp16 or bf16: the exported graph set built from (`v2m export --precision`).
        cache_dir: where engines live (default `<bundle>/engines`).
        device_id: the CUDA device to build for.
        force: rebuild even when a matching engine exists.

    Returns:
        graph name -> engine path.
    """
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    bundle_dir = Path(bundle_dir)
    cfg = load_config(bundle_dir)
    if names is None:
        from v2m.runtime.backends.base import runtime_graphs

        names = runtime_graphs(cfg)
    manifest = load_manifest(bundle_dir)
    manifest.verify(cfg, names, precision)
    gpu, cc = gpu_info(device_id)
    cudart = import_cudart()
    cuda_check(cudart, cudart.cudaSetDevice(device_id))  # the builder times tactics on the current device
    cache = EngineCache(cache_dir or bundle_dir / "engines")
    out = {}
    for name in names:
        graph = manifest.graph(name, precision)
        meta = engine_meta(graph, trt.__version__, cc)
        path = None if force else cache.lookup(meta)
        if path is None:
            log.info("building %s engine for %s (compute capability %s, TensorRT %s, %s)", name, gpu, cc, trt.__version__, meta.precision)
            data = build_engine(manifest.graph_path(name, precision), graph.profile_shapes(), meta.precision,
                                cache.dir / f"timing-trt{trt.__version__}-sm{cc}.cache")
            path = cache.store(meta, data, gpu)
        else:
            log.info("reusing %s", path)
        out[name] = path
    return out
