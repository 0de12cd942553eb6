"""Issue 22, items 4, 5 and 16: `v2m serve` against hostile videos, slow uploads and odd edges.

Real server processes on 127.0.0.1 (see _serve_util); every wait is bounded. Oracles: status
codes and one-line JSON bodies, the server's exit code, /metrics gauges and the folders on disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from _serve_util import httpx, start_server

from v2m.cli.main import main as cli_main

SIX_HOURS = 6 * 3600.0  # the gap videos' last frame (the `gaps` fixture)

TIMEOUT = httpx.Timeout(120.0)


def assert_error(r, status: int, *words: str):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == status and "\n" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]


def post(srv, clip, fields=None, **kw):
    with open(clip, "rb") as f:
        return httpx.post(f"{srv.url}/v1/generate", data={"steps": "4", "format": "wav", **(fields or {})},
                          files={"video": (clip.name, f, "video/mp4")}, timeout=TIMEOUT, **kw)


def wait_metric(srv, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.metrics().get(name, 0) != value:
        if time.monotonic() > deadline:  # a wait's bound, not a timing assertion
            pytest.fail(f"{name} never reached {value}: {srv.metrics().get(name)}")
        time.sleep(0.05)


# --- item 4: a video whose last frame sits 6 h later ------------------------------------------
def test_max_duration_413(tiny_bundle, gaps, clips, tmp_path):
    srv = start_server(tiny_bundle, tmp_path / "tmp", "--max-duration", "600", "--no-warmup")
    try:
        assert_error(post(srv, gaps["honest"]), 413, "21600.0 s", "600 s")  # the header says so
        assert_error(post(srv, gaps["lying"]), 413, "frame at 21600.0 s")  # its frames say so
        with open(gaps["honest"], "rb") as f:
            r = httpx.post(f"{srv.url}/v1/curve", files={"video": ("g.mkv", f, "video/x-matroska")}, timeout=TIMEOUT)
        assert_error(r, 413, "21600.0 s")
        assert post(srv, clips["one"]).status_code == 200
        assert not srv.wait_clean()
    finally:
        assert srv.stop() == 0


def test_abandoned_decode_stops_and_shutdown_never_aborts(tiny_bundle, gaps, clips, tmp_path):
    """No duration limit: the 6 h video times out (504); the device is free for the next request
    at once; a SIGTERM while another one decodes answers it in JSON (503) and exits 0, not SIGABRT."""
    srv = start_server(tiny_bundle, tmp_path / "tmp", "--max-duration", "0", "--timeout", "4",
                       "--shutdown-grace", "1", "--no-warmup")
    try:
        assert_error(post(srv, gaps["honest"]), 504, "limit")
        ok = post(srv, clips["one"])
        assert ok.status_code == 200, ok.text  # before: 504 too, the device thread decoding for hours
        res: dict = {}
        t = threading.Thread(target=lambda: res.setdefault("r", post(srv, gaps["honest"])))
        t.start()
        wait_metric(srv, "v2m_requests_in_flight", 1)
        srv.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert_error(res["r"], 503, "shut down")
        assert int(res["r"].headers["retry-after"]) >= 1
        assert srv.proc.wait(60) == 0, srv.log.read_text()[-2000:]
        assert "terminate called" not in srv.log.read_text()
        assert not list(srv.tmp.iterdir())
    finally:
        srv.stop()


# --- item 5: slow uploads ---------------------------------------------------------------------
def _slow_upload(port: int) -> socket.socket:
    """A request whose body never finishes: the head and a few bytes of 10000."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              b"Content-Length: 10000\r\n\r\n--b\r\n")
    return s


def test_slow_uploads_take_no_queue_slot_and_are_cut(tiny_bundle, clips, tmp_path):
    srv = start_server(tiny_bundle, tmp_path / "tmp", "--max-queue", "1", "--max-uploads", "3",
                       "--upload-timeout", "12", "--no-warmup")
    slow = []
    try:
        slow = [_slow_upload(srv.port) for _ in range(3)]
        wait_metric(srv, "v2m_uploads_in_progress", 3)
        r = post(srv, clips["one"])
        assert_error(r, 503, "uploads in progress")
        slow.pop().close()  # a client gives up: its upload slot is free again
        wait_metric(srv, "v2m_uploads_in_progress", 2)
        r = post(srv, clips["one"])  # two slow uploads hold no --max-queue slot (it is 1)
        assert r.status_code == 200, r.text
        for s in slow:  # cut after --upload-timeout with a 408
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 408"), head[:200]
            assert b'"status":408' in head or b'"status": 408' in head or b"408" in head
        wait_metric(srv, "v2m_uploads_in_progress", 0)
        assert not srv.wait_clean()
    finally:
        for s in slow:
            s.close()
        assert srv.stop() == 0


# --- item 16: server edges --------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_port_zero_stale_roots_bad_fields_and_malformed_http(tiny_bundle, clips, tmp_path):
    from v2m.core.tempfiles import owned_dir

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    mine = owned_dir(tmp, "v2m-serve-")  # named as this (live) process's: kept
    host = mine.name[len("v2m-serve-"):].split(".")[0]
    dead = tmp / f"v2m-serve-{host}.{_dead_pid()}.abcd1234"  # a SIGKILLed server's
    (dead / "req-x").mkdir(parents=True)
    (dead / "req-x" / "upload").write_bytes(b"x" * 100)
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "v2m.cli.main", "serve", "--model", str(tiny_bundle),
                                 "--backend", "torch", "--device", "cpu", "--port", "0", "--tmp-dir", str(tmp),
                                 "--quiet", "--no-warmup", "--allow-dir", str(clips["one"].parent)],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(rb"http://127\.0\.0\.1:(\d+)", log.read_bytes())
            port = int(m.group(1)) if m else time.sleep(0.1)
        assert port, log.read_text()
        assert port != 0
        url = f"http://127.0.0.1:{port}"
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            if time.monotonic() > deadline or proc.poll() is not None:  # a wait's bound
                pytest.fail(log.read_text())
            time.sleep(0.1)
        assert not dead.exists() and mine.exists()
        r = httpx.post(f"{url}/v1/generate", data={"video_path": "one.mp4\0/../x", "format": "wav"},
                       files={"prompt": (None, b"x")}, timeout=TIMEOUT)
        assert_error(r, 422, "NUL")
        with open(clips["one"], "rb") as fh:
            r = httpx.post(f"{url}/v1/generate", data={"keep_audio": "100"}, files={"video": ("a.mp4", fh, "video/mp4")},
                           timeout=TIMEOUT)
        assert_error(r, 422, "keep_audio", "[-60, 20]")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # uvicorn's parser refuses it
            s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
            raw = b""
            while chunk := s.recv(4096):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, raw[:300]
        assert json.loads(body)["status"] == 400
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_port_in_use_is_one_line_exit_2(tiny_bundle, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--model", str(tiny_bundle), "--port", str(port), "--no-warmup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("v2m: error:") and f":{port}" in err[0] and "--port" in err[0], err


def test_serve_limit_options_checked(tiny_bundle, capsys):
    for opt, value in [("--max-uploads", "0"), ("--upload-timeout", "0"), ("--max-duration", "-5"),
                       ("--max-candidates", "0"), ("--max-candidates", "65")]:
        assert cli_main(["serve", "--model", str(tiny_bundle), opt, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and opt in err[0], err
