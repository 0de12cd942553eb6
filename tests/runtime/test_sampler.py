"""The sampler's data (time grid, guidance, solver tables) and its loop, on analytic cases.

The solver tables are run here by a plain numpy stage written from the formula in
`v2m.runtime.sampler`'s docstring, on velocity fields whose exact solutions are known.
"""

import numpy as np
import pytest

from v2m.runtime import sampler


def run_table(table: sampler.SolverTable, field, x0):
    """Integrate with a solver table: field(x, t) is the velocity."""
    k = [0]

    def stage(xb, xe, dp):
        c_in, p, q, cx, ca, cb, cn = table.coef[k[0]].astype(np.float64)
        v = field(c_in * xe, table.t_model[k[0]])
        d = p * xe + q * v
        k[0] += 1
        return cx * xb + ca * d + cb * dp, d

    x = sampler.sample_loop(stage, x0, np.zeros_like(x0), table.steps, table.stages)
    assert k[0] == table.steps * table.stages
    return x


def test_uniform_grid():
    ts = sampler.time_grid(96)
    assert ts.shape == (97,) and ts[0] == 0.0 and ts[-1] == 1.0
    np.testing.assert_allclose(np.diff(ts), 1 / 96)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_is_sd3_in_noise_level(shift):
    # SD3: sigma' = S sigma / (1 + (S - 1) sigma), sigma = 1 - t; endpoints fixed, monotone
    ts = sampler.time_grid(10, shift)
    sigma = 1 - np.linspace(0, 1, 11)
    np.testing.assert_allclose(1 - ts, shift * sigma / (1 + (shift - 1) * sigma), atol=1e-15)
    assert ts[0] == 0 and ts[-1] == 1 and np.all(np.diff(ts) > 0)
    if shift > 1:  # more (smaller) steps near noise, t = 0
        assert np.diff(ts)[0] < 1 / 10 < np.diff(ts)[-1]


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 7, 96])
def test_exact_on_straight_paths(solver, steps):
    # The optimal rectified-flow velocity towards a fixed x1 is (x1 - x) / (1 - t): constant along
    # the straight path, so both solvers land on it at every step (Heun evaluates t = 1 too: the
    # field's value there is x1 - x0 by continuity, which we supply).
    rng = np.random.default_rng(0)
    x0, x1 = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    out = run_table(sampler.solver_table(sampler.time_grid(steps), solver), lambda x, t: x1 - x0, x0)
    np.testing.assert_allclose(out, x1, atol=1e-6)


def test_euler_and_heun_on_linear_in_time_field():
    # dx/dt = 2t from 0: exact 1. Euler on a uniform grid: sum 2 t_i dt = 1 - 1/n; Heun (trapezoid,
    # exact for linear integrands): 1.
    n = 10
    f = lambda x, t: 2 * t
    assert run_table(sampler.solver_table(sampler.time_grid(n), "euler"), f, 0.0) == pytest.approx(1 - 1 / n, abs=1e-6)
    assert run_table(sampler.solver_table(sampler.time_grid(n), "heun"), f, 0.0) == pytest.approx(1.0, abs=1e-6)


def test_heun_is_second_order():
    # dx/dt = x on [0, 1]: e. Euler's error halves with the step, Heun's quarters.
    errs = {s: [] for s in ("euler", "heun")}
    for n in (8, 16, 32):
        for s in errs:
            errs[s].append(abs(run_table(sampler.solver_table(sampler.time_grid(n), s), lambda x, t: x, 1.0) - np.e))
    for s, order in (("euler", 1), ("heun", 2)):
        ratios = np.array(errs[s][:-1]) / np.array(errs[s][1:])
        np.testing.assert_allclose(ratios, 2.0**order, rtol=0.15)


def test_heun_evaluates_every_interval_and_t1():
    table = sampler.solver_table(sampler.time_grid(4), "heun")
    np.testing.assert_allclose(table.t_model, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])
    assert table.stages == 2 and table.steps == 4 and table.coef.shape == (8, 7)


def test_solver_table_keys_differ():
    a = sampler.solver_table(sampler.time_grid(8), "euler")
    assert a.key == sampler.solver_table(sampler.time_grid(8), "euler").key
    assert a.key != sampler.solver_table(sampler.time_grid(8), "heun").key
    assert a.key != sampler.solver_table(sampler.time_grid(8, 3.0), "euler").key
    assert a.key != sampler.solver_table(sampler.time_grid(9), "euler").key


@pytest.mark.parametrize("w,wc,keep,neg", [(4.0, 0.0, True, False), (4.0, 2.0, True, True), (1.0, 0.0, True, False),
                                          (3.0, 1.5, False, False), (1.0, 2.0, True, True)])
def test_guidance_weights_reproduce_the_formula(w, wc, keep, neg):
    opts = sampler.SamplerOptions(cfg_scale=w, curve_guidance=wc)
    g = sampler.guidance(opts, uncond_keeps_curve=keep, has_negative=neg)
    rng = np.random.default_rng(1)
    out = {"cond": rng.standard_normal(6), "uncond": rng.standard_normal(6), "nocurve": rng.standard_normal(6)}
    got = sum(wt * out[br.name] for br, wt in zip(g.branches, g.weights))
    want = out["uncond"] + w * (out["cond"] - out["uncond"]) + wc * (out["cond"] - out["nocurve"])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    names = [br.name for br in g.branches]
    assert names[0] == "cond" and ("uncond" in names) == (w != 1.0) and ("nocurve" in names) == (wc != 0.0)
    by = {br.name: br for br in g.branches}
    assert by["cond"].curve and by["cond"].text == "prompt"
    if "uncond" in by:
        assert by["uncond"].curve == keep and by["uncond"].text == ("negative" if neg else "null")
    if "nocurve" in by:
        assert not by["nocurve"].curve and by["nocurve"].text == "prompt"


@pytest.mark.parametrize("w,wc,keep,neg", [(4.0, 0.0, True, False), (2.0, 1.0, True, False), (3.0, 1.5, False, False),
                                          (4.0, 2.0, True, True), (1.0, 0.0, True, False)])
def test_no_prompt_on_the_null_branch_merges_equal_branches(w, wc, keep, neg):
    """With no prompt conditioned on the null branch, each branch's model output is a function of
    its inputs (text, curve): the formula over the unmerged branches, looked up by inputs, must
    equal the merged plan's sum, and no two merged branches may have the same inputs."""
    g = sampler.guidance(sampler.SamplerOptions(cfg_scale=w, curve_guidance=wc), keep, neg, null_prompt=True)
    rng = np.random.default_rng(4)
    f = {(t, c): rng.standard_normal(6) for t in ("null", "negative") for c in (True, False)}  # model outputs
    out_c, out_n = f[("null", True)], f[("null", False)]
    out_u = f[("negative" if neg else "null", keep)]
    want = out_u + w * (out_c - out_u) + wc * (out_c - out_n)
    got = sum(wt * f[(br.text, br.curve)] for br, wt in zip(g.branches, g.weights))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    inputs = [(br.text, br.curve) for br in g.branches]
    assert len(set(inputs)) == len(inputs) and all(br.text != "prompt" for br in g.branches)
    if keep and not neg:
        assert g.size == (1 if wc == 0 else 2)  # cond and uncond are one model call


def test_no_curve_zeroes_the_curve_everywhere():
    g = sampler.guidance(sampler.SamplerOptions(use_curve=False))
    assert not any(br.curve for br in g.branches)
    rng = np.random.default_rng(2)
    cond = sampler.Conditioning(rng.random((2, 1, 5)).astype(np.float32), rng.random((2, 3, 4)).astype(np.float32),
                                np.ones((2, 3), np.float32))
    curves, text, mask = sampler.branch_batch(g, cond)
    assert curves.shape == (4, 1, 5) and not curves.any()
    np.testing.assert_array_equal(text[:2], cond.text)
    assert not text[2:].any()  # null text: zero embeddings ...
    np.testing.assert_array_equal(mask[2:], cond.text_mask)  # ... with the prompt's mask


def test_branch_batch_negative_prompt():
    rng = np.random.default_rng(3)
    f = lambda *s: rng.random(s).astype(np.float32)
    cond = sampler.Conditioning(f(1, 1, 5), f(1, 3, 4), np.array([[1, 1, 0]], np.float32), f(1, 3, 4),
                                np.array([[1, 0, 0]], np.float32))
    g = sampler.guidance(sampler.SamplerOptions(curve_guidance=1.0), has_negative=True)
    curves, text, mask = sampler.branch_batch(g, cond)
    np.testing.assert_array_equal(text[1], cond.negative_text[0])
    np.testing.assert_array_equal(mask[1], cond.negative_mask[0])
    np.testing.assert_array_equal(curves[1], cond.curve[0])  # the bundle keeps the curve in uncond
    assert not curves[2].any() and np.array_equal(text[2], cond.text[0])


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=-1), dict(steps=10001), dict(steps=True), dict(steps=2.5),
                                 dict(cfg_scale=float("nan")), dict(cfg_scale=float("inf")), dict(shift=0.0),
                                 dict(shift=-1.0), dict(shift=float("nan")), dict(solver="rk4"),
                                 dict(curve_guidance=float("nan")), dict(use_curve=False, curve_guidance=1.0)])
def test_options_validated(bad):
    with pytest.raises(ValueError):
        sampler.SamplerOptions(**bad)


def test_noise_is_seeded_numpy():
    a = sampler.initial_noise(7, (1, 4, 9))
    np.testing.assert_array_equal(a, sampler.initial_noise(7, (1, 4, 9)))
    np.testing.assert_array_equal(a, np.random.default_rng(7).standard_normal((1, 4, 9), dtype=np.float32))
    assert not np.array_equal(a, sampler.initial_noise(8, (1, 4, 9)))


def test_resolve_seed():
    assert sampler.resolve_seed(5) == 5
    s = sampler.resolve_seed(None)
    assert 0 <= s < 2**31
    with pytest.raises(ValueError):
        sampler.resolve_seed(-1)


# --- the sigma-space solvers of Stable Audio Open models -------------------------------------------
def run_sigma_table(table, out_fn, x0, noise):
    """Run a sigma table with a numpy stage written from the module docstring; out_fn(x_in, t)."""
    k = [0]

    def stage(xb, xe, dp):
        c_in, p, q, cx, ca, cb, cn = table.coef[k[0]].astype(np.float64)
        d = p * xe + q * out_fn(c_in * xe, table.t_model[k[0]])
        x = cx * xb + ca * d + cb * dp + cn * noise[k[0]]
        k[0] += 1
        return x, d

    return sampler.sample_loop(stage, table.x0_scale * x0, np.zeros_like(x0), table.steps, table.stages)


def kdiff_dpmpp_2m(denoise, x, sigmas):
    """k-diffusion's sample_dpmpp_2m, transcribed (sigma_fn = exp(-t), t_fn = -log sigma)."""
    old = None
    for i in range(len(sigmas) - 1):
        d = denoise(x, sigmas[i])
        t, t_next = -np.log(sigmas[i]), (-np.log(sigmas[i + 1]) if sigmas[i + 1] > 0 else np.inf)
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * d
        else:
            h_last = t - (-np.log(sigmas[i - 1]))
            r = h_last / h
            x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
        old = d
    return x


def kdiff_dpmpp_2m_sde(denoise, x, sigmas, noises, eta=1.0):
    """k-diffusion's sample_dpmpp_2m_sde (midpoint), transcribed; noises[i] for step i."""
    old, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        d = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
        else:
            t, s = -np.log(sigmas[i]), -np.log(sigmas[i + 1])
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * np.exp(-eta_h) * x + (-np.expm1(-h - eta_h)) * d
            if old is not None:
                r = h_last / h
                x = x + 0.5 * (-np.expm1(-h - eta_h)) * (1 / r) * (d - old)
            x = x + noises[i] * sigmas[i + 1] * np.sqrt(-np.expm1(-2 * eta_h))
        old, h_last = d, h
    return x


def gaussian_denoiser(mu, s):
    """The optimal denoiser of data ~ N(mu, s^2) under x = x0 + sigma * noise."""
    return lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)


def v_model(denoise):
    """The v-diffusion model output whose k-diffusion VDenoiser gives `denoise` (input x c_in, time atan)."""
    from v2m.families.sao import v_scalings

    def out(x_in, t):
        sigma = np.tan(t * np.pi / 2)
        c_skip, c_out, c_in = v_scalings(sigma)
        x = x_in / c_in
        return (denoise(x, sigma) - c_skip * x) / c_out

    return out


def test_dpmpp_2m_is_k_diffusions():
    from v2m.core.bundle import SAOConfig
    from v2m.families.sao import sigma_schedule

    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 7))
    den = gaussian_denoiser(0.7, 0.4)
    sig = sigma_schedule(SAOConfig(), 20)  # 500 ... 0.3, then 0
    table = sampler.sigma_table(sig, "dpmpp-2m", "v")
    got = run_sigma_table(table, v_model(den), z, np.zeros((20, 1)))
    np.testing.assert_allclose(got, kdiff_dpmpp_2m(den, z * sig[0], sig), rtol=1e-5, atol=1e-6)
    assert table.x0_scale == pytest.approx(500.0)
    np.testing.assert_allclose(table.t_model, np.arctan(sig[:-1]) * 2 / np.pi)


def test_dpmpp_2m_converges_to_the_probability_flow_solution():
    # data ~ N(mu, s^2): the ODE maps x_T to mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2) (up to the
    # sigma_min truncation of the schedule, which the exact flow from sigma_min to 0 also does)
    from v2m.core.bundle import SAOConfig
    from v2m.families.sao import sigma_schedule

    mu, s = 0.3, 0.5
    z = np.random.default_rng(1).standard_normal(1000)
    x_t = 500.0 * z
    errs = []
    for n in (25, 50, 100):
        sig = sigma_schedule(SAOConfig(), n)
        got = run_sigma_table(sampler.sigma_table(sig, "dpmpp-2m", "v"), v_model(gaussian_denoiser(mu, s)), z,
                              np.zeros((n, 1)))
        # exact flow to sigma_min, then the last step's jump to the denoised estimate
        x_min = mu + (x_t - mu) * np.sqrt(s**2 + 0.3**2) / np.sqrt(s**2 + 500.0**2)
        errs.append(np.abs(got - gaussian_denoiser(mu, s)(x_min, 0.3)).max())
    assert errs[-1] < 1e-3 and errs[0] > errs[1] > errs[2]


def test_dpmpp_2m_sde_is_k_diffusions():
    from v2m.core.bundle import SAOConfig
    from v2m.families.sao import sigma_schedule

    rng = np.random.default_rng(2)
    z = rng.standard_normal((1, 2, 5))
    noises = rng.standard_normal((12, 1, 2, 5))
    den = gaussian_denoiser(-0.2, 0.8)
    sig = sigma_schedule(SAOConfig(), 12)
    table = sampler.sigma_table(sig, "dpmpp-2m-sde", "v")
    assert table.stochastic
    got = run_sigma_table(table, v_model(den), z, noises)
    np.testing.assert_allclose(got, kdiff_dpmpp_2m_sde(den, z * sig[0], sig, noises), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", ["pingpong", "euler"])
def test_rectified_flow_sigma_solvers(solver):
    """SAO Small's samplers: ping-pong as stable-audio-tools writes it, Euler in sigma."""
    from v2m.core.bundle import SAOConfig
    from v2m.families.sao import sigma_schedule

    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 2, 6))
    noises = rng.standard_normal((8, 1, 2, 6))
    x1 = rng.standard_normal((1, 2, 6))  # the data point the model "knows"
    v = lambda x, sigma: (x - x1) / max(sigma, 1e-12)  # out = noise - x0 along x = (1 - s) x1 + s noise
    sig = sigma_schedule(SAOConfig(objective="rf_denoiser", sigma_min=0.0, sigma_max=1.0, sigma_schedule="logsnr",
                                   sampler="pingpong", latent_frames=8), 8)
    table = sampler.sigma_table(sig, solver, "rf_denoiser")
    np.testing.assert_allclose(table.t_model, sig[:-1])  # the model's time is sigma
    got = run_sigma_table(table, v, z, noises)
    ref = z.copy()
    for i in range(8):
        if solver == "pingpong":
            den = ref - sig[i] * v(ref, sig[i])
            ref = (1 - sig[i + 1]) * den + sig[i + 1] * noises[i]
        else:
            ref = ref + (sig[i + 1] - sig[i]) * v(ref, sig[i])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got, x1, atol=1e-6)  # the exact velocity lands on the data


def test_solver_must_fit_the_objective():
    with pytest.raises(ValueError, match="does not fit"):
        sampler.sigma_table(np.array([1.0, 0.5, 0.0]), "heun", "v")
    with pytest.raises(ValueError, match="does not fit"):
        sampler.Plan.make(sampler.SamplerOptions(solver="dpmpp-2m"))
    with pytest.raises(ValueError, match="shift"):
        sampler.Plan.make(sampler.SamplerOptions(solver="dpmpp-2m", shift=2.0), sigmas=lambda n: np.linspace(5, 0, n + 1),
                          objective="v")


def test_stage_noise_is_per_video():
    a = sampler.stage_noise([5, 6], 4, (2, 3))
    assert a.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(a[:, 1], sampler.stage_noise([6], 4, (2, 3))[:, 0])
    assert not np.allclose(a[:, 0], sampler.initial_noise(5, (4, 2, 3)))
