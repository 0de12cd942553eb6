"""End to end on generated videos with known cuts: stream layout, durations, determinism."""

import av
import numpy as np
import pytest

from v2m.core.curves import curve_peaks
from v2m.runtime import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu", precision="fp32")


def _packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(bytes(p), p.pts, p.dts) for p in c.demux(s) if p.size]


def test_generate_and_mux(pipe, synth_video, tmp_path):
    res = pipe.generate(synth_video.path, prompt="warm synth pop", seed=7)
    assert res.sample_rate == 44100 and res.seed == 7
    assert res.audio.dtype == np.float32 and res.audio.shape == (2, round(synth_video.duration_s * 44100))
    assert np.isfinite(res.audio).all() and np.abs(res.audio).max() <= 1.0
    assert res.curve.shape == (62,)  # ceil(5 s * 12.305)
    assert len(res.step_ms) == 96
    assert set(res.timings) >= {"decode", "encode", "curve", "text", "sampler", "vae"}

    out = res.mux(synth_video.path, tmp_path / "out.mp4")
    assert _packets(out) == _packets(synth_video.path)  # video stream copied bit for bit
    with av.open(str(out)) as c:
        (a,) = c.streams.audio
        assert a.codec_context.name == "aac" and a.rate == 44100 and a.codec_context.channels == 2
        v = c.streams.video[0]
        frame = 1 / float(v.average_rate)
        audio_s = float(a.duration * a.time_base)
        assert abs(audio_s - synth_video.duration_s) <= frame


def test_curve_sees_the_cuts(pipe, synth_video):
    # The 31-frame Hann window (2.5 s) merges cuts 1.25 s apart, but the strongest peak must sit on a cut.
    res = pipe.curve(synth_video.path)
    top = curve_peaks(res.curve, 1)[0] / res.latent_rate
    assert min(abs(top - c) for c in synth_video.cuts) < 0.35


def test_same_seed_same_audio_bit_identical(pipe, short_video):
    a = pipe.generate(short_video.path, prompt="x", seed=3)
    b = pipe.generate(short_video.path, prompt="x", seed=3)
    assert np.array_equal(a.audio, b.audio)
    c = pipe.generate(short_video.path, prompt="x", seed=4)
    assert not np.array_equal(a.audio, c.audio)


def test_prompt_and_curve_change_the_music(pipe, short_video, make_video):
    a = pipe.generate(short_video.path, prompt="piano", seed=1, steps=8)
    b = pipe.generate(short_video.path, prompt="drums", seed=1, steps=8)
    assert not np.allclose(a.latents, b.latents)
    # the curve: the same video without it, and another video of the same length cut elsewhere
    c = pipe.generate(short_video.path, prompt="piano", seed=1, steps=8, use_curve=False)
    other = make_video("other.mp4", duration_s=short_video.duration_s, fps=short_video.fps, cuts=(1.6,))
    d = pipe.generate(other, prompt="piano", seed=1, steps=8)
    assert a.latents.shape == d.latents.shape and not np.allclose(a.curve, d.curve)
    assert not np.allclose(a.latents, c.latents) and not np.allclose(a.latents, d.latents)


def test_save_wav_and_flac(pipe, short_video, tmp_path):
    import soundfile as sf

    res = pipe.generate(short_video.path, seed=0, steps=4)
    for name in ("m.wav", "m.flac"):
        res.save(tmp_path / name)
        data, sr = sf.read(tmp_path / name, always_2d=True)
        assert sr == 44100 and data.shape == (res.audio.shape[1], 2)


def test_one_frame_video_gives_flat_curve(pipe, make_video, tmp_path):
    path = make_video("one.mp4", duration_s=1 / 24, fps=24.0, cuts=())
    res = pipe.generate(path, seed=0, steps=4)
    np.testing.assert_array_equal(res.curve, 0.0)
    assert res.audio.shape[0] == 2 and res.audio.shape[1] == round(res.duration_s * 44100)
    res.mux(path, tmp_path / "one_out.mp4")


def test_random_seed_is_reported(pipe, short_video):
    res = pipe.generate(short_video.path, steps=2)
    assert isinstance(res.seed, int) and res.seed >= 0
    again = pipe.generate(short_video.path, steps=2, seed=res.seed)
    assert np.array_equal(res.audio, again.audio)
