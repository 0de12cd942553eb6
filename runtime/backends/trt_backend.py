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
once, after the last step.

CUDA graphs (on by default): each step's pair of engine launches is captured once
per (B, L, S, schedule) into its own graph, and recaptured after another shape ran (a step's launches differ only in the
ping-pong buffers and the address of its t and dt), so a step is one
`cudaGraphLaunch` instead of two `execute_async_v3` enqueues, and the per-step hook
(progress, timing) still runs between steps. As TensorRT documents, each context is
enqueued once after its shapes change and before capture. If capture fails (an
engine with layers that need the host), the backend logs it and runs uncaptured.
The graphs and their t/dt tables live in a small LRU.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..bundle import BundleConfig
from ..errors import BackendUnavailable, InputError
from ..manifest import GraphInfo, load_manifest
from ..sampler import schedule_key
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

    def capture(self, enqueue) -> object:
        """Record the work `enqueue()` puts on the stream into an instantiated CUDA graph."""
        rt = self.rt
        self._ck(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        try:
            enqueue()
        except BaseException:
            rt.cudaStreamEndCapture(self.stream)  # end the capture so the stream stays usable
            raise
        graph = self._ck(rt.cudaStreamEndCapture(self.stream))
        try:
            return self._ck(rt.cudaGraphInstantiate(graph, 0))
        finally:
            self._ck(rt.cudaGraphDestroy(graph))

    def launch(self, graph_exec) -> None:
        self._ck(self.rt.cudaGraphLaunch(graph_exec, self.stream))

    def destroy(self, graph_exec) -> None:
        self._ck(self.rt.cudaGraphExecDestroy(graph_exec))

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


class _StepTables:
    """One shape and schedule's per-step t / dt tables on the device, and its step graphs."""

    def __init__(self, cuda: _Cuda, ts: np.ndarray, batch2: int):
        steps = len(ts) - 1
        # TensorRT wants 256-byte aligned tensor addresses: one padded row per step.
        self.row = -(-batch2 // _ALIGN_F32) * _ALIGN_F32
        t_all = np.zeros((steps, self.row), dtype=np.float32)
        t_all[:, :batch2] = np.asarray(ts[:-1], dtype=np.float32)[:, None]  # (steps, 2B) used
        dt_all = np.zeros((steps, _ALIGN_F32), dtype=np.float32)
        dt_all[:, 0] = np.diff(ts)
        self.cuda, self.steps = cuda, steps
        self.t_ptr, self.dt_ptr = cuda.malloc(t_all.nbytes), cuda.malloc(dt_all.nbytes)
        cuda.upload(self.t_ptr, t_all)
        cuda.upload(self.dt_ptr, dt_all)
        self.graphs: list | None = None  # one instantiated graph per step, once captured

    def t(self, i: int) -> int:
        return self.t_ptr + i * self.row * 4

    def dt(self, i: int) -> int:
        return self.dt_ptr + i * _ALIGN_F32 * 4

    def drop_graphs(self) -> None:
        for g in self.graphs or []:
            self.cuda.destroy(g)
        self.graphs = None

    def close(self) -> None:
        self.drop_graphs()
        self.cuda.free(self.t_ptr)
        self.cuda.free(self.dt_ptr)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: BundleConfig,
        device: str = "cuda",
        precision: str = "fp16",
        cache_dir: str | Path | None = None,
        cuda_graphs: bool = True,
        max_graphs: int = 2,
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
        self.cuda_graphs, self.max_graphs = cuda_graphs, max_graphs
        self._tables: OrderedDict[tuple, _StepTables] = OrderedDict()
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
        tables = self._step_tables((b, c, n, text2.shape[1], schedule_key(ts)), ts, 2 * b)
        vel = dit.buffers["velocity"]

        def enqueue_step(i: int) -> None:
            cur, nxt = i % 2, 1 - i % 2
            dit.run({"x": self._x2[cur], "t": tables.t(i), "velocity": vel})
            step.run({"x": self._x[cur], "velocity": vel, "dt": tables.dt(i),
                      "x_next": self._x[nxt], "x2_next": self._x2[nxt]})

        for other in self._tables.values():  # TensorRT's rule: recapture after the shapes change
            if other is not tables and other.graphs is not None:
                other.drop_graphs()
        if self.cuda_graphs and tables.graphs is None:
            tables.graphs = self._capture_steps(enqueue_step, steps)  # before the inputs: capture runs nothing
        cuda.upload(self._x[0], noise.astype(np.float32))
        cuda.upload(self._x2[0], np.concatenate([noise, noise]).astype(np.float32))
        for i in range(steps):  # no host synchronization inside the loop
            if tables.graphs is not None:
                cuda.launch(tables.graphs[i])
            else:
                enqueue_step(i)
            if on_step is not None:
                on_step(i)
        return cuda.download(self._x[steps % 2], (b, c, n))

    def _step_tables(self, key: tuple, ts: np.ndarray, batch2: int) -> _StepTables:
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        tables = self._tables[key] = _StepTables(self.cuda, ts, batch2)
        while len(self._tables) > self.max_graphs:
            _, old = self._tables.popitem(last=False)
            old.close()
        return tables

    def _capture_steps(self, enqueue_step, steps: int) -> list | None:
        """One graph per step; None (and graphs off from now on) when TensorRT cannot be captured."""
        enqueue_step(0)  # TensorRT: enqueue once after a shape change, before capturing
        self.cuda.sync()
        graphs: list = []
        try:
            for i in range(steps):
                graphs.append(self.cuda.capture(lambda i=i: enqueue_step(i)))
        except BackendUnavailable as e:
            for g in graphs:
                self.cuda.destroy(g)
            log.warning("TensorRT: CUDA graph capture failed (%s); running the sampler steps uncaptured", e)
            self.cuda_graphs = False
            return None
        log.info("TensorRT: captured %d step graphs", steps)
        return graphs

    def synchronize(self) -> None:
        self.cuda.sync()

    def describe(self):
        d = super().describe()
        d["tensorrt"] = self.trt_version
        d["sampler_path"] = "cuda_graph_steps" if self.cuda_graphs else "enqueue"
        return d

    def close(self) -> None:
        for tables in self._tables.values():
            tables.close()
        self._tables.clear()
        self.engines.clear()
        self.cuda.close()
