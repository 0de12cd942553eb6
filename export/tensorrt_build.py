"""TensorRT engines from an exported bundle's ONNX graphs, cached by content.

```python
from v2m.export.tensorrt_build import build_engines
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

Reduced precision: `fp16`/`bf16` builds keep LayerNorm, softmax, reductions,
unary math (sin/cos/exp of RoPE, the timestep features, Snake) and every layer
computed only from fp32 inputs (the timestep embedding and adaLN modulations)
in fp32, with OBEY_PRECISION_CONSTRAINTS. The Euler `step` graph is always fp32.

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

from v2m.runtime.bundle import load_config
from v2m.runtime.errors import BackendUnavailable, BundleError
from v2m.runtime.manifest import GraphInfo, load_manifest, sha256_file

__all__ = [
    "PRECISIONS",
    "ENGINE_GRAPHS",
    "BUILDER_REVISION",
    "EngineMeta",
    "EngineCache",
    "engine_key",
    "stale_reasons",
    "import_tensorrt",
    "import_cudart",
    "gpu_info",
    "build_engine",
    "build_engines",
]

log = logging.getLogger("v2m.tensorrt")

PRECISIONS = ("fp32", "fp16", "bf16")
ENGINE_GRAPHS = ("encoder", "dit", "vae", "step")
FP32_ONLY = ("step",)  # the Euler state is updated in fp32 whatever the model precision
# Bump when the build recipe (flags, fp32 layer policy) changes: old engines become stale.
BUILDER_REVISION = 1
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
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old; v2m needs TensorRT 10 or newer")
    return trt


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


def engine_meta(graph: GraphInfo, precision: str, tensorrt_version: str, compute_capability: str) -> EngineMeta:
    return EngineMeta(
        name=graph.name,
        onnx_sha256=graph.sha256,
        precision="fp32" if graph.name in FP32_ONLY else precision,
        profile=_profile_lists(graph.profile_shapes()),
        tensorrt=tensorrt_version,
        compute_capability=compute_capability,
    )


# --- building ----------------------------------------------------------------------------------
def _keep_fp32(trt, network, fp32_inputs: tuple[str, ...]) -> int:
    """Pin precision-sensitive layers to fp32; returns how many were pinned.

    A layer is pinned when its type is in the sensitive set, or when none of its inputs
    depends on an activation input (only on `fp32_inputs`, shapes and weights): that is the
    timestep embedding, the adaLN modulations and the RoPE tables, all tiny.
    """
    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE, trt.LayerType.SOFTMAX, trt.LayerType.UNARY}
    floats = {trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16)}
    activation = {network.get_input(i).name for i in range(network.num_inputs)} - set(fp32_inputs)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        touches = layer.type != trt.LayerType.SHAPE and any(t is not None and t.name in activation for t in inputs)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if touches:
            activation.update(t.name for t in outputs)
        if layer.type == trt.LayerType.CONSTANT or not all(t.dtype in floats for t in outputs):
            continue
        if layer.type in sensitive or not touches:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(
    onnx_path: str | Path,
    profile: ProfileShapes,
    precision: str,
    timing_cache: str | Path | None = None,
    fp32_inputs: tuple[str, ...] = (),
    workspace_bytes: int | None = None,
) -> bytes:
    """Parse an ONNX graph and build a serialized TensorRT engine with one optimization profile.

    Args:
        profile: input name -> (min, opt, max) shape.
        precision: fp32 (TF32 off), fp16 or bf16 (precision-sensitive layers kept fp32).
        timing_cache: file to read tactic timings from and write them back to.
        fp32_inputs: inputs whose own precomputation stays fp32 (see `_keep_fp32`).
    """
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse it ({errors[:300]}); re-export with `v2m export`")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # parity with the fp32 references
    else:
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _keep_fp32(trt, network, fp32_inputs)
        log.info("%s: %d of %d layers pinned to fp32", Path(onnx_path).name, pinned, network.num_layers)
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
    log.info("built %s (%s) in %.1f s", Path(onnx_path).name, precision, time.perf_counter() - t0)
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
    names: tuple[str, ...] = ENGINE_GRAPHS,
    device_id: int = 0,
    force: bool = False,
) -> dict[str, Path]:
    """Engines for an exported bundle, built only where none matches (see the module docstring).

    Args:
        bundle_dir: an exported bundle (`v2m export`).
        precision: fp32, fp16 or bf16 (the step graph is always fp32).
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
    manifest = load_manifest(bundle_dir)
    manifest.verify(cfg, names)
    gpu, cc = gpu_info(device_id)
    cache = EngineCache(cache_dir or bundle_dir / "engines")
    out = {}
    for name in names:
        graph = manifest.graph(name)
        meta = engine_meta(graph, precision, trt.__version__, cc)
        path = None if force else cache.lookup(meta)
        if path is None:
            log.info("building %s engine for %s (compute capability %s, TensorRT %s, %s)", name, gpu, cc, trt.__version__, meta.precision)
            fp32_inputs = tuple(manifest.raw["graphs"][name].get("fp32_inputs", ()))
            data = build_engine(manifest.graph_path(name), graph.profile_shapes(), meta.precision,
                                cache.dir / f"timing-trt{trt.__version__}-sm{cc}.cache", fp32_inputs)
            path = cache.store(meta, data, gpu)
        else:
            log.info("reusing %s", path)
        out[name] = path
    return out
