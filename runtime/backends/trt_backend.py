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

The sampler is `v2m.runtime.sampler.sample_loop` over the exported `step` graph (the one
guided-stage definition): the `text` engine writes the text keys/values once per
generation and the `schedule` engine the modulations of every stage once per solver
table, straight into the buffers the step reads. A solver step is its stages' engine
launches plus small device-to-device copies that route the state (x, d and the stage
index k live on the device; a stage writes fresh buffers and the copies move them back),
so every step reads and writes the same addresses.

CUDA graphs (on by default): that one step is captured once per (shape, solver table,
guidance size) and replayed `steps` times: one `cudaGraphLaunch` a step, no host sync
and no host-to-device copy inside the loop; the per-step hook (progress, timing events)
still runs between steps. As TensorRT documents, each context is enqueued once after its
shapes change and before capture. If capture fails (an engine with layers that need the
host), the backend logs it and runs uncaptured. Shapes and their graphs live in a small
LRU; buffers are allocated for the shape that runs, not the profile's maximum.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable, InputError
from v2m.core.manifest import GraphInfo, load_manifest

from ..sampler import Conditioning, Plan, SolverTable, sample_loop, solver_step
from .base import Backend, EngineCall

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


STATE = ("x", "x_eval", "d_prev", "k", "x_out", "d", "k_next")


class _Shape:
    """Device buffers of one (shape, solver table, guidance size, noise rows), and its graph.

    x: X (the step's base), XE (the next stage's x_eval), XO (a stage's x_out); d: D, DO;
    k: K, KO. A stage reads (X, X or XE, D, K) and writes (XO, DO, KO); copies then route
    XO -> XE, DO -> D, KO -> K, and after the last stage XE -> X. The step's other inputs,
    by name: the tables (coef, noise, weights, curve) and the hoisted tensors, the `text`
    engine's outputs (per generation) and the `schedule` engine's (per solver table),
    whatever the model family calls them; their shapes are what the engines report.
    """

    def __init__(self, be: TensorRTBackend, call: EngineCall, table: SolverTable, text_feeds: dict[str, np.ndarray]):
        cuda, step = be.cuda, be.engines["step"]
        b, c, n = call.b, call.c, call.n
        k = len(table.t_model)
        self.state_bytes = _nbytes((b, c, n), "float32")
        self.buf = {name: cuda.malloc(self.state_bytes) for name in ("X", "XE", "XO", "D", "DO")}
        self.buf["K"], self.buf["KO"] = cuda.malloc(8), cuda.malloc(8)
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
        missing = [name for name in step.inputs if name not in STATE and name not in self.buf]
        if missing:
            raise BackendUnavailable(f"the step engine takes {missing}, which no other engine makes; re-export and rebuild")
        self.step_inputs = {name: self.shapes[name] for name in step.inputs}
        self.stages, self.cuda = table.stages, cuda
        self.graph = None  # the captured solver step

    def _alloc_outputs(self, eng: _Engine, cuda) -> None:
        for name in eng.outputs:
            shape = eng.output_shape(name)
            self.shapes[name] = shape
            self.buf[name] = cuda.malloc(_nbytes(shape, eng.dtypes[name]))

    def close(self, cuda) -> None:
        if self.graph is not None:
            cuda.destroy(self.graph)
            self.graph = None
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
        self._shapes: OrderedDict[tuple, _Shape] = OrderedDict()
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

    def _text_feeds(self, call: EngineCall) -> dict[str, np.ndarray]:
        """The text engine's inputs from the branch batch, by name (v2m: text, text_mask; SAO: text, global_cond)."""
        have = {"text": call.text, "text_mask": call.mask, "global_cond": call.global_cond}
        missing = [k for k in self.engines["text"].inputs if have.get(k) is None]
        if missing:
            raise BackendUnavailable(f"the text engine takes {missing}, which this generation does not have")
        return {k: have[k] for k in self.engines["text"].inputs}

    def _shape(self, call: EngineCall, table: SolverTable, feeds: dict[str, np.ndarray]) -> _Shape:
        key = (call.b, call.c, call.n, call.s, call.g, table.key, call.n_noise)
        if key in self._shapes:
            self._shapes.move_to_end(key)
            return self._shapes[key]
        sh = self._shapes[key] = _Shape(self, call, table, feeds)
        while len(self._shapes) > self.max_shapes:
            _, old = self._shapes.popitem(last=False)
            if old is self._current:
                self._current = None
            old.close(self.cuda)
        return sh

    def _enqueue_step(self, sh: _Shape) -> None:
        """One solver step on the device: `sampler.solver_step` over the step engine's stages."""
        step, cuda, buf = self.engines["step"], self.cuda, sh.buf
        fixed = {name: buf[name] for name in step.inputs if name not in STATE}

        def stage(x_base, x_eval, d_prev):
            step.run({**fixed, "x": buf[x_base], "x_eval": buf[x_eval], "d_prev": buf[d_prev], "k": buf["K"],
                      "x_out": buf["XO"], "d": buf["DO"], "k_next": buf["KO"]})
            cuda.copy(buf["XE"], buf["XO"], sh.state_bytes)
            cuda.copy(buf["D"], buf["DO"], sh.state_bytes)
            cuda.copy(buf["K"], buf["KO"], 8)
            return "XE", "D"

        x, _ = solver_step(stage, "X", "D", sh.stages)
        cuda.copy(buf["X"], buf[x], sh.state_bytes)

    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        call = EngineCall(self, noise, cond, plan, stage_noise, "the engine's profile")
        b, c, n = noise.shape
        feeds = self._text_feeds(call)
        sh = self._shape(call, plan.table, feeds)
        cuda, buf = self.cuda, sh.buf
        text = self.engines["text"]
        text.set_shapes(sh.text_feeds)
        for name, a in feeds.items():
            cuda.upload(buf[name], a)
        text.run({name: buf[name] for name in (*text.inputs, *text.outputs)})  # once per generation
        step = self.engines["step"]
        if self._current is not sh:  # TensorRT's rule: after a shape change, enqueue once, recapture
            step.set_shapes(sh.step_inputs)
            for other in self._shapes.values():
                if other.graph is not None:
                    cuda.destroy(other.graph)
                    other.graph = None
            self._current = sh
            if self.cuda_graphs:
                cuda.upload(buf["K"], np.zeros(1, np.int64))  # a valid stage index for the warm-up
                self._enqueue_step(sh)  # the warm-up enqueue; its results are overwritten below
                cuda.sync()
                try:
                    sh.graph = cuda.capture(lambda: self._enqueue_step(sh))
                except BackendUnavailable as e:
                    log.warning("TensorRT: CUDA graph capture failed (%s); running the solver steps uncaptured", e)
                    self.cuda_graphs = False
        # the inputs of this generation, into the buffers the graph reads
        cuda.upload(buf["curve"], call.curve)
        cuda.upload(buf["weights"], np.asarray(plan.guidance.weights, dtype=np.float32))
        cuda.upload(buf["noise"], call.noise)
        cuda.upload(buf["X"], np.ascontiguousarray(noise, dtype=np.float32))
        cuda.upload(buf["D"], np.zeros((b, c, n), np.float32))
        cuda.upload(buf["K"], np.zeros(1, np.int64))

        def one_step(x, d):
            if sh.graph is not None:
                cuda.launch(sh.graph)
            else:
                self._enqueue_step(sh)
            return x, d

        # the sampler's loop with one captured solver step as its unit: no host sync inside
        sample_loop(lambda xb, xe, dp: one_step(xb, dp), "X", "D", plan.steps, 1, on_step)
        return cuda.download(buf["X"], (b, c, n))

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
