"""The engine core: `Pipeline.prepare / sample / render / write`, `Request`, observers.

Oracles: the plain sampler loop of `sampler_oracle` (the DiT's forward once per branch, in
float64) on the curve and noise each item or window must get; a count of the input's
openings; `generate` for each variant alone.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from sampler_oracle import oracle_sample, oracle_window_weights, rel_err

from v2m.core.errors import InputError, NumericalError
from v2m.runtime import sampler, windows
from v2m.runtime.observers import Observer, Observers
from v2m.runtime.request import Request


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def oracle_dit(tiny_bundle):
    from v2m.models.bundle import load_component

    return load_component(tiny_bundle, "dit")


def _oracle(dit, p, curve: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The plain loop on `curve` [L] and `noise` [1, C, L], with the item's prompt and options."""
    o = p.options
    return oracle_sample(dit, noise, curve[None, None], p.emb[None], p.mask[None], steps=o.steps,
                         cfg_scale=o.cfg_scale, solver=o.solver, shift=o.shift, use_curve=o.use_curve,
                         curve_guidance=o.curve_guidance)


def test_the_video_curve_reaches_the_model(pipe, oracle_dit, short_video):
    """The sampled latents are the plain loop's on the prepared video curve, and not on a zero
    curve: a core that dropped or zeroed the curve on its way to the model fails here."""
    p = pipe.prepare(short_video.path, Request(prompt="warm synth", seed=5, steps=4, curve_guidance=1.0))
    assert np.abs(p.curve).max() > 0.05  # the clip has cuts: a curve that is not zero
    (s,) = pipe.sample([p])
    noise = sampler.initial_noise(5, (1, pipe.config.latent_channels, p.length))
    want = _oracle(oracle_dit, p, p.curve, noise)[0]
    assert rel_err(s.latents, want) < 1e-4
    zero = _oracle(oracle_dit, p, np.zeros_like(p.curve), noise)[0]
    assert rel_err(s.latents, zero) > 1e-2  # the curve matters to this model: the check above can fail


def test_no_prompt_is_the_null_branch_where_the_bundle_says(tiny_bundle_copy, oracle_dit, short_video):
    """`sampler.empty_prompt: null` (bundles trained with text dropout): no prompt samples on the
    null branch's zero text (the plain loop with zero embeddings), in one model call per
    evaluation instead of two; a prompt, and a bundle without the field, are unchanged."""
    import json

    from v2m.runtime import Pipeline

    cfg_path = tiny_bundle_copy / "config.json"
    d = json.loads(cfg_path.read_text())
    d["sampler"]["empty_prompt"] = "null"
    cfg_path.write_text(json.dumps(d))
    null_pipe = Pipeline.from_pretrained(tiny_bundle_copy, backend="torch", device="cpu")
    req = Request(prompt="  ", seed=3, steps=4, cfg_scale=3.0)
    p = null_pipe.prepare(short_video.path, req)
    assert p.null_prompt and [br.name for br in null_pipe.plan_of(p).guidance.branches] == ["cond"]
    (s,) = null_pipe.sample([p])
    noise = sampler.initial_noise(3, (1, null_pipe.config.latent_channels, p.length))
    o = p.options
    want = oracle_sample(oracle_dit, noise, p.curve[None, None], np.zeros_like(p.emb)[None], p.mask[None],
                         steps=o.steps, cfg_scale=o.cfg_scale)[0]
    assert rel_err(s.latents, want) < 1e-4
    prompted = null_pipe.prepare(short_video.path, req.replace(prompt="warm synth"))
    assert not prompted.null_prompt and null_pipe.plan_of(prompted).guidance.size == 2
    d["sampler"].pop("empty_prompt")
    cfg_path.write_text(json.dumps(d))
    old = Pipeline.from_pretrained(tiny_bundle_copy, backend="torch", device="cpu")
    q = old.prepare(short_video.path, req)
    assert not q.null_prompt and old.plan_of(q).guidance.size == 2  # the empty string's embedding, as before


def test_each_window_gets_its_own_curve_and_noise(windowed_bundle, oracle_dit, make_video):
    """A long video's windows: each is the plain loop on its own slice of the whole-video curve
    and noise (a core that reused the first window's slices fails on the second)."""
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(windowed_bundle, backend="torch", device="cpu")
    clip = make_video("long.mp4", duration_s=3.0, cuts=(0.7, 1.6, 2.4))
    p = pipe.prepare(clip, Request(seed=9, steps=3))
    assert p.windowed
    (s,) = pipe.sample([p])
    cfg = pipe.config
    plan = windows.plan_windows(p.length, cfg.sampler.max_frames,
                                windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap))
    assert [w for w, _ in s.windows] == plan and len(plan) >= 3
    noise = sampler.initial_noise(9, (1, cfg.latent_channels, p.length))
    for w, lat in s.windows:
        want = _oracle(oracle_dit, p, p.curve[w.start : w.end], noise[:, :, w.start : w.end])[0]
        assert rel_err(lat, want) < 1e-4, f"window {w}"
    # the joined latents: each frame from the last window that sampled it
    for k, (w, lat) in enumerate(s.windows):
        until = plan[k + 1].start if k + 1 < len(plan) else w.end
        np.testing.assert_array_equal(s.latents[:, w.start : until], lat[:, : until - w.start])


def test_joint_windows_match_the_plain_loop(windowed_bundle, oracle_dit, make_video, tmp_path):
    """`window_mode` joint on the tiny DiT (Heun, curve guidance, a prompt): the plain loop with
    every window stepping on its slice of one state, averaged per frame with weights ramping
    over each overlap (written out here), and not the separate windows' result."""
    import json
    import shutil

    from v2m.runtime import Pipeline

    bundle = shutil.copytree(windowed_bundle, tmp_path / "joint")
    d = json.loads((bundle / "config.json").read_text())
    d["sampler"]["window_mode"] = "joint"
    (bundle / "config.json").write_text(json.dumps(d))
    pipe = Pipeline.from_pretrained(bundle, backend="torch", device="cpu")
    clip = make_video("long.mp4", duration_s=3.0, cuts=(0.7, 1.6, 2.4))
    p = pipe.prepare(clip, Request(prompt="warm synth", seed=9, steps=3, solver="heun", curve_guidance=1.5))
    (s,) = pipe.sample([p])
    cfg = pipe.config
    plan = windows.plan_windows(p.length, cfg.sampler.max_frames,
                                windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap))
    assert len(plan) >= 3
    spans = [(w.start, w.end, wt) for w, wt in zip(plan, oracle_window_weights(plan))]
    noise = sampler.initial_noise(9, (1, cfg.latent_channels, p.length))
    o = p.options
    want = oracle_sample(oracle_dit, noise, p.curve[None, None], p.emb[None], p.mask[None], steps=o.steps,
                         cfg_scale=o.cfg_scale, solver=o.solver, curve_guidance=o.curve_guidance, windows=spans)[0]
    assert rel_err(s.latents, want) < 1e-4
    separate = pipe.variant(p)
    pipe.config.sampler.window_mode = "separate"
    (t,) = pipe.sample([separate])
    assert rel_err(t.latents, want) > 1e-3  # the check above can tell the two apart


def test_variants_reuse_the_video_and_match_generate_alone(pipe, short_video):
    p = pipe.prepare(short_video.path, Request(prompt="a", seed=1, steps=3))
    q = pipe.variant(p, seed=2, prompt="b", use_curve=False)
    assert q.curve is p.curve and q.info is p.info  # decoded and encoded once
    assert q.request.prompt == "b" and not q.options.use_curve and q.seed == 2
    got = pipe.sample([p, q])
    assert [g.batch_size for g in got] == [1, 1]  # other options: other groups
    want = pipe.generate(short_video.path, prompt="b", seed=2, steps=3, use_curve=False).latents
    np.testing.assert_allclose(got[1].latents, want, rtol=1e-5, atol=1e-6)


def test_a_nan_item_fails_alone(pipe, short_video, monkeypatch):
    p = pipe.prepare(short_video.path, Request(seed=1, steps=2))
    items = [p, pipe.variant(p, seed=2), pipe.variant(p, seed=3)]
    real = pipe.backend.sample

    def poisoned(x0, cond, plan, on_step=None, stage_noise=None):
        out = real(x0, cond, plan, on_step, stage_noise)
        out[1, 0, 0] = np.nan
        return out

    monkeypatch.setattr(pipe.backend, "sample", poisoned)
    got = pipe.sample(items)
    assert isinstance(got[1], NumericalError) and "NaN" in str(got[1])
    assert not isinstance(got[0], BaseException) and not isinstance(got[2], BaseException)
    assert got[0].batch_size == 3


def test_observers_hear_every_stage_and_step(pipe, short_video, tmp_path):
    seen: list[tuple] = []

    class Spy(Observer):
        def begin(self, stage, items):
            seen.append(("begin", stage))

        def end(self, stage, seconds, items, error=None):
            seen.append(("end", stage))

        def step(self, i):
            seen.append(("step", i))

    obs = Observers([Spy()])
    p = pipe.prepare(short_video.path, Request(seed=1, steps=3), observers=obs)
    (s,) = pipe.sample([p], obs)
    pipe.write(p, pipe.render(p, s, obs), tmp_path / "o.wav", obs)
    ends = [st for kind, st in seen if kind == "end"]
    for stage in ("text", "encode", "decode", "curve", "sample", "sampler", "vae", "write"):
        assert stage in ends, stage
    assert [i for kind, i in seen if kind == "step"] == [0, 1, 2]
    assert set(p.timings) >= {"text", "encode", "decode", "curve", "sampler", "vae", "write"}


def test_request_is_validated_once_at_construction():
    for kw, words in [({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"), ({"steps": 0}, "steps"),
                      ({"cfg_scale": float("nan")}, "cfg_scale"), ({"solver": "rk4"}, "solver"),
                      ({"shift": 0.0}, "shift"), ({"keep_audio_db": 30.0}, "keep_audio"),
                      ({"reencode": "always"}, "reencode"), ({"use_curve": False, "curve_guidance": 1.0}, "curve"),
                      ({"negative_prompt": "x", "text_embeddings": "e.safetensors"}, "negative"),
                      ({"video_stream": -2}, "stream")]:
        with pytest.raises(InputError, match=words):
            Request(**kw)
    r = Request(steps=5)
    with pytest.raises(InputError, match="steps"):
        r.replace(steps=0)


def test_generate_opens_the_input_at_most_three_times(tiny_bundle, short_video, tmp_path, monkeypatch):
    """One `v2m generate clip.mp4 -o out.mp4`: the pre-check's probe and mux plan (one opening),
    the decode, the mux write. An audio output: two."""
    from v2m.cli.main import main

    opened: list[str] = []
    real = av.open

    def counting(file, *args, **kwargs):
        if str(file) == str(short_video.path):
            opened.append(kwargs.get("mode", args[0] if args else "r"))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting)
    for out, most in (("out.mp4", 3), ("out.wav", 2)):
        opened.clear()
        rc = main(["generate", str(short_video.path), "-o", str(tmp_path / out), "--model", str(tiny_bundle),
                   "--steps", "2", "--seed", "1", "--backend", "torch", "-q"])
        assert rc == 0 and (tmp_path / out).is_file()
        assert len(opened) <= most, f"{out}: the input was opened {len(opened)} times"
        assert set(opened) == {"r"}
    with av.open(str(tmp_path / "out.mp4")) as c:  # the mux used the decode pass's timeline
        assert c.streams.video and c.streams.audio


def test_a_model_without_a_curve_channel_generates_for_a_video(pipe, short_video, monkeypatch):
    """A text-to-music checkpoint (no curve channel): the video sets the duration, no curve is
    computed (nothing decodes past the probe)."""
    from v2m.runtime import video

    monkeypatch.setattr(type(pipe.config), "has_curve_channel", property(lambda self: False))
    monkeypatch.setattr(video.VideoReader, "sample", lambda *a, **k: pytest.fail("decoded frames"))
    res = pipe.generate(short_video.path, seed=1, steps=2)
    assert not res.curve.any() and abs(res.duration_s - short_video.duration_s) < 0.1
    assert res.audio.shape[1] == pytest.approx(short_video.duration_s * res.sample_rate, rel=0.02)


def test_write_needs_a_video_for_a_video_output(pipe, short_video, tmp_path):
    p = pipe.prepare(short_video.path, Request(seed=1, steps=2))
    (s,) = pipe.sample([p])
    audio = pipe.render(p, s)
    out = pipe.write(p, audio, tmp_path / "m.mkv")
    assert Path(out).is_file()
