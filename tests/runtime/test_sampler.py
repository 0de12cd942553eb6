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
