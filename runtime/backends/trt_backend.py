"""TensorRT backend: content-keyed engines of the exported graphs, device memory via cuda-python.

Imports neither torch nor tensorrt at module level: tensorrt and cuda-python are
imported when the backend is created, and a missing one is a one-line
`BackendUnavailable`.

On creation it (re)builds what the engine cache lacks (`v2m.export.tensorrt_build`:
engines keyed by ONNX sha256, precision, profile, TensorRT version and GPU
compute capability; stale ones are logged and rebuilt), deserializes the four
engines and allocates one device buffer per tensor at the profile's max shape.
Per call: set input shapes, set tensor addresses, `execute_async_v3` on one
stream. The sampler loop never leaves the device: the DiT engine writes the
velocity, the fp32 `step` engine applies the guided Euler update and writes
the next doubled batch, ping-ponging between two buffer sets; the host waits
once, after the last step (CUDA graph capture of the step pair would be the
next gain, not done here).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..bundle import BundleConfig
from ..errors import BackendUnavailable, InputError
from ..manifest import GraphInfo, load_manifest
from .base import Backend

__all__ = ["TensorRTBackend"]

log = logging.getLogger("v2m.backend.tensorrt")

_ALIGN_F32 = 64  # 256 bytes: the alignment TensorRT requires of tensor addresses


class _Cuda:
    """The few cuda-python runtime calls the backend needs, on one device and one stream."""

    def __init__(self, cudart, device_id: int):
        from v2m.export.tensorrt_build import cuda_check

        self.rt, self.device_id = cudart, device_id
        self._ck = lambda res: cuda_check(cudart, res)
        self._ck(cudart.cudaSetDevice(device_id))
        self.stream = self._ck(cudart.cudaStreamCreate())
        self._owned: list[int] = []

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._ck(self.rt.cudaMalloc(max(int(nbytes), 256))))
        self._owned.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr in self._owned:
            self._owned.remove(ptr)
            self._ck(self.rt.cudaFree(ptr))

    def upload(self, ptr: int, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        self._ck(self.rt.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.sync()  # pageable host memory: `a` may be freed once this returns

    def download(self, ptr: int, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        self._ck(self.rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.sync()
        return out

    def sync(self) -> None:
        self._ck(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in list(self._owned):
            self.free(ptr)
        self._ck(self.rt.cudaStreamDestroy(self.stream))


class _Engine:
    """One deserialized engine, its execution context and a max-shape buffer per I/O tensor."""

    def __init__(self, trt, runtime, path: Path, graph: GraphInfo, cuda: _Cuda):
        self.name, self.graph, self.cuda = graph.name, graph, cuda
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot deserialize it; delete it and run `v2m build` again")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = graph.input_names, graph.output_names
        self.max_shapes = {k: v[2] for k, v in graph.profile_shapes().items()}
        self.set_shapes(self.max_shapes)
        self.buffers: dict[str, int] = {}
        for name in (*self.inputs, *self.outputs):
            shape = tuple(self.context.get_tensor_shape(name))
            itemsize = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).itemsize
            self.buffers[name] = cuda.malloc(math.prod(shape) * itemsize)

    def set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            mx = self.max_shapes[name]
            if len(shape) != len(mx) or any(s > m for s, m in zip(shape, mx)):
                raise InputError(
                    f"{self.name} engine: input {name} of shape {list(shape)} exceeds the built profile's max "
                    f"{list(mx)} (a longer clip or a bigger batch than exported for); use --backend onnxruntime"
                )
            if not self.context.set_input_shape(name, tuple(int(s) for s in shape)):
                raise InputError(f"{self.name} engine: TensorRT rejects shape {list(shape)} for {name}")

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def run(self, addresses: dict[str, int] | None = None) -> None:
        """Enqueue one execution; tensors not in `addresses` use the engine's own buffers."""
        addresses = addresses or {}
        for name in (*self.inputs, *self.outputs):
            self.context.set_tensor_address(name, addresses.get(name, self.buffers[name]))
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise BackendUnavailable(f"{self.name} engine: TensorRT execution failed (see the TensorRT log)")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: BundleConfig,
        device: str = "cuda",
        precision: str = "fp16",
        cache_dir: str | Path | None = None,
    ):
        from v2m.export.tensorrt_build import (
            ENGINE_GRAPHS,
            build_engines,
            import_cudart,
            import_tensorrt,
        )

        trt = import_tensorrt()
        cudart = import_cudart()
        if device == "auto":
            device = "cuda"
        kind, _, idx = device.partition(":")
        if kind != "cuda" or (idx and not idx.isdigit()):
            raise BackendUnavailable(f"TensorRT runs on NVIDIA GPUs: use --device cuda[:N] (got {device!r}) or --backend onnxruntime")
        device_id = int(idx or 0)
        self.bundle_dir, self.cfg = Path(bundle_dir), cfg
        self.device, self.precision = f"cuda:{device_id}", precision
        paths = build_engines(self.bundle_dir, precision, cache_dir, device_id=device_id)
        manifest = load_manifest(self.bundle_dir)
        self.cuda = _Cuda(cudart, device_id)
        self.trt_version = trt.__version__
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {n: _Engine(trt, self._runtime, paths[n], manifest.graph(n), self.cuda) for n in ENGINE_GRAPHS}
        # Sampler state at the step engine's max shape: x and the doubled batch, twice (ping-pong).
        step = self.engines["step"]
        self._x = [step.buffers["x"], step.buffers["x_next"]]
        self._x2 = [self.cuda.malloc(self._nbytes(step, "velocity")), step.buffers["x2_next"]]
        log.info("TensorRT %s on %s: engines %s", trt.__version__, self.device, ", ".join(p.name for p in paths.values()))

    @staticmethod
    def _nbytes(engine: _Engine, name: str) -> int:
        return math.prod(engine.max_shapes[name]) * 4

    # --- stages ---------------------------------------------------------------------------------
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        enc = self.engines["encoder"]
        max_b = enc.max_shapes["pixels"][0]
        feats = []
        for i in range(0, pixels.shape[0], max_b):  # the pipeline's batches fit; direct callers may not
            chunk = np.ascontiguousarray(pixels[i : i + max_b], dtype=np.float32)
            enc.set_shapes({"pixels": chunk.shape})
            self.cuda.upload(enc.buffers["pixels"], chunk)
            enc.run()
            feats.append(self.cuda.download(enc.buffers["features"], enc.output_shape("features")))
        return np.concatenate(feats)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        vae = self.engines["vae"]
        z = np.ascontiguousarray(latents, dtype=np.float32)
        vae.set_shapes({"latents": z.shape})
        self.cuda.upload(vae.buffers["latents"], z)
        vae.run()
        return self.cuda.download(vae.buffers["audio"], vae.output_shape("audio"))

    def sample(self, noise, curve, text, text_mask, ts, cfg_scale, uncond_keeps_curve=True, on_step=None):
        dit, step, cuda = self.engines["dit"], self.engines["step"], self.cuda
        b, c, n = noise.shape
        steps = len(ts) - 1
        curve_u = curve if uncond_keeps_curve else np.zeros_like(curve)
        text2 = np.concatenate([text, np.zeros_like(text)]).astype(np.float32)  # (2B, S, E)
        dit.set_shapes({"x": (2 * b, c, n), "curve": (2 * b, 1, n), "t": (2 * b,),
                        "text": text2.shape, "text_mask": text2.shape[:2]})
        step.set_shapes({"x": (b, c, n), "velocity": (2 * b, c, n), "scale": (1,), "dt": (1,)})
        cuda.upload(dit.buffers["curve"], np.concatenate([curve, curve_u]).astype(np.float32))
        cuda.upload(dit.buffers["text"], text2)
        cuda.upload(dit.buffers["text_mask"], np.concatenate([text_mask, text_mask]).astype(np.float32))
        cuda.upload(step.buffers["scale"], np.array([cfg_scale], dtype=np.float32))
        cuda.upload(self._x[0], noise.astype(np.float32))
        cuda.upload(self._x2[0], np.concatenate([noise, noise]).astype(np.float32))
        # TensorRT wants 256-byte aligned tensor addresses: one padded row per step.
        row = -(-2 * b // _ALIGN_F32) * _ALIGN_F32
        t_all = np.zeros((steps, row), dtype=np.float32)
        t_all[:, : 2 * b] = np.asarray(ts[:-1], dtype=np.float32)[:, None]  # (steps, 2B) used
        dt_all = np.zeros((steps, _ALIGN_F32), dtype=np.float32)
        dt_all[:, 0] = np.diff(ts)
        t_ptr, dt_ptr = cuda.malloc(t_all.nbytes), cuda.malloc(dt_all.nbytes)
        try:
            cuda.upload(t_ptr, t_all)
            cuda.upload(dt_ptr, dt_all)
            vel = dit.buffers["velocity"]
            for i in range(steps):  # no host synchronization inside the loop
                cur, nxt = i % 2, 1 - i % 2
                dit.run({"x": self._x2[cur], "t": t_ptr + i * row * 4, "velocity": vel})
                step.run({"x": self._x[cur], "velocity": vel, "dt": dt_ptr + i * _ALIGN_F32 * 4,
                          "x_next": self._x[nxt], "x2_next": self._x2[nxt]})
                if on_step is not None:
                    on_step(i)
            return cuda.download(self._x[steps % 2], (b, c, n))
        finally:
            cuda.free(t_ptr)
            cuda.free(dt_ptr)

    def synchronize(self) -> None:
        self.cuda.sync()

    def describe(self):
        d = super().describe()
        d["tensorrt"] = self.trt_version
        return d

    def close(self) -> None:
        self.engines.clear()
        self.cuda.close()
