"""Shared benchmark harness: timing, summary statistics, environment, JSON lines.

Every bench script times with `time_fn` (CUDA events on GPU, perf_counter on
CPU), summarizes with `summarize` (median, p10, p90) and appends one JSON object
per measured configuration with `append_result`, which stamps device, library
versions, git commit and date.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("v2m.bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense fp16/bf16 tensor-core peak (TFLOP/s, no sparsity) and HBM bandwidth (GB/s).
DEVICE_PEAKS = {
    "H100 SXM": {"tflops_fp16": 989.0, "gbps": 3350.0},
    "H100 PCIe": {"tflops_fp16": 756.0, "gbps": 2000.0},
    "H100 NVL": {"tflops_fp16": 835.0, "gbps": 3900.0},
    "H200": {"tflops_fp16": 989.0, "gbps": 4800.0},
    "A100": {"tflops_fp16": 312.0, "gbps": 2039.0},
    "L40S": {"tflops_fp16": 362.0, "gbps": 864.0},
    "RTX 4090": {"tflops_fp16": 165.0, "gbps": 1008.0},
}


def device_peaks(device_name: str) -> dict[str, float] | None:
    """Peak figures for a CUDA device name, or None when unknown (e.g. CPU)."""
    name = device_name.upper()
    if "H100" in name:
        if "PCIE" in name:
            return DEVICE_PEAKS["H100 PCIe"]
        if "NVL" in name:
            return DEVICE_PEAKS["H100 NVL"]
        return DEVICE_PEAKS["H100 SXM"]
    for key, peaks in DEVICE_PEAKS.items():
        if key.upper() in name:
            return peaks
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str = "cpu") -> dict[str, Any]:
    """Device name, library versions, commit and date for a result line."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for mod in ("torch", "onnxruntime", "triton", "tensorrt", "av"):
        if mod in sys.modules or _importable(mod):
            try:
                env[mod] = __import__(mod).__version__
            except Exception:  # noqa: BLE001 - a broken optional install is not fatal here
                env[mod] = "broken"
    env["device"] = device_name(device)
    return env


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    proc = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                proc = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {proc} ({os.cpu_count()} cores)"


def summarize(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "n": int(a.size),
    }


def time_fn(
    fn: Callable[[], Any], *, warmup: int = 3, iters: int = 20, device: str = "cpu"
) -> list[float]:
    """Milliseconds per call of `fn`, after `warmup` untimed calls.

    On CUDA each call is bracketed by CUDA events (no host sync inside the timed
    region other than the final event sync); on CPU, perf_counter.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(
    fns: dict[Any, Callable[[], Any]], *, warmup: int = 1, iters: int = 5, settle_s: float = 0.0, clock: str = "wall"
) -> dict[Any, list[float]]:
    """Milliseconds per call of each of `fns`, timed round-robin on the host (one call of
    each per round, `warmup` untimed rounds first), so load from other processes on a shared
    machine hits every variant alike. `settle_s` pauses before each call (idle OpenMP/ORT
    worker threads of the previous library stop spinning).

    clock "wall" (perf_counter) or "cpu" (process_time: this process's user + system time,
    all threads; page faults included, time spent waiting for a core on a loaded machine
    not; with one thread per library it is the work done, comparable across a busy run)."""
    now = CLOCKS[clock]
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for r in range(warmup + iters):
        for k, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            t0 = now()
            fn()
            if r >= warmup:
                times[k].append((now() - t0) * 1e3)
    return times


def append_result(name: str, row: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Append one JSON line to `bench/results/<name>.jsonl` and log it."""
    results_dir = Path(results_dir or os.environ.get("V2M_BENCH_RESULTS", RESULTS_DIR))
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    log.info("%s: %s", path.name, json.dumps(row, sort_keys=True))
    return path


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def snr_db(ref, x) -> float:
    """Signal-to-error ratio 10 log10(|ref|^2 / |x - ref|^2) in dB, in float64 (arrays or tensors);
    300 for identical inputs."""
    ref = np.asarray(ref.detach().cpu() if hasattr(ref, "detach") else ref, dtype=np.float64)
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    err = float(np.sum((x - ref) ** 2))
    return 300.0 if err == 0 else float(10 * np.log10(np.sum(ref**2) / err))


def add_torch_args(ap, warmup: int, iters: int) -> None:
    """The options every PyTorch bench shares: --warmup, --iters, --threads, --out."""
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch.set_num_threads (1 on a shared, loaded box)")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")


def torch_session(args, script: str, cpu_hint: str) -> tuple[Any, bool, dict[str, Any], dict[str, Any]]:
    """After parse_args: logging, --threads, the --device check, the environment stamp.

    Returns (torch device, is CUDA, `environment()`, the versions dict every row carries).
    Exits with one line naming `cpu_hint` when --device cuda has no GPU behind it.
    """
    import torch

    setup_logging()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"{script}: --device cuda but PyTorch sees no CUDA GPU; use --device cpu {cpu_hint}")
    env = environment(str(device))
    versions = {k: env.get(k) for k in ("python", "numpy", "torch", "triton")}
    versions["cuda"] = torch.version.cuda if cuda else None
    return device, cuda, env, versions
