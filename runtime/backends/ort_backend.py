"""ONNX Runtime backend: the exported graphs of a bundle on CPU, CUDA or ORT's TensorRT provider.

Needs an exported bundle (`v2m export`: `manifest.json` + `onnx/`), onnxruntime,
and nothing else: no torch, no onnx. The manifest is checked first (graph
hashes, config sections), then one `InferenceSession` per graph.

The sampler loop runs on bound buffers (IOBinding): the DiT writes its velocity
into a preallocated buffer and the exported `step` graph applies the guided
Euler update and writes the next doubled batch, ping-ponging between two sets
of buffers. On CUDA nothing crosses to the host between the first and the
last step; on CPU the same code runs (and is what the tests exercise).

Providers: `--device cpu` -> CPUExecutionProvider. `--device cuda[:N]` ->
CUDAExecutionProvider for fp32; for fp16 the TensorRT provider when this
onnxruntime has it (engines cached under `<bundle>/engines/ort-trt/`, profiles
from the manifest), else fp32 on CUDA with a warning. The graphs hold no
precomputed text keys/values: one DiT graph takes the text every step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle import BundleConfig
from ..encoders import is_weight_free
from ..errors import BackendUnavailable, BundleError
from ..manifest import Manifest, load_manifest
from .base import ArrayBackend

__all__ = ["OrtBackend", "GRAPHS", "parse_device"]

log = logging.getLogger("v2m.backend.ort")

GRAPHS = ("encoder", "dit", "vae", "step")


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" | "cuda" | "cuda:N" | "auto" -> (ORT device type, device id)."""
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device == "cpu":
        return "cpu", 0
    kind, _, idx = device.partition(":")
    if kind != "cuda" or (idx and not idx.isdigit()):
        raise BackendUnavailable(f"device {device!r} is not one of cpu, cuda, cuda:N, auto")
    return "cuda", int(idx or 0)


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the CPUs this process may use (containers)
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _shape_option(profile: dict[str, dict[str, list[int]]], which: str) -> str:
    """ORT TensorRT provider profile string: 'x:2x64x1,t:2'."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in p[which])}" for name, p in profile.items())


class OrtBackend(ArrayBackend):
    name = "onnxruntime"

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: BundleConfig,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.cfg = cfg
        self.manifest: Manifest = load_manifest(self.bundle_dir)
        # A weight-free frame encoder (cut, motion) runs in the pipeline: no `encoder` graph.
        self.graphs = tuple(g for g in GRAPHS if g != "encoder" or not is_weight_free(cfg.encoder))
        self.manifest.verify(cfg, self.graphs)
        self.device_type, self.device_id = parse_device(device)
        self.device = self.device_type if self.device_type == "cpu" else f"cuda:{self.device_id}"
        available = ort.get_available_providers()
        use_trt_ep = False
        if precision not in ("fp32", "fp16", "bf16"):
            raise BackendUnavailable(f"precision {precision!r} is not one of fp32, fp16, bf16")
        if self.device_type == "cpu":
            if precision != "fp32":
                raise BackendUnavailable(
                    f"the onnxruntime backend runs the exported fp32 graphs on CPU; use --precision fp32 (got {precision})"
                )
        else:
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(
                    f"--device {device} asked for, but this onnxruntime has no CUDA provider ({', '.join(available)}); "
                    "install onnxruntime-gpu (`pip install 'v2m-runtime[ort-gpu]'`, never together with onnxruntime) or use --device cpu"
                )
            if precision != "fp32":
                use_trt_ep = "TensorrtExecutionProvider" in available and precision == "fp16"
                if not use_trt_ep:
                    log.warning("onnxruntime on CUDA runs the fp32 graphs (%s needs ORT's TensorRT provider); running fp32", precision)
                    precision = "fp32"
        self.precision = precision
        self.threads = threads or _cpu_threads()
        self.sessions = {name: self._session(name, use_trt_ep) for name in self.graphs}
        self.providers = self.sessions["dit"].get_providers()
        log.info("onnxruntime %s: %s on %s, %s", ort.__version__, ", ".join(self.providers), self.device, precision)

    # --- sessions ---------------------------------------------------------------------------
    def _providers(self, name: str, use_trt_ep: bool) -> list:
        if self.device_type == "cpu":
            return ["CPUExecutionProvider"]
        providers: list = []
        if use_trt_ep and name != "step":  # the Euler update stays fp32 (CUDA provider)
            cache = self.bundle_dir / "engines" / "ort-trt"
            cache.mkdir(parents=True, exist_ok=True)
            profile = self.manifest.graph(name).profile
            providers.append(("TensorrtExecutionProvider", {
                "device_id": self.device_id,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": _shape_option(profile, "min"),
                "trt_profile_opt_shapes": _shape_option(profile, "opt"),
                "trt_profile_max_shapes": _shape_option(profile, "max"),
            }))
        providers.append(("CUDAExecutionProvider", {"device_id": self.device_id}))
        providers.append("CPUExecutionProvider")
        return providers

    def _session(self, name: str, use_trt_ep: bool) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only; ours say what ran
        if self.device_type == "cpu":
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        path = self.manifest.graph_path(name)
        try:
            sess = ort.InferenceSession(str(path), so, providers=self._providers(name, use_trt_ep))
        except Exception as e:  # noqa: BLE001 - ORT's pybind errors share no base class but Exception
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(
                f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {msg[:200]}); re-export with `v2m export`"
            ) from None
        graph = self.manifest.graph(name)
        got_in = [i.name for i in sess.get_inputs()]
        got_out = [o.name for o in sess.get_outputs()]
        if got_in != graph.input_names or got_out != graph.output_names:
            raise BundleError(
                f"{path}: inputs {got_in} / outputs {got_out} differ from the manifest's "
                f"{graph.input_names} / {graph.output_names}; re-export with `v2m export`"
            )
        return sess

    # --- ArrayBackend: numpy in, numpy out --------------------------------------------------------
    def to_native(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def concat(self, arrays: list) -> np.ndarray:
        return np.concatenate(arrays)

    def velocity(self, x, curve, t, text, text_mask) -> np.ndarray:
        """One DiT call (session.run, host arrays): [B, C, L] -> [B, C, L]."""
        feeds = {"x": x, "curve": curve, "t": t, "text": text, "text_mask": text_mask}
        return self.sessions["dit"].run(["velocity"], {k: self.to_native(v) for k, v in feeds.items()})[0]

    # --- the three stages ---------------------------------------------------------------------
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        return self.sessions["encoder"].run(["features"], {"pixels": self.to_native(pixels)})[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self.sessions["vae"].run(["audio"], {"latents": self.to_native(latents)})[0]

    def _put(self, a: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(self.to_native(a), self.device_type, self.device_id)

    def _empty(self, shape: tuple[int, ...]) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device_type, self.device_id)

    def sample(self, noise, curve, text, text_mask, ts, cfg_scale, uncond_keeps_curve=True, on_step=None):
        """The whole guided Euler loop on bound buffers: DiT, then the `step` graph, per step."""
        b, c, n = noise.shape
        steps = len(ts) - 1
        curve_u = curve if uncond_keeps_curve else np.zeros_like(curve)
        # Inputs that do not change across steps: uploaded once.
        keep = {  # numpy sources stay referenced: CPU OrtValues may share their memory
            "curve": self.to_native(np.concatenate([curve, curve_u])),  # (2B, 1, L)
            "text": self.to_native(np.concatenate([text, np.zeros_like(text)])),  # (2B, S, E), uncond = zeros
            "text_mask": self.to_native(np.concatenate([text_mask, text_mask])),  # (2B, S)
            "scale": np.array([cfg_scale], dtype=np.float32),
            "noise": np.array(noise, dtype=np.float32, copy=True),  # x ping-pongs through it: never the caller's
            "noise2": self.to_native(np.concatenate([noise, noise])),
            "t": [np.full(2 * b, t, dtype=np.float32) for t in ts[:-1]],
            "dt": [np.array([ts[i + 1] - ts[i]], dtype=np.float32) for i in range(steps)],
        }
        t_v = [self._put(t) for t in keep["t"]]
        dt_v = [self._put(d) for d in keep["dt"]]
        x = [self._put(keep["noise"]), self._empty((b, c, n))]  # ping-pong: step i reads [i % 2]
        x2 = [self._put(keep["noise2"]), self._empty((2 * b, c, n))]
        vel = self._empty((2 * b, c, n))

        dit, step = self.sessions["dit"], self.sessions["step"]
        dit_io, step_io = dit.io_binding(), step.io_binding()
        for name in ("curve", "text", "text_mask"):
            dit_io.bind_ortvalue_input(name, self._put(keep[name]))
        dit_io.bind_ortvalue_output("velocity", vel)
        step_io.bind_ortvalue_input("velocity", vel)
        step_io.bind_ortvalue_input("scale", self._put(keep["scale"]))
        for i in range(steps):
            cur, nxt = i % 2, 1 - i % 2
            dit_io.bind_ortvalue_input("x", x2[cur])
            dit_io.bind_ortvalue_input("t", t_v[i])
            dit.run_with_iobinding(dit_io)
            step_io.bind_ortvalue_input("x", x[cur])
            step_io.bind_ortvalue_input("dt", dt_v[i])
            step_io.bind_ortvalue_output("x_next", x[nxt])
            step_io.bind_ortvalue_output("x2_next", x2[nxt])
            step.run_with_iobinding(step_io)
            if on_step is not None:
                on_step(i)
        return np.array(x[steps % 2].numpy(), dtype=np.float32, copy=True)

    def describe(self):
        d = super().describe()
        d["onnxruntime"] = ort.__version__
        d["providers"] = self.providers
        if self.device_type == "cpu":
            d["threads"] = self.threads
        return d

    def close(self) -> None:
        self.sessions.clear()
