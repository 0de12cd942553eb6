"""The weight-free describer (`v2m.runtime.describe`): measured traits for meaning (a fast-cut
clip gets a faster tempo word than a slow pan; a dark clip a darker mood), its cache, the CLI."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from v2m.runtime.describe import auto_prompt, describe_video, measure_frames, prompt_from_traits


def _pan(n: int, gain: float = 1.0) -> np.ndarray:
    """A slow horizontal pan over a warm gradient: [n, 64, 64, 3] uint8."""
    x = np.arange(64)[None, None, :]
    t = np.arange(n)[:, None, None]
    base = 0.5 + 0.4 * np.sin((x + 1.5 * t) / 10.0)  # (n, 1, 64): shifts 1.5 px a frame
    img = np.stack([base, 0.8 * base, 0.5 * base], -1) * gain
    return np.broadcast_to(img, (n, 64, 64, 3)).astype(np.float32).__mul__(255).astype(np.uint8)


def _cuts(n: int, every: int) -> np.ndarray:
    """Flat scenes of random colours, a new one every `every` frames."""
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(n // every + 1, 3))
    return np.stack([np.full((64, 64, 3), colors[i // every], np.uint8) for i in range(n)])


def _write(path, frames: np.ndarray, fps: int = 24) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _tempo(prompt: str) -> int:
    return int(prompt.split()[1])


def test_fast_cuts_get_a_faster_tempo_than_a_slow_pan():
    pan = measure_frames(_pan(40), 4.0, 10.0)
    cut = measure_frames(_cuts(40, 2), 4.0, 10.0)  # a cut every 0.5 s
    assert cut.cuts >= 15 and pan.cuts == 0
    assert _tempo(prompt_from_traits(cut)) > _tempo(prompt_from_traits(pan))
    assert prompt_from_traits(cut).startswith("fast") and prompt_from_traits(pan).split()[0] in ("slow", "medium")


def test_a_dark_clip_gets_a_darker_mood():
    bright = prompt_from_traits(measure_frames(_pan(40, 1.2), 4.0, 10.0))
    dark = prompt_from_traits(measure_frames(_pan(40, 0.25), 4.0, 10.0))
    assert " major " in bright and " minor " in dark, (bright, dark)


def test_by_hand_traits():
    frames = np.zeros((6, 2, 2, 3), np.uint8)
    frames[3] = (255, 0, 0)  # black, one red sample, black: changes 0, 0, 1/3, 1/3, 0 (median 0): two cuts
    t = measure_frames(frames, 4.0, 1.5)
    assert t.cuts == 2 and t.cuts_per_min == pytest.approx(2 / (1.5 / 60)) and t.motion == 0.0
    assert t.brightness == pytest.approx(0.299 / 6, abs=1e-6) and t.warmth == pytest.approx(1 / 6, abs=1e-6)
    assert t.saturation == pytest.approx(1 / 6, abs=1e-6)  # black has saturation 0, pure red 1


def test_video_end_to_end_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fast, slow = tmp_path / "fast.mp4", tmp_path / "slow.mp4"
    _write(fast, _cuts(24 * 6, 12))
    _write(slow, _pan(24 * 6))
    tf, ts = describe_video(fast), describe_video(slow)
    assert tf.cuts >= 8 and ts.cuts == 0 and tf.duration_s == pytest.approx(6.0, abs=0.1)
    p1, t1 = auto_prompt(fast)
    entries = list((tmp_path / "cache" / "v2m" / "prompts").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["prompt"] == p1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fast.mp4", "slow.mp4"]  # nothing beside the video
    monkeypatch.setattr("v2m.runtime.describe.describe_video", lambda *a, **k: pytest.fail("not cached"))
    assert auto_prompt(fast) == (p1, t1)


def test_cli_prompt(tmp_path, monkeypatch, capsys):
    from v2m.cli.main import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    v = tmp_path / "v.mp4"
    _write(v, _cuts(48, 12))
    assert main(["prompt", str(v), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"].endswith("events") and res["traits"]["cuts"] >= 2
    assert main(["prompt", str(tmp_path / "missing.mp4")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_generate_prompt_auto(tmp_path, monkeypatch, capsys, short_video):
    from v2m.cli.main import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", "demo", "--backend",
               "onnxruntime", "--steps", "2", "--prompt", "auto", "--json", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["prompt"] == auto_prompt(short_video.path)[0]
    rc = main(["generate", str(short_video.path), str(short_video.path), "-o", str(tmp_path / "out"), "--model", "demo",
               "--prompt", "auto"])
    assert rc == 2 and "--prompt auto" in capsys.readouterr().err
