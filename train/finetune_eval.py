"""The fine-tune's generative validation: does music generated for a curve follow it?

A few held-out clips' music curves condition the EMA model; the bundle's own solver table
(`v2m.runtime.sampler.Plan`: time grid or sigma schedule, solver coefficients, the initial
scale) runs in a plain loop over the stage form of `runtime/sampler.py` (no guidance: one
branch); the VAE decodes; the music curve of the result (the bundle's music encoder and
conventions) is correlated with the conditioning curve. The same with zero curves (what
`--no-curve` feeds) is the baseline: a model that uses the curve scores above it.
"""

from __future__ import annotations

import numpy as np
import torch

from v2m.runtime import sampler

__all__ = ["generated_curve_correlation"]


def _plan(base, steps: int) -> sampler.Plan:
    cfg = base.cfg
    if base.family == "sao":
        from v2m.core.bundle import DEFAULT_SAMPLER
        from v2m.families.sao import sigma_schedule

        sao = cfg.sao_config
        opts = sampler.SamplerOptions(steps=steps, cfg_scale=1.0, solver=cfg.sampler.solver
                                      if cfg.sampler.solver in sampler.OBJECTIVE_SOLVERS[sao.objective]
                                      else DEFAULT_SAMPLER[sao.objective])
        return sampler.Plan.make(opts, sigmas=lambda n: sigma_schedule(sao, n), objective=sao.objective)
    return sampler.Plan.make(sampler.SamplerOptions(steps=steps, cfg_scale=1.0, solver=cfg.sampler.solver))


@torch.no_grad()
def _sample(model, table: sampler.SolverTable, shape, seed: int, cond: tuple, device) -> torch.Tensor:
    """The sampler's stage form, one branch: x_out = cx x + ca d + cb d_prev + cn noise, d = p x_eval + q out."""
    b = shape[0]
    x = torch.from_numpy(np.stack([sampler.initial_noise(seed + i, shape[1:]) for i in range(b)])).to(device)
    x = x * table.x0_scale
    noise = torch.from_numpy(sampler.stage_noise([seed + i for i in range(b)], len(table.coef), shape[1:])).to(device)
    coef = torch.from_numpy(table.coef).to(device)
    t_model = torch.from_numpy(table.t_model.astype(np.float32)).to(device)
    k = 0

    def stage(x_base, x_eval, d_prev):
        nonlocal k
        c_in, p, q, cx, ca, cb, cn = coef[k]
        out = model(c_in * x_eval, t_model[k].expand(b), *cond).float()
        d = p * x_eval + q * out
        x_out = cx * x_base + ca * d + cb * d_prev + cn * noise[k]
        k += 1
        return x_out, d

    return sampler.sample_loop(stage, x, torch.zeros_like(x), table.steps, table.stages)


@torch.no_grad()
def generated_curve_correlation(base, ema, vb: dict, clips: int, steps: int, music: tuple[str, str], seed: int,
                                device="cpu") -> dict[str, float]:
    """`music`: the music encoder's kind and Hugging Face directory (or "")."""
    from v2m.eval.evaluate import curve_correlation
    from v2m.models.bundle import load_component
    from v2m.runtime.music_encoders import music_curve, music_encoder

    cfg = base.cfg
    vae = load_component(base.bundle, "vae", cfg).to(device)
    enc = music_encoder(music[0], cfg.audio.sample_rate, music[1] or None)
    rows = slice(0, min(clips, vb["x"].shape[0]))
    curve = vb["curve"][rows]
    table = _plan(base, steps).table
    trained, base.dit = base.dit, ema
    out = {}
    try:
        for name, c in (("curve_corr", curve), ("curve_corr_no_curve", torch.zeros_like(curve))):
            cond = tuple(v.to(device) for v in (vb["text"][rows], vb["mask"][rows], c, vb["seconds"][rows]))
            z = _sample(base, table, tuple(vb["x"][rows].shape), seed, cond, device)
            audio = vae(z).float().cpu().numpy()
            corrs = []
            for a, target in zip(audio, curve[:, 0].numpy()):
                got = music_curve(music[0], a, cfg.audio.sample_rate, target.size, cfg.latent_rate, cfg.curve.kernel,
                                  encoder=enc)
                r = curve_correlation(got, target)
                corrs.append(0.0 if r is None else r)
            out[name] = float(np.mean(corrs))
    finally:
        base.dit = trained
    return out
