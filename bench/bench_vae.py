"""VAE decode latency and memory: a clip's latents to stereo 44.1 kHz audio.

    python bench/bench_vae.py                                    # full VAE, CUDA, fp16, 32 s (L = 394)
    python bench/bench_vae.py --preset tiny --device cpu --lengths 62

Variants (what `TorchBackend` / `TorchFastBackend` do):
- whole-plain:    one decoder call with the out-of-place Snake and residual adds (the
                  decode before the in-place rewrite: five full-size temporaries per Snake)
- whole:          one decoder call over all L latent frames (in-place Snake)
- chunked:        `OobleckDecoder.decode_chunked` (`--chunk` latent frames per chunk, a
                  comma list sweeps several, with receptive-field overlap, written into one
                  host output: a bounded working set, the copy included)
- whole+triton, chunked+triton: the same with the fused Snake kernel
                  (`use_triton_snake`, CUDA only)

Each variant runs at every precision of `--precisions` (default fp16 and fp32 on
CUDA, where fp32 convolutions use TF32 tensor cores as PyTorch allows by default).
On CPU the variants are timed round-robin (`harness.time_interleaved`). One JSON line per
(variant, chunk, precision, L) in `<out>/vae.jsonl`: ms (median, p10,
p90), audio seconds decoded per second, achieved GFLOP/s (`OobleckConfig.flops`, the
overlap's extra work not counted), peak GPU memory above the weights, and the
error against an fp32 whole decode of the same latents (max |diff|, SNR dB).

Why fp32 is measured too: a decoder amplifies relative errors of its input and
activations. A random Oobleck decoder does so by ~35 dB (on CPU, rounding the latents
alone to fp16 gives 36 dB SNR; an fp16 decode ~25 dB; bf16 ~17 dB), partly through
SnakeBeta's sin() of activations that grow to |x| ~ 100 where fp16 spacing is 1/16.
A trained decoder's sensitivity is for this table to say, with its weights
(`--vae-precision` picks per deployment).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.models import vae as vae_mod  # noqa: E402
from v2m.models.bundle import bundle_config, randomize_weights  # noqa: E402
from v2m.runtime.backends.torch_backend import DTYPES  # noqa: E402

SAMPLE_RATE = 44100


def out_of_place(vae: torch.nn.Module) -> torch.nn.Module:
    """The decoder as it ran before the in-place rewrite: every Snake and residual add out of
    place (the same ops and bits; only the temporaries differ). Modules patched in place."""

    def snake(self, x):
        return x + (torch.exp(self.beta) + 1e-9).reciprocal() * torch.sin(torch.exp(self.alpha) * x).pow(2)

    def residual(self, x):
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))

    for mod in vae.modules():
        if isinstance(mod, vae_mod.Snake1d):
            mod.forward = snake.__get__(mod)
        elif isinstance(mod, vae_mod.ResidualUnit):
            mod.forward = residual.__get__(mod)
    return vae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    ap.add_argument("--bundle", default=None, help="decode with this bundle's VAE weights instead of random ones")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", default=None, help="default: fp16,fp32 on CUDA; fp32 on CPU")
    ap.add_argument("--lengths", default="394", help="latent frames L (394 = 32 s)")
    ap.add_argument("--chunk", default=str(vae_mod.DECODE_CHUNK),
                    help="latent frames per chunk for the chunked variants; a comma list sweeps")
    ap.add_argument("--variants", default=None,
                    help="default: whole,chunked,whole+triton,chunked+triton on CUDA; whole-plain,whole,chunked on CPU")
    ap.add_argument("--clock", default="wall", choices=sorted(harness.CLOCKS),
                    help="CPU: wall time, or this process's CPU time (steadier on a shared machine; use --threads 1)")
    harness.add_torch_args(ap, warmup=2, iters=10)
    args = ap.parse_args()
    device, cuda, env, versions = harness.torch_session(args, "bench_vae", "--preset tiny")
    precisions = (args.precisions or ("fp16,fp32" if cuda else "fp32")).split(",")
    variants = (args.variants or ("whole,chunked,whole+triton,chunked+triton" if cuda else "whole-plain,whole,chunked")).split(",")
    chunks = [int(c) for c in str(args.chunk).split(",")]
    if not cuda and any("triton" in v for v in variants):
        raise SystemExit("bench_vae: the triton variants need CUDA")
    if args.bundle:
        from v2m.core.bundle import load_config

        args.preset = load_config(args.bundle).preset
    cfg = vae_mod.OobleckConfig.from_dict(bundle_config(args.preset).vae)

    if args.bundle:
        from v2m.models.bundle import load_component

        vae32 = load_component(args.bundle, "vae", device=device)
        cfg = vae32.cfg
    else:
        with torch.device(device):
            vae32 = vae_mod.OobleckDecoder(cfg)
        randomize_weights(vae32, torch.Generator(device=device).manual_seed(0))
    vae32.eval()

    def fn_for(v: str, m: torch.nn.Module, z: torch.Tensor, chunk: int):
        if v.startswith("chunked"):
            return lambda: m.decode_chunked(z, chunk)
        return lambda: m(z).float().cpu()

    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        z32 = torch.randn(1, cfg.latent_channels, length, device=device,
                          generator=torch.Generator(device=device).manual_seed(1))
        with torch.inference_mode():
            ref = vae32(z32).double().cpu()  # the fp32 whole decode every row is compared with
        for precision in precisions:
            dtype = DTYPES[precision]
            models = {"torch": copy.deepcopy(vae32).to(dtype)}
            if "whole-plain" in variants:
                models["plain"] = out_of_place(copy.deepcopy(models["torch"]))
            if any("triton" in v for v in variants):
                from v2m.runtime.backends.torch_fused import use_triton_snake

                models["triton"] = copy.deepcopy(models["torch"])
                use_triton_snake(models["triton"])
            z = z32.to(dtype)
            runs = [(v, c) for v in variants for c in (chunks if v.startswith("chunked") else [None])]
            fns = {(v, c): fn_for(v, models["triton" if "triton" in v else "plain" if v == "whole-plain" else "torch"],
                                  z, c) for v, c in runs}
            if not cuda:  # round-robin: load from other processes on a shared CPU hits every variant alike
                with torch.inference_mode():
                    cpu_times = harness.time_interleaved(fns, warmup=args.warmup, iters=args.iters, clock=args.clock)
            for (v, chunk), fn in fns.items():
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    base_mb = torch.cuda.memory_allocated(device) / 2**20
                with torch.inference_mode():
                    if cuda:
                        st = harness.summarize(harness.time_fn(fn, warmup=args.warmup, iters=args.iters,
                                                               device=str(device)))
                    else:
                        st = harness.summarize(cpu_times[(v, chunk)])
                    out = fn().double()
                err = (out - ref).abs().max().item()
                snr = harness.snr_db(ref, out)
                audio_s = length * cfg.hop_length / SAMPLE_RATE
                row = {
                    "bench": "vae", "device": env["device"], "preset": args.preset, "precision": precision,
                    "weights": str(args.bundle) if args.bundle else "random",
                    "variant": v, "L": length, "audio_s": audio_s, "chunk": chunk,
                    "threads": torch.get_num_threads(), "clock": "cuda" if cuda else args.clock, "gflops": cfg.flops(length) / (st["median"] * 1e-3) / 1e9,
                    "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"], "iters": st["n"],
                    "audio_s_per_s": audio_s / (st["median"] / 1e3),
                    "peak_gpu_mb_above_base": torch.cuda.max_memory_allocated(device) / 2**20 - base_mb if cuda else None,
                    "tf32_convs": bool(torch.backends.cudnn.allow_tf32) if cuda and precision == "fp32" else None,
                    "max_abs_diff_vs_fp32": err, "snr_db_vs_fp32": snr,
                    "versions": versions, "commit": env["commit"], "date": env["date"],
                }
                harness.append_result("vae", row, Path(args.out) if args.out else None)
                rows.append(row)
            del models

    print(f"\nOobleck VAE ({args.preset}), {env['device']}; SNR against an fp32 whole decode")
    print(f"{'variant':<16} {'chunk':>5} {'prec':<5} {'L':>5} {'ms':>9} {'p10':>9} {'p90':>9} {'audio s/s':>9} "
          f"{'GFLOP/s':>8} {'peak MB':>8} {'SNR dB':>7}")
    for r in rows:
        mem = f"{r['peak_gpu_mb_above_base']:.0f}" if r["peak_gpu_mb_above_base"] is not None else "-"
        snr = f"{r['snr_db_vs_fp32']:.1f}" if r["snr_db_vs_fp32"] < 300 else "exact"
        print(f"{r['variant']:<16} {r['chunk'] or '-':>5} {r['precision']:<5} {r['L']:>5} {r['ms']:>9.2f} "
              f"{r['ms_p10']:>9.2f} {r['ms_p90']:>9.2f} {r['audio_s_per_s']:>9.1f} {r['gflops']:>8.1f} {mem:>8} {snr:>7}")


if __name__ == "__main__":
    main()
