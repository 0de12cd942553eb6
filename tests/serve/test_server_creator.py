"""`v2m serve`'s creator fields end to end on the trained demo bundle: ranked candidates (best
body, scores in X-V2M-Candidates, every file in a zip), music without a video (`duration`) and
prompt=auto, each with its bad values refused at the edge.

Oracles: the music curve of the returned audio correlated with the video's conditioning curve
by hand (`music_curve` + `curve_correlation`, not the server's ranking), `rank_candidates` run
in this process on the same seeds, the sample count
round(d * 44100), and the weight-free describer run in this process without its cache.
"""

from __future__ import annotations

import io
import json
import urllib.parse
import zipfile

import numpy as np
import pytest
import soundfile as sf
from _serve_util import httpx, start_server
from test_server import assert_error, assert_survived

from v2m.eval.evaluate import curve_correlation
from v2m.runtime.music import music_curve
from v2m.runtime.request import Request

PROMPT = "medium 120 bpm major groove, backbeat drums, warm pad, bass"
STEPS = 4
TIMEOUT = httpx.Timeout(180.0)
MAX_CANDIDATES, MAX_DURATION = 4, 10


@pytest.fixture(scope="module")
def demo_bundle():
    from v2m.runtime.demo import demo_bundle_path

    return demo_bundle_path()


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("creator_srv")
    srv = start_server(demo_bundle, d / "tmp", "--max-candidates", str(MAX_CANDIDATES), "--max-duration",
                       str(MAX_DURATION), "--max-batch", "8", "--batch-wait-ms", "0",
                       env={"XDG_CACHE_HOME": str(d / "cache")})
    yield srv
    assert srv.stop() == 0, srv.log.read_text()[-2000:]
    assert not list(srv.tmp.iterdir()), "the server left its temporary folder behind"


@pytest.fixture(scope="module")
def demo_pipe(demo_bundle):
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained(demo_bundle, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def paced(tmp_path_factory):
    """A fast clip (a new scene every 0.25 s) and a slow one (one scene), 3 s each."""
    from v2m.runtime.synth import make_test_video

    d = tmp_path_factory.mktemp("paced")
    fast, slow = d / "fast.mp4", d / "slow.mp4"
    make_test_video(fast, duration_s=3.0, size=(96, 64), cuts=tuple(0.25 * i for i in range(1, 12)))
    make_test_video(slow, duration_s=3.0, size=(96, 64), cuts=())
    return fast, slow


def post(srv, clip=None, fields: dict | None = None, content: bytes | None = None):
    """POST /v1/generate with `clip` (or `content` as the video part; neither: no file part)."""
    data = {"steps": str(STEPS), "prompt": PROMPT, **(fields or {})}
    if content is None and clip is not None:
        content = clip.read_bytes()
    if content is None:
        return _post_fields(srv, data)
    return httpx.post(f"{srv.url}/v1/generate", data=data, files={"video": ("clip.mp4", content, "video/mp4")},
                      timeout=TIMEOUT)


def _post_fields(srv, data: dict):
    """A multipart body of text fields only (no file part)."""
    boundary = "v2m-test-boundary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in data.items())
    body += f"--{boundary}--\r\n"
    return httpx.post(f"{srv.url}/v1/generate", content=body.encode(), timeout=TIMEOUT,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _score(pipe, audio: np.ndarray, curve: np.ndarray) -> float | None:
    """Pearson's r of the music curve of `audio` [N, 2] (int16) and the conditioning curve, by hand."""
    cfg = pipe.config
    x = (audio.astype(np.float32) / 32768.0).T
    return curve_correlation(music_curve(x, cfg.audio.sample_rate, len(curve), cfg.latent_rate, cfg.curve.kernel), curve)


# --- candidates ----------------------------------------------------------------------------
def test_candidates_best_body_and_scores(server, clips, demo_pipe):
    r = post(server, clips["onehalf"], {"seed": "20", "candidates": "3", "format": "wav"})
    assert r.status_code == 200, r.text[:300]
    rows = json.loads(r.headers["x-v2m-candidates"])
    assert [row["seed"] for row in rows] == [20, 21, 22]
    assert all(row["score"] is not None for row in rows)
    (best,) = [row for row in rows if row["best"]]
    assert best["score"] == max(row["score"] for row in rows)
    assert r.headers["x-v2m-seed"] == str(best["seed"]) and r.headers["x-v2m-batch-size"] == "3"  # one batch
    p = demo_pipe.prepare(clips["onehalf"], Request(prompt=PROMPT, seed=20, steps=STEPS))
    audio, _ = sf.read(io.BytesIO(r.content), dtype="int16")
    assert _score(demo_pipe, audio, p.curve) == pytest.approx(best["score"], abs=2e-3)
    # the CLI's ranking in this process (same seeds, one batch, one thread): the same scores
    from v2m.eval.candidates import rank_candidates

    local = {c.seed: c.score for c in rank_candidates(demo_pipe, p, 3)}
    assert {row["seed"]: row["score"] for row in rows} == pytest.approx(local, abs=1e-5)
    assert_survived(server)


def test_keep_candidates_returns_every_file(server, clips, demo_pipe):
    r = post(server, clips["onehalf"], {"seed": "30", "candidates": "3", "keep_candidates": "true", "format": "wav"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/zip"
    rows = json.loads(r.headers["x-v2m-candidates"])
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(z.namelist()) == ["candidates.json", "v2m-30.wav", "v2m-31.wav", "v2m-32.wav"]
    assert json.loads(z.read("candidates.json")) == rows
    curve = demo_pipe.prepare(clips["onehalf"], Request(prompt=PROMPT, seed=30, steps=STEPS)).curve
    audios = {}
    for row in rows:
        audios[row["seed"]], _ = sf.read(io.BytesIO(z.read(row["file"])), dtype="int16")
        assert _score(demo_pipe, audios[row["seed"]], curve) == pytest.approx(row["score"], abs=2e-3)
    a, b, c = audios.values()
    assert not np.array_equal(a, b) and not np.array_equal(b, c) and not np.array_equal(a, c)
    assert_survived(server)


# --- music without a video -----------------------------------------------------------------
@pytest.mark.parametrize("seconds, fmt", [(1.3, None), (0.77, "flac")])
def test_duration_is_sample_exact(server, seconds, fmt):
    r = post(server, None, {"duration": str(seconds), "seed": "1", **({"format": fmt} if fmt else {})})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == f"audio/{fmt or 'wav'}"
    audio, rate = sf.read(io.BytesIO(r.content), dtype="int16")
    assert rate == 44100 and audio.shape == (round(seconds * 44100), 2)
    assert_survived(server)


# --- prompt=auto ---------------------------------------------------------------------------
def test_prompt_auto_follows_the_video(server, paced):
    from v2m.runtime.describe import auto_prompt

    got = {}
    for clip in paced:
        r = post(server, clip, {"prompt": "auto", "steps": "2", "seed": "3", "format": "wav"})
        assert r.status_code == 200, r.text[:300]
        got[clip.name] = urllib.parse.unquote(r.headers["x-v2m-prompt"])
        assert got[clip.name] == auto_prompt(clip, use_cache=False)[0]
    assert got["fast.mp4"] != got["slow.mp4"]
    assert got["fast.mp4"].split()[0] == "fast" and got["slow.mp4"].split()[0] in ("slow", "medium")
    assert_survived(server)


# --- bad values ----------------------------------------------------------------------------
NOT_A_VIDEO = b"\x00" * 2048  # decoding it would fail: a field error first shows the check ran before


@pytest.mark.parametrize("fields, video, words", [
    ({"candidates": "0"}, True, "candidates"),
    ({"candidates": "1000"}, True, "--max-candidates"),
    ({"candidates": str(MAX_CANDIDATES + 1)}, True, "--max-candidates"),
    ({"candidates": "x"}, True, "candidates"),
    ({"keep_candidates": "true"}, True, "keep_candidates"),
    ({"candidates": "2", "seed": str(2**63 - 1)}, True, "2^63"),
    ({"duration": "-1"}, False, "duration"),
    ({"duration": "nan"}, False, "duration"),
    ({"duration": "0"}, False, "duration"),
    ({"duration": str(MAX_DURATION + 1)}, False, "--max-duration"),
    ({"duration": "2"}, True, "without a video"),
    ({"duration": "2", "format": "mp4"}, False, "wav"),
    ({"prompt": "auto", "duration": "2"}, False, "prompt=auto"),
    ({}, False, "duration"),
])
def test_bad_creator_values_are_one_line_422(server, fields, video, words):
    r = post(server, None, fields, content=NOT_A_VIDEO if video else None)
    assert_error(r, 422, words)
    assert_survived(server)



def test_prompt_auto_runs_the_servers_model_stages(demo_bundle, paced, tmp_path):
    """`v2m serve --lm DIR`: prompt=auto goes through the LM stage. The tiny LM is rigged to answer
    "warm warm ..." whatever it reads, so the header shows the stage ran (the describer never says that)."""
    import sys
    from pathlib import Path

    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from tiny_prompt_models import tiny_lm

    lm = tiny_lm(tmp_path / "warm-lm", favourite="warm")
    srv = start_server(demo_bundle, tmp_path / "tmp", "--lm", str(lm), "--batch-wait-ms", "0",
                       env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        r = post(srv, paced[1], {"prompt": "auto", "steps": "2", "seed": "1", "format": "wav"})
        assert r.status_code == 200, r.text[:300]
        assert urllib.parse.unquote(r.headers["x-v2m-prompt"]).startswith("warm warm")
    finally:
        assert srv.stop() == 0, srv.log.read_text()[-2000:]


def test_serve_refuses_a_bad_model_folder(tmp_path, capsys):
    from v2m.cli.main import main

    rc = main(["serve", "--model", "demo", "--lm", str(tmp_path / "nowhere"), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a local model directory" in err[0], err
