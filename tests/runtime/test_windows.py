"""Window plan and the correlation-matched crossfade (pure, against analytic levels), and windowed
generation with a small max_frames."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sampler_oracle import oracle_window_weights

from v2m.runtime.windows import (
    crossfade,
    crossfade_join,
    equal_power,
    join_correlation,
    overlap_frames,
    plan_windows,
)


@pytest.mark.parametrize(("m", "o"), [(40, 4), (394, 39), (11, 3), (5, 1)])
def test_plan_covers_and_fades_never_touch(m, o):
    for length in range(1, 6 * m):
        plan = plan_windows(length, m, o)
        assert plan[0].start == 0 and plan[-1].end == length == plan[-1].keep_end
        assert all(w.end - w.start == min(m, length) for w in plan)
        for a, b in zip(plan, plan[1:]):
            assert a.fade_out == b.fade_in == o
            assert a.keep_end == b.start + o <= a.end  # the hand-over lies inside both windows
        for w in plan:
            assert w.fade_in + w.fade_out <= w.keep_end - w.start  # a window's two fades are disjoint


def test_short_video_is_one_window():
    assert plan_windows(25, 394, 39) == plan_windows(25, 394, 39)[:1]
    w = plan_windows(394, 394, 39)
    assert len(w) == 1 and (w[0].start, w[0].end, w[0].fade_in, w[0].fade_out) == (0, 394, 0, 0)


def test_overlap_frames_clamped():
    assert overlap_frames(394, 0.1) == 39
    assert overlap_frames(40, 0.1) == 4
    assert overlap_frames(40, 20) == 12  # (40 - 2) // 3
    assert overlap_frames(394, 50) == 50


def test_equal_power_weights():
    out, inn = equal_power(1000)
    np.testing.assert_allclose(out**2 + inn**2, 1.0, atol=1e-6)
    assert out[0] > 0.999 and inn[-1] > 0.999 and np.all(np.diff(out) <= 0) and out[-1] < 0.001


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.7, 1.0])
def test_crossfade_keeps_the_level_of_correlated_signals(rho):
    """The level of a x + b y for unit-power x, y of correlation rho is a^2 + b^2 + 2 rho a b."""
    out, inn = (w.astype(np.float64) for w in crossfade(997, rho))
    np.testing.assert_allclose(out**2 + inn**2 + 2 * rho * out * inn, 1.0, atol=1e-6)
    assert out[0] > 0.99 and inn[-1] > 0.99 and out[-1] < 0.01 and inn[0] < 0.01
    assert np.all(np.diff(out) <= 0) and np.all(np.diff(inn) >= 0)
    if rho == 1.0:
        np.testing.assert_allclose(out + inn, 1.0, atol=1e-6)  # equal gain: the raised cosine


def _seam_levels_db(joined, reference_power, seam, blocks=4):
    """The level (dB, against `reference_power`) of each of `blocks` equal parts of the seam."""
    parts = np.array_split(joined[:, seam], blocks, axis=1)
    return np.array([10 * np.log10(np.mean(p.astype(np.float64) ** 2) / reference_power) for p in parts])


@pytest.mark.parametrize("rho", [1.0, 0.7, 0.3, 0.0])
def test_join_level_is_continuous(rho):
    """Two windows of unit-power noise with correlation rho over the join (x = s + n1, y = s + n2):
    the joined level stays within 0.35 dB of 0 dB over the seam. Before (equal power): +1.65 dB
    on average at rho 0.7 and +3 dB mid-seam at rho 1."""
    rng = np.random.default_rng(0)
    hop, m, o = 4096, 40, 12  # 49152 samples a seam: each block's level is known to ~0.06 dB
    plan = plan_windows(60, m, o)
    assert len(plan) == 2
    total = plan[-1].end * hop
    shared = rng.standard_normal((2, total))
    own = [rng.standard_normal((2, total)) for _ in plan]
    audios = [(np.sqrt(rho) * shared + np.sqrt(1 - rho) * own[i])[:, w.start * hop : w.end * hop].astype(np.float32)
              for i, w in enumerate(plan)]
    joined = crossfade_join(plan, audios, hop)
    seam = slice(plan[1].start * hop, plan[0].keep_end * hop)
    levels = _seam_levels_db(joined, 1.0, seam)
    assert np.all(np.abs(levels) < 0.35), levels
    if rho == 1.0:  # identical windows are rebuilt exactly
        np.testing.assert_allclose(joined, shared.astype(np.float32), atol=1e-5)


def test_join_correlation():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 2, 20000))
    assert join_correlation(x, x) == 1.0 and join_correlation(0 * x, 0 * x) == 1.0
    assert join_correlation(x, -x) == 0.0  # anti-correlated windows get the equal-power fade
    assert join_correlation(x, y) < 0.05
    assert join_correlation(x, 0.7 * x + np.sqrt(1 - 0.7**2) * y) == pytest.approx(0.7, abs=0.03)


def test_windowed_generation(tiny_bundle, make_video, tmp_path):
    """A video longer than max_frames runs in windows: right length, finite, deterministic."""
    from v2m.runtime import Pipeline

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b40")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["sampler"]["max_frames"] = 40
    (bundle / "config.json").write_text(json.dumps(cfg))
    clip = make_video("long.mp4", duration_s=8.0, cuts=(2.0, 5.0))
    pipe = Pipeline.from_pretrained(bundle)
    calls = []
    orig = pipe.backend.sample
    pipe.backend.sample = lambda noise, *a, **k: calls.append(noise.shape) or orig(noise, *a, **k)
    r1 = pipe.generate(clip, seed=3, steps=2)
    r2 = pipe.generate(clip, seed=3, steps=2)
    length = r1.info["latent_frames"]
    assert length > 40 and r1.latents.shape[1] == length
    assert all(s[-1] == 40 for s in calls) and len(calls) == 2 * len(plan_windows(length, 40, 4))
    assert r1.audio.shape == (2, round(r1.duration_s * r1.sample_rate))
    assert np.isfinite(r1.audio).all() and np.abs(r1.audio).max() > 0
    np.testing.assert_array_equal(r1.audio, r2.audio)


def test_long_generation_has_no_louder_joins(make_video, tmp_path):
    """The trained demo bundle with max_frames 48 (windows of 3.9 s, a 0.4 s join) on a 7 s clip,
    4 steps: over the join the output's level matches the two windows' own level there (their mean
    power; their correlation is ~0.97). Before (equal power): +2.1 dB."""
    import importlib.util

    from v2m.runtime import Pipeline
    from v2m.runtime.demo import demo_bundle_path

    bundle = shutil.copytree(demo_bundle_path(), tmp_path / "demo48")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["sampler"]["max_frames"] = 48
    (bundle / "config.json").write_text(json.dumps(cfg))
    clip = make_video("long.mp4", duration_s=7.0, cuts=(1.0, 2.7, 4.4, 6.1))
    backend = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    pipe = Pipeline.from_pretrained(bundle, backend=backend)
    raw = []
    decode = pipe.backend.decode
    pipe.backend.decode = lambda lat: raw.append(np.array(decode(lat)[0])) or decode(lat)
    result = pipe.generate(clip, seed=0, steps=4)
    hop, m = pipe.config.audio.hop_length, pipe.config.sampler.max_frames
    plan = plan_windows(result.info["latent_frames"], m, overlap_frames(m, pipe.config.sampler.window_overlap))
    assert len(raw) == len(plan) == 2
    a, b = plan
    lo, hi = b.start * hop, a.keep_end * hop
    prev = raw[0][:, lo - a.start * hop : hi - a.start * hop].astype(np.float64)
    new = raw[1][:, : hi - lo].astype(np.float64)
    joined = result.audio[:, lo:hi].astype(np.float64)
    excess_db = 10 * np.log10(np.mean(joined**2) / (0.5 * (np.mean(prev**2) + np.mean(new**2))))
    assert abs(excess_db) < 0.3, excess_db


@pytest.mark.parametrize(("length", "m", "o"), [(100, 40, 4), (57, 23, 7), (41, 40, 12)])
def test_blend_weights_cover_and_ramp(length, m, o):
    from v2m.runtime.windows import blend_weights

    plan = plan_windows(length, m, o)
    weights = blend_weights(plan)
    total = np.zeros(length)
    for w, wt in zip(plan, weights):
        assert wt.shape == (w.end - w.start,) and np.all(wt > 0) and np.all(wt <= 1)
        total[w.start : w.end] += wt
    assert np.all(total > 0)
    for got, want in zip(weights, oracle_window_weights(plan)):  # the frame-by-frame oracle
        np.testing.assert_allclose(got, want)
    if len(plan) == 1:
        np.testing.assert_array_equal(weights[0], 1.0)
    for a, b, wa, wb in zip(plan, plan[1:], weights, weights[1:]):
        ov = a.end - b.start
        assert np.all(np.diff(wa[-ov:]) < 0) and np.all(np.diff(wb[:ov]) > 0)  # edges count least
        np.testing.assert_allclose(wa[-ov:] + wb[:ov], 1.0)  # a symmetric ramp: the pair sums to 1


def _context_velocity(x, curve):
    """A model whose velocity depends on the whole window: the curve minus the window's mean."""
    return curve[:, None, :] - x.mean(axis=-1, keepdims=True)


def _fake_sample(noise, cond, plan, on_step=None, stage_noise=None):
    """Euler on `_context_velocity` over the plan's table (its `ca` column is dt)."""
    x = noise.astype(np.float64)
    for row in plan.table.coef:
        x = x + float(row[4]) * _context_velocity(x, cond.curve[:, 0, :].astype(np.float64))
    return x.astype(np.float32)


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_joint_windows_against_a_plain_loop(tiny_bundle, make_video, tmp_path, mode):
    """`window_mode` joint on a context-dependent model against a plain loop written here: one
    state over the video, every window's Euler step from its slice, frames averaged with weights
    that ramp linearly over each overlap. Separate windows (each alone, then cut at the hand-over)
    differ from it where windows overlap."""
    from v2m.runtime import Pipeline, sampler
    from v2m.runtime.request import Request

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b40")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["sampler"].update(max_frames=40, window_mode="joint")
    (bundle / "config.json").write_text(json.dumps(cfg))
    clip = make_video("long.mp4", duration_s=8.0, cuts=(2.0, 5.0))
    pipe = Pipeline.from_pretrained(bundle)
    pipe.config.sampler.window_mode = mode
    pipe.backend.sample = _fake_sample
    steps = 5
    prepared = pipe.prepare(clip, Request(seed=4, steps=steps))
    (got,) = pipe.sample([prepared])
    length = prepared.length
    plan = plan_windows(length, 40, overlap_frames(40, pipe.config.sampler.window_overlap))
    assert len(plan) >= 2 and got.latents.shape[-1] == length

    x = sampler.initial_noise(4, (1, pipe.config.latent_channels, length)).astype(np.float64)
    curve = prepared.curve.astype(np.float64)[None]
    ts = sampler.time_grid(steps)
    weights = oracle_window_weights(plan)
    for dt in np.diff(ts):
        acc, tot = np.zeros_like(x), np.zeros(length)
        for w, wt in zip(plan, weights):
            xw = x[..., w.start : w.end]
            acc[..., w.start : w.end] += wt * (xw + dt * _context_velocity(xw, curve[:, w.start : w.end]))
            tot[w.start : w.end] += wt
        x = acc / tot
    if mode == "joint":
        np.testing.assert_allclose(got.latents, x[0], rtol=1e-4, atol=1e-4)
        for w, lat in got.windows:  # render decodes the shared state's window slices
            np.testing.assert_array_equal(lat, got.latents[:, w.start : w.end])
    else:
        a, b = plan[0], plan[1]
        ov = slice(b.start, a.end)
        assert np.abs(got.latents[:, ov] - x[0][:, ov]).max() > 1e-2


def test_step_plans_rebuild_the_whole_table():
    from v2m.runtime import sampler

    for solver in ("euler", "heun"):
        plan = sampler.Plan.make(sampler.SamplerOptions(steps=6, solver=solver))
        assert plan.table.steps_independent
        parts = [plan.step_plan(k).table for k in range(6)]
        np.testing.assert_array_equal(np.concatenate([t.coef for t in parts]), plan.table.coef)
        np.testing.assert_array_equal(np.concatenate([t.t_model for t in parts]), plan.table.t_model)
        assert all(t.steps == 1 and t.stages == plan.table.stages for t in parts)
    two_m = sampler.sigma_table(np.array([10.0, 3.0, 1.0, 0.3, 0.0]), "dpmpp-2m", "v")
    assert not two_m.steps_independent  # d_prev crosses steps: no step plans
    with pytest.raises(ValueError, match="across steps"):
        sampler.Plan(sampler.SamplerOptions(steps=4), sampler.guidance(sampler.SamplerOptions(steps=4)), two_m).step_plan(0)
