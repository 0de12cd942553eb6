"""The independent oracle every backend's sampler is tested against.

A plain loop over the DiT's own `forward` (x, curve, t, text, text_mask): one call per
guidance branch per model evaluation, guidance combined as the paper writes it, the
time grid and the solvers written out from their definitions. It shares no code with
`v2m.runtime.sampler` or any backend: not the solver tables, not the guidance plan, not
the branch batch, not the hoisted modulations or text keys/values.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


def oracle_grid(steps: int, shift: float) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps + 1)
    if shift == 1.0:
        return t
    sigma = 1.0 - t
    return 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)


@torch.no_grad()
def oracle_sample(
    dit,
    noise: np.ndarray,  # (B, C, L)
    curve: np.ndarray,  # (B, 1, L)
    text: np.ndarray,  # (B, S, E)
    mask: np.ndarray,  # (B, S)
    *,
    steps: int,
    cfg_scale: float,
    solver: str = "euler",
    shift: float = 1.0,
    negative: tuple[np.ndarray, np.ndarray] | None = None,
    use_curve: bool = True,
    curve_guidance: float = 0.0,
    uncond_keeps_curve: bool = True,
    windows: list[tuple[int, int, np.ndarray]] | None = None,
) -> np.ndarray:
    """`windows` [(start, end, frame weights)]: joint windows, each step taken by every window on
    its slice of the state and the results averaged per frame with the weights (MultiDiffusion)."""
    f64 = lambda a: torch.from_numpy(np.asarray(a)).double()
    dit = copy.deepcopy(dit).double()  # the caller's model is left as it was
    x = f64(noise)
    c = f64(curve) if use_curve else torch.zeros_like(f64(curve))
    c_u = c if uncond_keeps_curve else torch.zeros_like(c)
    e, m = f64(text), f64(mask)
    e_u, m_u = (f64(negative[0]), f64(negative[1])) if negative is not None else (torch.zeros_like(e), m)
    b = x.shape[0]

    def v(x, t, c, c_u):
        tt = torch.full((b,), float(t), dtype=torch.float64)
        v_c = dit(x, c, tt, e, m)
        v_u = dit(x, c_u, tt, e_u, m_u)
        out = v_u + cfg_scale * (v_c - v_u)
        if curve_guidance:
            v_n = dit(x, torch.zeros_like(c), tt, e, m)
            out = out + curve_guidance * (v_c - v_n)
        return out

    def step(x, i, c, c_u):
        dt = ts[i + 1] - ts[i]
        if solver == "euler":
            return x + dt * v(x, ts[i], c, c_u)
        if solver == "heun":
            k1 = v(x, ts[i], c, c_u)
            k2 = v(x + dt * k1, ts[i + 1], c, c_u)
            return x + dt / 2 * (k1 + k2)
        raise ValueError(solver)

    ts = oracle_grid(steps, shift)
    for i in range(steps):
        if windows is None:
            x = step(x, i, c, c_u)
            continue
        acc, tot = torch.zeros_like(x), torch.zeros(x.shape[-1], dtype=torch.float64)
        for a, z, wt in windows:
            w = torch.from_numpy(np.asarray(wt, np.float64))
            acc[..., a:z] += w * step(x[..., a:z], i, c[..., a:z], c_u[..., a:z])
            tot[a:z] += w
        x = acc / tot
    return x.float().numpy()


def oracle_window_weights(plan) -> list[np.ndarray]:
    """Each window's frame weights for joint windows, written out frame by frame: 1, and inside
    an overlap of o frames with a neighbour, the frame's distance into it over o + 1 (counted from
    the window's own edge). `plan`: windows with `start` and `end`."""
    out = []
    for i, w in enumerate(plan):
        wt = np.ones(w.end - w.start)
        for f in range(w.start, w.end):
            if i > 0 and f < plan[i - 1].end:
                wt[f - w.start] = min(wt[f - w.start], (f - w.start + 1) / (plan[i - 1].end - w.start + 1))
            if i + 1 < len(plan) and f >= plan[i + 1].start:
                wt[f - w.start] = min(wt[f - w.start], (w.end - f) / (w.end - plan[i + 1].start + 1))
        out.append(wt)
    return out


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


# The cases every backend runs: Euler and Heun, shift 1 and 3, with and without a negative
# prompt, --no-curve, and curve guidance.
CASES = [
    dict(solver="euler", shift=1.0),
    dict(solver="heun", shift=1.0),
    dict(solver="euler", shift=3.0, negative=True),
    dict(solver="heun", shift=3.0, negative=True),
    dict(solver="euler", shift=1.0, use_curve=False),
    dict(solver="heun", shift=3.0, use_curve=False, negative=True),
    dict(solver="euler", shift=1.0, curve_guidance=1.5),
    dict(solver="heun", shift=1.0, curve_guidance=1.5, negative=True),
]
CASE_IDS = ["-".join(f"{k}={v}" for k, v in c.items()) for c in CASES]


def case_inputs(cfg, case: dict, b: int = 1, length: int = 23, seed: int = 0):
    """(noise, Conditioning, oracle kwargs, SamplerOptions kwargs) for one case."""
    from v2m.runtime import sampler

    rng = np.random.default_rng(seed)
    s = 6
    noise = sampler.initial_noise(seed, (b, cfg.latent_channels, length))
    curve = rng.random((b, 1, length), dtype=np.float32) * 2 - 0.5
    text = rng.standard_normal((b, s, cfg.text_dim), dtype=np.float32)
    mask = np.ones((b, s), dtype=np.float32)
    mask[:, -2:] = 0
    neg = None
    if case.get("negative"):
        neg = (rng.standard_normal((b, s, cfg.text_dim), dtype=np.float32), np.ones((b, s), dtype=np.float32))
        neg[1][:, -3:] = 0
    cond = sampler.Conditioning(curve, text, mask, *(neg if neg else (None, None)))
    opts = dict(steps=case.get("steps", 5), cfg_scale=case.get("cfg_scale", 4.5), solver=case["solver"],
                shift=case["shift"], use_curve=case.get("use_curve", True), curve_guidance=case.get("curve_guidance", 0.0))
    oracle_kw = dict(opts, negative=neg)
    return noise, cond, oracle_kw, opts
