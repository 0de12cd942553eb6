"""Per-step DiT latency: eager vs torch.compile vs the CUDA-graphed fast path, plus fp16 accuracy.

    python bench/bench_dit.py                                   # full preset, CUDA, fp16
    python bench/bench_dit.py --preset small --device cpu --out /tmp/bench_dit

One "step" is what the sampler does 96 times: one solver step of the one guided stage
(`runtime/backends/torch_step.py`): a CFG forward on a 2B batch (cond ++ uncond), the guidance
combine and the fp32 solver update (Euler: one stage; `--solver heun`: two). Variants:

- eager:         plain PyTorch, as stable-audio-tools runs a DiT: `DiT.forward` on the
                 2B batch every stage (timestep MLP, adaLN modulations and text K/V
                 recomputed each time) inside the same guided stage. The baseline
                 `speedup_vs_eager` divides by.
- static:        `solver_graph_step` eagerly over the static buffers of
                 `runtime/backends/torch_fast.py` (text K/V and modulations hoisted)
- compile:       static, backbone through torch.compile (inductor; "max-autotune-no-cudagraphs" on CUDA)
- graph:         static, the step captured in a CUDA graph and replayed (CUDA only)
- graph+compile: graph with the compiled backbone (CUDA only)
- graph+triton:  graph with the fused Triton kernels (`kernels="triton"`, CUDA only)

graph+compile and graph+triton are the two fusion choices of `FastConfig`; the
faster one in this table is the one to configure.

Weights are random and made on the target device in its dtype (the module is
built on the `meta` device, then materialized with `to_empty` and initialized
in place), so the 1.5B-parameter `full` preset never goes through a CPU init.
Achieved TFLOP/s uses `DiTConfig.flops` minus the hoisted text K/V projections (the
step's necessary work, the same figure for every variant, eager included),
against `harness.device_peaks`. One JSON line per (variant, L, B) in
`<out>/dit.jsonl`, plus one accuracy line (fp16 vs fp32: per-step velocity
cosine at the fp32 trajectory, and the SNR of the final latents).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.models.dit import PRESETS, DiT  # noqa: E402
from v2m.models.sao_dit import PRESETS as SAO_PRESETS  # noqa: E402
from v2m.models.sao_dit import SAODiT, SAODiTConfig  # noqa: E402
from v2m.runtime import sampler  # noqa: E402
from v2m.runtime.backends.torch_backend import DTYPES  # noqa: E402
from v2m.runtime.backends.torch_fast import FastConfig, FastSampler, solver_graph_step  # noqa: E402
from v2m.runtime.backends.torch_step import branch_tensors, make_stage, stage_tensors  # noqa: E402

log = logging.getLogger("v2m.bench.dit")



ALL_PRESETS = {**PRESETS, **SAO_PRESETS}  # v2m's DiT, and Stable Audio Open's (sao-1.0, sao-small, tiny ones)


def family(cfg) -> str:
    return "sao" if isinstance(cfg, SAODiTConfig) else "v2m"


def make_dit(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random DiT (either family) allocated directly on `device` in `dtype` (no CPU copy of the weights)."""
    with torch.device("meta"):
        dit = SAODiT(cfg) if family(cfg) == "sao" else DiT(cfg)
    dit = dit.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if p.ndim >= 2:
                std = 1.0 if name.startswith("timestep_features") else 1.0 / math.sqrt(p[0].numel())
                p.normal_(0.0, std, generator=gen)
            else:
                p.zero_()
        for m in dit.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.fill_(1.0)
        if family(cfg) == "v2m":
            for lin in [blk.ada for blk in dit.blocks] + [dit.ada_out]:
                lin.weight.mul_(0.25)  # as DiT.init_weights(zero_init=False)
    return dit.eval()


def text_tokens(cfg, s: int) -> int:
    """Cross-attention tokens: S prompt tokens (+ one per seconds value for Stable Audio Open)."""
    return s + 2 if family(cfg) == "sao" else s


def step_flops(cfg, b: int, length: int, s: int) -> float:
    """FLOPs of one CFG step (batch 2B), without the text K/V projections the sampler hoists."""
    if family(cfg) == "sao":
        sx = text_tokens(cfg, s)
        hoisted = cfg.depth * 2 * b * sx * 2 * (2 * cfg.cross_dim * cfg.cross_dim)
        return cfg.flops(2 * b, length, sx) - hoisted
    hoisted = cfg.depth * 2 * b * s * 2 * (2 * cfg.width * cfg.width)
    return cfg.flops(2 * b, length, s) - hoisted


def _inputs(cfg, b: int, length: int, s: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    noise = sampler.initial_noise(seed, (b, cfg.latent_channels, length))
    curve = rng.random((b, 1, length), dtype=np.float32)
    if family(cfg) == "sao":  # the conditioner's output: cross tokens and the global seconds embedding
        sx = text_tokens(cfg, s)
        text = rng.standard_normal((b, sx, cfg.cond_dim), dtype=np.float32)
        glob = rng.standard_normal((b, cfg.global_dim), dtype=np.float32)
        return noise, sampler.Conditioning(curve, text, np.ones((b, sx), np.float32), global_cond=glob)
    text = rng.standard_normal((b, s, cfg.text_dim), dtype=np.float32)
    mask = np.ones((b, s), dtype=np.float32)
    mask[:, s // 2 :] = 0  # half the prompt is padding, as a short prompt would be
    return noise, sampler.Conditioning(curve, text, mask)


def _plan(cfg, steps: int, solver: str | None) -> sampler.Plan:
    if family(cfg) == "sao":  # SAO 1.0's v-diffusion over its own schedule
        from v2m.core.bundle import SAOConfig
        from v2m.families.sao import sigma_schedule

        opts = sampler.SamplerOptions(steps=steps, cfg_scale=4.5, solver=solver or "dpmpp-2m")
        return sampler.Plan.make(opts, sigmas=lambda n: sigma_schedule(SAOConfig(), n), objective="v")
    return sampler.Plan.make(sampler.SamplerOptions(steps=steps, cfg_scale=4.5, solver=solver or "euler"))


class ForwardModel:
    """The step model of plain PyTorch: the DiT's own `forward` on the guidance batch every stage
    (nothing hoisted: timestep embedding, modulations and text K/V recomputed each time)."""

    TEXT_INPUTS = ("text", "text_mask", "global_cond")
    SCHEDULE = ("t",)

    def __init__(self, dit):
        self.dit, self.dtype = dit, next(dit.parameters()).dtype
        self.sao = isinstance(dit, SAODiT)

    def text_context(self, inputs):
        glob = inputs.get("global_cond")
        return inputs["text"].to(self.dtype), inputs["text_mask"], None if glob is None else glob.to(self.dtype)

    def schedule(self, t_model):
        return (t_model,)

    def __call__(self, x_in, k, curve, sched, ctx):
        text, mask, glob = ctx
        t = sched[0].index_select(0, k).expand(x_in.shape[0])  # (G*B,)
        x = x_in.to(self.dtype)
        if self.sao:
            c = curve.to(self.dtype) if self.dit.cfg.input_concat_dim else None
            return self.dit(x, t, text, glob, c).float()
        return self.dit(x, curve.to(self.dtype), t, text, mask).float()


def time_eager(dit, cfg, b, length, s, device, dtype, warmup, iters, solver=None) -> list[float]:
    """The plain-PyTorch step: the model's own forward on the CFG batch, every stage."""
    noise, cond = _inputs(cfg, b, length, s)
    plan = _plan(cfg, 96, solver)
    model = ForwardModel(dit)
    batch = branch_tensors(plan, cond, device)
    ctx = model.text_context(batch)
    sched = model.schedule(torch.tensor(plan.table.t_model, dtype=torch.float32, device=device))
    coef, noise_t, weights = stage_tensors(plan.table, plan.guidance.weights, None, noise.shape, device)
    k = torch.zeros(1, dtype=torch.int64, device=device)
    x = torch.from_numpy(noise).to(device)
    d = torch.zeros_like(x)
    stage = make_stage(model, k, coef, noise_t, weights, batch["curve"], sched, ctx)

    def fn():
        k.zero_()
        sampler.solver_step(stage, x, d, plan.table.stages)

    with torch.inference_mode():
        return harness.time_fn(fn, warmup=warmup, iters=iters, device=str(device))


def time_variant(fast: FastSampler, cfg, b, length, s, steps, device, warmup, iters, solver=None) -> list[float]:
    entry = fast.prepare(*_inputs(cfg, b, length, s), _plan(cfg, steps, solver))
    st = entry.state
    if entry.graph is not None:
        def fn():
            st.k.zero_()  # the graph advances it; keep it inside the table
            entry.graph.replay()
    else:
        def fn():
            st.k.zero_()
            solver_graph_step(fast.model, st)
    with torch.inference_mode():
        return harness.time_fn(fn, warmup=warmup, iters=iters, device=str(device))


@torch.inference_mode()
def accuracy(dit_lo, dit_ref, b: int, length: int, s: int, steps: int, kernels: str = "torch") -> dict:
    """fp16 (or bf16) vs fp32: per-stage guided-output cosine along the fp32 trajectory; final latent SNR."""
    cfg = dit_ref.cfg
    noise, cond = _inputs(cfg, b, length, s, seed=1)
    plan = _plan(cfg, steps, None)
    x0 = noise * np.float32(plan.table.x0_scale)
    ref = FastSampler(dit_ref, FastConfig(graphs=False))
    lo = FastSampler(dit_lo, FastConfig(graphs=False, kernels=kernels))
    e_ref, e_lo = ref.prepare(x0, cond, plan), lo.prepare(x0, cond, plan)
    cos = []
    for i in range(steps):  # both see the fp32 state of every step
        x = e_ref.state.x.clone()
        v_ref = ref.velocity_at(e_ref, x, i)
        v_lo = lo.velocity_at(e_lo, x, i)
        cos.append(torch.nn.functional.cosine_similarity(v_ref.flatten(), v_lo.flatten(), dim=0).item())
        e_ref.state.k.fill_(i)
        solver_graph_step(ref.model, e_ref.state)  # the fp32 trajectory, one step
    x_ref = ref.sample(x0, cond, plan)
    x_lo = lo.sample(x0, cond, plan)
    snr = harness.snr_db(x_ref, x_lo)
    return {
        "cos_min": float(np.min(cos)), "cos_median": float(np.median(cos)), "cos_per_step": [round(c, 6) for c in cos],
        "final_snr_db": float(snr), "L": length, "B": b, "steps": steps, "solver": plan.table.solver,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", choices=sorted(ALL_PRESETS),
                    help="v2m's DiT (tiny, small, full) or Stable Audio Open's (sao-1.0, sao-small, sao-tiny, ...)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default=None, choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--lengths", default="128,394,1024", help="latent frames L (394 = 32 s)")
    ap.add_argument("--batches", default="1,4", help="B (the DiT batch is 2B with CFG)")
    ap.add_argument("--text-len", type=int, default=64, help="S, text tokens")
    ap.add_argument("--solver", default=None, choices=list(sampler.SOLVERS),
                    help="one step = its stages (heun: two); default euler, dpmpp-2m for Stable Audio Open")
    ap.add_argument("--variants", default=None,
                    help="default: eager,static,compile,graph,graph+compile,graph+triton on CUDA; eager,static,compile on CPU")
    harness.add_torch_args(ap, warmup=3, iters=20)
    ap.add_argument("--accuracy-steps", type=int, default=96, help="0 skips the fp16-vs-fp32 check")
    ap.add_argument("--accuracy-length", type=int, default=None, help="default: the smallest of --lengths")
    args = ap.parse_args()
    device, cuda, env, versions = harness.torch_session(args, "bench_dit", "--preset small")
    precision = args.precision or ("fp16" if cuda else "fp32")
    dtype = DTYPES[precision]
    variants = (args.variants or ("eager,static,compile,graph,graph+compile,graph+triton" if cuda
                                  else "eager,static,compile")).split(",")
    if not cuda and any(v.startswith("graph") for v in variants):
        raise SystemExit("bench_dit: graph variants need CUDA")
    cfg = ALL_PRESETS[args.preset]
    peaks = harness.device_peaks(env["device"]) if cuda else None
    out_dir = Path(args.out) if args.out else None

    dit = make_dit(cfg, device, dtype)
    log.info("%s DiT on %s (%s): %.0fM parameters, made on the device", args.preset, env["device"], precision,
             sum(p.numel() for p in dit.parameters()) / 1e6)
    samplers = {}
    for v in variants:
        if v == "eager":
            continue
        compile_ = "inductor" if "compile" in v else "none"
        kernels = "triton" if "triton" in v else "torch"
        samplers[v] = FastSampler(
            dit, FastConfig(graphs=v.startswith("graph"), compile=compile_, kernels=kernels, max_graphs=1)
        )
        log.info("variant %s: sampler path %s", v, samplers[v].path)

    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for length in (int(x) for x in args.lengths.split(",")):
            flops = step_flops(cfg, b, length, args.text_len) * (2 if args.solver == "heun" else 1)
            eager_ms = None
            for v in variants:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                if v == "eager":
                    ms = time_eager(dit, cfg, b, length, args.text_len, device, dtype, args.warmup, args.iters, args.solver)
                else:
                    ms = time_variant(samplers[v], cfg, b, length, args.text_len, 96, device, args.warmup, args.iters,
                                      args.solver)
                st = harness.summarize(ms)
                eager_ms = st["median"] if v == "eager" else eager_ms
                tflops = flops / (st["median"] / 1e3) / 1e12
                row = {
                    "bench": "dit", "device": env["device"], "preset": args.preset, "precision": precision,
                    "variant": v, "solver": args.solver or _plan(cfg, 1, None).table.solver, "family": family(cfg),
                    "L": length, "B": b, "batch": 2 * b, "S": text_tokens(cfg, args.text_len),
                    "step_ms": st["median"], "step_ms_p10": st["p10"], "step_ms_p90": st["p90"], "iters": st["n"],
                    "gflop_per_step": flops / 1e9, "tflops": tflops,
                    "pct_peak": 100 * tflops / peaks["tflops_fp16"] if peaks and precision != "fp32" else None,
                    "speedup_vs_eager": eager_ms / st["median"] if eager_ms else None,
                    "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
                    "cpu_threads": None if cuda else torch.get_num_threads(),
                    "versions": versions, "commit": env["commit"], "date": env["date"],
                }
                harness.append_result("dit", row, out_dir)
                rows.append(row)
                if cuda:
                    torch.cuda.empty_cache()

    print(f"\n{args.preset} DiT, {precision}, {env['device']}, S={args.text_len}")
    print(f"{'variant':<14} {'B':>2} {'L':>5} {'step ms':>9} {'p10':>8} {'p90':>8} {'TFLOP/s':>8} {'%peak':>6} {'speedup':>7}")
    for r in rows:
        pk = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "-"
        sp = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
        print(f"{r['variant']:<14} {r['B']:>2} {r['L']:>5} {r['step_ms']:>9.3f} {r['step_ms_p10']:>8.3f} "
              f"{r['step_ms_p90']:>8.3f} {r['tflops']:>8.3f} {pk:>6} {sp:>7}")

    if args.accuracy_steps > 0:
        del samplers
        lo_dtype = torch.float16 if precision == "fp32" else dtype  # compare a half precision against fp32
        dit_ref = dit.float() if dtype == torch.float32 else copy.deepcopy(dit).float()
        dit_lo = copy.deepcopy(dit_ref).to(lo_dtype)
        length = args.accuracy_length or min(int(x) for x in args.lengths.split(","))
        lo_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[lo_dtype]
        for kernels in ["torch"] + (["triton"] if any("triton" in v for v in variants) else []):
            acc = accuracy(dit_lo, dit_ref, 1, length, args.text_len, args.accuracy_steps, kernels)
            name = f"accuracy_{lo_name}_vs_fp32" + ("_triton" if kernels == "triton" else "")
            row = {"bench": "dit", "device": env["device"], "preset": args.preset, "variant": name, "kernels": kernels,
                   **acc, "versions": versions, "commit": env["commit"], "date": env["date"]}
            harness.append_result("dit", row, out_dir)
            print(f"\n{lo_name} ({kernels} kernels) vs fp32 (L={length}, B=1, {acc['steps']} steps): per-step velocity "
                  f"cosine min {acc['cos_min']:.6f}, median {acc['cos_median']:.6f}; final latents SNR {acc['final_snr_db']:.1f} dB")


if __name__ == "__main__":
    main()
