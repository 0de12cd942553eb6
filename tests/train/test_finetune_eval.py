"""The validation sampler against an analytic case: for data that is one point mu, the exact model
output of each objective (written from its definition) takes every family's solver to mu."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from v2m.core.bundle import SAOConfig
from v2m.families.sao import sigma_schedule
from v2m.runtime import sampler
from v2m.train.finetune_eval import _sample

MU = torch.linspace(-1.0, 1.0, 10).reshape(1, 2, 5)


def exact(objective: str):
    def model(x_in, t, *cond):
        if objective == "v2m":  # x_t = t mu + (1 - t) n: v = mu - n, constant on the straight path (t = 1 too)
            n0 = torch.from_numpy(np.stack([sampler.initial_noise(i, (2, 5)) for i in range(x_in.shape[0])]))
            return MU - n0
        if objective == "v":  # x_in = c_in x, t = atan(sigma) 2 / pi; out with c_skip x + c_out out = mu
            sigma = torch.tan(t * math.pi / 2)[:, None, None]
            x = x_in * torch.sqrt(sigma**2 + 1)
            c_skip, c_out = 1 / (sigma**2 + 1), -sigma / torch.sqrt(sigma**2 + 1)
            return (MU - c_skip * x) / c_out
        sigma = t[:, None, None]  # rectified flow in sigma: x = (1 - s) mu + s n, v = n - mu = (x - mu) / s
        return (x_in - MU) / sigma.clamp_min(1e-6)

    return model


@pytest.mark.parametrize("objective, solver", [("v2m", "euler"), ("v2m", "heun"), ("v", "dpmpp-2m"),
                                               ("v", "dpmpp-2m-sde"), ("rf_denoiser", "pingpong"),
                                               ("rf_denoiser", "euler")])
def test_exact_model_lands_on_the_data(objective, solver):
    opts = sampler.SamplerOptions(steps=6, cfg_scale=1.0, solver=solver)
    if objective == "v2m":
        plan = sampler.Plan.make(opts)
    else:
        cfg = SAOConfig(objective=objective, **({} if objective == "v" else dict(sigma_min=0.0, sigma_max=1.0,
                                                                                  sigma_schedule="logsnr",
                                                                                  sampler="pingpong")))
        plan = sampler.Plan.make(opts, sigmas=lambda n: sigma_schedule(cfg, n), objective=objective)
    x = _sample(exact(objective), plan.table, (3, 2, 5), seed=0, cond=(), device="cpu")
    np.testing.assert_allclose(x.numpy(), MU.expand(3, 2, 5).numpy(), atol=2e-3)
