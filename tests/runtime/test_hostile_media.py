"""Real-world and hostile media: every container/codec pair muxes without losing a frame,
the right stream is used, codecs a container cannot hold are decided before any work,
still images are refused, damaged files still decode, failed writes leave nothing.

All media are generated here with PyAV (`synth.make_test_video`); nothing binary is
checked in. The oracle for "copied bit for bit" is the source itself: the decoded
pictures of the output equal the source's, and its packets carry the same bytes (as
NAL units when the muxer converts Annex B framing to length prefixes).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from v2m.core import tempfiles
from v2m.core.curves import latent_length
from v2m.core.errors import InputError, OutputError
from v2m.runtime import media, video
from v2m.runtime.synth import make_test_video
from v2m.runtime.timeline import read_timeline

SR = 44100
# the scheduling policy this process started with (an encoder must not change it)
_POLICY = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None

# name -> (suffix, encoder, encoder options, fps)
SOURCES = {
    "mp4-h264": (".mp4", "libx264", None, 24),
    "mp4-h264-bframes": (".mp4", "libx264", {"bf": "2"}, 24),
    "mov-h264-bframes": (".mov", "libx264", {"bf": "2"}, 24),
    "mkv-h264": (".mkv", "libx264", None, 24),
    "mkv-h264-bframes": (".mkv", "libx264", {"bf": "2"}, 24),  # Matroska: first packets without dts
    "mkv-hevc-bframes": (".mkv", "libx265", {"bf": "2"}, 24),
    "ts-h264": (".ts", "libx264", None, 25),
    "ts-h264-bframes": (".ts", "libx264", {"bf": "2"}, 25),  # Annex B framing
    "webm-vp9": (".webm", "libvpx-vp9", None, 24),
    "webm-vp8": (".webm", "libvpx", None, 24),
    "mkv-av1": (".mkv", "libsvtav1", None, 24),  # decoded by libdav1d: its name is not the codec's
    "mp4-av1": (".mp4", "libsvtav1", None, 24),
    "avi-mpeg4-bframes": (".avi", "mpeg4", {"bf": "2"}, 24),
    "gif": (".gif", "gif", None, 10),
}
OUTPUTS = (".mp4", ".mov", ".mkv", ".m4v")
# Pairs whose decision is known (the rest is whatever FFmpeg's muxers accept, checked either way).
COPIED = {("mkv-h264-bframes", s) for s in OUTPUTS} | {("mkv-hevc-bframes", s) for s in OUTPUTS} | {
    ("mkv-av1", ".mkv"), ("mkv-av1", ".mp4"), ("mp4-av1", ".mkv"), ("gif", ".mov"), ("webm-vp8", ".mkv"),
    ("ts-h264-bframes", ".mp4"),
}
REENCODED = {("webm-vp8", ".mp4"), ("webm-vp8", ".mov"), ("gif", ".mp4"), ("gif", ".mkv")}


def _music(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32)


def _pictures(path: Path, index: int | None = None, fmt: str = "rgb24") -> list[np.ndarray]:
    """Every decodable picture of a video stream (RGB, or luma with fmt="gray"), in presentation order."""
    with av.open(str(path)) as c:
        vs = c.streams[index] if index is not None else c.streams.video[0]
        return [f.reformat(format=fmt).to_ndarray() for f in c.decode(vs)]


def _packets(path: Path, index: int | None = None) -> list[tuple[bytes, float | None]]:
    """(payload, presentation time in s) of every packet with data."""
    with av.open(str(path)) as c:
        vs = c.streams[index] if index is not None else c.streams.video[0]
        return [(bytes(p), float(p.pts * p.time_base) if p.pts is not None else None) for p in c.demux(vs) if p.size]


def _nal_units(data: bytes) -> list[bytes]:
    """H.264/HEVC NAL units of a packet, from Annex B start codes or 4-byte length prefixes."""
    if data[:3] == b"\0\0\1" or data[:4] == b"\0\0\0\1":
        return [u.rstrip(b"\0") for u in re.split(b"\0\0\1", data) if u.rstrip(b"\0")]
    units, i = [], 0
    while i + 4 <= len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        units.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return units


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    mse = np.mean((a[:h, :w].astype(np.float64) - b[:h, :w]) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    out = {}
    for name, (suffix, codec, options, fps) in SOURCES.items():
        out[name] = d / f"{name}{suffix}"
        make_test_video(out[name], duration_s=1.5, fps=fps, codec=codec, options=options, cuts=(0.7,))
    return out


def test_sources_are_what_they_claim(sources):
    """The generated sources really have B-frames and (Matroska) packets without dts."""
    for name, path in sources.items():
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            if "bframes" in name:
                assert vs.codec_context.has_b_frames, name
            packets = [p for p in c.demux(vs) if p.size]
        if name in ("mkv-h264-bframes", "mkv-hevc-bframes"):
            assert any(p.dts is None for p in packets), name  # what used to lose the first pictures
    with av.open(str(sources["mkv-av1"])) as c:
        assert c.streams.video[0].codec_context.name != "av1"  # a decoder's name (libdav1d)
    if hasattr(os, "sched_getscheduler"):  # SVT-AV1 as root makes its caller SCHED_FIFO: undone
        assert os.sched_getscheduler(0) == _POLICY


@pytest.mark.parametrize("suffix", OUTPUTS)
@pytest.mark.parametrize("name", list(SOURCES))
def test_mux_loses_no_frame(sources, tmp_path, name, suffix):
    src = sources[name]
    out = tmp_path / f"out{suffix}"
    plan = media.plan_mux(src, out)
    if (name, suffix) in COPIED:
        assert not plan.reencode
    if (name, suffix) in REENCODED:
        assert plan.reencode
    media.mux(src, _music(2.0), SR, out)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]

    want, got = _pictures(src), _pictures(out)
    assert len(got) == len(want), f"{len(want)} source pictures, {len(got)} in the output"
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        out_codec = video.codec_name(c.streams.video[0])
        v_span = read_timeline(c, c.streams.video[0]).span_s
    with av.open(str(out)) as c:
        a_dur = sum(f.samples for f in c.decode(audio=0)) / SR
    with av.open(str(src)) as c:
        src_span = read_timeline(c, c.streams.video[0]).span_s
    assert v_span == pytest.approx(src_span, abs=0.011)  # Matroska keeps milliseconds
    assert abs(a_dur - v_span) <= 0.04 + 2048 / SR, (a_dur, v_span)  # the music covers the picture (+ AAC padding)
    if plan.reencode:
        assert out_codec == "h264"
        luma = zip(_pictures(src, fmt="gray"), _pictures(out, fmt="gray"))
        assert min(_psnr(a, b) for a, b in luma) > 33.0  # CRF 18: close to the source (GIF: 37.8 dB, VP8: 39.7)
        return
    assert out_codec == plan.codec
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)  # the same pictures: the same bitstream
    src_packets, out_packets = _packets(src), _packets(out)
    assert len(out_packets) == len(src_packets)
    for (sb, st), (ob, ot) in zip(src_packets, out_packets):
        assert sb == ob or _nal_units(sb) == _nal_units(ob)
        if st is not None and ot is not None and not name.startswith("gif"):
            assert ot - st == pytest.approx(out_packets[0][1] - src_packets[0][1], abs=0.0011)  # same timing


def test_reencode_never_names_containers_before_work(sources, tmp_path):
    for name, suffix, holder in (("webm-vp8", ".mp4", ".mkv"), ("gif", ".mkv", ".mov")):
        with pytest.raises(OutputError) as e:
            media.plan_mux(sources[name], tmp_path / f"o{suffix}", reencode="never")
        msg = str(e.value)
        assert "\n" not in msg and holder in msg and "--reencode never" in msg
        with pytest.raises(OutputError):
            media.mux(sources[name], _music(2.0), SR, tmp_path / f"o{suffix}", reencode="never")
    assert list(tmp_path.iterdir()) == []
    # What a container can hold is never refused.
    assert not media.plan_mux(sources["mkv-av1"], tmp_path / "o.mkv", reencode="never").reencode


def test_reencode_logged(sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="v2m.runtime.media"):
        media.mux(sources["webm-vp8"], _music(2.0), SR, tmp_path / "o.mp4")
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "re-encoding the picture as H.264" in msg and ".mkv" in msg


# --- which stream ---------------------------------------------------------------------


def _two_streams(path: Path, default_main: bool = True, cover: bool = False) -> None:
    """Stream 0: a small 64x48 clip (a thumbnail); stream 1: the 160x120 main video.

    default_main: only the main stream is marked default; else neither is. cover: a
    320x240 PNG cover attached as well (bigger than the video, so size alone would pick it).
    """
    opts = {} if default_main else {"default_mode": "passthrough"}
    with av.open(str(path), "w", format="matroska", options=opts) as out:
        if cover:
            png = path.with_suffix(".png")
            with av.open(str(png), "w", format="image2") as c:
                s = c.add_stream("png", rate=1)
                s.width, s.height, s.pix_fmt = 320, 240, "rgb24"
                c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((240, 320, 3), 9, np.uint8), format="rgb24")))
                c.mux(s.encode(None))
            out.add_attachment("cover.png", "image/png", png.read_bytes())
        thumb = out.add_stream("libx264", rate=2)
        main = out.add_stream("libx264", rate=24)
        for s, (w, h) in ((thumb, (64, 48)), (main, (160, 120))):
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.options = {"preset": "ultrafast"}
        thumb.disposition = av.stream.Disposition(0)
        main.disposition = av.stream.Disposition.default if default_main else av.stream.Disposition(0)
        for stream, n, (w, h) in ((thumb, 3, (64, 48)), (main, 36, (160, 120))):
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 7) % 255, np.uint8), format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))


@pytest.mark.parametrize("default_main, cover", [(True, False), (False, False), (False, True)])
def test_stream_choice(tmp_path, default_main, cover):
    path = tmp_path / "two.mkv"
    _two_streams(path, default_main, cover)
    with av.open(str(path)) as c:
        kinds = [(s.index, s.codec_context.width) for s in c.streams.video]
        main = next(i for i, w in kinds if w == 160)
        assert c.streams.video[0].codec_context.width != 160  # the first video stream is not the main one
    info = video.probe(path)
    assert info.stream_index == main and (info.width, info.height) == (160, 120)
    out = media.mux(path, _music(2.0), SR, tmp_path / "o.mp4")
    assert [b for b, _ in _packets(out)] == [b for b, _ in _packets(path, main)]
    assert len(_pictures(out)) == 36
    # --video-stream overrides, for decoding and muxing alike.
    thumb = next(i for i, w in kinds if w == 64)
    reader = video.VideoReader(path, stream=thumb)
    frames = np.concatenate(list(reader.sample(2.0, 32)))
    assert reader.info.width == 64 and len(frames) == 3
    out = media.mux(path, _music(2.0), SR, tmp_path / "t.mkv", video_stream=thumb)
    assert [b for b, _ in _packets(out)] == [b for b, _ in _packets(path, thumb)]


def test_bad_stream_choice(tmp_path, synth_video_audio):
    path = tmp_path / "two.mkv"
    _two_streams(path)
    with pytest.raises(InputError, match="no stream 7") as e:
        video.probe(path, stream=7)
    assert "--video-stream" in str(e.value) and "160x120" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="is audio, not video"):
        video.probe(synth_video_audio.path, stream=1)


def test_only_a_cover_picture(tmp_path, synth_video_audio):
    """Music with cover art (no video) is refused, not muxed as a one-picture video."""
    path = tmp_path / "song.mkv"
    with av.open(str(synth_video_audio.path)) as inp, av.open(str(path), "w", format="matroska") as out:
        out.add_attachment("cover.png", "image/png", _png_bytes(tmp_path))
        a = out.add_stream_from_template(inp.streams.audio[0])
        for p in inp.demux(inp.streams.audio[0]):
            if p.size:
                p.stream = a
                out.mux(p)
    with pytest.raises(InputError, match="only a cover picture") as e:
        video.probe(path)
    assert "\n" not in str(e.value)


def _png_bytes(tmp_path: Path, size=(160, 120)) -> bytes:
    png = tmp_path / "still.png"
    with av.open(str(png), "w", format="image2") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = size[0], size[1], "rgb24"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 80, np.uint8), format="rgb24")))
        c.mux(s.encode(None))
    return png.read_bytes()


def test_still_images_are_not_videos(tmp_path, make_video):
    fake = tmp_path / "photo.mp4"
    fake.write_bytes(_png_bytes(tmp_path))  # a PNG named .mp4
    with pytest.raises(InputError, match="still image") as e:
        video.probe(fake)
    assert "\n" not in str(e.value)
    one = make_video("one.gif", codec="gif", fps=10, duration_s=0.1)
    with pytest.raises(InputError, match="single gif picture"):
        video.VideoReader(one)
    animated = make_video("anim.gif", codec="gif", fps=10, duration_s=1.0)
    assert video.probe(animated).codec == "gif"  # an animated GIF is a video
    assert video.probe(make_video("one.mp4", duration_s=1 / 24)).codec == "h264"  # one frame of H.264 is a video


# --- damage in the middle -------------------------------------------------------------


def _damage(src: Path, dst: Path, t0: float, t1: float, seed: int = 0) -> int:
    """Copy `src` with the payload of every video packet shown in [t0, t1) overwritten by noise
    (the container's own structure is kept); returns how many packets were damaged."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    n = 0
    with av.open(str(src)) as c:
        for p in c.demux(c.streams.video[0]):
            if p.size and p.pts is not None and t0 <= float(p.pts * p.time_base) < t1:
                data[p.pos + 4 : p.pos + p.size] = rng.integers(0, 256, p.size - 4, dtype=np.uint8).tobytes()
                n += 1
    dst.write_bytes(bytes(data))
    return n


def _samples(path: Path, fps: float = 8.0):
    reader = video.VideoReader(path)
    return reader, np.concatenate(list(reader.sample(fps, (64, 48))))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_damage_mid_file_resyncs(make_video, tmp_path, suffix, caplog):
    clean = make_video(f"clean{suffix}", duration_s=4.0)  # a keyframe every 0.5 s
    bad = tmp_path / f"bad{suffix}"
    assert _damage(clean, bad, 1.6, 1.9) == 7
    with caplog.at_level(logging.WARNING, logger="v2m.runtime.video"):
        reader, frames = _samples(bad)
    ref_reader, ref = _samples(clean)
    # The whole duration, every sample: decoding went on after the damage.
    assert reader.duration_s == pytest.approx(ref_reader.duration_s, abs=1e-6)
    assert frames.shape == ref.shape == (32, 48, 64, 3)
    # Lost: 1.625 s (first damaged frame) up to 2.0 s (the next keyframe), held at the last good frame.
    assert reader.damage.lost_s == pytest.approx(0.375, abs=0.01)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "0.38 s of video lost" in warning and "1.6" in warning
    held = [k for k in range(32) if 1.625 <= k / 8 < 2.0]  # samples at 1.625, 1.75, 1.875
    assert held == [13, 14, 15]
    _, every = _samples(clean, 24.0)  # every frame of the clean file
    for k in held:
        np.testing.assert_array_equal(frames[k], every[38])  # the last good frame, at 38 / 24 = 1.583 s
    np.testing.assert_array_equal(frames[:13], ref[:13])  # before: untouched
    np.testing.assert_array_equal(frames[16:], ref[16:])  # after the next keyframe: exact again


def test_damaged_curve_is_flat_over_the_gap_and_covers_the_duration(tiny_bundle, make_video, tmp_path):
    from v2m.core.curves import dissimilarity
    from v2m.runtime import Pipeline

    clean = make_video("clean.mp4", duration_s=8.0, cuts=(1.0, 7.0))
    bad = tmp_path / "bad.mp4"
    _damage(clean, bad, 1.5, 6.5)  # ten whole GOPs: 1.5 .. 6.5 s held at the frame of 1.458 s
    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu", precision="fp32")
    features, reader = pipe.encode_video(bad)
    assert reader.duration_s == pytest.approx(8.0) and reader.damage.lost_s == pytest.approx(5.0, abs=0.05)
    fps = pipe.config.curve_fps
    gap = [k for k in range(features.shape[0]) if 1.5 < k / fps < 6.5]
    d = dissimilarity(features.numpy() if hasattr(features, "numpy") else features)
    assert np.abs(d[gap]).max() < 1e-6  # the same frame, the same features: no event in the gap
    res = pipe.curve(bad)
    rate = pipe.config.latent_rate
    assert res.duration_s == pytest.approx(8.0) and res.curve.shape[0] == latent_length(8.0, rate)
    k = pipe.config.curve.kernel // 2 + 1  # smoothing reaches this far into the gap
    inside = res.curve[int(np.ceil(1.5 * rate)) + k : int(6.5 * rate) - k]
    assert inside.size >= 20 and np.ptp(inside) < 1e-5  # flat over the gap
    assert np.ptp(res.curve) > 0.1  # the cuts at 1.0 and 7.0 s still show
    # The mux still covers the source: every packet (damaged ones too) copied.
    out = media.mux(bad, _music(8.0), SR, tmp_path / "o.mp4")
    assert [b for b, _ in _packets(out)] == [b for b, _ in _packets(bad)]


@pytest.mark.parametrize("where", ["start", "end"])
def test_damage_at_the_edges_keeps_the_duration(make_video, tmp_path, where):
    clean = make_video("clean.mp4", duration_s=3.0)
    bad = tmp_path / "bad.mp4"
    span = (0.0, 0.5) if where == "start" else (2.5, 3.0)
    _damage(clean, bad, *span)
    reader, frames = _samples(bad)
    _, ref = _samples(clean)
    assert reader.duration_s == pytest.approx(3.0, abs=1e-6) and len(frames) == len(ref) == 24
    assert reader.damage.lost_s == pytest.approx(0.5, abs=0.05)
    if where == "start":  # the clock starts at the first packet: the first good frame is held back to 0
        np.testing.assert_array_equal(frames[4:], ref[4:])
        for k in range(4):
            np.testing.assert_array_equal(frames[k], ref[4])
    else:  # held from the last good frame (2.458 s) to the end of the packets
        np.testing.assert_array_equal(frames[:20], ref[:20])
        _, every = _samples(clean, 24.0)
        for k in range(20, 24):
            np.testing.assert_array_equal(frames[k], every[59])


def test_nothing_decodes(tmp_path, make_video):
    clean = make_video("clean.mp4", duration_s=1.0)
    bad = tmp_path / "bad.mp4"
    _damage(clean, bad, 0.0, 9.0)
    with pytest.raises(InputError, match="no frame of bad.mp4 decodes") as e:
        video.probe(bad)
    assert "\n" not in str(e.value)


# --- failed writes --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_full_disk_simulated(tmp_path, full_disk, capfd, suffix):
    """ENOSPC from the file libsndfile writes into (simulated in-process: the writer's file
    object fails after 4 kB). Before: .wav gave a traceback and exit 1, .flac a silently
    truncated file."""
    full_disk(room=4096)
    out = tmp_path / f"music{suffix}"
    with pytest.raises(OutputError, match="No space left on device") as e:
        media.write_audio(out, _music(3.0), SR)
    assert "\n" not in str(e.value) and "free some space" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert "Traceback" not in capfd.readouterr().err  # nothing printed from soundfile's C callback


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 kB tmpfs (needs root and mount; skipped elsewhere)."""
    d = tmp_path / "full"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True, timeout=30)


def test_full_disk_real(tiny_tmpfs, synth_video):
    for name in ("a.wav", "a.flac", "a.mp4", "a.mkv"):
        out = tiny_tmpfs / name
        with pytest.raises(OutputError, match="No space left on device") as e:
            if out.suffix in (".wav", ".flac"):
                media.write_audio(out, _music(3.0), SR)
            else:
                media.mux(synth_video.path, _music(5.0), SR, out)
        assert "\n" not in str(e.value)
        assert list(tiny_tmpfs.iterdir()) == []


def test_permission_denied_at_write(tmp_path, monkeypatch):
    """The folder turned read-only after the checks (simulated: the tests may run as root)."""
    real_open = os.open

    def deny(path, *a, **k):
        if tempfiles.is_temp_name(Path(path).name):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(tempfiles.os, "open", deny)
    with pytest.raises(OutputError, match="Permission denied") as e:
        media.write_audio(tmp_path / "a.wav", _music(1.0), SR)
    assert "check the permissions" in str(e.value) and list(tmp_path.iterdir()) == []


def test_folder_vanishes_before_write(tmp_path, synth_video, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = tempfiles.temp_path

    def vanish(path):
        os.rmdir(out_dir)  # after every check passed
        return real(path)

    monkeypatch.setattr(tempfiles, "temp_path", vanish)
    for name in ("a.wav", "a.mp4"):
        with pytest.raises(OutputError, match="No such file") as e:
            if name.endswith(".wav"):
                media.write_audio(out_dir / name, _music(1.0), SR)
            else:
                media.mux(synth_video.path, _music(5.0), SR, out_dir / name)
        assert "output folder is gone" in str(e.value) and "\n" not in str(e.value)
        out_dir.mkdir()
    assert list(out_dir.iterdir()) == []


# --- weights that are not floating point ----------------------------------------------


def test_int32_weights_refused(tiny_bundle_copy):
    import torch

    from v2m.core.bundle import load_config
    from v2m.core.errors import BundleError
    from v2m.models.bundle import load_component
    from v2m.models.checkpoint import load_safetensors, save_safetensors

    path = tiny_bundle_copy / "dit.safetensors"
    sd = load_safetensors(path)
    sd["in_proj.weight"] = (sd["in_proj.weight"] * 1000).to(torch.int32)
    save_safetensors(sd, path)
    with pytest.raises(BundleError, match="not floating point") as e:
        load_component(tiny_bundle_copy, "dit", load_config(tiny_bundle_copy))
    assert "in_proj.weight is int32" in str(e.value) and "\n" not in str(e.value)


def test_int32_text_table_refused(tiny_bundle_copy):
    from safetensors.numpy import load_file, save_file

    from v2m.core.bundle import load_config
    from v2m.core.errors import BundleError
    from v2m.runtime.text import load_text_encoder

    path = tiny_bundle_copy / "text.safetensors"
    t = load_file(str(path))
    t["embedding.weight"] = (t["embedding.weight"] * 100).astype(np.int32)
    save_file(t, str(path))
    cfg = load_config(tiny_bundle_copy)
    with pytest.raises(BundleError, match="int32, not floating point"):
        load_text_encoder(tiny_bundle_copy, cfg.text, cfg.text_dim)


def test_keep_audio_level_must_be_finite(tmp_path, synth_video_audio):
    for level in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="finite"):
            media.mux(synth_video_audio.path, _music(5.0), SR, tmp_path / "o.mp4", keep_audio_db=level)
    assert list(tmp_path.iterdir()) == []


def test_cli_video_stream_decodes_and_muxes_one_stream(tmp_path, tiny_bundle, capsys):
    import json

    from v2m.cli.main import main

    path = tmp_path / "two.mkv"
    _two_streams(path)
    out = tmp_path / "o.mkv"
    rc = main([str(a) for a in ("generate", path, "-o", out, "--model", tiny_bundle, "--device", "cpu",
                                "--steps", "2", "--video-stream", "0", "--json")])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    data = json.loads(stdout)
    assert data["video_stream"] == 0 and data["duration_s"] == pytest.approx(1.5)  # 3 frames at 2 fps
    assert [b for b, _ in _packets(out)] == [b for b, _ in _packets(path, 0)]
