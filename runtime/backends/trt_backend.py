"""TensorRT backend: content-keyed engines of the exported graphs, device memory via cuda-python.

Imports neither torch nor tensorrt at module level: tensorrt and cuda-python are
imported when the backend is created, and a missing one is a one-line
`BackendUnavailable`.

On creation it (re)builds what the engine cache lacks (`v2m.runtime.backends.trt_build`:
strongly typed engines of the graphs of the backend's precision, keyed by ONNX
sha256, precision, profile, TensorRT version and GPU compute capability; stale ones
are logged and rebuilt) on the backend's own GPU (cuda:N), and deserializes the five
engines. Per call: set input shapes, set tensor addresses, `execute_async_v3` on one
stream.

The sampler is `engine_sampler.run_steps` (`v2m.runtime.sampler.sample_loop`) over the
exported `step` graph (the one guided-stage definition): the `text` engine writes the text
keys/values once per generation and the `schedule` engine the modulations of every stage
once per solver table, straight into the buffers the step reads. The state (x, d and the
stage index k) rotates through `engine_sampler.StageRing`'s buffers on the device, the
routing the ONNX Runtime backend uses too: no copies, and the pattern repeats every two
steps.

CUDA graphs (on by default): a solver step is captured once per (shape, solver table,
guidance size) and ring parity (two graphs: even and odd steps) and replayed: one
`cudaGraphLaunch` a step, no host sync and no host-to-device copy inside the loop; the
per-step hook (progress, timing events) still runs between steps. As TensorRT documents,
each context is enqueued once after its shapes change and before capture. If capture
fails (an engine with layers that need the host), the backend logs it and runs
uncaptured. Shapes and their graphs live in a small LRU; buffers are allocated for the
shape that runs, not the profile's maximum.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable, InputError
from v2m.core.manifest import GraphInfo, load_manifest

from ..sampler import Conditioning, Plan, SolverTable
from .base import Backend, EngineCall
from .engine_sampler import (
    BUFFERS,
    ShapeCache,
    StageRing,
    run_steps,
    shape_key,
    step_bindings,
    text_feeds,
)

__all__ = ["TensorRTBackend"]

log = logging.getLogger("v2m.backend.tensorrt")

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8}


class _Cuda:
    """The few cuda-python runtime calls the backend needs, on one device and one stream."""

    def __init__(self, cudart, device_id: int):
        from v2m.runtime.backends.trt_build import cuda_check

        self.rt, self.device_id = cudart, device_id
        self._ck = lambda res: cuda_check(cudart, res)
        self._ck(cudart.cudaSetDevice(device_id))  # this thread's device: cuda:N, not GPU 0
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

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        """Device to device on the stream (capturable)."""
        self._ck(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream))

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

    # step timing: events on this stream
    def event(self):
        ev = self._ck(self.rt.cudaEventCreate())
        self._ck(self.rt.cudaEventRecord(ev, self.stream))
        return ev

    def event_wait(self, ev) -> None:
        self._ck(self.rt.cudaEventSynchronize(ev))

    def event_ms(self, a, b) -> float:
        return float(self._ck(self.rt.cudaEventElapsedTime(a, b)))

    def event_destroy(self, ev) -> None:
        self._ck(self.rt.cudaEventDestroy(ev))

    def close(self) -> None:
        for ptr in list(self._owned):
            self.free(ptr)
        self._ck(self.rt.cudaStreamDestroy(self.stream))


class _Engine:
    """One deserialized engine and its execution context; the backend owns the buffers."""

    def __init__(self, runtime, path: Path, graph: GraphInfo, cuda: _Cuda):
        self.name, self.graph, self.cuda = graph.name, graph, cuda
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot deserialize it; delete it and run `v2m build` again")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = graph.input_names, graph.output_names
        self.max_shapes = {k: v[2] for k, v in graph.profile_shapes().items()}
        self.dtypes = {t["name"]: t["dtype"] for t in (*graph.inputs, *graph.outputs)}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            if self._shapes.get(name) == shape:
                continue
            mx = self.max_shapes[name]
            if len(shape) != len(mx) or any(s > m for s, m in zip(shape, mx)):
                raise InputError(
                    f"{self.name} engine: input {name} of shape {list(shape)} exceeds the built profile's max "
                    f"{list(mx)} (a longer clip or a bigger batch than exported for); use --backend onnxruntime"
                )
            if not self.context.set_input_shape(name, shape):
                raise InputError(f"{self.name} engine: TensorRT rejects shape {list(shape)} for {name}")
            self._shapes[name] = shape

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def run(self, addresses: dict[str, int]) -> None:
        """Enqueue one execution with every I/O tensor at the given device address."""
        for name in (*self.inputs, *self.outputs):
            self.context.set_tensor_address(name, addresses[name])
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise BackendUnavailable(f"{self.name} engine: TensorRT execution failed (see the TensorRT log)")


def _nbytes(shape, dtype: str) -> int:
    return math.prod(shape) * _ITEMSIZE[dtype]


class _Shape:
    """Device buffers of one (shape, solver table, guidance size, noise rows), and its graphs.

    The state: `engine_sampler.StageRing`'s buffers (X0, X1, XE, D0, D1, K0, K1). The step's
    other inputs, by name: the tables (coef, noise, weights, curve) and the hoisted tensors,
    the `text` engine's outputs (per generation) and the `schedule` engine's (per solver
    table), whatever the model family calls them; their shapes are what the engines report.
    """

    def __init__(self, be: TensorRTBackend, call: EngineCall, table: SolverTable, text_feeds: dict[str, np.ndarray]):
        cuda, step = be.cuda, be.engines["step"]
        b, c, n = call.b, call.c, call.n
        k = len(table.t_model)
        self.buf = {name: cuda.malloc(_nbytes((b, c, n), "float32") if kind == "x" else 8)
                    for name, kind in BUFFERS.items()}
        self.shapes = {"x": (b, c, n), "x_eval": (b, c, n), "d_prev": (b, c, n), "k": (1,), "coef": (k, 7),
                       "noise": (call.n_noise, b, c, n), "weights": (call.g,), "curve": (call.g * b, 1, n)}
        for name in ("coef", "noise", "weights", "curve"):
            self.buf[name] = cuda.malloc(_nbytes(self.shapes[name], "float32"))
        cuda.upload(self.buf["coef"], np.ascontiguousarray(table.coef, dtype=np.float32))
        # the text engine: its input buffers (refilled per generation) and outputs (the step reads them)
        text = be.engines["text"]
        self.text_feeds = {name: a.shape for name, a in text_feeds.items()}
        text.set_shapes(self.text_feeds)
        for name, shape in self.text_feeds.items():
            self.buf[name] = cuda.malloc(_nbytes(shape, "float32"))
        self._alloc_outputs(text, cuda)
        # the schedule engine: once per solver table
        sched = be.engines["schedule"]
        sched.set_shapes({"t_model": (k,)})
        self.buf["t_model"] = cuda.malloc(_nbytes((k,), "float32"))
        cuda.upload(self.buf["t_model"], np.asarray(table.t_model, dtype=np.float32))
        self._alloc_outputs(sched, cuda)
        sched.run({name: self.buf[name] for name in (*sched.inputs, *sched.outputs)})
        self.ring = StageRing(table.stages)
        self.bindings = [{**ins, **outs} for ins, outs in
                         step_bindings(self.ring, step.inputs, step.outputs, self.buf, self.buf, "step engine")]
        self.step_inputs = {name: self.shapes[name] for name in step.inputs}
        self.graphs: list | None = None  # the captured solver steps, even and odd

    def _alloc_outputs(self, eng: _Engine, cuda) -> None:
        for name in eng.outputs:
            shape = eng.output_shape(name)
            self.shapes[name] = shape
            self.buf[name] = cuda.malloc(_nbytes(shape, eng.dtypes[name]))

    def drop_graphs(self, cuda) -> None:
        for graph in self.graphs or ():
            cuda.destroy(graph)
        self.graphs = None

    def close(self, cuda) -> None:
        self.drop_graphs(cuda)
        for ptr in self.buf.values():
            cuda.free(ptr)


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
        max_shapes: int = 2,
    ):
        from v2m.runtime.backends.trt_build import build_engines, import_cudart, import_tensorrt

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
        cuda = _Cuda(cudart, device_id)
        self.trt_version = trt.__version__
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engines = {n: _Engine(self._runtime, paths[n], manifest.graph(n, precision), cuda) for n in paths}
        self._setup(engines, cuda, cuda_graphs, max_shapes)
        log.info("TensorRT %s on %s: %s engines %s", trt.__version__, self.device, precision,
                 ", ".join(p.name for p in paths.values()))

    def _setup(self, engines: dict, cuda, cuda_graphs: bool = True, max_shapes: int = 2) -> None:
        """Everything but TensorRT itself (tests drive the loop with emulated engines and device)."""
        self.engines, self.cuda = engines, cuda
        self.cuda_graphs, self.max_shapes = cuda_graphs, max_shapes
        self._shapes = ShapeCache(max_shapes, self._drop)
        self._current: _Shape | None = None  # whose shapes the step context holds

    # --- stages ---------------------------------------------------------------------------------
    def _run_io(self, name: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One host-in, host-out execution (encoder, VAE, conditioner) with buffers for this call;
        the outputs in the engine's order, float32."""
        eng = self.engines[name]
        eng.set_shapes({k: v.shape for k, v in inputs.items()})
        addr = {}
        try:
            for k, v in inputs.items():
                addr[k] = self.cuda.malloc(v.nbytes)
                self.cuda.upload(addr[k], v)
            shapes = {out: eng.output_shape(out) for out in eng.outputs}
            for out, shape in shapes.items():
                addr[out] = self.cuda.malloc(_nbytes(shape, eng.dtypes[out]))
            eng.run(addr)
            return [self.cuda.download(addr[out], shape, np.float32) for out, shape in shapes.items()]
        finally:
            for ptr in addr.values():
                self.cuda.free(ptr)

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        max_b = self.engines["encoder"].max_shapes["pixels"][0]
        feats = [self._run_io("encoder", {"pixels": np.ascontiguousarray(pixels[i : i + max_b], dtype=np.float32)})[0]
                 for i in range(0, pixels.shape[0], max_b)]  # the pipeline's batches fit; direct callers may not
        return np.concatenate(feats)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._run_io("vae", {"latents": np.ascontiguousarray(latents, dtype=np.float32)})[0]

    def condition(self, text, text_mask, seconds):
        if "cond" not in self.engines:
            return super().condition(text, text_mask, seconds)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        cross, glob = self._run_io("cond", {"text": f32(text), "text_mask": f32(text_mask), "seconds": f32(seconds)})
        return cross, glob

    def max_batch(self, guidance_size: int) -> int:
        mx = self.engines["step"].max_shapes
        branches = self.engines["text"].max_shapes["text"][0]  # G*B rows at most
        return max(1, min(mx["x"][0], branches // max(1, guidance_size)))

    def _drop(self, old: _Shape) -> None:
        if old is self._current:
            self._current = None
        old.close(self.cuda)

    def _enqueue_step(self, sh: _Shape, p: int) -> None:
        """The stages of ring phase-step p (0: even steps, 1: odd) on the stream."""
        step = self.engines["step"]
        for phase in range(p * sh.ring.stages, (p + 1) * sh.ring.stages):
            step.run(sh.bindings[phase])

    def _capture(self, sh: _Shape) -> None:
        """Enqueue once after the shape change (TensorRT's rule), then capture both phase-steps."""
        cuda = self.cuda
        cuda.upload(sh.buf["K0"], np.zeros(1, np.int64))  # a valid stage index for the warm-up
        self._enqueue_step(sh, 0)  # the warm-up enqueue; its results are overwritten before the loop
        cuda.sync()
        graphs: list = []
        try:
            for p in (0, 1):
                graphs.append(cuda.capture(lambda p=p: self._enqueue_step(sh, p)))
            sh.graphs = graphs
        except BackendUnavailable as e:
            for graph in graphs:
                cuda.destroy(graph)
            log.warning("TensorRT: CUDA graph capture failed (%s); running the solver steps uncaptured", e)
            self.cuda_graphs = False

    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        call = EngineCall(self, noise, cond, plan, stage_noise, "the engine's profile")
        b, c, n = noise.shape
        text = self.engines["text"]
        feeds = text_feeds(call, text.inputs, "text engine")
        sh, _ = self._shapes.get_or_make(shape_key(call, plan.table), lambda: _Shape(self, call, plan.table, feeds))
        cuda, buf = self.cuda, sh.buf
        text.set_shapes(sh.text_feeds)
        for name, a in feeds.items():
            cuda.upload(buf[name], a)
        text.run({name: buf[name] for name in (*text.inputs, *text.outputs)})  # once per generation
        if self._current is not sh:  # TensorRT's rule: after a shape change, enqueue once, recapture
            self.engines["step"].set_shapes(sh.step_inputs)
            for other in self._shapes.values():
                other.drop_graphs(cuda)
            self._current = sh
            if self.cuda_graphs:
                self._capture(sh)
        # the inputs of this generation, into the buffers the graphs read
        cuda.upload(buf["curve"], call.curve)
        cuda.upload(buf["weights"], np.asarray(plan.guidance.weights, dtype=np.float32))
        cuda.upload(buf["noise"], call.noise)
        cuda.upload(buf["X0"], np.ascontiguousarray(noise, dtype=np.float32))
        cuda.upload(buf["D0"], np.zeros((b, c, n), np.float32))
        cuda.upload(buf["K0"], np.zeros(1, np.int64))

        def run_step(p: int) -> None:
            if sh.graphs is not None:
                cuda.launch(sh.graphs[p])
            else:
                self._enqueue_step(sh, p)

        final = run_steps(sh.ring, plan.steps, run_step, on_step)  # no host sync inside
        return cuda.download(buf[final], (b, c, n))

    def step_clock(self):
        from ..clocks import StepClock

        cuda = self.cuda

        class CudartClock(StepClock):
            """cudart events recorded on the backend's stream."""

            kind = "cuda_events"

            def __init__(self):
                self.events = []

            def mark(self):
                self.events.append(cuda.event())
                return self.events[-1]

            def wait(self, last):
                cuda.event_wait(last)

            def elapsed_ms(self, a, b):
                return cuda.event_ms(a, b)

            def done(self):
                for ev in self.events:
                    cuda.event_destroy(ev)
                self.events = []

        return CudartClock()

    def synchronize(self) -> None:
        self.cuda.sync()

    def describe(self):
        d = super().describe()
        d["tensorrt"] = getattr(self, "trt_version", None)
        d["sampler_path"] = "cuda_graph_step" if self.cuda_graphs else "enqueue"
        return d

    def close(self) -> None:
        for sh in self._shapes.values():
            sh.close(self.cuda)
        self._shapes.clear()
        self.engines.clear()
        self.cuda.close()
