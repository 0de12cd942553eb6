"""`v2m serve` end to end: a real server process on 127.0.0.1, a real httpx client.

Oracles: the CLI's own output for the same seed (bit-identical served alone, >= 50 dB SNR
in a batch), the container layout read back with PyAV, the server's request folders on disk
(none may remain), and the Prometheus text for batching.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import soundfile as sf
from _serve_util import free_port, httpx, start_server

from v2m.cli.main import main as cli_main

STEPS = 6
TIMEOUT = httpx.Timeout(120.0)


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = float(np.sum((x.astype(np.float64) - ref) ** 2))
    return 300.0 if err == 0 else float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err))


@pytest.fixture(scope="module")
def server(tiny_bundle, clips, tmp_path_factory):
    srv = start_server(tiny_bundle, tmp_path_factory.mktemp("srv") / "tmp", "--max-batch", "8",
                       "--batch-wait-ms", "3000", "--max-upload-mb", "2", "--max-queue", "64", "--timeout", "300",
                       "--allow-dir", str(clips["one"].parent))
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log.read_text()[-2000:]
    assert not list(srv.tmp.iterdir()), "the server left its temporary folder behind"


@pytest.fixture(scope="module")
def references(tiny_bundle, clips, tmp_path_factory):
    """The CLI's wav for each (clip, seed) the tests ask for: `v2m generate ... -o x.wav`."""
    d = tmp_path_factory.mktemp("refs")
    refs = {}
    for name in ("one", "onehalf"):
        for seed in (11, 12):
            out = d / f"{name}-{seed}.wav"
            rc = cli_main(["generate", str(clips[name]), "-o", str(out), "--model", str(tiny_bundle), "--backend", "torch",
                           "--device", "cpu", "--seed", str(seed), "--steps", str(STEPS), "--prompt", "warm synth", "-q"])
            assert rc == 0
            refs[name, seed] = sf.read(out, dtype="int16")[0]
    return refs


def post(srv, clip, fields: dict | None = None, headers=None, filename="clip.mp4", ctype="video/mp4", **kw):
    data = {"steps": str(STEPS), "prompt": "warm synth", **(fields or {})}
    with open(clip, "rb") as f:
        return httpx.post(f"{srv.url}/v1/generate", data=data, files={"video": (filename, f, ctype)},
                          headers=headers, timeout=TIMEOUT, **kw)


def assert_error(r, status: int, *words: str):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == status and "\n" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]


def assert_survived(srv):
    assert srv.alive()
    left = srv.wait_clean()
    assert not left, f"request folders left behind: {left}"


# --- correct requests ----------------------------------------------------------------------
def test_alone_is_bit_identical_to_the_cli(server, clips, references):
    r = post(server, clips["one"], {"seed": "11", "format": "wav"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-v2m-seed"] == "11" and r.headers["x-v2m-model"] == "tiny"
    assert r.headers["x-v2m-batch-size"] == "1"
    timings = json.loads(r.headers["x-v2m-timings"])
    assert {"decode", "encode", "sampler", "vae", "write"} <= set(timings)
    assert "sampler;dur=" in r.headers["server-timing"]
    audio, rate = sf.read(io.BytesIO(r.content), dtype="int16")
    assert rate == 44100
    np.testing.assert_array_equal(audio, references["one", 11])
    assert_survived(server)


def test_forty_requests_eight_at_a_time(server, clips, references):
    """40 requests, 8 concurrent, two clip lengths, wav and mp4: all correct, batched, nothing left."""
    before = server.metrics()
    jobs = [("one" if i % 3 else "onehalf", 11 + i % 2, "wav" if i % 4 else "mp4") for i in range(40)]

    def one(job):
        name, seed, fmt = job
        return job, post(server, clips[name], {"seed": str(seed), "format": fmt})

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, jobs))
    sizes = []
    for (name, seed, fmt), r in results:
        assert r.status_code == 200, r.text[:300]
        assert r.headers["x-v2m-seed"] == str(seed)
        sizes.append(int(r.headers["x-v2m-batch-size"]))
        if fmt == "wav":
            audio, rate = sf.read(io.BytesIO(r.content), dtype="int16")
            ref = references[name, seed]
            assert audio.shape == ref.shape
            assert snr_db(ref, audio) >= 50.0
        else:
            with av.open(io.BytesIO(r.content)) as c:
                kinds = [s.type for s in c.streams]
                assert kinds.count("video") == 1 and kinds.count("audio") == 1, kinds
                a = c.streams.audio[0]
                assert a.rate == 44100 and a.channels == 2
                dur = float(c.duration) / 1e6
                assert abs(dur - (1.0 if name == "one" else 1.5)) < 0.1
    assert max(sizes) > 1, f"no request was batched: {sizes}"
    after = server.metrics()
    calls = after["v2m_batch_size_count"] - before.get("v2m_batch_size_count", 0)
    items = after["v2m_batch_size_sum"] - before.get("v2m_batch_size_sum", 0)
    assert items == 40 and calls < 40, (calls, items)  # batching seen in /metrics
    assert after['v2m_requests_total{endpoint="/v1/generate",status="200"}'] >= 40
    assert 'v2m_stage_seconds_count{stage="sampler"}' in after and after["v2m_queue_depth"] == 0
    assert_survived(server)


def _served_equals_pipeline(server, clips, bundle, tmp_path, fields: dict, kwargs: dict) -> None:
    from v2m.runtime import Pipeline, media

    r = post(server, clips["one"], {"seed": "5", "format": "wav", **fields})
    assert r.status_code == 200, r.text
    pipe = Pipeline.from_pretrained(bundle, backend="torch", device="cpu")
    want = pipe.generate(clips["one"], prompt="warm synth", seed=5, steps=STEPS, **kwargs)
    media.write_audio(tmp_path / "want.wav", want.audio, want.sample_rate)
    np.testing.assert_array_equal(sf.read(io.BytesIO(r.content), dtype="int16")[0],
                                  sf.read(tmp_path / "want.wav", dtype="int16")[0])


def test_use_curve_reaches_the_sampler(server, clips, tiny_bundle, tmp_path):
    """use_curve=false served alone == Pipeline.generate(use_curve=False)."""
    _served_equals_pipeline(server, clips, tiny_bundle, tmp_path, {"use_curve": "false"}, {"use_curve": False})


def test_shift_reaches_the_sampler(server, clips, tiny_bundle, tmp_path):
    """shift=3 served (after an unshifted request of the same steps) == Pipeline.generate(shift=3)."""
    assert post(server, clips["one"], {"seed": "5", "format": "wav"}).status_code == 200
    _served_equals_pipeline(server, clips, tiny_bundle, tmp_path, {"shift": "3"}, {"shift": 3.0})


@pytest.mark.parametrize("fields,kwargs", [
    ({"solver": "heun"}, {"solver": "heun"}),
    ({"negative_prompt": "harsh noise"}, {"negative_prompt": "harsh noise"}),
    ({"curve_guidance": "1.5"}, {"curve_guidance": 1.5}),
])
def test_sampler_options_of_issue_10(server, clips, tiny_bundle, fields, kwargs, tmp_path):
    """Served alone, each sampler option gives exactly what Pipeline.generate gives."""
    from v2m.runtime import Pipeline, media

    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu")
    want = pipe.generate(clips["one"], prompt="warm synth", seed=5, steps=STEPS, **kwargs)
    r = post(server, clips["one"], {"seed": "5", "format": "wav", **fields})
    assert r.status_code == 200, r.text
    media.write_audio(tmp_path / "want.wav", want.audio, want.sample_rate)
    np.testing.assert_array_equal(sf.read(io.BytesIO(r.content), dtype="int16")[0],
                                  sf.read(tmp_path / "want.wav", dtype="int16")[0])


def test_curve_endpoint_matches_the_cli(server, clips, tiny_bundle, capsys):
    with open(clips["onehalf"], "rb") as f:
        r = httpx.post(f"{server.url}/v1/curve", files={"video": ("x.mp4", f, "video/mp4")}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    capsys.readouterr()
    assert cli_main(["curve", str(clips["onehalf"]), "--model", str(tiny_bundle), "--backend", "torch", "--device", "cpu", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    got = r.json()
    assert got["curve"] == want["curve"] and got["sampled_frames"] == want["sampled_frames"]
    assert got["video_fps"] == want["video_fps"] and got["latent_frames"] == want["latent_frames"]
    assert_survived(server)


def test_health_ready_docs(server):
    assert httpx.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert ready["ready"] is True and ready["model"] == "tiny" and ready["max_batch"] == 8
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"video", "prompt", "seed", "steps", "cfg_scale", "format", "keep_audio"} <= set(body["properties"])
    assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200


# --- hostile requests ----------------------------------------------------------------------
def test_oversized_upload(server, clips):
    big = b"\0" * (3 * 1024 * 1024)
    r = httpx.post(f"{server.url}/v1/generate", files={"video": ("big.mp4", big, "video/mp4")}, timeout=TIMEOUT)
    assert_error(r, 413, "limit")

    def chunks():  # no Content-Length: the limit holds on the bytes received
        yield b"--b\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
        for _ in range(60):
            yield b"\0" * 65536

    r = httpx.post(f"{server.url}/v1/generate", content=chunks(), timeout=TIMEOUT,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 413)
    assert_survived(server)


def test_wrong_content_types(server, clips):
    r = httpx.post(f"{server.url}/v1/generate", json={"prompt": "x"}, timeout=TIMEOUT)
    assert_error(r, 415, "multipart/form-data")
    r = post(server, clips["one"], ctype="text/plain")
    assert_error(r, 415, "text/plain")
    assert_survived(server)


def test_broken_media(server, clips, tmp_path):
    data = clips["one"].read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.txt").write_text("this is not a video\n" * 50)
    for name in ("trunc.mp4", "notes.txt"):
        r = post(server, tmp_path / name)
        assert_error(r, 422)
        assert "video" in r.json()["error"] or "frame" in r.json()["error"]
    assert_survived(server)


def test_client_file_name_is_never_a_path(server, clips):
    target = server.tmp.parent / "escaped.mp4"
    evil = "../" * 12 + str(target).lstrip("/")
    r = post(server, clips["one"], {"seed": "1", "format": "wav"}, filename=evil)
    assert r.status_code == 200, r.text
    assert not target.exists()
    assert_survived(server)


def _by_path(srv, path: str, headers=None):
    return httpx.post(f"{srv.url}/v1/generate", data={"video_path": path, "steps": str(STEPS), "format": "wav"},
                      files={"prompt": (None, b"warm synth")}, headers=headers, timeout=TIMEOUT)


def test_server_side_paths_only_inside_allow_dir(server, clips, tmp_path):
    root = clips["one"].parent
    r = _by_path(server, "one.mp4")
    assert r.status_code == 200, r.text
    assert_error(_by_path(server, "/etc/passwd"), 403, "allowed folder")
    assert_error(_by_path(server, "../" * 8 + "etc/passwd"), 403, "allowed folder")
    link = root / "escape.mp4"  # a link inside the folder to a file outside it
    link.symlink_to(tmp_path / "outside.mp4")
    (tmp_path / "outside.mp4").write_bytes(clips["one"].read_bytes())
    try:
        assert_error(_by_path(server, "escape.mp4"), 403, "allowed folder")
    finally:
        link.unlink()
    assert_survived(server)


def test_missing_and_bad_fields(server, clips):
    r = httpx.post(f"{server.url}/v1/generate", data={"prompt": "x"}, files={"note": (None, b"1")}, timeout=TIMEOUT)
    assert_error(r, 422, "video")
    for fields, words in [({"steps": "abc"}, ("steps",)), ({"steps": "0"}, ("steps",)),
                          ({"cfg_scale": "nan"}, ("cfg_scale",)), ({"solver": "rk45"}, ("solver",)),
                          ({"format": "avi"}, ("format",)), ({"seed": "-1"}, ("seed",)),
                          ({"shift": "0"}, ("shift",)), ({"colour": "red"}, ("unknown",)),
                          ({"keep_audio": "-6", "format": "wav"}, ("keep_audio",))]:
        assert_error(post(server, clips["one"], fields), 422, *words)
    assert_survived(server)


def test_one_megabyte_prompt(server, clips):
    r = post(server, clips["one"], {"prompt": "la " * 350_000})
    assert_error(r, 422, "prompt")
    assert_survived(server)


def _raw(port: int, head: bytes, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + body)
    return s


def _multipart(clip, fields: dict[str, str]) -> tuple[bytes, bytes]:
    b = b"v2mtestboundary"
    parts = [b"--" + b + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n' + v.encode() + b"\r\n"
             for k, v in fields.items()]
    parts.append(b"--" + b + b'\r\nContent-Disposition: form-data; name="video"; filename="c.mp4"\r\n'
                 b"Content-Type: video/mp4\r\n\r\n" + clip.read_bytes() + b"\r\n--" + b + b"--\r\n")
    body = b"".join(parts)
    return body, b"multipart/form-data; boundary=" + b


def test_aborted_upload(server, clips):
    body, ctype = _multipart(clips["one"], {"steps": str(STEPS)})
    head = (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    s = _raw(server.port, head, body[: len(body) // 2])
    time.sleep(0.3)
    s.close()
    assert_survived(server)


def test_client_disconnects_mid_response_and_while_waiting(server, clips):
    body, ctype = _multipart(clips["onehalf"], {"steps": str(STEPS), "format": "wav", "seed": "3"})
    head = (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    s = _raw(server.port, head, body)
    got = s.recv(200)  # the status line and some headers, then go away
    assert got.startswith(b"HTTP/1.1 200")
    s.close()
    s = _raw(server.port, head, body)  # gone before the result exists
    s.close()
    time.sleep(0.5)
    assert_survived(server)
    m = server.metrics()
    assert m.get('v2m_requests_total{endpoint="/v1/generate",status="499"}', 0) >= 1


# --- auth, queue full, timeout, shutdown (a strict server of its own) -----------------------
@pytest.fixture(scope="module")
def strict(tiny_bundle, tmp_path_factory):
    srv = start_server(tiny_bundle, tmp_path_factory.mktemp("strict") / "tmp", "--max-queue", "1", "--timeout", "15",
                       "--shutdown-grace", "60", env={"V2M_API_KEY": "s3cret-key-for-tests"})
    yield srv
    srv.stop()


AUTH = {"Authorization": "Bearer s3cret-key-for-tests"}


def test_auth(strict, clips):
    assert_error(post(strict, clips["one"]), 401, "API key")
    assert_error(post(strict, clips["one"], headers={"Authorization": "Bearer wrong-key-wrong-key"}), 401)
    assert_error(post(strict, clips["one"], headers={"Authorization": "s3cret-key-for-tests"}), 401)
    assert httpx.get(f"{strict.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{strict.url}/healthz", timeout=10).status_code == 200
    assert_error(_by_path(strict, "/etc/passwd", headers=AUTH), 403, "disabled")  # no --allow-dir here
    r = post(strict, clips["one"], {"format": "wav", "seed": "1"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert_survived(strict)


def test_queue_full_then_timeout(strict, clips, tmp_path):
    """One slow request fills the queue (503 + Retry-After for the next) and times out (504)."""
    from v2m.runtime.synth import make_test_video

    long = tmp_path / "long.mp4"  # 30 s at 10000 steps: minutes of sampling, far past the 15 s limit
    make_test_video(long, duration_s=30.0, fps=8.0, size=(64, 48), cuts=(10.0, 20.0))
    slow: dict = {}

    def run():
        slow["r"] = post(strict, long, {"steps": "10000", "format": "wav"}, headers=AUTH)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while strict.metrics(AUTH).get("v2m_requests_in_flight", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = post(strict, clips["one"], headers=AUTH)
    assert_error(r, 503, "queue is full")
    assert int(r.headers["retry-after"]) >= 1
    t.join(60)
    assert not t.is_alive()
    assert_error(slow["r"], 504, "limit")
    assert_survived(strict)
    ok = post(strict, clips["one"], {"format": "wav"}, headers=AUTH)  # the device was freed
    assert ok.status_code == 200, ok.text


def test_graceful_shutdown(tiny_bundle, clips, tmp_path):
    """SIGTERM: the in-flight request finishes, new ones are refused, nothing is left behind."""
    from v2m.runtime.synth import make_test_video

    clip = tmp_path / "ten.mp4"  # a few seconds of work: still running when SIGTERM comes
    make_test_video(clip, duration_s=10.0, fps=8.0, size=(64, 48), cuts=(5.0,))
    srv = start_server(tiny_bundle, tmp_path / "tmp", "--shutdown-grace", "60")
    try:
        res: dict = {}
        t = threading.Thread(target=lambda: res.setdefault("r", post(srv, clip, {"steps": "300", "format": "wav"})))
        t.start()
        deadline = time.monotonic() + 30
        while srv.metrics().get("v2m_requests_in_flight", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.proc.send_signal(15)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/healthz", timeout=5)
        t.join(120)
        assert res["r"].status_code == 200, res["r"].text
        assert float(res["r"].headers["x-v2m-duration"]) == pytest.approx(10.0, abs=0.2)
        assert srv.proc.wait(60) == 0
        assert not list(srv.tmp.iterdir())
    finally:
        srv.stop()


def test_serve_refuses_a_bad_setup_in_one_line(tiny_bundle_copy, tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert cli_main(["serve", "--model", str(tiny_bundle_copy), "--max-batch", "0"]) == 2
    assert cli_main(["serve", "--model", str(tiny_bundle_copy), "--allow-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("v2m: error:") for line in err), err
    dit = tiny_bundle_copy / "dit.safetensors"
    dit.write_bytes(dit.read_bytes()[:1000])  # found only when the weights load, after listening
    proc = subprocess.run([sys.executable, "-m", "v2m.cli.main", "serve", "--model", str(tiny_bundle_copy),
                           "--port", str(free_port()), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("v2m: error:") and "dit.safetensors" in lines[-1] and "Traceback" not in proc.stderr
