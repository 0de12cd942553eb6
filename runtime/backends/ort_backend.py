"""ONNX Runtime backend: the exported graphs of a bundle on CPU or CUDA.

Needs an exported bundle (`v2m export`: `manifest.json` + `onnx/<precision>/`),
onnxruntime, and nothing else: no torch, no onnx. The manifest is checked first
(graph hashes, config sections), then one `InferenceSession` per graph of the
backend's precision.

The sampler (`v2m.runtime.sampler.sample_loop`) drives the exported `step` graph, the
one guided-stage definition (`backends.torch_step.guided_stage`), over bound device buffers
(IOBinding): the `text` graph writes the text keys/values once per generation and the
`schedule` graph the modulations of every stage once per solver table, straight into
the buffers the step reads. The step's state rotates through a small ring of buffers
(x: two bases and a stage scratch; d and k: two each), so nothing crosses to the host
between the first and the last stage, and runs carry
`disable_synchronize_execution_providers` so no run waits for the device.

CUDA graphs (CUDA provider, on by default): the ring repeats every two steps, so each
of its 2 x stages bindings is captured once as its own graph (`gpu_graph_id`) and
replayed; every other input lives in a per-shape buffer that generations update in
place. If this onnxruntime cannot capture the step graph, the backend logs it and runs
uncaptured.

Devices: `cpu` -> CPUExecutionProvider (fp32 graphs). `cuda[:N]` -> CUDAExecutionProvider
with the graphs of the chosen precision (fp16/bf16 exports are strongly typed with fp32
islands, the same graphs TensorRT builds from).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable, BundleError
from v2m.core.manifest import Manifest, load_manifest

from ..sampler import Conditioning, Plan, SolverTable
from .base import Backend, EngineCall, default_threads, runtime_graphs
from .engine_sampler import (
    BUFFERS,
    ShapeCache,
    StageRing,
    run_steps,
    shape_key,
    step_bindings,
    text_feeds,
)

__all__ = ["OrtBackend", "parse_device", "StageRing"]  # StageRing: engine_sampler's

log = logging.getLogger("v2m.backend.ort")

_NP = {"fp32": np.float32, "fp16": np.float16, "int8": np.float32}  # int8 graphs take fp32


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" | "cuda" | "cuda:N" -> (ORT device type, device id)."""
    if device == "cpu":
        return "cpu", 0
    kind, _, idx = device.partition(":")
    if kind != "cuda" or (idx and not idx.isdigit()):
        raise BackendUnavailable(f"device {device!r} is not one of cpu, cuda, cuda:N")
    return "cuda", int(idx or 0)


class _Shape:
    """Per-(shape, solver table) device buffers the step graph reads, bound by name; stable
    addresses so captured graphs stay valid across generations (inputs are updated in place).

    The step's inputs are its state (`engine_sampler.StageRing`), its tables (coef, noise,
    weights, curve) and the hoisted tensors: the `text` graph's outputs (per generation) and
    the `schedule` graph's (per solver table), whatever the model family calls them.
    """

    def __init__(self, backend: OrtBackend, call: EngineCall, table: SolverTable, text_feeds: dict[str, np.ndarray]):
        put, empty = backend._put, backend._empty
        b, c, n = call.b, call.c, call.n
        self.bufs = {name: empty((b, c, n), np.float32) if kind == "x" else empty((1,), np.int64)
                     for name, kind in BUFFERS.items()}
        self.tables = {"coef": put(np.ascontiguousarray(table.coef, dtype=np.float32)),
                       "noise": empty((call.n_noise, b, c, n), np.float32),
                       "weights": empty((call.g,), np.float32), "curve": empty((call.g * b, 1, n), np.float32)}
        # hoisted tensors: ORT allocates them on the first run; later runs write into the same values
        self.text_out = backend._run_to_device("text", text_feeds)
        self.sched_out = backend._run_to_device("schedule", {"t_model": np.asarray(table.t_model, dtype=np.float32)})
        self.ring = StageRing(table.stages)
        self.graph_base: int | None = None  # first gpu_graph_id of this shape's captured bindings
        self.bindings: list = []
        step = backend.sessions["step"]
        io_names = [i.name for i in step.get_inputs()], [o.name for o in step.get_outputs()]
        for ins, outs in step_bindings(self.ring, *io_names, self.bufs, {**self.tables, **self.text_out, **self.sched_out}):
            io = step.io_binding()
            for name, value in ins.items():
                io.bind_ortvalue_input(name, value)
            for name, value in outs.items():
                io.bind_ortvalue_output(name, value)
            self.bindings.append(io)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: BundleConfig,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        cuda_graphs: bool | None = None,
        max_shapes: int = 2,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.cfg = cfg
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        self.device_type, self.device_id = parse_device(device)
        self.device = self.device_type if self.device_type == "cpu" else f"cuda:{self.device_id}"
        available = ort.get_available_providers()
        if precision not in ("fp32", "fp16", "bf16", "int8"):
            raise BackendUnavailable(f"precision {precision!r} is not one of fp32, fp16, bf16, int8")
        if self.device_type == "cpu" and precision not in ("fp32", "int8"):
            raise BackendUnavailable(
                f"the onnxruntime backend runs the exported fp32 or int8 graphs on CPU; use --precision fp32 or int8 "
                f"(got {precision})"
            )
        if self.device_type == "cuda" and precision == "int8":
            raise BackendUnavailable("int8 graphs run on the CPU (ONNX Runtime's dynamic quantization); use --device cpu")
        if self.device_type == "cuda" and "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(
                f"--device {device} asked for, but this onnxruntime has no CUDA provider ({', '.join(available)}); "
                "install onnxruntime-gpu (`pip install 'v2m-runtime[ort-gpu]'`, never together with onnxruntime) or use --device cpu"
            )
        if precision == "bf16":
            raise BackendUnavailable("the onnxruntime backend cannot feed bf16 graphs from numpy; use --precision fp16 "
                                     "or --backend tensorrt for bf16")
        self.precision = precision
        self.model_np = _NP[precision]
        self.manifest: Manifest = load_manifest(self.bundle_dir)
        self.graphs = runtime_graphs(cfg)
        self.manifest.verify(self.cfg, self.graphs, precision)
        self.threads = threads or default_threads()
        self.cuda_graphs = self.device_type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device_type != "cuda":
            raise BackendUnavailable("ONNX Runtime CUDA graphs need --device cuda")
        self.sessions = {name: self._session(name) for name in self.graphs}
        self.providers = self.sessions["step"].get_providers()
        self.run_options = ort.RunOptions()
        # no wait for the device after each run: the host only waits when it reads a result
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        # The VAE's activations grow with the clip (a 600 s decode: ~1.6 GB): give its arena's
        # free chunks back after each decode instead of holding the peak for the process's life.
        # Measured on a shared 2-core EPYC, demo VAE, 20 s clip, first call of a fresh process,
        # medians of 3: RSS after 356 -> 92 MiB at the same speed (5.6 vs 6.3 s); the arena off
        # instead cost 1.5x (9.3 s) and kept more (docs/h23a.md).
        self.decode_options = ort.RunOptions()
        self.decode_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.max_shapes = max_shapes
        self._shapes = ShapeCache(max_shapes)
        self._next_graph_id = 0
        self._last_k: ort.OrtValue | None = None
        log.info("onnxruntime %s: %s on %s, %s graphs%s", ort.__version__, ", ".join(self.providers), self.device,
                 precision, ", CUDA graphs for the step" if self.cuda_graphs else "")

    # --- sessions ---------------------------------------------------------------------------
    def _providers(self, name: str) -> list:
        if self.device_type == "cpu":
            return ["CPUExecutionProvider"]
        cuda = {"device_id": self.device_id}
        if name == "step" and self.cuda_graphs:
            cuda["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def _session(self, name: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only; ours say what ran
        if self.device_type == "cpu":
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            # Idle workers sleep instead of spinning: on a shared 2-core machine (load ~12) the demo
            # DiT step took 33 ms with 2 threads not spinning, 56-88 ms with 1, 105-119 ms with 2
            # spinning (ORT's default); docs/h23a.md.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = self.manifest.graph_path(name, self.precision)
        try:
            sess = ort.InferenceSession(str(path), so, providers=self._providers(name))
        except Exception as e:  # noqa: BLE001 - ORT's pybind errors share no base class but Exception
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if name == "step" and self.cuda_graphs:
                log.warning("onnxruntime cannot capture the step graph in CUDA graphs (%s); running it uncaptured", msg[:200])
                self.cuda_graphs = False
                return self._session(name)
            raise BundleError(
                f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {msg[:200]}); re-export with `v2m export`"
            ) from None
        graph = self.manifest.graph(name, self.precision)
        got_in = [i.name for i in sess.get_inputs()]
        got_out = [o.name for o in sess.get_outputs()]
        if got_in != graph.input_names or got_out != graph.output_names:
            raise BundleError(
                f"{path}: inputs {got_in} / outputs {got_out} differ from the manifest's "
                f"{graph.input_names} / {graph.output_names}; re-export with `v2m export`"
            )
        return sess

    def _put(self, a: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device_type, self.device_id)

    def _empty(self, shape: tuple[int, ...], dtype) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device_type, self.device_id)

    # --- the stages ----------------------------------------------------------------------------
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        if "encoder" not in self.sessions:
            raise BundleError("this bundle has no frame encoder graph, so it cannot follow a video")
        return self.sessions["encoder"].run(["features"], {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        feeds = {"latents": np.ascontiguousarray(latents, dtype=np.float32)}
        return self.sessions["vae"].run(["audio"], feeds, self.decode_options)[0]

    def max_batch(self, guidance_size: int) -> int:
        prof = self.manifest.graph("step", self.precision).profile_shapes()
        branches = self.manifest.graph("text", self.precision).profile_shapes()["text"][2][0]  # G*B rows at most
        return max(1, min(prof["x"][2][0], branches // max(1, guidance_size)))

    def _run_to_device(self, name: str, feeds: dict[str, np.ndarray], outputs: dict | None = None) -> dict:
        """Run graph `name` on host feeds with its outputs on the device: into `outputs` (OrtValues)
        when given, else into new ones ORT allocates; returns the outputs by name."""
        sess = self.sessions[name]
        io = sess.io_binding()
        keep = {k: self._put(np.ascontiguousarray(v)) for k, v in feeds.items()}  # referenced until the run completes
        for k, v in keep.items():
            io.bind_ortvalue_input(k, v)
        names = [o.name for o in sess.get_outputs()]
        for k in names:
            if outputs is not None:
                io.bind_ortvalue_output(k, outputs[k])
            else:
                io.bind_output(k, self.device_type, self.device_id)
        sess.run_with_iobinding(io, self.run_options)
        if outputs is not None:
            return outputs
        return dict(zip(names, io.get_outputs()))

    def _shape(self, call: EngineCall, table: SolverTable) -> _Shape:
        feeds = text_feeds(call, [i.name for i in self.sessions["text"].get_inputs()])
        sh, made = self._shapes.get_or_make(shape_key(call, table), lambda: _Shape(self, call, table, feeds))
        if not made:
            self._run_to_device("text", feeds, sh.text_out)  # once per generation, into the step's inputs
        elif self.cuda_graphs:  # ids are never reused: a captured graph stays with its id
            sh.graph_base = self._next_graph_id
            self._next_graph_id += sh.ring.period
        return sh

    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        call = EngineCall(self, noise, cond, plan, stage_noise, "the exported profile")
        sh = self._shape(call, plan.table)
        sh.tables["curve"].update_inplace(call.curve)
        sh.tables["weights"].update_inplace(np.asarray(plan.guidance.weights, dtype=np.float32))
        sh.tables["noise"].update_inplace(call.noise)
        sh.bufs["X0"].update_inplace(np.ascontiguousarray(noise, dtype=np.float32))
        sh.bufs["D0"].update_inplace(np.zeros(noise.shape, np.float32))
        sh.bufs["K0"].update_inplace(np.zeros(1, np.int64))
        step, ring = self.sessions["step"], sh.ring

        def run_step(p: int) -> None:  # the stages of phase-step p, each binding its own captured graph
            for phase in range(p * ring.stages, (p + 1) * ring.stages):
                opts = self.run_options
                if sh.graph_base is not None:
                    opts = ort.RunOptions()
                    opts.add_run_config_entry("disable_synchronize_execution_providers", "1")
                    opts.add_run_config_entry("gpu_graph_id", str(sh.graph_base + phase))
                step.run_with_iobinding(sh.bindings[phase], opts)
            self._x_now = sh.bufs[ring.binding((p + 1) * ring.stages - 1)["x_out"]]

        final = run_steps(ring, plan.steps, run_step, on_step)
        self._last_k = sh.bufs["K0"]
        return np.array(sh.bufs[final].numpy(), dtype=np.float32, copy=True)

    def latents_now(self) -> np.ndarray:
        """The sampler's state after the last stage run (read in an `on_step` hook: the state
        after that step; waits for the device). The int8 gate compares trajectories with it."""
        return np.array(self._x_now.numpy(), dtype=np.float32, copy=True)

    def condition(self, text, text_mask, seconds):
        if "cond" not in self.sessions:
            return super().condition(text, text_mask, seconds)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        cross, glob = self.sessions["cond"].run(["cross_cond", "global_cond"],
                                                {"text": f32(text), "text_mask": f32(text_mask), "seconds": f32(seconds)})
        return cross, glob

    def step_clock(self):
        from ..clocks import HostClock, SyncHostClock

        return HostClock() if self.device_type == "cpu" else SyncHostClock(self.synchronize)

    def synchronize(self) -> None:
        """Wait for queued device work: reading a result to the host waits for ORT's stream."""
        if self.device_type != "cpu" and self._last_k is not None:
            self._last_k.numpy()

    def describe(self):
        d = super().describe()
        d["onnxruntime"] = ort.__version__
        d["providers"] = self.providers
        d["sampler_path"] = "iobinding+cuda_graph" if self.cuda_graphs else "iobinding"
        if self.device_type == "cpu":
            d["threads"] = self.threads
        return d

    def close(self) -> None:
        self._shapes.clear()
        self.sessions.clear()
