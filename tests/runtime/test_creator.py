"""Loops, music without a video (set length), ranked candidates: the engine core and the CLI.
Measured on the trained demo bundle (ONNX Runtime, CPU) where the claim is musical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from v2m.cli.main import main
from v2m.core.errors import InputError
from v2m.runtime import loops, media
from v2m.runtime.request import Request

PROMPT = "medium 120 bpm major groove, backbeat drums, warm pad, bass"


@pytest.fixture(scope="module")
def demo_pipe():
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained("demo", backend="onnxruntime")


def test_loop_helpers_by_hand():
    x = np.arange(6, dtype=np.float64)[None]  # L = 4, m = 2: frames 4, 5 continue the end
    np.testing.assert_array_equal(loops.extend(x[:, :4], 2), [[0, 1, 2, 3, 0, 1]])
    np.testing.assert_array_equal(loops.wrap(x, 4, 2), [[0, 1, 2, 3, 0, 1]])
    # a = 0.25, 0.75: out0 = 0.75 * 4 + 0.25 * 0, out1 = 0.25 * 5 + 0.75 * 1
    np.testing.assert_allclose(loops.fold(x, 4, 2), [[3.0, 2.0, 2, 3]])
    np.testing.assert_array_equal(loops.circular_pad(x[:, :4], 1), [[3, 0, 1, 2, 3, 0]])
    assert loops.margin(100, 394) == loops.MAX_MARGIN and loops.margin(8, 394) == 2
    with pytest.raises(InputError):
        loops.margin(394, 394)


def _spec_diffs(a: np.ndarray, n: int = 2048, hop: int = 512) -> np.ndarray:
    """Mean |log-magnitude change| between consecutive STFT frames of the mono mix."""
    frames = np.lib.stride_tricks.sliding_window_view(a.mean(0), n)[::hop] * np.hanning(n)
    s = np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-4)
    return np.abs(np.diff(s, axis=0)).mean(1)


def _seam(a: np.ndarray, n: int = 2048, hop: int = 512) -> tuple[float, float]:
    """(the largest spectral change over the frames that straddle end -> start, the largest over
    any same-size run of frames inside the clip)."""
    half = 4 * n
    d = _spec_diffs(np.concatenate([a[:, -half:], a[:, :half]], axis=1), n, hop)
    idx = [i for i in range(len(d)) if i * hop < half < i * hop + n + hop]
    within = np.lib.stride_tricks.sliding_window_view(_spec_diffs(a, n, hop), len(idx)).max(1)
    return float(d[idx].max()), float(within.max())


def test_loop_seam_is_no_larger_than_the_changes_within_the_clip(demo_pipe):
    """74 latent frames (6.01 s) of music, seed 1: with --loop the end runs into the start with a
    spectral change inside the clip's own range and smaller than the same seed's seam without
    the loop (its fade-out removed: the fair control)."""
    sr = demo_pipe.config.audio.sample_rate
    p = demo_pipe.prepare(None, Request(prompt=PROMPT, seed=1, duration=74 * 3584 / sr, loop=True))
    plain = demo_pipe.variant(p, loop=False)
    s_loop, s_plain = demo_pipe.sample([p, plain])
    looped = demo_pipe.render(p, s_loop)
    control = media.finalize_audio(demo_pipe.backend.decode(s_plain.latents[None])[0], p.duration_s, sr, 0.0)
    seam, within = _seam(looped)
    assert seam <= within, (seam, within)
    assert seam < _seam(control)[0], (seam, _seam(control))


def test_music_without_a_video_is_exactly_the_asked_length(demo_pipe):
    p = demo_pipe.prepare(None, Request(prompt=PROMPT, seed=0, duration=3.3, steps=4))
    assert p.video is None and not p.curve.any()  # a flat curve
    (s,) = demo_pipe.sample([p])
    assert demo_pipe.render(p, s).shape == (2, round(3.3 * 44100))
    hit = demo_pipe.variant(p, hits=((1.5, 1.0),))
    assert abs(int(np.argmax(hit.curve)) / demo_pipe.config.latent_rate - 1.5) < 0.1
    with pytest.raises(InputError):
        demo_pipe.prepare(None, Request())  # neither a video nor a duration


def test_cli_music_without_a_video(tmp_path, capsys):
    out = tmp_path / "m.wav"
    rc = main(["generate", "--duration", "2.5", "--prompt", PROMPT, "--steps", "4", "--seed", "5", "--model", "demo",
               "--backend", "onnxruntime", "--hit", "1", "-o", str(out), "--json", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["video"] is None and res["curve_edit"]["hits"] == [[1.0, 1.0]]
    audio, sr = sf.read(out)
    assert audio.shape[0] == round(2.5 * sr)
    rc = main(["generate", "--duration", "2.5", "--model", "demo", "-o", str(tmp_path / "m.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and ".wav or .flac" in err[0]


def test_fixed_length_model_crops_its_padding(tmp_path, capsys):
    """A Stable Audio Open bundle samples its own fixed length; 1.2 s asked is 1.2 s written,
    and the written music is the sampled music (not the padding's silence): it is not silent
    in its last tenth."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("torch")
    sao = tmp_path / "sao"
    assert main(["init-model", "--preset", "sao-tiny", "-o", str(sao)]) == 0
    out = tmp_path / "s.wav"
    assert main(["generate", "--duration", "1.2", "--model", str(sao), "--steps", "2", "--seed", "1", "-o", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err
    audio, sr = sf.read(out)
    assert audio.shape[0] == round(1.2 * sr)
    tail = audio[int(0.85 * len(audio)) : int(0.95 * len(audio))]  # before the 50 ms fade-out
    assert np.abs(tail).max() > 1e-4


def test_candidates_one_batch_ranked_by_curve_correlation(demo_pipe, synth_video):
    from v2m.eval.candidates import rank_candidates
    from v2m.runtime.music import music_curve

    calls = []
    real = demo_pipe.backend.sample
    demo_pipe.backend.sample = lambda x0, *a, **k: calls.append(x0.shape[0]) or real(x0, *a, **k)
    try:
        p = demo_pipe.prepare(synth_video.path, Request(prompt=PROMPT, seed=10, steps=4))
        ranked = rank_candidates(demo_pipe, p, 3)
    finally:
        del demo_pipe.backend.sample
    assert calls == [3]  # one backend call, B = 3
    assert sorted(c.seed for c in ranked) == [10, 11, 12]
    cfg = demo_pipe.config
    for c in ranked:  # the score is Pearson's r of the music curve and the conditioning curve, by hand
        mc = music_curve(c.audio, cfg.audio.sample_rate, p.length, cfg.latent_rate, cfg.curve.kernel).astype(np.float64)
        a, b = mc - mc.mean(), p.curve.astype(np.float64) - p.curve.mean()
        assert c.score == pytest.approx((a @ b) / np.sqrt((a @ a) * (b @ b)), abs=1e-6)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)


def test_cli_keep_candidates(tmp_path, short_video, capsys):
    out = tmp_path / "best.wav"
    rc = main(["generate", str(short_video.path), "-o", str(out), "--model", "demo", "--backend", "onnxruntime",
               "--steps", "2", "--seed", "3", "--candidates", "2", "--keep-candidates", "--json", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    rows = res["candidates"]
    assert [r["seed"] for r in rows] == [3, 4] and sum(r["best"] for r in rows) == 1
    assert all((tmp_path / f"best-seed{s}.wav").is_file() for s in (3, 4))
    best = next(r for r in rows if r["best"])
    assert res["seed"] == best["seed"] and res["score"] == best["score"]
    assert sf.read(out)[0].tolist() == sf.read(tmp_path / f"best-seed{best['seed']}.wav")[0].tolist()
    rc = main(["generate", str(short_video.path), "-o", str(out), "--model", "demo", "--keep-candidates"])
    assert rc == 2


def test_batch_redoes_an_output_when_its_hits_change(tmp_path, short_video, capsys):
    """The batch sidecar's key holds the curve edits and loop: the same hits skip, other hits redo."""
    def run(*extra):
        rc = main(["generate", str(short_video.path.parent), "-o",
                   str(tmp_path / "out"), "--model", "demo", "--backend", "onnxruntime", "--steps", "2", "--seed", "1",
                   "--format", "wav", "--quiet", "--json", *extra])
        assert rc == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("--hit", "1:2")["ok"] == 1
    assert run("--hit", "1:2")["skipped"] == 1
    assert run("--hit", "1.5")["ok"] == 1
    assert run("--hit", "1.5", "--loop")["ok"] == 1
