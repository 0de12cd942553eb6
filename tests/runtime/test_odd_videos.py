"""Odd videos give a correct result or one clear line: tiny, one frame, VFR, rotated, 8K, odd sizes,
audio longer than the picture; --keep-audio end to end; NaN/Inf never reaches a file."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from v2m.cli.main import main

STEPS = "2"


def _write(path, size, frames, fps=24, codec="libx264", pix_fmt="yuv420p", audio_s=None):
    """A plain test clip written with PyAV: `frames` frames of noise-free gradients, optional sine audio."""
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        aus = out.add_stream("aac", rate=44100, layout="stereo") if audio_s else None
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
            img[..., 1] = (60 * i) % 256
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
        if aus is not None:
            n = round(audio_s * 44100)
            sine = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
            a = np.stack([sine, sine])
            for s in range(0, n, 1024):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[:, s : s + 1024]), format="fltp", layout="stereo")
                f.sample_rate, f.pts, f.time_base = 44100, s, Fraction(1, 44100)
                out.mux(aus.encode(f))
            out.mux(aus.encode(None))
    return path


def _streams(path):
    """(video duration, audio duration) of a muxed output, from its packets."""
    out = {}
    with av.open(str(path)) as c:
        for s in (c.streams.video[0], c.streams.audio[0]):
            ends = [float((p.pts + p.duration) * p.time_base) for p in c.demux(s) if p.pts is not None]
            c.seek(0)
            out[s.type] = max(ends)
    return out["video"], out["audio"]


def _gen(capsys, bundle, video, out, *extra):
    rc = main(["generate", str(video), "-o", str(out), "--model", str(bundle), "--device", "cpu",
               "--steps", STEPS, "--seed", "1", "--quiet", *map(str, extra)])
    return rc, *capsys.readouterr()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("tiny.mp4", dict(duration_s=0.1, cuts=())),
        ("one_frame.mp4", dict(duration_s=1 / 24, cuts=())),
        ("vfr.mp4", dict(duration_s=2.0, vfr=True, cuts=(1.0,))),
        ("rot90.mov", dict(duration_s=1.0, rotation=90, cuts=(0.5,))),
    ],
)
def test_odd_synth_videos(capsys, tiny_bundle, make_video, tmp_path, name, kwargs):
    video = make_video(name, **kwargs)
    rc, out, err = _gen(capsys, tiny_bundle, video, tmp_path / "o.mp4")
    assert rc == 0, err
    v, a = _streams(tmp_path / "o.mp4")
    assert abs(a - v) < 1024 / 44100 + 1e-3  # the music spans the picture (to one AAC frame)


@pytest.mark.parametrize(
    ("size", "frames", "codec", "pix_fmt"),
    [((7680, 4320), 2, "mpeg4", "yuv420p"), ((161, 97), 5, "libx264", "yuv444p")],
    ids=["8k", "161x97"],
)
def test_big_and_odd_sizes(capsys, tiny_bundle, tmp_path, size, frames, codec, pix_fmt):
    video = _write(tmp_path / "in.mkv", size, frames, codec=codec, pix_fmt=pix_fmt)
    rc, out, err = _gen(capsys, tiny_bundle, video, tmp_path / "o.wav")
    assert rc == 0, err
    import soundfile as sf

    info = sf.info(str(tmp_path / "o.wav"))
    assert abs(info.frames - frames / 24 * info.samplerate) <= 0.001 * info.samplerate + 1  # mkv: 1 ms clock


def test_audio_longer_than_picture(capsys, tiny_bundle, tmp_path):
    video = _write(tmp_path / "in.mp4", (64, 48), 24, audio_s=3.0)  # 1 s picture, 3 s sound
    rc, out, err = _gen(capsys, tiny_bundle, video, tmp_path / "o.wav")
    assert rc == 0, err
    import soundfile as sf

    assert sf.info(str(tmp_path / "o.wav")).frames == 44100  # the VIDEO's duration
    rc, out, err = _gen(capsys, tiny_bundle, video, tmp_path / "o.mp4", "--keep-audio", "-6")
    assert rc == 0, err
    v, a = _streams(tmp_path / "o.mp4")
    assert abs(v - 1.0) < 1e-3 and abs(a - v) < 1024 / 44100 + 1e-3


def test_keep_audio_end_to_end(capsys, tiny_bundle, synth_video_audio, tmp_path):
    def decoded(path):
        with av.open(str(path)) as c:
            return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)

    rc, *_ = _gen(capsys, tiny_bundle, synth_video_audio.path, tmp_path / "plain.mp4")
    assert rc == 0
    rc, *_ = _gen(capsys, tiny_bundle, synth_video_audio.path, tmp_path / "kept.mp4", "--keep-audio", "0")
    assert rc == 0
    plain, kept = decoded(tmp_path / "plain.mp4"), decoded(tmp_path / "kept.mp4")
    n = min(plain.shape[1], kept.shape[1])
    diff = kept[:, :n] - plain[:, :n]  # ~ the original 440/660 Hz sine at 0 dB (0.2 peak)
    spec = np.abs(np.fft.rfft(diff[0, 44100:88200]))
    assert abs(int(np.argmax(spec)) - 440) <= 2  # 1 s window: bin = Hz
    assert np.abs(diff).max() > 0.1


def test_nan_audio_writes_nothing(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    from v2m.runtime.backends.torch_backend import TorchBackend

    orig = TorchBackend.decode

    def nan_decode(self, latents):
        a = orig(self, latents)
        a[..., 100] = np.nan
        return a

    monkeypatch.setattr(TorchBackend, "decode", nan_decode)
    for out in (tmp_path / "o.mp4", tmp_path / "o.wav"):
        rc, _, err = _gen(capsys, tiny_bundle, short_video.path, out, "--backend", "torch")  # the patched one
        lines = err.strip().splitlines()
        assert rc != 0 and len(lines) == 1 and "NaN" in lines[0] and "Traceback" not in err
        assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp files either
    # Batch mode: recorded as failed, nothing written for it.
    rc = main(["generate", str(short_video.path), str(short_video.path), "-o", str(tmp_path / "b"), "--model",
               str(tiny_bundle), "--device", "cpu", "--backend", "torch", "--steps", STEPS, "--format", "wav"])
    _, err = capsys.readouterr()
    assert rc == 2 and "NaN" in err  # a failed video that is not a bug: exit 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["summary.json"]


def test_nan_latents_write_nothing(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    from v2m.runtime.backends.torch_backend import TorchBackend

    monkeypatch.setattr(TorchBackend, "sample", lambda self, noise, *a, **k: np.full_like(noise, np.inf))
    rc, _, err = _gen(capsys, tiny_bundle, short_video.path, tmp_path / "o.mp4", "--backend", "torch")
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "NaN/Inf latents" in err
    assert not (tmp_path / "o.mp4").exists()
