"""Video probing and timestamp sampling (v2m.runtime.video) on generated clips."""

from __future__ import annotations

import logging
import math

import av
import numpy as np
import pytest

from v2m.core.errors import InputError
from v2m.runtime.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoReader,
    normalize,
    num_samples,
    probe,
    video_duration,
)

SIZE = (64, 48)  # (width, height): small, keeps the tests fast


def _sample_all(path, fps, size=SIZE, batch_size=32):
    reader = VideoReader(path)
    batches = list(reader.sample(fps, size, batch_size=batch_size))
    frames = np.concatenate(batches) if batches else np.zeros((0, 1, 1, 3), np.uint8)
    return reader, batches, frames


def _reference(path, fps, size=SIZE):
    """Plain, non-streaming reference: decode every frame, pick by pts."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        decoded = [(f.pts, f.duration, f) for f in c.decode(vs)]
        tb = vs.time_base
        times = [float((pts - decoded[0][0]) * tb) for pts, _, _ in decoded]
        last_dur = float(decoded[-1][1] * tb)
        rgb = [
            f.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
            for *_, f in decoded
        ]
    duration = times[-1] + last_dur
    n = math.ceil(round(duration * fps, 6))
    picks = [max(i for i, t in enumerate(times) if t <= k / fps + 1e-6) for k in range(n)]
    return np.stack([rgb[i] for i in picks]), picks, times, duration


def _scene_of(t, cuts):
    return sum(t >= c - 1e-9 for c in cuts)


def test_probe(synth_video):
    info = probe(synth_video.path)
    assert info.duration_s == pytest.approx(5.0, abs=1e-6)
    assert info.fps == pytest.approx(24.0)
    assert (info.width, info.height) == (160, 120)
    assert info.rotation == 0
    assert info.codec == "h264"
    assert not info.has_audio and info.audio_duration_s is None
    assert video_duration(synth_video.path) == pytest.approx(5.0, abs=1e-6)


def test_probe_audio(synth_video_audio):
    info = probe(synth_video_audio.path)
    assert info.has_audio
    assert info.audio_duration_s == pytest.approx(5.0, abs=0.03)


@pytest.mark.parametrize("fps", [1.0, 4.0, 7.5, 8.0, 24.0, 30.0])
def test_sample_count(synth_video, fps):
    reader, batches, frames = _sample_all(synth_video.path, fps, batch_size=16)
    expected = math.ceil(5.0 * fps)
    assert frames.shape == (expected, SIZE[1], SIZE[0], 3) and frames.dtype == np.uint8
    assert reader.num_samples == expected == reader.expected_samples(fps)
    assert reader.duration_s == pytest.approx(5.0, abs=1e-9)
    assert all(len(b) == 16 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 16


def test_square_size_and_full_frame(synth_video):
    _, _, frames = _sample_all(synth_video.path, 2.0, size=32)
    assert frames.shape == (10, 32, 32, 3)


@pytest.mark.parametrize("fps", [8.0, 10.0])
def test_matches_reference_and_cuts(synth_video, fps):
    _, _, frames = _sample_all(synth_video.path, fps)
    ref, picks, times, _ = _reference(synth_video.path, fps)
    np.testing.assert_array_equal(frames, ref)
    # The scene changes exactly where the sample time crosses a cut (on the 24 fps grid).
    scenes = [
        _scene_of(math.floor(k / fps * 24 + 1e-6) / 24, synth_video.cuts)
        for k in range(len(frames))
    ]
    expected_jumps = [k for k in range(1, len(frames)) if scenes[k] != scenes[k - 1]]
    assert len(expected_jumps) == len(synth_video.cuts)
    diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (n - 1,)
    jumps = [i + 1 for i in np.flatnonzero(diff > 40)]
    assert jumps == expected_jumps, diff.round(1)


def test_vfr_sampled_by_pts(make_video):
    path = make_video("vfr.mp4", duration_s=3.0, cuts=(0.8, 1.9), vfr=True, seed=3)
    info = probe(path)
    assert info.fps != pytest.approx(24.0, abs=0.01)  # irregular frame times
    fps = 10.0
    reader, _, frames = _sample_all(path, fps)
    ref, picks, times, duration = _reference(path, fps)
    assert reader.duration_s == pytest.approx(duration, abs=1e-9)
    assert len(frames) == math.ceil(duration * fps)
    np.testing.assert_array_equal(frames, ref)
    # Frame index and time disagree under VFR: index-based sampling would differ somewhere.
    by_index = [min(round(k / fps * info.fps), len(times) - 1) for k in range(len(frames))]
    assert by_index != picks
    # Each sample shows the scene of the frame on screen at t_k.
    diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    jumps = [i + 1 for i in np.flatnonzero(diff > 40)]
    scene = [_scene_of(times[i], (0.8, 1.9)) for i in picks]
    assert jumps == [k for k in range(1, len(scene)) if scene[k] != scene[k - 1]]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_upright(synth_video, make_video, rotation):
    path = make_video(f"rot{rotation}.mp4", rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == (160, 120)  # displayed size
    with av.open(str(path)) as c:
        coded = (c.streams.video[0].width, c.streams.video[0].height)
    assert coded == ((120, 160) if rotation in (90, 270) else (160, 120))
    _, _, rotated = _sample_all(path, 4.0, size=(80, 60))
    _, _, upright = _sample_all(synth_video.path, 4.0, size=(80, 60))
    assert rotated.shape == upright.shape == (20, 60, 80, 3)
    err = np.abs(rotated.astype(np.float32) - upright).mean()
    flipped = np.abs(rotated[:, ::-1, ::-1].astype(np.float32) - upright).mean()
    assert err < 4.0 < flipped


def test_one_frame_video(make_video):
    path = make_video("one.mp4", duration_s=1 / 24, cuts=())
    for fps in (1.0, 8.0, 24.0):
        reader, _, frames = _sample_all(path, fps)
        assert frames.shape == (1, SIZE[1], SIZE[0], 3)
        assert reader.num_samples == 1
        assert reader.duration_s == pytest.approx(1 / 24)


def test_mkv_container(make_video):
    path = make_video("clip.mkv", duration_s=2.0)
    reader, _, frames = _sample_all(path, 8.0)
    assert len(frames) == 16 and reader.duration_s == pytest.approx(2.0, abs=2e-3)


def test_num_samples_rounding():
    assert num_samples(5.0, 24.0) == 120
    assert num_samples(5.0 + 1e-12, 8.0) == 40
    assert num_samples(5.01, 8.0) == 41
    assert num_samples(0.0, 8.0) == 1


# --- bad inputs -----------------------------------------------------------------------


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=44100, layout="stereo")
        for start in range(0, 44100, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 44100, start
            out.mux(s.encode(frame))
        out.mux(s.encode(None))


def _bad_input(kind, tmp_path, synth_video):
    p = tmp_path / f"{kind}.mp4"
    data = synth_video.path.read_bytes()
    if kind == "missing":
        pass
    elif kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a video\n" * 20)
    elif kind == "audio_only":
        _audio_only(p)
    elif kind == "half":
        p.write_bytes(data[: len(data) // 2])  # moov atom (at the end) is gone
    elif kind == "1kb":
        p.write_bytes(data[:1024])
    return p


@pytest.mark.parametrize(
    "kind", ["missing", "directory", "empty", "text", "audio_only", "half", "1kb"]
)
def test_bad_inputs(kind, tmp_path, synth_video):
    path = _bad_input(kind, tmp_path, synth_video)
    with pytest.raises(InputError) as e:
        probe(path)
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg
    with pytest.raises(InputError):
        VideoReader(path)


def test_truncated_decodes_partially(tmp_path, make_video, caplog):
    full = make_video("full.mkv", duration_s=4.0)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="v2m.runtime.video"):
        reader, _, frames = _sample_all(cut, 8.0)
    assert 0 < len(frames) < 32 and reader.num_samples == len(frames)
    assert reader.duration_s < 3.5
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_sample_rejects_bad_args(synth_video):
    reader = VideoReader(synth_video.path)
    with pytest.raises(ValueError):
        next(reader.sample(0.0, 32))
    with pytest.raises(ValueError):
        next(reader.sample(8.0, (0, 32)))


# --- normalize ------------------------------------------------------------------------


def test_normalize():
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[..., 0] = 255
    x = normalize(frames)
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0], (1 - mean[0]) / std[0], rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], -mean[1] / std[1], rtol=1e-6)
    y = normalize(frames, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(y[:, 0], 1.0)
    with pytest.raises(ValueError):
        normalize(frames[..., :2])


def test_sampling_streams(synth_video):
    reader = VideoReader(synth_video.path)
    it = reader.sample(24.0, SIZE, batch_size=8)
    first = next(it)
    assert first.shape == (8, SIZE[1], SIZE[0], 3)
    assert reader.frames_decoded < 60  # the first batch came before the video was decoded
    assert reader.num_samples is None  # known only at the end
    assert sum(len(b) for b in it) == 120 - 8 and reader.num_samples == 120
