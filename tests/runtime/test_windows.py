"""Window plan and equal-power crossfade (pure), and windowed generation with a small max_frames."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from v2m.runtime.windows import crossfade_join, envelope, equal_power, overlap_frames, plan_windows


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
    assert out[0] > 0.999 and inn[-1] > 0.999 and np.all(np.diff(out) < 0)


def test_join_of_constant_ones_is_equal_power():
    """Joining two constant-1 signals: the squared weights sum to 1 across the overlap."""
    hop, m, o = 4, 40, 4
    plan = plan_windows(60, m, o)
    assert len(plan) == 2
    ones = [np.ones((1, (w.end - w.start) * hop), np.float32) for w in plan]
    joined_sq = np.zeros((1, plan[-1].end * hop), np.float32)
    for w in plan:  # sum of the squared weights each sample gets
        keep = (w.keep_end - w.start) * hop
        joined_sq[:, w.start * hop : w.start * hop + keep] += envelope(keep, w.fade_in * hop, w.fade_out * hop) ** 2
    np.testing.assert_allclose(joined_sq, 1.0, atol=1e-6)
    seam = slice(plan[1].start * hop, plan[0].keep_end * hop)
    j = crossfade_join(plan, ones, hop)
    assert np.all(j[:, seam] >= 1.0 - 1e-6) and j[:, seam].max() <= np.sqrt(2) + 1e-6  # cos + sin
    np.testing.assert_allclose(np.delete(j, np.r_[seam], axis=1), 1.0)


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
