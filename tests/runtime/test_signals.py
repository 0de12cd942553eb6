"""Signals, for real: `v2m generate` in a subprocess, stopped by SIGTERM, SIGHUP, SIGINT
or SIGKILL while its output's temporary file is complete but not yet renamed.

The subprocess is the real CLI (on the ONNX Runtime backend when it is installed: no
torch to import) with one change: the first flush of a finished
temporary file (`tempfiles._fsync`) announces it on stdout and waits, so the signal
lands at the worst moment. Before: SIGTERM and SIGHUP left `.name.hex.tmp.ext` files
that nothing removed. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from v2m.cli.main import main
from v2m.core import tempfiles

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

HELPER = """
import sys, time
from v2m.core import tempfiles

real_fsync = tempfiles._fsync
first = [True]

def fsync_then_wait(path):
    real_fsync(path)
    if first[0]:
        first[0] = False
        print("WRITING", path, flush=True)
        time.sleep(120)  # the test signals us here

tempfiles._fsync = fsync_then_wait
from v2m.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

WAIT_S = 180  # start-up under load: import torch, load the bundle, generate


class Run:
    """A `v2m` subprocess paused with a complete temporary file."""

    def __init__(self, helper: Path, argv: list[str], cwd: Path):
        def default_sigint():
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background parent may ignore it

        self.proc = subprocess.Popen([sys.executable, str(helper), *map(str, argv)], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def temp_file(self) -> Path:
        """Wait until the subprocess holds a finished temporary file; its path."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"v2m ended early ({self.proc.wait()}): {self.proc.stderr.read()}")
            if line.startswith("WRITING "):
                return Path(line.split(" ", 1)[1])
        self.proc.kill()
        raise AssertionError("v2m did not reach the write in time")

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"v2m did not end after {signal.Signals(sig).name}") from None
        return rc, self.proc.stderr.read()


@pytest.fixture(scope="module")
def model_args(tmp_path_factory, tiny_bundle) -> list:
    """The tiny bundle exported to ONNX when onnxruntime is here: a subprocess then needs no
    torch (a sixth of the start-up time); else the PyTorch bundle."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return ["--model", tiny_bundle, "--backend", "torch"]
    from v2m.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("signals-onnx") / "tiny-onnx"
    export_bundle(tiny_bundle, out, check=False)
    return ["--model", out, "--backend", "onnxruntime"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_args):
    """Every subprocess of this module, started at once (they mostly wait on imports)."""
    from v2m.runtime.synth import make_test_video

    root = tmp_path_factory.mktemp("signals")
    helper = root / "slow_v2m.py"
    helper.write_text(HELPER)
    clips = [root / "a.mp4", root / "b.mp4"]
    for i, clip in enumerate(clips):
        make_test_video(clip, duration_s=1.0, seed=i)
    common = [*model_args, "--device", "cpu", "--steps", "2", "--seed", "1", "-q"]
    started = {}
    for name, out in (("SIGTERM", "o.mp4"), ("SIGHUP", "o.wav"), ("SIGKILL", "o.mp4")):
        d = root / name
        d.mkdir()
        started[name] = (Run(helper, ["generate", clips[0], "-o", d / out, *common], root), d / out)
    for name in ("batch-SIGTERM", "batch-SIGKILL"):
        d = root / name
        started[name] = (Run(helper, ["generate", *clips, "-o", d, "--format", "mp4", *common], root), d)
    yield started
    for run, _ in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=30)


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if tempfiles.is_temp_name(p.name) or "tmp" in p.name)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])  # SIGINT: test_batch's interrupted run
def test_signal_removes_the_temporary_file(runs, name):
    run, out = runs[name]
    tmp = run.temp_file()
    assert tmp.is_file() and tmp.parent == out.parent and tempfiles.is_temp_name(tmp.name)
    sig = getattr(signal, name)
    rc, err = run.stop(sig)
    assert rc == 128 + sig, err
    assert f"v2m: interrupted ({name})" in err and "Traceback" not in err
    assert not out.exists() and _temps(out.parent) == []


def test_sigkill_leftover_is_removed_by_the_next_run(runs, model_args, capsys):
    run, out = runs["SIGKILL"]
    tmp = run.temp_file()
    rc, _ = run.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert tmp.is_file() and _temps(out.parent) == [tmp.name]  # nothing could clean it
    assert f".{run.proc.pid}." in tmp.name  # its name says whose it was
    clip = out.parent.parent / "a.mp4"
    assert main([str(a) for a in ("generate", clip, "-o", out, *model_args, "--device", "cpu", "--steps", "2", "-q")]) == 0
    assert not tmp.exists() and _temps(out.parent) == [] and out.is_file()


def test_batch_sigterm(runs):
    run, out_dir = runs["batch-SIGTERM"]
    tmp = run.temp_file()
    assert tmp.parent == out_dir
    rc, err = run.stop(signal.SIGTERM)
    assert rc == 143 and "v2m: interrupted (SIGTERM)" in err, err
    assert _temps(out_dir) == []
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["counts"]["ok"] == 0 and all(i["status"] == "pending" for i in summary["items"])
    assert {i["reason"] for i in summary["items"]} == {"interrupted"}
    assert not list(out_dir.glob("*.mp4"))


def test_batch_sigkill_then_resume(runs, model_args, capsys):
    run, out_dir = runs["batch-SIGKILL"]
    tmp = run.temp_file()
    assert run.stop(signal.SIGKILL)[0] == -signal.SIGKILL
    assert tmp.is_file()
    clips = [out_dir.parent / "a.mp4", out_dir.parent / "b.mp4"]
    rc = main([str(a) for a in ("generate", *clips, "-o", out_dir, *model_args, "--device", "cpu",
                                "--steps", "2", "--seed", "1", "-q", "--json")])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)  # --json in batch mode: one object, the counts
    assert (data["ok"], data["failed"], data["skipped"]) == (2, 0, 0) and data["summary"].endswith("summary.json")
    assert _temps(out_dir) == [] and sorted(p.name for p in out_dir.glob("*.mp4")) == ["a.mp4", "b.mp4"]


# --- the stale rule, without subprocesses -----------------------------------------------


def test_stale_rule(tmp_path):
    host = tempfiles._host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".clip.{host}.{dead.pid}.0123abcd.v2m-tmp.mp4",
            "alive": f".clip.{host}.{alive.pid}.0123abcd.v2m-tmp.mp4",
            "mine": f".clip.{host}.{os.getpid()}.0123abcd.v2m-tmp.wav",
            "other-host-new": ".clip.elsewhere.1.0123abcd.v2m-tmp.mp4",
            "other-host-old": ".song.elsewhere.2.89abcdef.v2m-tmp.flac",
            "not-ours": ".clip.12345.tmp.mp4",
            "summary": f".summary.{host}.{dead.pid}.0123abcd.v2m-tmp.json",
        }
        for n in names.values():
            (tmp_path / n).write_bytes(b"x")
        old = time.time() - tempfiles.STALE_AFTER_S - 60
        os.utime(tmp_path / names["other-host-old"], (old, old))
        removed = {p.name for p in tempfiles.clean_stale(tmp_path, force=True)}
        assert removed == {names["dead"], names["other-host-old"], names["summary"]}
        assert tempfiles.clean_stale(tmp_path) == []  # once per directory
    finally:
        alive.kill()
        alive.wait(timeout=60)
