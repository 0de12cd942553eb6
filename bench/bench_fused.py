"""The DiT's fused glue kernels vs the PyTorch ops they replace: latency and achieved GB/s.

    python bench/bench_fused.py                       # full preset widths, CUDA, fp16
    python bench/bench_fused.py --lengths 394 --batches 1

Ops, at the shapes one sampler step sees (rows = 2B * L for the CFG batch, D and
heads of the preset):

- add_norm_modulate: `h + g * y`, LayerNorm, `* (1 + scale) + shift` (the DiT's
  gated residual + adaLN modulate). Variants: `torch` (the model's own ops,
  eager), `compile` (the shared reference through torch.compile, inductor's
  fusion of the same math), `triton` (`v2m.kernels.adaln`).
- rope_qkv: the QKV split and rotation of q and k. Variants: `torch` (the
  model's path, `rope_qkv_reference`), `compile`, `triton` (`v2m.kernels.rope`).
- snake: the VAE decoder's SnakeBeta, at every distinct (C, T) the decoder of the
  preset runs it on for a clip of L latent frames (found by running the decoder on
  the meta device). Variants: `torch` (`Snake1d.forward`), `compile`, `triton`
  (`v2m.kernels.snake`). The decoder row sums them, weighted by how often each runs.

Both ops are memory-bound: GB/s counts the bytes a fused kernel must move (read
h and y, write h' and n; read and write q and k), the same figure for every
variant, against the device's HBM bandwidth (`harness.device_peaks`). One JSON
line per (op, variant, B, L) in `<out>/fused.jsonl`. CUDA only: under the Triton
interpreter a timing measures Python, not the kernel.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.kernels.adaln import add_norm_modulate, add_norm_modulate_reference  # noqa: E402
from v2m.kernels.rope import rope_qkv, rope_qkv_reference  # noqa: E402
from v2m.kernels.snake import snake, snake_params, snake_reference  # noqa: E402
from v2m.models import vae as vae_mod  # noqa: E402
from v2m.models.bundle import bundle_config  # noqa: E402
from v2m.models.dit import PRESETS, modulate, rope_tables  # noqa: E402
from v2m.runtime.backends.torch_backend import DTYPES  # noqa: E402

log = logging.getLogger("v2m.bench.fused")



def model_add_norm_modulate(h, y, gate, shift, scale, eps):
    """What `DiTBlock.forward` does between a branch and the next one, op by op."""
    h = h + gate[:, None, :] * y
    return h, modulate(torch.nn.functional.layer_norm(h, (h.shape[-1],), eps=eps), shift, scale)


def norm_variants(rows_b: int, length: int, d: int, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)
    h, y = r(rows_b, length, d), r(rows_b, length, d)
    gate, shift, scale = (r(1, d).expand(rows_b, d) for _ in range(3))  # the sampler's expanded modulations
    ref = torch.compile(add_norm_modulate_reference, dynamic=False)
    return {
        "torch": lambda: model_add_norm_modulate(h, y, gate, shift, scale, 1e-6),
        "compile": lambda: ref(h, y, gate, None, None, shift, scale, 1e-6),
        "triton": lambda: add_norm_modulate(h, y, gate, None, None, shift, scale, 1e-6),
    }, 4 * h.numel() * h.element_size()


def rope_variants(rows_b: int, length: int, heads: int, head_dim: int, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(rows_b, length, 3 * heads * head_dim, generator=g, device=device, dtype=dtype)
    cos, sin = rope_tables(length, head_dim, 10000.0, device)
    ref = torch.compile(rope_qkv_reference, dynamic=False)
    moved = 4 * rows_b * length * heads * head_dim * qkv.element_size()  # read + write q and k
    return {
        "torch": lambda: rope_qkv_reference(qkv, cos, sin, heads),
        "compile": lambda: ref(qkv, cos, sin, heads),
        "triton": lambda: rope_qkv(qkv, cos, sin, heads),
    }, moved


def snake_shapes(preset: str, length: int) -> dict[tuple[int, int], int]:
    """(C, T) -> how many Snake calls of that shape one decode of L latent frames makes."""
    cfg = vae_mod.OobleckConfig.from_dict(bundle_config(preset).vae)
    with torch.device("meta"):
        dec = vae_mod.OobleckDecoder(cfg)
        counts: dict[tuple[int, int], int] = {}

        def hook(_m, inp):
            key = tuple(inp[0].shape[1:])
            counts[key] = counts.get(key, 0) + 1

        for m in dec.modules():
            if isinstance(m, vae_mod.Snake1d):
                m.register_forward_pre_hook(hook)
        with torch.no_grad():
            dec(torch.empty(1, cfg.latent_channels, length))
    return counts


def snake_variants(c: int, t: int, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, c, t, generator=g, device=device, dtype=dtype)
    m = vae_mod.Snake1d(c).to(device, dtype)
    ref = torch.compile(snake_reference, dynamic=False)
    alpha, inv_beta = snake_params(m.alpha, m.beta)  # once per model, as TritonSnake1d does
    return {
        "torch": lambda: m(x),
        "compile": lambda: ref(x, m.alpha, m.beta),
        "triton": lambda: snake(x, alpha, inv_beta),
    }, 2 * x.numel() * x.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--precision", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--lengths", default="128,394,1024")
    ap.add_argument("--batches", default="1,4", help="B; the kernels see 2B rows of the CFG batch")
    ap.add_argument("--variants", default="torch,compile,triton")
    harness.add_torch_args(ap, warmup=10, iters=100)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_fused: needs a CUDA GPU (the Triton interpreter on CPU would time Python, not kernels)")
    args.device = "cuda"
    device, _, env, versions = harness.torch_session(args, "bench_fused", "")
    dtype = DTYPES[args.precision]
    cfg = PRESETS[args.preset]
    peaks = harness.device_peaks(env["device"])
    variants = args.variants.split(",")
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for length in (int(x) for x in args.lengths.split(",")):
            ops = {
                "add_norm_modulate": norm_variants(2 * b, length, cfg.width, dtype, device),
                "rope_qkv": rope_variants(2 * b, length, cfg.heads, cfg.head_dim, dtype, device),
            }
            shapes = snake_shapes(args.preset, length) if b == 1 else {}  # the VAE decodes one clip at a time
            for (c, t), _count in shapes.items():
                ops[f"snake_C{c}_T{t}"] = snake_variants(c, t, dtype, device)
            for op, (fns, moved) in ops.items():
                torch_ms = None
                for v in variants:
                    with torch.inference_mode():
                        st = harness.summarize(harness.time_fn(fns[v], warmup=args.warmup, iters=args.iters, device="cuda"))
                    torch_ms = st["median"] if v == "torch" else torch_ms
                    gbps = moved / (st["median"] / 1e3) / 1e9
                    row = {
                        "bench": "fused", "device": env["device"], "preset": args.preset, "precision": args.precision,
                        "op": op, "variant": v, "B": b, "L": length, "rows": 2 * b * length, "D": cfg.width,
                        "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"], "iters": st["n"],
                        "mb_moved": moved / 1e6, "gbps": gbps,
                        "pct_peak_bw": 100 * gbps / peaks["gbps"] if peaks else None,
                        "speedup_vs_torch": torch_ms / st["median"] if torch_ms else None,
                        "versions": versions, "commit": env["commit"], "date": env["date"],
                    }
                    harness.append_result("fused", row, Path(args.out) if args.out else None)
                    rows.append(row)
            if shapes:  # all Snake calls of one decode, per variant
                for v in variants:
                    per = {r["op"]: r["ms"] for r in rows if r["L"] == length and r["B"] == b and r["variant"] == v}
                    total = sum(n * per[f"snake_C{c}_T{t}"] for (c, t), n in shapes.items())
                    log.info("snake, one %s VAE decode of L=%d: %s %.3f ms over %d calls", args.preset, length, v,
                             total, sum(shapes.values()))
                    harness.append_result("fused", {
                        "bench": "fused", "device": env["device"], "preset": args.preset, "precision": args.precision,
                        "op": "snake_per_decode", "variant": v, "B": 1, "L": length, "calls": sum(shapes.values()),
                        "ms": total, "versions": versions, "commit": env["commit"], "date": env["date"],
                    }, Path(args.out) if args.out else None)

    print(f"\nfused glue kernels, {args.preset} widths, {args.precision}, {env['device']}")
    print(f"{'op':<24} {'variant':<8} {'B':>2} {'L':>5} {'us':>8} {'p10':>8} {'p90':>8} {'GB/s':>7} {'%bw':>5} {'vs torch':>8}")
    for r in rows:
        bw = f"{r['pct_peak_bw']:.0f}" if r["pct_peak_bw"] is not None else "-"
        print(f"{r['op']:<24} {r['variant']:<8} {r['B']:>2} {r['L']:>5} {1e3 * r['ms']:>8.1f} {1e3 * r['ms_p10']:>8.1f} "
              f"{1e3 * r['ms_p90']:>8.1f} {r['gbps']:>7.0f} {bw:>5} {r['speedup_vs_torch']:>7.2f}x")


if __name__ == "__main__":
    main()
