"""How `v2m` ends when the world fails around it (issue 22 items 12, 17, 18): a full disk anywhere
(stdout included) is one line and exit 2; stdout closed by its reader is a quiet 141; a second
signal while unwinding changes nothing; init-model never replaces a bundle without --overwrite."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from v2m.cli import info as cli
from v2m.cli.main import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX pipes, signals and /dev/full")


def _lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """A 20 s .wav: `v2m curve music.wav --json` prints a few kB with no model to load."""
    p = tmp_path_factory.mktemp("music") / "music.wav"
    t = np.arange(20 * 22050) / 22050
    sf.write(p, (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32), 22050)
    return p


def _v2m(args, stdout, helper: str = "") -> subprocess.CompletedProcess:
    code = "import sys\n" + helper + "\nfrom v2m.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_closed_pipe_is_a_quiet_141(music):
    """`v2m curve x --json | head -c 0`. Before: exit 1 "internal error" (or 120 with
    "Exception ignored" when the error came at exit)."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write
    try:
        proc = _v2m(["curve", music, "--json"], stdout=w)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_stdout_on_a_full_disk_is_one_line(music):
    """stdout onto /dev/full. Before: exit 1 "internal error"."""
    with open("/dev/full", "w") as full:
        proc = _v2m(["curve", music, "--json"], stdout=full)
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("v2m: error: cannot write standard output (No space left on device); "
                        "free some space or write elsewhere")


def test_enospc_anywhere_is_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache.bin")

    monkeypatch.setattr(cli, "cmd_info", full)
    assert main(["info"]) == 2
    lines = _lines(capsys.readouterr().err)
    assert lines == ["v2m: error: cannot write /data/cache.bin (No space left on device); free some space or write elsewhere"]


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_second_signal_while_unwinding_in_process(monkeypatch, capsys, restore_signals):
    """SIGTERM, then Ctrl-C while the temporary files are removed. Before: the KeyboardInterrupt
    escaped main (a traceback, and the process ended by SIGINT)."""
    from v2m.core import tempfiles

    def work(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    real_remove = tempfiles.remove_live

    def remove_then_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        return real_remove()

    monkeypatch.setattr(cli, "cmd_info", work)
    monkeypatch.setattr(tempfiles, "remove_live", remove_then_ctrl_c)
    try:
        rc = main(["info"])
    except KeyboardInterrupt:
        pytest.fail("the second signal escaped main")
    assert rc == 143 and _lines(capsys.readouterr().err) == ["v2m: interrupted (SIGTERM)"]


SECOND_SIGNAL = """
import os, signal, time
from v2m.cli import info as cli
def work(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:  # unwinding: Ctrl-C and another SIGTERM arrive
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
cli.cmd_info = work
"""


def test_second_signal_while_unwinding_exits_143():
    """Before: exit 130 (the second signal replaced the first) or death by signal with a traceback."""
    proc = _v2m(["info"], stdout=subprocess.PIPE, helper=SECOND_SIGNAL)
    assert proc.returncode == 143 and _lines(proc.stderr) == ["v2m: interrupted (SIGTERM)"], proc.stderr


def test_init_model_never_replaces_a_bundle_silently(tiny_bundle_copy, tmp_path, capsys):
    """Before: a bundle of the same preset was overwritten without --overwrite; -o FILE was exit 1."""
    pytest.importorskip("torch")
    before = {p.name: p.stat().st_mtime_ns for p in tiny_bundle_copy.iterdir()}
    assert main(["init-model", "-o", str(tiny_bundle_copy), "--seed", "3"]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and "holds a bundle already; pass --overwrite" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in tiny_bundle_copy.iterdir()} == before
    (tmp_path / "afile").write_text("x")
    assert main(["init-model", "-o", str(tmp_path / "afile")]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and "is a file" in lines[0] and (tmp_path / "afile").read_text() == "x"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert main(["init-model", "-o", str(tmp_path / "notes"), "--overwrite"]) == 2  # not a bundle: never replaced
    assert main(["init-model", "-o", str(tiny_bundle_copy), "--seed", "3", "--overwrite"]) == 0
