"""The one atomic writer (`tempfiles.atomic_output`) on hostile targets: device nodes, names at
the file system's limit, the umask, and a disk that fills while libsndfile seeks (issue 22,
items 3, 11, 12, 13)."""

from __future__ import annotations

import errno
import os
import stat
import threading

import numpy as np
import pytest

from v2m.core import tempfiles
from v2m.core.errors import OutputError
from v2m.runtime import media
from v2m.runtime.profiler import check_report_paths, write_json_atomic

SR = 44100
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX device nodes and umask")


def _music(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.3


@pytest.fixture
def char_device(tmp_path):
    """`char_device(name, minor)`: a character device node in tmp (1, 3 = /dev/null; 1, 7 = /dev/full)."""

    def make(name: str, minor: int):
        p = tmp_path / name
        try:
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        except PermissionError:
            pytest.skip("mknod needs root")
        return p

    return make


def _is_char_device(p) -> bool:
    return stat.S_ISCHR(os.lstat(p).st_mode)


def test_null_device_is_written_in_place(char_device, tmp_path):
    """Before: the temporary file was renamed over the node, which became a regular file."""
    for name, write in (("null.json", lambda p: write_json_atomic(p, {"a": 1})),
                        ("null.wav", lambda p: media.write_audio(p, _music(0.5), SR))):
        node = char_device(name, 3)
        if node.suffix == ".wav":
            assert media.check_output_path(node) == "wav"
        else:
            check_report_paths({"--profile": node})
        write(node)
        assert _is_char_device(node)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.json", "null.wav"]  # no temp file left


def test_full_device_fails_in_one_line_and_stays(char_device):
    node = char_device("full.wav", 7)
    with pytest.raises(OutputError, match="No space left on device") as e:
        media.write_audio(node, _music(0.5), SR)
    assert "\n" not in str(e.value) and "free some space" in str(e.value)
    with pytest.raises(OutputError, match="No space left on device"):
        write_json_atomic(char_device("full.json", 7), {"a": 1})
    assert _is_char_device(node)


def test_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_json_atomic(fifo, {"a": 1})
    reader.join(timeout=30)
    assert got and b'"a": 1' in got[0] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("stem_len", [225, 251])
def test_longest_legal_name_writes(tmp_path, stem_len):
    """Before: the temp name `.STEM.HOST.PID.TOKEN.v2m-tmp.wav` passed NAME_MAX after the run."""
    out = tmp_path / ("é" * (stem_len // 2) + "x" * (stem_len % 2) + ".wav")
    assert len(os.fsencode(out.name)) <= 255
    media.write_audio(out, _music(0.5), SR)
    write_json_atomic(tmp_path / ("r" * 250 + ".json"), {"a": 1})
    assert out.is_file() and len(list(tmp_path.iterdir())) == 2


def test_too_long_name_is_refused_up_front(tmp_path):
    out = tmp_path / ("x" * 252 + ".wav")  # 256 bytes
    with pytest.raises(OutputError, match="over the file system's limit of 255") as e:
        media.check_output_path(out)
    assert "\n" not in str(e.value)
    with pytest.raises(OutputError, match="limit"):
        check_report_paths({"--trace": tmp_path / ("t" * 300 + ".json")})


def test_outputs_honour_the_umask(tmp_path):
    """Before: mkstemp (the profiler) and safetensors made 0600 files that the rename kept."""
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        media.write_audio(tmp_path / "a.wav", _music(0.2), SR)
        with tempfiles.atomic_output(tmp_path / "w.bin") as tmp:
            os.chmod(tmp, 0o600)  # what safetensors does
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"report.json": 0o644, "a.wav": 0o644, "w.bin": 0o644}
        os.umask(0o077)
        write_json_atomic(tmp_path / "report.json", {"a": 2})
        assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_safetensors_honours_the_umask(tmp_path):
    torch = pytest.importorskip("torch")
    from v2m.models.checkpoint import save_safetensors

    old = os.umask(0o022)
    try:
        p = save_safetensors({"w": torch.zeros(3)}, tmp_path / "dit.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


class _LateFull:
    """A file that takes writes (buffered) and fails with ENOSPC when it must flush them:
    in `seek` and `flush`, which libsndfile calls from C callbacks."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def write(self, data) -> int:
        return len(data)

    def seek(self, *a):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_in_seek_prints_no_callback_traceback(tmp_path, monkeypatch, capfd):
    """Before: one 'From cffi callback' traceback per seek (9 here), then the one line."""
    monkeypatch.setattr(media, "_open_for_write", _LateFull)
    with pytest.raises(OutputError, match="No space left on device"):
        media.write_audio(tmp_path / "a.wav", _music(3.0), SR)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "cffi" not in err
    assert list(tmp_path.iterdir()) == []


def test_plot_onto_a_device_is_written_in_place(char_device):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from v2m.eval.evaluate import _save_png

    node = char_device("plot.png", 3)
    fig = plt.figure()
    _save_png(fig, node)
    assert _is_char_device(node)
