"""Output writing (v2m.runtime.media): audio files, muxing, atomicity, path checks."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from v2m.core.errors import NumericalError, OutputError
from v2m.runtime import media
from v2m.runtime.video import probe

SR = 44100


def _music(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A stereo chord with a little noise, float32 [2, N], peak about 0.5."""
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


def _leftovers(d):
    """Files in `d` that look like our temporary files."""
    return [p.name for p in d.iterdir() if "tmp" in p.name]


def _video_packets(path):
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in c.demux(vs) if p.dts is not None]


def _decode_audio(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)


# --- check_output_path ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("a.wav", "wav"),
        ("a.flac", "flac"),
        ("a.mp4", "video"),
        ("A.MKV", "video"),
        ("a.mov", "video"),
        ("a.m4v", "video"),
    ],
)
def test_check_output_path_kinds(tmp_path, name, kind):
    assert media.check_output_path(tmp_path / name) == kind


@pytest.mark.parametrize("name", ["a.mp3", "a.txt", "noext", "a.webm"])
def test_check_output_path_bad_suffix(tmp_path, name):
    with pytest.raises(OutputError) as e:
        media.check_output_path(tmp_path / name)
    assert "\n" not in str(e.value)


def test_check_output_path_bad_places(tmp_path, synth_video):
    with pytest.raises(OutputError, match="does not exist"):
        media.check_output_path(tmp_path / "missing" / "a.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(OutputError, match="directory"):
        media.check_output_path(tmp_path / "d.wav")
    with pytest.raises(OutputError, match="input video"):
        media.check_output_path(synth_video.path, synth_video.path)
    link = tmp_path / "link.mp4"
    link.symlink_to(synth_video.path)
    with pytest.raises(OutputError, match="input video"):
        media.check_output_path(link, synth_video.path)


def test_check_output_path_read_only_dir(tmp_path, monkeypatch):
    # Simulated with os.access: the tests may run as root, who can write anywhere.
    monkeypatch.setattr(media.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="not writable") as e:
        media.check_output_path(tmp_path / "a.wav")
    assert "\n" not in str(e.value)


# --- finalize_audio -------------------------------------------------------------------


def test_finalize_trims_pads_and_fades():
    a = _music(3.0)
    out = media.finalize_audio(a, 2.0, SR)
    assert out.shape == (2, 2 * SR) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :SR], a[:, :SR])  # untouched before the fade
    assert np.all(out[:, -1] == 0)  # faded to silence
    fade = round(0.05 * SR)
    assert np.all(np.abs(out[:, -fade:]) <= np.abs(a[:, 2 * SR - fade : 2 * SR]) + 1e-7)

    padded = media.finalize_audio(a, 4.0, SR, fade_out_s=0.0)
    assert padded.shape == (2, 4 * SR)
    np.testing.assert_array_equal(padded[:, : 3 * SR], a)
    assert not padded[:, 3 * SR :].any()

    mono = media.finalize_audio(a[0], 1.0, SR)
    assert mono.shape == (2, SR)
    np.testing.assert_array_equal(mono[0], mono[1])


def test_finalize_clips_and_rejects_nan(caplog):
    a = _music(1.0) * 4
    out = media.finalize_audio(a, 1.0, SR)
    assert np.abs(out).max() <= 1.0
    assert any("clipped" in r.getMessage() for r in caplog.records)
    a[1, 100] = np.nan
    with pytest.raises(NumericalError) as e:
        media.finalize_audio(a, 1.0, SR)
    assert "\n" not in str(e.value)
    a[1, 100] = np.inf
    with pytest.raises(NumericalError):
        media.finalize_audio(a, 1.0, SR)


# --- write_audio ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_round_trip(tmp_path, suffix):
    a = media.finalize_audio(_music(1.5), 1.5, SR)
    a[0, 10], a[1, 11] = 1.0, -1.0  # full scale survives
    path = media.write_audio(tmp_path / f"out{suffix}", a, SR)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == SR and data.shape == (a.shape[1], 2)
    assert sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(data.T, a, atol=1 / 32767)
    assert _leftovers(tmp_path) == []


def test_write_audio_nan_writes_nothing(tmp_path):
    a = _music(1.0)
    a[0, 5] = np.nan
    with pytest.raises(NumericalError):
        media.write_audio(tmp_path / "out.wav", a, SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_missing_dir(tmp_path):
    with pytest.raises(OutputError) as e:
        media.write_audio(tmp_path / "nope" / "out.wav", _music(0.5), SR)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_failure_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out.flac"
    out.write_bytes(b"previous result")

    def broken_write(file, *args, **kwargs):
        if hasattr(file, "write"):  # write_audio hands libsndfile an open file
            file.write(b"half a file")
        else:
            with open(file, "wb") as f:
                f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(media.sf, "write", broken_write)
    with pytest.raises(OutputError, match="No space left") as e:
        media.write_audio(out, _music(0.5), SR)
    assert "\n" not in str(e.value)
    assert out.read_bytes() == b"previous result"  # the old output is untouched
    assert _leftovers(tmp_path) == []


# --- mux ------------------------------------------------------------------------------


def test_mux_copies_video_and_adds_aac(tmp_path, synth_video):
    music = media.finalize_audio(_music(6.0), synth_video.duration_s, SR)
    out = media.mux(synth_video.path, music, SR, tmp_path / "out.mp4")
    assert _video_packets(out) == _video_packets(synth_video.path)  # bit for bit, same timing
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        vs, aus = c.streams.video[0], c.streams.audio[0]
        assert aus.codec_context.name == "aac"
        assert aus.codec_context.sample_rate == 44100 and aus.codec_context.channels == 2
        v_dur = float(vs.duration * vs.time_base)
        a_dur = float(aus.duration * aus.time_base)
    assert v_dur == pytest.approx(synth_video.duration_s)
    assert abs(a_dur - v_dur) <= 1 / synth_video.fps
    decoded = _decode_audio(out)
    assert decoded.shape[0] == 2 and np.isfinite(decoded).all()
    assert abs(decoded.shape[1] / SR - v_dur) <= 1 / synth_video.fps + 1024 / SR  # + AAC padding
    assert np.abs(decoded).max() > 0.1  # the music is there
    assert _leftovers(tmp_path) == []


def test_mux_keep_audio(tmp_path, synth_video_audio):
    music = media.finalize_audio(_music(5.0), 5.0, SR)
    only = media.mux(synth_video_audio.path, music, SR, tmp_path / "only.mp4")
    mixed = media.mux(synth_video_audio.path, music, SR, tmp_path / "mixed.mp4", keep_audio_db=-6.0)
    a, b = _decode_audio(only), _decode_audio(mixed)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert np.abs(a - b).mean() > 0.02  # the sine of the original is mixed in
    with av.open(str(mixed)) as c:
        assert len(c.streams.audio) == 1  # mixed into one track, not added as a second
    assert _video_packets(mixed) == _video_packets(synth_video_audio.path)


def test_mux_keep_audio_without_original(tmp_path, synth_video):
    music = media.finalize_audio(_music(5.0), 5.0, SR)
    out = media.mux(synth_video.path, music, SR, tmp_path / "out.mp4", keep_audio_db=-6.0)
    assert np.isfinite(_decode_audio(out)).all()


def test_mux_resamples_and_other_containers(tmp_path, make_video):
    src = make_video("rot.mp4", duration_s=2.0, rotation=90)
    music = media.finalize_audio(_music(2.0, sr=48000), 2.0, 48000)
    src_packets = _video_packets(src)
    for name in ("out.mkv", "out.mov"):
        out = media.mux(src, music, 48000, tmp_path / name)
        packets = _video_packets(out)
        assert [p[0] for p in packets] == [p[0] for p in src_packets]  # same bytes
        if name == "out.mov":  # Matroska stores millisecond timestamps; mov keeps them all
            assert packets == src_packets
        info = probe(out)
        assert info.rotation == 90 and (info.width, info.height) == (160, 120)
        assert info.has_audio and info.audio_duration_s == pytest.approx(2.0, abs=1 / 24 + 0.03)
        with av.open(str(out)) as c:
            assert c.streams.audio[0].codec_context.sample_rate == 44100


def test_mux_refuses_to_overwrite_input(tmp_path, make_video):
    src = make_video("in.mp4", duration_s=1.0)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="input video") as e:
        media.mux(src, _music(1.0), SR, src)
    assert "\n" not in str(e.value)
    assert src.read_bytes() == before


def test_mux_nan_writes_nothing(tmp_path, synth_video):
    music = _music(5.0)
    music[0, 1000] = np.nan
    with pytest.raises(NumericalError):
        media.mux(synth_video.path, music, SR, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


def test_mux_failure_is_atomic(tmp_path, synth_video, monkeypatch):
    def broken(*args):
        args[-1].write_bytes(b"partial")  # the temporary file is the last argument
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(media, "_write_muxed", broken)
    with pytest.raises(OutputError, match="No space left"):
        media.mux(synth_video.path, _music(5.0), SR, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


# --- save -----------------------------------------------------------------------------


def test_save_dispatch(tmp_path, short_video):
    music = media.finalize_audio(_music(2.0), 2.0, SR)
    wav = media.save(tmp_path / "a.wav", music, SR, video_path=short_video.path)
    assert sf.info(str(wav)).frames == 2 * SR
    mp4 = media.save(tmp_path / "a.mp4", music, SR, video_path=short_video.path)
    assert probe(mp4).has_audio
    with pytest.raises(OutputError, match="no input video"):
        media.save(tmp_path / "b.mp4", music, SR)
    assert not (tmp_path / "b.mp4").exists()
