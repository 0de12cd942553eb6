"""`v2m info` reads versions from package metadata and GPUs from the CUDA driver: no torch,
onnx, triton or tensorrt import. Oracle for the versions: each library's own `__version__`."""

import ctypes
import json
import subprocess
import sys

import pytest

from v2m.core import devices
from v2m.runtime.versions import library_version, library_versions

HEAVY = ("torch", "onnx", "triton", "tensorrt")

_WRAPPER = """
import contextlib, io, json, sys
from v2m.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["info", "--json"])
print(json.dumps({"rc": rc, "info": json.loads(out.getvalue()),
                  "imported": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def test_info_imports_no_framework():
    proc = subprocess.run([sys.executable, "-c", _WRAPPER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and res["imported"] == []
    info = res["info"]
    import numpy
    import torch

    assert info["torch"] == torch.__version__ and info["numpy"] == numpy.__version__
    onnx = pytest.importorskip("onnx")
    assert info["onnx"] == onnx.__version__
    assert info["devices"][0] == "cpu" and len(info["devices"]) == 1 + devices.cuda_device_count()


def test_library_version_cases():
    assert library_version("no_such_module_v2m") is None
    assert library_version("json") == "?"  # importable, no distribution metadata
    assert library_version("numpy", ("not-a-dist", "numpy")) == library_versions(("numpy",))["numpy"]


class _FakeDriver:
    """libcuda's cuDeviceGetCount / cuDeviceGet / cuDeviceGetName over two named GPUs."""

    names = [b"NVIDIA H100 80GB HBM3", b"NVIDIA L4"]

    def cuDeviceGetCount(self, ref):
        ref._obj.value = len(self.names)
        return 0

    def cuDeviceGet(self, ref, i):
        ref._obj.value = i
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        ctypes.memmove(buf, self.names[dev.value] + b"\0", len(self.names[dev.value]) + 1)
        return 0


def test_cuda_device_names_without_torch(monkeypatch):
    devices.cuda_device_count.cache_clear()
    monkeypatch.setattr(devices, "_driver", lambda: _FakeDriver())
    try:
        assert devices.cuda_device_names() == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    finally:
        devices.cuda_device_count.cache_clear()
    monkeypatch.setattr(devices, "_driver", lambda: None)
    assert devices.cuda_device_names() == []
    devices.cuda_device_count.cache_clear()
