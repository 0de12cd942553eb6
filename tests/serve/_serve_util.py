"""Helpers for the serve tests: a real `v2m serve` process on 127.0.0.1 (a free port); every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    tmp: Path  # --tmp-dir: the server's request folders live under tmp/v2m-serve-*/
    proc: subprocess.Popen
    log: Path

    def request_dirs(self) -> list[Path]:
        return [p for root in self.tmp.glob("v2m-serve-*") for p in root.iterdir()]

    def wait_clean(self, timeout: float = 10.0) -> list[Path]:
        """Request folders left after `timeout` seconds (empty: all removed)."""
        deadline = time.monotonic() + timeout
        while (left := self.request_dirs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def metrics(self, headers=None) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10, headers=headers).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(bundle: Path, tmp: Path, *extra: str, env: dict | None = None) -> Server:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp.parent / f"server-{port}.log"
    cmd = [sys.executable, "-m", "v2m.cli.main", "serve", "--model", str(bundle), "--backend", "torch",
           "--device", "cpu", "--port", str(port), "--tmp-dir", str(tmp), "--quiet", *extra]
    with open(log, "wb") as f:
        # cwd outside the checkout, as an installed `v2m serve` runs: `python -m` puts its cwd first on
        # sys.path, where the checkout's top-level folders (kernels/, models/) would shadow PyPI
        # packages of those names (transformers imports HF's `kernels`)
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp.parent,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    srv = Server(f"http://127.0.0.1:{port}", port, tmp, proc, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200:
                return srv
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S} s: {log.read_text()[-2000:]}")


