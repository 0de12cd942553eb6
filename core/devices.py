"""Device names and GPU discovery without any framework.

`--device auto` must not need torch: a torch-free install with onnxruntime-gpu or
TensorRT runs on the GPU too. The CUDA driver API (`libcuda`, present wherever an
NVIDIA driver is) answers how many GPUs this process may use, honouring
CUDA_VISIBLE_DEVICES; nothing is allocated and no context is created.
"""

from __future__ import annotations

import ctypes
import functools
import logging

from .errors import InputError

__all__ = ["parse_device", "cuda_device_count", "cuda_device_names", "check_device"]

log = logging.getLogger("v2m.devices")


def parse_device(device: str) -> tuple[str, int | None]:
    """"cpu" | "cuda" | "cuda:N" | "auto" -> (kind, index or None). One-line error otherwise."""
    d = str(device).strip().lower()
    if d in ("cpu", "auto"):
        return d, None
    kind, sep, idx = d.partition(":")
    if kind == "cuda" and (not sep or idx.isdigit()):
        return "cuda", int(idx) if sep else None
    raise InputError(f"--device {device!r} is not one of cpu, cuda, cuda:N (N = 0, 1, ...), auto")


@functools.lru_cache(maxsize=1)
def _driver():
    """The initialized CUDA driver library, or None (no driver, or cuInit failed)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    try:
        return lib if lib.cuInit(0) == 0 else None
    except (AttributeError, OSError) as e:
        log.debug("CUDA driver init failed: %s", e)
        return None


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs the CUDA driver exposes to this process (0 without a driver)."""
    lib = _driver()
    if lib is None:
        return 0
    try:
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except (AttributeError, OSError) as e:
        log.debug("CUDA driver query failed: %s", e)
        return 0


def cuda_device_names() -> list[str]:
    """Names of the GPUs `cuda_device_count` counts, in CUDA order ("?" where the driver
    does not say), without torch: `v2m info` lists devices from these."""
    lib, names = _driver(), []
    for i in range(cuda_device_count()):
        dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(256)
        try:
            ok = lib.cuDeviceGet(ctypes.byref(dev), i) == 0 and lib.cuDeviceGetName(buf, 256, dev) == 0
        except (AttributeError, OSError):
            ok = False
        names.append(buf.value.decode(errors="replace") if ok else "?")
    return names


def check_device(device: str) -> str:
    """Validate a concrete device against the GPUs present ("auto" passes through)."""
    kind, idx = parse_device(device)
    if kind == "cuda":
        n = cuda_device_count()
        if n == 0:
            raise InputError(f"--device {device} asked for, but no NVIDIA GPU is visible here; use --device cpu")
        if idx is not None and idx >= n:
            raise InputError(f"--device {device}: only {n} GPU(s) are visible (cuda:0 .. cuda:{n - 1})")
    return device


def cpu_int8_saturates(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on an x86 CPU without VNNI (AVX2, AVX-512 without VNNI): its u8 x s8 int8 kernel
    (`vpmaddubsw`) sums pairs of products into int16 with saturation, so full-range int8 weights
    overflow (255 * 127 * 2 > 32767) and ONNX Runtime's dynamic quantization wants 7-bit
    weights there (`reduce_range`). Read from /proc/cpuinfo; False where it cannot be read
    (another OS, another architecture)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    except OSError:
        pass
    return False

