"""`--backend auto` on a CPU: ONNX Runtime for every bundle, a bundle without graphs exported on
first use into the content-keyed cache (`v2m.runtime.backends.onnx_cache`), and `--threads`.

Oracle for the numbers: the torch backend on the same weights (the export's own parity
tolerance: latents atol 1e-3, audio 2e-3, as tests/export/test_export.py)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from v2m.cli.main import main  # noqa: E402
from v2m.core.bundle import load_config  # noqa: E402
from v2m.core.manifest import load_manifest
from v2m.runtime import Pipeline  # noqa: E402
from v2m.runtime.backends import create_backend, default_threads, onnx_cache, resolve_backend  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache with the exporter registered (as the CLI, the server and Ray register it)."""
    from v2m.export import enable_first_use_export

    root = tmp_path / "cache"
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(root))
    monkeypatch.setattr(onnx_cache, "_exporter", [])
    enable_first_use_export()
    return root


def test_without_a_registered_exporter_auto_stays_on_torch(tiny_bundle, tmp_path, monkeypatch, caplog):
    """The runtime never imports the exporter: a process that did not hand it over runs a bundle
    without graphs on PyTorch, and says why."""
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_cache, "_exporter", [])
    with caplog.at_level(logging.INFO, logger="v2m.backend"):
        pipe = Pipeline.from_pretrained(tiny_bundle, backend="auto", device="cpu")
    assert pipe.backend.name == "torch" and "enable_first_use_export" in caplog.text
    assert not (tmp_path / "cache").exists()


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hashes")


def test_auto_exports_once_then_reuses_and_matches_torch(tiny_bundle, cache, short_video, monkeypatch):
    pipe = Pipeline.from_pretrained(tiny_bundle, backend="auto", device="cpu")
    assert pipe.backend.name == "onnxruntime"
    [entry] = _entries(cache)
    assert pipe.backend.bundle_dir == entry
    got = pipe.generate(short_video.path, prompt="warm synth pop", seed=5, steps=4)
    ref = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu").generate(
        short_video.path, prompt="warm synth pop", seed=5, steps=4)
    np.testing.assert_allclose(got.latents, ref.latents, atol=1e-3, rtol=0)
    np.testing.assert_allclose(got.audio, ref.audio, atol=2e-3, rtol=0)

    import v2m.export.exporter as exporter

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache has the entry")

    monkeypatch.setattr(exporter, "export_bundle", no_export)
    again = Pipeline.from_pretrained(tiny_bundle, backend="auto", device="cpu")
    assert again.backend.bundle_dir == entry and _entries(cache) == [entry]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_changed_weights_get_a_new_key(tiny_bundle, tmp_path, cache, monkeypatch):
    from v2m.models.bundle import init_bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    cfg = load_config(copy)
    key = onnx_cache.cache_key(copy, cfg, "fp32")
    assert onnx_cache.cache_key(tiny_bundle, cfg, "fp32") == key  # content, not path
    assert onnx_cache.cache_key(copy, cfg, "int8") != key
    int8 = onnx_cache.cache_key(copy, cfg, "int8")
    monkeypatch.setattr(onnx_cache, "INT8_RECIPE", onnx_cache.INT8_RECIPE + 1)  # a new int8 recipe: new int8 key
    assert onnx_cache.cache_key(copy, cfg, "int8") != int8 and onnx_cache.cache_key(copy, cfg, "fp32") == key
    other = init_bundle("tiny", tmp_path / "seed1", seed=1)
    shutil.copy(other / "dit.safetensors", copy / "dit.safetensors")  # new bytes, new mtime
    assert onnx_cache.cache_key(copy, cfg, "fp32") != key


_FIRST_USE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from v2m.runtime.backends import create_backend
from v2m.core.bundle import load_config
from v2m.export import enable_first_use_export
enable_first_use_export()
be = create_backend("auto", sys.argv[1], load_config(sys.argv[1]), device="cpu")
print(be.name, be.bundle_dir)
"""


def test_concurrent_first_use_makes_one_entry(tiny_bundle, cache):
    env = {**os.environ, onnx_cache.CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, str(tiny_bundle)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    [entry] = _entries(cache)
    assert {out.split()[1] for out, _ in outs} == {str(entry)}
    assert sum(err.count("exported them") for _, err in outs) == 1, outs  # the other waited on the lock
    man = load_manifest(entry)
    man.verify(load_config(tiny_bundle), None, "fp32")
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_cannot_export_falls_back_to_torch(tiny_bundle, cache, monkeypatch, caplog):
    monkeypatch.setattr(onnx_cache, "can_export", lambda: "onnx")
    with caplog.at_level(logging.INFO, logger="v2m.backend"):
        assert resolve_backend("auto", tiny_bundle, "cpu") == ("torch", "cpu")
    assert any("not ONNX Runtime" in r.message and "cannot export them: onnx" in r.message for r in caplog.records)
    assert resolve_backend("torch", tiny_bundle, "cpu") == ("torch", "cpu")  # --backend torch still forces it
    assert resolve_backend("auto", tiny_bundle, "cpu", "bf16") == ("torch", "cpu")  # ORT CPU has no bf16
    monkeypatch.setattr(onnx_cache, "can_export", lambda: None)  # this install can export
    assert resolve_backend("auto", tiny_bundle, "cpu")[0] == "onnxruntime"
    assert resolve_backend("auto", tiny_bundle, "cpu", torch_options=True)[0] == "torch"  # --fast, --compile, ...
    assert not cache.exists()  # resolving exports nothing


def test_explicit_onnxruntime_without_exporter_is_one_line(tiny_bundle, cache, monkeypatch, short_video, tmp_path,
                                                           capsys):
    monkeypatch.setattr(onnx_cache, "can_export", lambda: "torch, onnx")
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", str(tiny_bundle),
               "--backend", "onnxruntime", "--device", "cpu", "--steps", "2", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot export" in err[0] and "--backend torch" in err[0], err
    assert not (tmp_path / "o.wav").exists()


def test_threads_reach_both_engines(tiny_bundle, cache):
    import torch

    cfg = load_config(tiny_bundle)
    before = torch.get_num_threads()
    try:
        be = create_backend("onnxruntime", tiny_bundle, cfg, device="cpu", threads=1)
        assert be.threads == 1
        for s in be.sessions.values():
            opts = s.get_session_options()
            assert opts.intra_op_num_threads == 1
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # idle threads sleep
        create_backend("torch", tiny_bundle, cfg, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_default_threads_counts_physical_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3  # the standard variable wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_threads() == 1
    # an oracle independent of the sysfs reader: lscpu-style (core, socket) pairs from /proc/cpuinfo
    info = Path("/proc/cpuinfo")
    if not info.is_file() or "core id" not in info.read_text():
        pytest.skip("no core ids in /proc/cpuinfo")
    monkeypatch.undo()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores, phys = set(), None
    allowed = os.sched_getaffinity(0)
    cpu = None
    for line in info.read_text().splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "physical id":
            phys = value
        elif key == "core id" and cpu in allowed:
            cores.add((phys, value))
    assert default_threads() == len(cores)


def test_threads_option_is_checked(capsys):
    rc = main(["generate", "x.mp4", "-o", "o.wav", "--model", "m", "--threads", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "threads" in err


_DECODE_RSS = """
import sys, numpy as np
from v2m.runtime.backends.ort_backend import OrtBackend
from v2m.core.bundle import load_config
be = OrtBackend(sys.argv[1], load_config(sys.argv[1]), threads=1)
if sys.argv[2] == "held":  # the oracle: ONNX Runtime's default run options keep the arena
    import onnxruntime as ort
    be.decode_options = ort.RunOptions()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
be.decode(np.zeros((1, be.cfg.latent_channels, 8), np.float32))
before = rss()
be.decode(np.zeros((1, be.cfg.latent_channels, 300), np.float32))
print(before, rss())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads RSS from /proc")
def test_decode_gives_the_arena_back(tiny_bundle, cache):
    """After a long decode the VAE's arena is shrunk: RSS falls back near where it was, where
    ONNX Runtime's default keeps the whole peak."""
    entry = create_backend("onnxruntime", tiny_bundle, load_config(tiny_bundle), device="cpu").bundle_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    got = {}
    for mode in ("held", "shrink"):
        out = subprocess.run([sys.executable, "-c", _DECODE_RSS, str(entry), mode], env=env, text=True,
                             capture_output=True, timeout=300, check=True).stdout
        got[mode] = [float(v) for v in out.split()]
    held = got["held"][1] - got["held"][0]
    kept = got["shrink"][1] - got["shrink"][0]
    assert held > 50, got  # the oracle keeps its activations' arena
    assert kept < 0.25 * held, got
