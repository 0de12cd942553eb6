"""Per-stage and per-step profiling of `Pipeline.generate`, with a JSON report and a Chrome trace.

```python
prof = Profiler(device="cuda", trace=True)
res = pipe.generate("clip.mp4", prompt="...", profiler=prof)
prof.write_report("report.json"); prof.write_trace("trace.json")
```

Stage times are the pipeline's own (`GenerationResult.timings`). Sampler steps
are timed without a host sync inside the loop: on CUDA one event is recorded
per step (after the step is enqueued) and all are read after the loop; on CPU,
`perf_counter`. When torch sees a CUDA device, every stage and every step is
also an NVTX range (for Nsight Systems); otherwise the ranges are no-ops.

The Chrome trace (chrome://tracing, Perfetto) is written by the profiler from
its own timestamps: host ranges on thread 1, sampler steps on thread 2 (on
CUDA their start is the host time the loop began plus the event offsets).

This module imports no torch at import time; it uses torch only when the
pipeline already did (`sys.modules`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Profiler", "RunRecord", "write_json_atomic", "plot_report", "format_report", "REPORT_SCHEMA"]

log = logging.getLogger("v2m.profiler")

REPORT_SCHEMA = "v2m.profile/1"
STAGE_ORDER = ("decode", "encode", "curve", "text", "sampler", "vae", "write")


def _torch():
    """torch if it is already imported (the profiler never imports it itself), else None."""
    return sys.modules.get("torch")


def _cuda_on(device: str) -> bool:
    torch = _torch()
    return bool(torch is not None and str(device).startswith("cuda") and torch.cuda.is_available())


def _stats(a: list[float] | np.ndarray) -> dict[str, float]:
    x = np.asarray(a, dtype=np.float64)
    if x.size == 0:
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "n": 0}
    return {
        "median": float(np.median(x)),
        "p10": float(np.percentile(x, 10)),
        "p90": float(np.percentile(x, 90)),
        "n": int(x.size),
    }


def git_commit() -> str:
    """Short commit of the source tree this module lives in (+ '-dirty'), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=10)
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        if not commit:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, mod in (("numpy", "numpy"), ("av", "av"), ("torch", "torch"), ("onnxruntime", "onnxruntime"),
                      ("triton", "triton"), ("tensorrt", "tensorrt"), ("v2m-runtime", None)):
        try:
            out[mod or "v2m"] = md.version(dist)
        except md.PackageNotFoundError:
            out[mod or "v2m"] = None
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to `path` via a temporary file in the same directory and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class RunRecord:
    """One generation: stage seconds, step milliseconds, peak memory, shapes."""

    stages: dict[str, float] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    peak_gpu_mem_bytes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class _Nvtx:
    """NVTX ranges through torch.cuda.nvtx when torch + CUDA are present; no-ops otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._nvtx = _torch().cuda.nvtx if enabled else None

    def push(self, name: str) -> None:
        if self._nvtx is not None:
            self._nvtx.range_push(name)

    def pop(self) -> None:
        if self._nvtx is not None:
            self._nvtx.range_pop()


class Profiler:
    """Collects stage ranges, per-step times and memory over one or more generations.

    Args:
        device: the pipeline's device ("cpu", "cuda", "cuda:N"); CUDA events and NVTX only on CUDA.
        trace: keep host timestamps for a Chrome trace (`write_trace`).
        nvtx: emit NVTX ranges (default: when torch + CUDA are present).
    """

    def __init__(self, device: str = "cpu", trace: bool = False, nvtx: bool | None = None):
        self.device = str(device)
        self.cuda = _cuda_on(self.device)
        self.nvtx = _Nvtx(self.cuda if nvtx is None else (nvtx and self.cuda))
        self.trace = trace
        self.runs: list[RunRecord] = []
        self.meta: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._events: list[dict[str, Any]] = []
        self._steps: list[Any] = []  # CUDA events, or perf_counter floats
        self._steps_t0 = 0.0
        self._step_open = False
        log.info("profiler: steps timed with %s; NVTX %s", self.step_timer, "on" if self.nvtx.enabled else "off")

    @property
    def step_timer(self) -> str:
        return "cuda_events" if self.cuda else "perf_counter"

    # --- host ranges -----------------------------------------------------------------
    def _us(self, t: float) -> float:
        return (t - self._t0) * 1e6

    def _add_event(self, name: str, t_start: float, dur_s: float, tid: int = 1, args: dict | None = None) -> None:
        if self.trace:
            ev = {"name": name, "ph": "X", "ts": self._us(t_start), "dur": dur_s * 1e6, "pid": 1, "tid": tid}
            if args:
                ev["args"] = args
            self._events.append(ev)

    @contextmanager
    def range(self, name: str):
        """An NVTX range plus a trace event (host time) around a block."""
        self.nvtx.push(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.nvtx.pop()
            self._add_event(name, t0, time.perf_counter() - t0)

    # --- runs ------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Start one generation (resets the CUDA peak-memory counter)."""
        self.runs.append(RunRecord())
        if self.cuda:
            torch = _torch()
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def _run(self) -> RunRecord:
        if not self.runs:
            self.begin_run()
        return self.runs[-1]

    def end_run(self, timings: dict[str, float], meta: dict[str, Any] | None = None) -> RunRecord:
        """Close the current generation with the pipeline's stage seconds and metadata."""
        run = self._run()
        run.stages.update({k: float(v) for k, v in timings.items()})
        run.meta.update(meta or {})
        self.meta.update(meta or {})
        if self.cuda:
            torch = _torch()
            run.peak_gpu_mem_bytes = int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        return run

    def add_stage(self, name: str, seconds: float) -> None:
        """Add a stage measured outside `generate` (e.g. `write`) to the latest run."""
        self._run().stages[name] = self._run().stages.get(name, 0.0) + float(seconds)

    # --- sampler steps (called from the step hook: no host sync) ---------------------
    def begin_steps(self) -> None:
        self._steps = []
        self._steps_t0 = time.perf_counter()
        if self.cuda:
            torch = _torch()
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._steps.append(start)
        else:
            self._steps.append(self._steps_t0)
        self.nvtx.push("step 0")
        self._step_open = True

    def step(self, i: int) -> None:
        """Step `i` has been enqueued: record its end (event or clock) and open the next NVTX range."""
        if self._step_open:
            self.nvtx.pop()
        if self.cuda:
            ev = _torch().cuda.Event(enable_timing=True)
            ev.record()
            self._steps.append(ev)
        else:
            self._steps.append(time.perf_counter())
        self.nvtx.push(f"step {i + 1}")
        self._step_open = True

    def end_steps(self) -> list[float]:
        """Read every step time (after the loop; synchronizes once on CUDA). Returns ms per step."""
        if self._step_open:
            self.nvtx.pop()
            self._step_open = False
        marks = self._steps
        if self.cuda:
            marks[-1].synchronize()
            ms = [a.elapsed_time(b) for a, b in zip(marks[:-1], marks[1:])]
        else:
            ms = [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]
        t = self._steps_t0
        for i, d in enumerate(ms):
            self._add_event(f"step {i}", t, d / 1e3, tid=2)
            t += d / 1e3
        self._run().step_ms = list(ms)
        self._steps = []
        return ms

    # --- report ----------------------------------------------------------------------
    def device_name(self) -> str:
        if self.cuda:
            torch = _torch()
            return torch.cuda.get_device_name(torch.device(self.device))
        return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"

    def report(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able report over all runs (stage and step statistics across runs)."""
        runs = self.runs
        stage_names = [s for s in STAGE_ORDER if any(s in r.stages for r in runs)]
        stage_names += sorted({s for r in runs for s in r.stages} - set(stage_names))
        stages = {}
        for s in stage_names:
            ms = [r.stages[s] * 1e3 for r in runs if s in r.stages]
            st = _stats(ms)
            stages[s] = {"median_ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"], "runs_ms": ms}
        n_steps = max((len(r.step_ms) for r in runs), default=0)
        steps = []
        for i in range(n_steps):
            ms = [r.step_ms[i] for r in runs if i < len(r.step_ms)]
            st = _stats(ms)
            steps.append({"index": i, "ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"], "runs_ms": ms})
        all_steps = [v for r in runs for v in r.step_ms]
        totals = [sum(r.stages.values()) * 1e3 for r in runs]
        peaks = [r.peak_gpu_mem_bytes for r in runs if r.peak_gpu_mem_bytes is not None]
        meta = {**self.meta, **extra}
        shapes = {k: meta.get(k) for k in ("L", "B", "S", "steps")}
        return {
            "schema": REPORT_SCHEMA,
            "device": self.device_name(),
            "device_type": "cuda" if self.cuda else "cpu",
            "step_timer": self.step_timer,
            "versions": library_versions(),
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "preset": meta.get("preset"),
            "backend": meta.get("backend"),
            "precision": meta.get("precision"),
            "sampler_path": meta.get("sampler_path"),
            "shapes": shapes,
            "runs": len(runs),
            "stages": stages,
            "total_ms": _stats(totals),
            "steps": steps,
            "step_summary_ms": _stats(all_steps),
            "peak_gpu_mem_bytes": max(peaks) if peaks else None,
            "meta": meta,
        }

    def write_report(self, path: str | Path, **extra: Any) -> Path:
        return write_json_atomic(path, self.report(**extra))

    def chrome_trace(self) -> dict[str, Any]:
        meta = [
            {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": f"v2m ({self.device})"}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "stages (host)"}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": f"sampler steps ({self.step_timer})"}},
        ]
        return {"traceEvents": meta + sorted(self._events, key=lambda e: e["ts"]), "displayTimeUnit": "ms"}

    def write_trace(self, path: str | Path) -> Path:
        if not self.trace:
            raise ValueError("this profiler was made with trace=False; there is nothing to write")
        return write_json_atomic(path, self.chrome_trace())


def format_report(report: dict[str, Any]) -> str:
    """A per-stage table (median, p10, p90 over runs) plus the step summary."""
    lines = [f"{report['device']} | preset {report.get('preset')} | shapes {report['shapes']} | runs {report['runs']}",
             f"{'stage':<10} {'median ms':>10} {'p10':>10} {'p90':>10} {'share':>7}"]
    total = sum(s["median_ms"] for s in report["stages"].values()) or 1e-9
    for name, s in report["stages"].items():
        lines.append(f"{name:<10} {s['median_ms']:>10.2f} {s['p10_ms']:>10.2f} {s['p90_ms']:>10.2f} "
                     f"{100 * s['median_ms'] / total:>6.1f}%")
    lines.append(f"{'total':<10} {report['total_ms']['median']:>10.2f}")
    st = report["step_summary_ms"]
    if st["n"]:
        lines.append(f"sampler step ({report['step_timer']}): median {st['median']:.3f} ms, "
                     f"p10 {st['p10']:.3f}, p90 {st['p90']:.3f} over {st['n']} steps")
    if report.get("peak_gpu_mem_bytes"):
        lines.append(f"peak GPU memory: {report['peak_gpu_mem_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


def plot_report(report: dict[str, Any] | str | Path, out: str | Path) -> Path:
    """Per-step latency (with its median) and the stage breakdown, as a PNG (matplotlib, lazy)."""
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = report["steps"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    if steps:
        idx = [s["index"] for s in steps]
        ms = [s["ms"] for s in steps]
        ax1.plot(idx, ms, marker=".", lw=1, label="step (median over runs)")
        if report["runs"] > 1:
            ax1.fill_between(idx, [s["p10_ms"] for s in steps], [s["p90_ms"] for s in steps], alpha=0.25, label="p10-p90")
        med = report["step_summary_ms"]["median"]
        ax1.axhline(med, color="C3", ls="--", label=f"median {med:.3f} ms")
        ax1.legend(loc="upper right")
    ax1.set_xlabel("sampler step")
    ax1.set_ylabel(f"ms ({report['step_timer']})")
    ax1.set_title(f"per-step latency: {report.get('preset')} on {report['device']}", fontsize=9)
    names = list(report["stages"])
    vals = [report["stages"][n]["median_ms"] for n in names]
    ax2.barh(names[::-1], vals[::-1], color="C0")
    ax2.set_xlabel("ms (median over runs)")
    ax2.set_title(f"stages (shapes {report['shapes']})", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
