"""int8 recipes on a CPU: accuracy (the export gate's figures) and DiT step speed vs fp32 ORT.

    python bench/bench_int8.py --preset small --recipes ship,dynamic,static_qdq --threads 1,2
    python bench/bench_int8.py --preset demo --recipes ship --no-time      # the gate's figures only

For each recipe the fp32 export of the bundle is quantized into its own bundle folder (the
fp32 graphs shared by symlink), the gate (`v2m.export.quantize.measure`: step cosines and
audio SNR against fp32 from one seed) is run on it, the optimized graph's quantized op
counts are read back (ONNX Runtime's `optimized_model_filepath`), and then, per thread
count, the DiT step (`backend.sample` of `--step-calls` guided Euler steps, batch 2) of
fp32 and of every recipe is timed round-robin in one run (harness.time_interleaved).

Recipes (only "ship" is the product's: `v2m.export.quantize.quantize_graph`):
- ship:        dynamic, weights int8 per channel, activations uint8; the first and last linear
               and the self-attention output projections fp32
- ship_attn:   ship, with the attention products (QK^T, AV) quantized too (dynamic, both operands uint8)
- dynamic:     the first int8 path: dynamic, weights int8 per tensor, every linear layer
- dynamic_pc:  dynamic, per channel, every linear layer
- static_qdq:  static QDQ u8s8 per channel, activation ranges calibrated (MinMax) on the
               step inputs of a real fp32 sampler run (`record_step_feeds`)
- static_qdq_s8s8: the same with int8 activations
- static_qop:  static QOperator (QLinearMatMul) u8s8 per channel, the same calibration
- static_qdq_attn: static QDQ u8s8 with the attention products (QK^T, AV) quantized too

JSON lines in bench/results/int8.jsonl: one "gate" row per recipe and one "step" row per
(recipe, threads) with median/p10/p90, the ratio to fp32 of the same run and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_roofline import prepare_bundle  # noqa: E402

log = logging.getLogger("v2m.bench.int8")

FUSED = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "QuantizeLinear",
         "DequantizeLinear", "DynamicQuantizeLinear", "MatMul", "FusedMatMul")


def record_step_feeds(bundle: Path, cfg, length: int, steps: int, seed: int = 1) -> list[dict]:
    """The step graph's inputs at every stage of a real fp32 sampler run (seeded curve, text, noise)."""
    from v2m.runtime.backends.engine_sampler import step_bindings
    from v2m.runtime.backends.ort_backend import OrtBackend

    be = OrtBackend(bundle, cfg, device="cpu", precision="fp32")
    real, feeds = be.sessions["step"], []
    names = [x.name for x in real.get_inputs()], [x.name for x in real.get_outputs()]

    class Recorder:  # the step session, snapshotting the bound inputs of each run
        def __getattr__(self, k):
            return getattr(real, k)

        def run_with_iobinding(self, io, opts):
            sh = next(reversed(be._shapes.values()))
            ins, _ = step_bindings(sh.ring, *names, sh.bufs, {**sh.tables, **sh.text_out, **sh.sched_out})[
                sh.bindings.index(io)]
            feeds.append({k: np.array(v.numpy(), copy=True) for k, v in ins.items()})
            return real.run_with_iobinding(io, opts)

    be.sessions["step"] = Recorder()
    noise, cond, plan = _inputs(cfg, length, steps, seed)
    be.sample(noise, cond, plan)
    return feeds


def _inputs(cfg, length: int, steps: int, seed: int):
    from v2m.export.quantize import gate_inputs

    return gate_inputs(cfg, length, steps, seed)[:3]


def recipes(calib: dict[str, list[dict]]) -> dict:
    """{name: quantize(src, dst) -> description}; `calib` maps a graph file name to its recorded feeds."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from v2m.export.quantize import attention_outputs, linear_nodes, quantize_graph

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds, self.it = feeds, iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(self.feeds)

    def dynamic(per_channel):
        def q(src, dst):
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=["MatMul", "Gemm"])
            return f"dynamic, per {'channel' if per_channel else 'tensor'}"
        return q

    def static(fmt=QuantFormat.QDQ, act=QuantType.QUInt8, attention=False):
        def q(src, dst):
            feeds = calib.get(Path(src).stem)
            if feeds is None:  # no recorded inputs for this graph (the encoder): the shipped recipe
                return quantize_graph(src, dst)
            m = onnx.load(str(src), load_external_data=False)
            nodes = [n.name for n in m.graph.node if n.op_type == "MatMul"] if attention else linear_nodes(m)
            quantize_static(str(src), str(dst), Reader(feeds), quant_format=fmt, op_types_to_quantize=["MatMul"],
                            per_channel=True, reduce_range=False, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_quantize=nodes)
            return f"static {fmt.name} {act.name}/QInt8 per channel{' + attention' if attention else ''}"
        return q

    def ship_attention(src, dst):  # the shipped recipe, with the attention products quantized too (dynamic u8u8)
        m = onnx.load(str(src), load_external_data=False)
        lin = linear_nodes(m)
        keep = [lin[0], lin[-1], *attention_outputs(m, lin)]
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep,
                         op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": False})
        return "shipped + attention products"

    return {"ship": quantize_graph, "ship_attn": ship_attention, "dynamic": dynamic(False), "dynamic_pc": dynamic(True),
            "static_qdq": static(), "static_qdq_s8s8": static(act=QuantType.QInt8),
            "static_qop": static(fmt=QuantFormat.QOperator), "static_qdq_attn": static(attention=True)}


def variant_bundle(base: Path, work: Path, name: str, quantize) -> Path:
    """A bundle folder sharing `base`'s files by symlink, with its own int8 set made by `quantize`."""
    from v2m.core.manifest import MANIFEST_NAME, write_manifest
    from v2m.export.quantize import quantize_graphs

    out = work / f"int8-{name}"
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.name not in (MANIFEST_NAME, "onnx") and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    if not (out / "onnx" / "fp32").exists():
        (out / "onnx" / "fp32").symlink_to((base / "onnx" / "fp32").resolve())
    data = json.loads((base / MANIFEST_NAME).read_text())
    data["graphs"]["int8"] = quantize_graphs(out, data["graphs"]["fp32"], quantize)
    write_manifest(out, data)
    return out


def fused_ops(path: Path, threads: int) -> dict[str, int]:
    """Op counts of ONNX Runtime's optimized graph (ORT_ENABLE_ALL) for `path`."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as td:
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        counts = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
    return {op: counts[op] for op in FUSED if counts[op]}


def time_steps(bundles: dict[str, Path], cfg, threads: int, length: int, step_calls: int, iters: int) -> dict:
    """{label: per-step ms samples}: fp32 and each recipe's int8 `backend.sample`, round-robin."""
    from v2m.runtime.backends.ort_backend import OrtBackend

    backends = {k: OrtBackend(b, cfg, device="cpu", precision="fp32" if k == "fp32" else "int8", threads=threads)
                for k, b in bundles.items()}
    noise, cond, plan = _inputs(cfg, length, step_calls, 0)
    fns = {k: (lambda be=be: be.sample(noise, cond, plan)) for k, be in backends.items()}
    times = harness.time_interleaved(fns, warmup=1, iters=iters, settle_s=0.3)
    return {k: np.asarray(ts) / step_calls for k, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="demo (the shipped, trained bundle) or a random preset")
    ap.add_argument("--recipes", default="ship,dynamic")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--length", type=int, default=394, help="latent frames L of the timed steps (394: ~32 s)")
    ap.add_argument("--step-calls", type=int, default=2, help="sampler steps per timed call")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--calib-steps", type=int, default=8, help="sampler steps recorded for static calibration")
    ap.add_argument("--time", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--workdir", default=None, help="reuse bundles here")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    from v2m.core.bundle import load_config
    from v2m.export.quantize import gate_failure, measure

    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-int8-"))
    base = prepare_bundle(args.preset, work)
    cfg = load_config(base)
    names = [r for r in args.recipes.split(",") if r]
    calib = {}
    if any(n.startswith("static") for n in names):
        calib["step"] = record_step_feeds(base, cfg, args.length, args.calib_steps)
    table = recipes(calib)
    env = {**harness.environment("cpu"), "preset": args.preset, "bench": "int8"}
    bundles = {"fp32": base}
    for name in names:
        bundles[name] = variant_bundle(base, work / args.preset, name, table[name])
        figures = measure(bundles[name], cfg)
        ops = fused_ops(bundles[name] / "onnx" / "int8" / "step.onnx", 1)
        log.info("%s: min step cosine %.4f, audio SNR %.1f dB, latent SNR %.1f dB, ops %s", name,
                 figures["min_step_cosine"], figures["audio_snr_db"], figures["latent_snr_db"], ops)
        harness.append_result("int8", {**env, "row": "gate", "recipe": name, **figures, "step_ops": ops,
                                       "refused": gate_failure(figures)}, Path(args.out) if args.out else None)
    if not args.time:
        return
    for threads in (int(t) for t in args.threads.split(",")):
        times = time_steps(bundles, cfg, threads, args.length, args.step_calls, args.iters)
        load = os.getloadavg()
        ref = float(np.median(times["fp32"]))
        for name, ts in times.items():
            st = harness.summarize(ts)
            ratio = ref / st["median"]
            print(f"{args.preset} T={threads} {name:18s} {st['median']:8.1f} ms/step (p10 {st['p10']:.1f}, "
                  f"p90 {st['p90']:.1f})  fp32/this {ratio:.2f}x  load {load[0]:.1f}")
            harness.append_result("int8", {**env, "row": "step", "recipe": name, "threads": threads, "L": args.length,
                                           "B": 2, "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"],
                                           "n": st["n"], "speedup_vs_fp32": ratio, "loadavg": list(load)},
                                  Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
