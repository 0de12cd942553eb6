"""The training objective against the sampler it feeds: for the exact target, one solver step
from the noised state lands on the data (an analytic case), and v2m's target is d x_t / dt."""

from __future__ import annotations

import numpy as np
import pytest

from v2m.runtime import sampler


def one_step(table: sampler.SolverTable, state: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stage 0 of a table as the module doc writes it: returns (x_in the model sees, x_out)."""
    c_in, p, q, cx, ca, cb, cn = (float(v) for v in table.coef[0])
    assert cb == 0 and cn == 0  # a first step has no history; the cases below inject no noise
    d = p * state + q * out
    return c_in * state, cx * state + ca * d


def pair_arrays(pair, b, x_data, noise):
    col = lambda a: np.asarray(a)[b]
    return (col(pair.in_data) * x_data + col(pair.in_noise) * noise,
            col(pair.out_data) * x_data + col(pair.out_noise) * noise)


@pytest.mark.parametrize("objective, solver", [("v2m", "euler"), ("rf_denoiser", "euler"), ("rectified_flow", "euler"),
                                               ("rf_denoiser", "pingpong"), ("v", "dpmpp-2m"), ("v", "dpmpp-2m-sde")])
def test_exact_target_steps_to_the_data(objective, solver):
    rng = np.random.default_rng(0)
    x_data, noise = rng.standard_normal((2, 3, 4, 5))
    levels = sampler.training_levels(objective, rng, 3)
    pair = sampler.training_pair(levels, objective)
    for b, s in enumerate(levels):
        model_in, target = pair_arrays(pair, b, x_data[b], noise[b])
        if objective == "v2m":
            table = sampler.solver_table(np.array([s, 1.0]), solver)
            state = s * x_data[b] + (1 - s) * noise[b]  # the sampler's x at t
        else:
            table = sampler.sigma_table(np.array([s, 0.0]), solver, objective)
            state = x_data[b] + s * noise[b] if objective == "v" else (1 - s) * x_data[b] + s * noise[b]
        assert table.t_model[0] == pytest.approx(pair.t_model[b], rel=1e-12)
        seen, landed = one_step(table, state, target)
        np.testing.assert_allclose(seen, model_in, rtol=1e-5, atol=1e-5)  # the input the sampler feeds
        np.testing.assert_allclose(landed, x_data[b], rtol=1e-4, atol=1e-4)


def test_v2m_target_is_the_velocity():
    rng = np.random.default_rng(1)
    x1, n = rng.standard_normal((2, 6))
    t, h = 0.37, 1e-6
    xt = lambda s: sampler.training_pair(np.array([s]), "v2m")
    x_at = lambda s: xt(s).in_data[0] * x1 + xt(s).in_noise[0] * n
    _, target = pair_arrays(xt(t), 0, x1, n)
    np.testing.assert_allclose((x_at(t + h) - x_at(t - h)) / (2 * h), target, rtol=1e-6)


def test_v_target_is_cos_sin_v():
    phi = np.array([0.1, 0.7, 1.4])
    pair = sampler.training_pair(np.tan(phi), "v")
    np.testing.assert_allclose(pair.t_model, phi * 2 / np.pi)
    np.testing.assert_allclose(pair.out_noise, np.cos(phi))
    np.testing.assert_allclose(pair.out_data, -np.sin(phi))
    np.testing.assert_allclose(pair.in_data, np.cos(phi))  # c_in x = cos x0 + sin n
    np.testing.assert_allclose(pair.in_noise, np.sin(phi))


def test_levels_lie_in_each_schedule():
    rng = np.random.default_rng(2)
    for objective in ("v2m", "rf_denoiser"):
        s = sampler.training_levels(objective, rng, 1000)
        assert s.min() > 0 and s.max() < 1
    s = sampler.training_levels("v", rng, 1000)
    assert s.min() > 0 and np.median(s) == pytest.approx(1.0, rel=0.2)  # phi uniform: median tan(pi/4)
    with pytest.raises(ValueError):
        sampler.training_pair(np.array([0.5]), "eps")
