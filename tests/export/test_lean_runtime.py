"""The lean runtime: an exported bundle runs with torch, onnx, tensorrt and triton unimportable.

Each test runs a fresh interpreter whose `sitecustomize` puts a meta-path finder in
front of every other, raising ImportError for those packages (as if they were not
installed), then calls `v2m.cli.main.main`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest

from v2m.export.exporter import export_bundle
from v2m.models.bundle import init_bundle

pytest.importorskip("onnxruntime")

BLOCKED = ("torch", "onnx", "tensorrt", "triton")

SITECUSTOMIZE = f"""
import sys

_BLOCKED = {set(BLOCKED)!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ImportError(f"{{name}} is blocked (lean runtime test)")
        return None


sys.meta_path.insert(0, _Blocker())
"""


@pytest.fixture(scope="module")
def lean_bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lean")
    src = init_bundle("tiny", d / "bundle", seed=0)
    export_bundle(src, d / "exported")  # no weights: graphs, config, text table only
    return d / "exported"


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("blocker")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


def _python(blocker: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_blocker_blocks(blocker, tmp_path):
    r = _python(blocker, """
        import importlib.util
        try:
            import torch
        except ImportError:
            print("blocked")
        from v2m.runtime.backends import available_backends
        print(available_backends())
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "blocked"
    assert "'torch': False" in r.stdout and "'onnxruntime': True" in r.stdout


def test_generate_without_torch(lean_bundle, blocker, short_video, tmp_path):
    assert not (lean_bundle / "dit.safetensors").exists()
    out = tmp_path / "music.mp4"
    r = _python(blocker, f"""
        import json, sys
        from v2m.cli.main import main
        rc = main(["generate", {str(short_video.path)!r}, "-o", {str(out)!r}, "--model", {str(lean_bundle)!r},
                   "--backend", "onnxruntime", "--device", "cpu", "--seed", "5", "--prompt", "warm synth pop"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        print(json.dumps({{"rc": rc, "loaded": loaded}}))
        sys.exit(rc)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "loaded": []}
    assert "backend onnxruntime" in r.stdout
    with av.open(str(out)) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        audio = c.streams.audio[0]
        assert audio.rate == 44100 and audio.channels == 2
        duration = float(c.duration) / av.time_base
    assert abs(duration - short_video.duration_s) < 0.2


def test_auto_backend_without_torch_picks_onnxruntime(lean_bundle, blocker, short_video, tmp_path):
    out = tmp_path / "music.wav"
    r = _python(blocker, f"""
        import sys
        from v2m.cli.main import main
        sys.exit(main(["generate", {str(short_video.path)!r}, "-o", {str(out)!r}, "--model", {str(lean_bundle)!r},
                       "--steps", "4", "--seed", "1", "-q"]))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "backend onnxruntime" in r.stdout and out.is_file()


def test_runtime_modules_import_without_torch(blocker, tmp_path):
    r = _python(blocker, """
        import importlib, pkgutil, sys
        import v2m.runtime, v2m.runtime.backends
        names = ["v2m.runtime." + m.name for m in pkgutil.iter_modules(v2m.runtime.__path__)]
        names += ["v2m.runtime.backends." + m.name for m in pkgutil.iter_modules(v2m.runtime.backends.__path__)]
        names += ["v2m.export", "v2m.core.contracts", "v2m.runtime.backends.trt_build"]
        failed = []
        for name in names:
            if name.rpartition(".")[2].startswith("torch"):
                continue  # the torch backend (and its helpers) are torch
            try:
                importlib.import_module(name)
            except ImportError as e:
                failed.append(f"{name}: {e}")
        print("\\n".join(failed) or "ok")
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_tensorrt_backend_unavailable_without_tensorrt(lean_bundle, blocker, tmp_path):
    r = _python(blocker, f"""
        from v2m.runtime.backends.trt_backend import TensorRTBackend
        from v2m.core.bundle import load_config
        from v2m.core.errors import BackendUnavailable
        try:
            TensorRTBackend({str(lean_bundle)!r}, load_config({str(lean_bundle)!r}), device="cuda")
        except BackendUnavailable as e:
            print("unavailable:", e)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("unavailable: TensorRT is not installed")


def test_device_auto_without_torch_uses_the_gpu_the_driver_reports(lean_bundle, blocker, tmp_path):
    """--device auto is decided without torch: the CUDA driver's device count (faked to 1 here)
    and onnxruntime's providers pick the GPU for a torch-free install, or the CPU with a warning
    when this onnxruntime has no CUDA provider."""
    r = _python(blocker, f"""
        import json, logging, sys
        import onnxruntime
        from v2m.core import devices
        from v2m.runtime.backends import resolve_backend
        devices.cuda_device_count.cache_clear()
        devices.cuda_device_count = lambda: 1
        import v2m.runtime.backends as b
        b.devices = devices
        out = {{}}
        onnxruntime.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        out["gpu_ort"] = resolve_backend("auto", {str(lean_bundle)!r}, "auto")
        onnxruntime.get_available_providers = lambda: ["CPUExecutionProvider"]
        out["cpu_ort"] = resolve_backend("auto", {str(lean_bundle)!r}, "auto")
        out["explicit"] = resolve_backend("onnxruntime", {str(lean_bundle)!r}, "cuda:1")
        devices.cuda_device_count = lambda: 0
        out["no_gpu"] = resolve_backend("auto", {str(lean_bundle)!r}, "auto")
        out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        print(json.dumps(out))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["gpu_ort"] == ["onnxruntime", "cuda"]
    assert out["cpu_ort"] == ["onnxruntime", "cpu"] and "no CUDA provider" in r.stderr
    assert out["explicit"] == ["onnxruntime", "cuda:1"]
    assert out["no_gpu"] == ["onnxruntime", "cpu"]
    assert out["loaded"] == []


def test_torch_commands_say_what_to_install(lean_bundle, blocker, short_video, tmp_path):
    """Without torch, each command that needs it is one line naming the extra, exit 2
    (before: `internal error: ModuleNotFoundError` and exit 1 for init-model and demo; plain `v2m demo`
    now runs without torch, on the demo bundle's graphs)."""
    cases = {
        "init-model": ["init-model", "-o", str(tmp_path / "b")],
        "demo --preset": ["demo", "--preset", "tiny", "-o", str(tmp_path / "d.mp4")],  # plain `demo` runs: ONNX
        "train": ["train", "autoencoder", "-o", str(tmp_path / "ae")],
        "export": ["export", str(lean_bundle), "-o", str(tmp_path / "x")],
        "torch backend": ["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model",
                          str(lean_bundle), "--backend", "torch"],
    }
    r = _python(blocker, f"""
        import contextlib, io, json
        from v2m.cli.main import main
        out = {{}}
        for name, argv in {cases!r}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            out[name] = [rc, err.getvalue()]
        print(json.dumps(out))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (rc, err) in results.items():
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("v2m: error:"), (name, rc, err)
        assert "needs torch" in err and "pip install" in err and "internal error" not in err, (name, err)
    assert "[torch]" in results["init-model"][1] and "[export]" in results["export"][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_demo_without_torch(blocker, tmp_path):
    """README's main job on a torch-free install: the demo bundle ships its ONNX graphs."""
    out = tmp_path / "demo.wav"
    r = _python(blocker, f"""
        import sys
        from v2m.cli.main import main
        rc = main(["demo", "-o", {str(out)!r}, "--duration", "3"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        print("loaded", loaded)
        sys.exit(rc)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "backend onnxruntime" in r.stdout and "loaded []" in r.stdout and out.is_file()
