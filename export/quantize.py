"""int8 graphs for ONNX Runtime on a CPU, gated by a measured accuracy check.

`v2m export --precision int8` (and `--precision int8` at run time, through the ONNX cache)
quantizes the fp32 `step` and `encoder` graphs with `quantize_graph`, the one int8 recipe:
ONNX Runtime's dynamic quantization of the linear layers (MatMul/Gemm with a constant
weight): weights int8 per output channel, activations uint8 per call (u8s8, the VNNI
`vpdpbusd` operand order; reduce_range off, since VNNI does not saturate, and on where the
exporting CPU has no VNNI: `core.devices.cpu_int8_saturates`, 7-bit weights, recorded in the
manifest and the ONNX cache key). Left in fp32:
the first and last linear layers (the DiT's in_proj and out_proj), the self-attention output
projections (`attention_outputs`) and the attention products (QK^T, AV). ONNX Runtime fuses
each quantized linear into `DynamicQuantizeMatMul`. Why this one (measured against static
QDQ / QOperator calibrated on real sampler inputs, s8s8, per-tensor weights, quantized
attention products): docs/cpu-backends.md and bench/bench_int8.py.
The other graphs (text, schedule, vae) stay fp32: the int8 set's manifest entries point
at the fp32 files. The VAE is left in fp32 because its output is the audio itself: a
convolutional decoder with Snake activations quantizes poorly, and its SNR is what the
gate measures.

The gate (`measure`), recorded in the manifest under `quantization`:
- the sampler run twice from one seed (seeded curve, text and noise; `GATE_STEPS` steps,
  CFG), fp32 and int8 graphs; per step the cosine between the two runs' updates
  x_{i+1} - x_i (the velocity times the step size);
- the SNR of the int8 run's audio against the fp32 run's, both decoded by the fp32 VAE
  (recorded beside it, not gated: the latent SNR, and the audio SNR the fp32 VAE gives for
  white noise at that latent SNR, which tells the VAE's amplification from the DiT's error);
- the frame encoder's feature cosine (min over a seeded batch of frames).
Below `GATE` the int8 export is refused with the figures (one line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core.bundle import BundleConfig
from v2m.core.manifest import INT8_RECIPE, sha256_file

__all__ = ["INT8_GRAPHS", "GATE", "GATE_STEPS", "RECIPE", "quantize_graph", "quantize_graphs", "measure", "gate_failure"]

log = logging.getLogger("v2m.export.int8")

INT8_GRAPHS = ("step", "encoder")
GATE_STEPS = 8
# The figures an int8 set must reach: every step's update within ~11 degrees of fp32's, the
# audio 25 dB above its difference to fp32's (issue 23's target), the frame features within ~8 degrees.
GATE = {"min_step_cosine": 0.98, "min_audio_snr_db": 25.0, "min_encoder_cosine": 0.99}


RECIPE = ("dynamic int8 MatMul/Gemm (weights QInt8 per channel, activations QUInt8 per call; the first and "
          "last linear layers and the self-attention output projections fp32)")


def linear_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm nodes of an ONNX model whose weight (input 1) is a constant, in graph order."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts]


_SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "Identity")


def _source(by_output: dict, name: str):
    """The node that computes tensor `name`, looking through shape-only ops; None for a graph input."""
    src = by_output.get(name)
    while src is not None and src.op_type in _SHAPE_OPS:
        src = by_output.get(src.input[0])
    return src


def attention_outputs(model, linear: list[str]) -> list[str]:
    """The self-attention output projections: linear nodes fed (through shape ops) by an attention
    product (a MatMul of two activations) whose values this graph computes. Cross-attention's
    values come in as a graph input (the DiT's text keys/values) and are left to quantize."""
    by_output = {o: n for n in model.graph.node for o in n.output}
    lin = set(linear)
    found = []
    for n in model.graph.node:
        if n.name not in lin:
            continue
        av = _source(by_output, n.input[0])
        if av is not None and av.op_type == "MatMul" and av.name not in lin and _source(by_output, av.input[1]):
            found.append(n.name)
    return found


def quantize_graph(src: Path, dst: Path) -> str:
    """The int8 recipe (module docstring): quantize the fp32 graph `src` into `dst`; its description."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from v2m.core.devices import cpu_int8_saturates

    reduce = cpu_int8_saturates()

    model = onnx.load(str(src), load_external_data=False)
    lin = linear_nodes(model)
    keep = ([lin[0], lin[-1]] if lin else []) + attention_outputs(model, lin)
    quiet = logging.getLogger()  # quantize_dynamic logs a pre-processing hint on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce,
                         op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep)
    finally:
        quiet.setLevel(level)
    return RECIPE + ("; 7-bit weights (reduce_range: this CPU has no VNNI)" if reduce else "")


def quantize_graphs(out: Path, fp32: dict[str, dict[str, Any]],
                    quantize: Callable[[Path, Path], str] | None = None) -> dict[str, dict[str, Any]]:
    """Write onnx/int8/{step,encoder}.onnx from the fp32 graphs with `quantize` (the recipe; the
    bench passes the alternatives it compares; default `quantize_graph`); the int8 set's manifest entries."""
    quantize = quantize or quantize_graph
    (out / "onnx" / "int8").mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, entry in fp32.items():
        graphs[name] = dict(entry, precision="int8", check=[])
        if name not in INT8_GRAPHS:
            continue  # runs in fp32: the same file
        dst = out / "onnx" / "int8" / f"{name}.onnx"
        t0 = time.perf_counter()
        how = quantize(out / entry["file"], dst)
        graphs[name].update(file=dst.relative_to(out).as_posix(), sha256=sha256_file(dst), data_file=None,
                            data_sha256=None, quantization=how)
        log.info("quantized %s to int8 in %.1f s", name, time.perf_counter() - t0)
    return graphs


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(noise, 1e-30)))


def _trajectory(backend, noise, cond, plan) -> list[np.ndarray]:
    """The sampler's state after each step (the backend's `latents_now`)."""
    states = [noise]
    backend.sample(noise, cond, plan, on_step=lambda i: states.append(backend.latents_now()))
    return states


def _vae_snr(ref, latents: np.ndarray, audio: np.ndarray, latent_snr_db: float, rng) -> float:
    """The audio SNR the fp32 VAE gives for white noise added to `latents` at `latent_snr_db`:
    how much of the int8 run's audio error is the VAE's amplification, not the DiT's."""
    scale = float(np.sqrt(np.mean(latents.astype(np.float64) ** 2) / 10 ** (latent_snr_db / 10)))
    noisy = latents + scale * rng.standard_normal(latents.shape).astype(np.float32)
    return _snr_db(audio, ref.decode(noisy))


def gate_inputs(cfg: BundleConfig, length: int, steps: int, seed: int):
    """The gate's sampler inputs: (initial noise [1, C, L], a random curve and half-masked text, the plan,
    the generator, which the gate draws on for its other inputs)."""
    from v2m.core.bundle import text_max_tokens
    from v2m.runtime import sampler

    rng = np.random.default_rng(seed)
    s = text_max_tokens(cfg.text)
    mask = np.ones((1, s), np.float32)
    mask[:, s // 2:] = 0
    cond = sampler.Conditioning(rng.random((1, 1, length), dtype=np.float32),
                                rng.standard_normal((1, s, cfg.text_dim), dtype=np.float32), mask)
    plan = sampler.Plan.make(sampler.SamplerOptions(steps=steps, cfg_scale=4.5))
    return sampler.initial_noise(seed, (1, cfg.latent_channels, length)) * plan.table.x0_scale, cond, plan, rng


def measure(out: Path, cfg: BundleConfig, seed: int = 0, length: int = 64) -> dict[str, Any]:
    """The gate's figures for the int8 set of the exported bundle `out` against its fp32 set."""
    from v2m.runtime.backends.ort_backend import OrtBackend

    ref, q = (OrtBackend(out, cfg, device="cpu", precision=p) for p in ("fp32", "int8"))
    noise, cond, plan, rng = gate_inputs(cfg, length, GATE_STEPS, seed)
    a, b = _trajectory(ref, noise, cond, plan), _trajectory(q, noise, cond, plan)
    cosines = [_cosine(a[i + 1] - a[i], b[i + 1] - b[i]) for i in range(len(a) - 1)]
    audio = ref.decode(a[-1])
    latent_snr = _snr_db(a[-1], b[-1])
    figures: dict[str, Any] = {"seed": seed, "steps": GATE_STEPS, "length": length,
                               "step_cosine": [round(c, 6) for c in cosines], "min_step_cosine": min(cosines),
                               "latent_snr_db": latent_snr, "audio_snr_db": _snr_db(audio, ref.decode(b[-1])),
                               "vae_snr_at_latent_snr_db": _vae_snr(ref, a[-1], audio, latent_snr, rng)}
    if "encoder" in ref.sessions:
        size = int(cfg.encoder.get("input_size", 224))
        pixels = rng.standard_normal((4, 3, size, size), dtype=np.float32)
        fr, fq = ref.encode_frames(pixels), q.encode_frames(pixels)
        figures["min_encoder_cosine"] = min(_cosine(x, y) for x, y in zip(fr, fq))
    figures["gate"] = dict(GATE)
    figures["recipe_version"] = INT8_RECIPE  # the recipe itself: each int8 graph entry's "quantization"
    return figures


def gate_failure(figures: dict[str, Any]) -> str | None:
    """None when the figures pass `GATE`, else what fell short (one line)."""
    short = []
    if figures["min_step_cosine"] < GATE["min_step_cosine"]:
        short.append(f"step cosine {figures['min_step_cosine']:.4f} < {GATE['min_step_cosine']}")
    if figures["audio_snr_db"] < GATE["min_audio_snr_db"]:
        why = ""
        if "vae_snr_at_latent_snr_db" in figures:  # tells a DiT that drifts from a VAE that amplifies
            why = (f" (latents {figures['latent_snr_db']:.1f} dB; the fp32 VAE turns white noise at that latent SNR "
                   f"into {figures['vae_snr_at_latent_snr_db']:.1f} dB)")
        short.append(f"audio SNR {figures['audio_snr_db']:.1f} dB < {GATE['min_audio_snr_db']} dB{why}")
    enc = figures.get("min_encoder_cosine")
    if enc is not None and enc < GATE["min_encoder_cosine"]:
        short.append(f"encoder cosine {enc:.4f} < {GATE['min_encoder_cosine']}")
    return "; ".join(short) or None
