"""Per-stage and per-step profiling of `Pipeline.generate`, with a JSON report and a Chrome trace.

```python
prof = Profiler(device="cuda", trace=True)
res = pipe.generate("clip.mp4", prompt="...", profiler=prof)
prof.write_report("report.json"); prof.write_trace("trace.json")
```

Stage times are the pipeline's own (`GenerationResult.timings`). Sampler steps
are timed by the backend's step clock (`Backend.step_clock`): device events where
the engine has them (torch on CUDA: `torch.cuda.Event` on the backend's device and
stream; TensorRT: cudart events on its stream), recorded after each step is enqueued
and read after the loop, so no host sync happens inside it; `perf_counter` for
synchronous CPU engines; and, for an asynchronous engine without events (ONNX
Runtime's CUDA provider), a sync per step, only when profiling was asked for, named
`host_sync` in the report so nobody mistakes enqueue time for GPU time. Each `range("sampler")` opened while steps are timed starts a
new sampler call, so the work between calls (a long video's per-window VAE
decode) is in no step. When torch sees a CUDA device, every stage and every
step is also an NVTX range (for Nsight Systems); otherwise the ranges are no-ops.

Batch mode (`v2m.batch.run_batch(..., profiler=prof)`) records one run
per finished video (its own stages; its share of its group's sampler time) and
one group per sampler call over B videos (or per long video's windows) with
that group's step times, B and shapes; `report()["batch"]` holds the groups,
per-video items, stage totals and the wall time.

The Chrome trace (chrome://tracing, Perfetto) is written by the profiler from
its own timestamps: host ranges on thread 1, sampler steps on thread 2 (on
CUDA their start is the host time the sampler call began plus the event offsets).

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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core.errors import OutputError

from .clocks import HostClock, StepClock, TorchCudaClock
from .observers import STAGES

__all__ = [
    "Profiler",
    "RunRecord",
    "write_json_atomic",
    "check_report_paths",
    "plot_report",
    "format_report",
    "REPORT_SCHEMA",
]

log = logging.getLogger("v2m.profiler")

REPORT_SCHEMA = "v2m.profile/1"


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
    """The versions a report records (`versions.library_versions`, from package metadata), the
    Python version, v2m's, and CUDA's when torch is already loaded and sees a GPU."""
    from .versions import library_version
    from .versions import library_versions as versions

    out: dict[str, str | None] = {"python": platform.python_version(),
                                  **versions(("numpy", "av", "torch", "onnxruntime", "triton", "tensorrt"))}
    out["v2m"] = library_version("v2m", ("v2m-runtime",))
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to `path` atomically (`tempfiles.atomic_output`: the umask's mode, a device
    written in place, a one-line `OutputError` on a full disk)."""
    from v2m.core.tempfiles import atomic_output

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
    return path


def check_report_paths(paths: dict[str, str | Path | None], taken: dict[str | Path, str] | None = None) -> None:
    """Check report files before a long run, so that it cannot end in an unwritable report.

    Args:
        paths: flag -> path (e.g. {"--profile": "r.json", "--trace": None}); None is skipped.
        taken: paths the run itself writes -> what they are ("the batch summary").

    Raises:
        OutputError: a path is a folder, is below a file, is in a folder that is not
            writable, is given twice, is one of `taken`, or its name is too long.
    """
    from v2m.core.tempfiles import check_name_length, is_special

    taken_real = {os.path.realpath(k): v for k, v in (taken or {}).items()}
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if not path:
            continue
        p = Path(path)
        if not is_special(p):
            check_name_length(p)
        real = os.path.realpath(p)
        if p.is_dir():
            raise OutputError(f"{flag} {path} is a folder; give a file name in it, e.g. {p / 'report.json'}")
        if real in seen:
            raise OutputError(f"{seen[real]} and {flag} both name {path}; give each its own file")
        if real in taken_real:
            raise OutputError(f"{flag} {path} is {taken_real[real]}; choose another file name")
        seen[real] = flag
        if is_special(p):  # a device or FIFO: written in place (see tempfiles)
            continue
        parent = p.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent  # the folder that will hold the created folders
        if not parent.is_dir():
            raise OutputError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


@dataclass
class RunRecord:
    """One generation (or one sampled group of a batch): stage seconds, step milliseconds, peak memory, shapes."""

    stages: dict[str, float] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)  # every step, all sampler calls in order
    peak_gpu_mem_bytes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    step_ms_by_call: list[list[float]] = field(default_factory=list)  # `step_ms` split per sampler call

    def calls(self) -> list[list[float]]:
        """Step milliseconds per sampler call (one call per window of a long video)."""
        return self.step_ms_by_call or ([self.step_ms] if self.step_ms else [])


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

    def start(self, name: str) -> int | None:
        """A range that need not nest with push/pop (sampler steps); `end` closes it."""
        return self._nvtx.range_start(name) if self._nvtx is not None else None

    def end(self, range_id: int | None) -> None:
        if self._nvtx is not None and range_id is not None:
            self._nvtx.range_end(range_id)


class Profiler:
    """Collects stage ranges, per-step times and memory over one or more generations.

    Args:
        device: the pipeline's device ("cpu", "cuda", "cuda:N"); NVTX and memory only on CUDA.
        trace: keep host timestamps for a Chrome trace (`write_trace`).
        nvtx: emit NVTX ranges (default: when torch + CUDA are present).
        clock: how steps are timed (`Backend.step_clock()`); default: CUDA events on
            `device` when torch is loaded and sees CUDA, else the host clock.
    """

    def __init__(self, device: str = "cpu", trace: bool = False, nvtx: bool | None = None, clock: StepClock | None = None):
        self.device = str(device)
        self.cuda = _cuda_on(self.device)
        self.clock = clock or (TorchCudaClock(self.device) if self.cuda else HostClock())
        self.nvtx = _Nvtx(self.cuda if nvtx is None else (nvtx and self.cuda))
        self.trace = trace
        self.runs: list[RunRecord] = []
        self.groups: list[RunRecord] = []  # batch mode: one per sampled group
        self.batch: dict[str, Any] | None = None  # batch mode: set by begin_batch / end_batch
        self.meta: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._events: list[dict[str, Any]] = []
        self._group: RunRecord | None = None
        self._timing = False  # between begin_steps and end_steps
        self._steps: list[Any] = []  # marks: CUDA events, or perf_counter floats
        self._calls: list[int] = []  # index in _steps of each sampler call's start mark
        self._calls_t0: list[float] = []  # host time of each sampler call's start
        self._nvtx_step: int | None = None  # the open NVTX step range
        log.debug("profiler: steps timed with %s; NVTX %s", self.step_timer, "on" if self.nvtx.enabled else "off")

    @property
    def step_timer(self) -> str:
        return self.clock.kind

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
    def range(self, name: str, args: dict[str, Any] | None = None):
        """An NVTX range plus a trace event (host time, with `args`) around a block.

        A "sampler" range opened while steps are timed starts a new sampler call (see `begin_steps`).
        """
        sampler_call = name == "sampler" and self._timing
        self.nvtx.push(name)
        if sampler_call:
            self._new_call()  # its NVTX step ranges nest in this one
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sampler_call and self._timing:
                self._nvtx_step_close()  # the one opened after the call's last step: the wait for it
            self.nvtx.pop()
            self._add_event(name, t0, time.perf_counter() - t0, args=args)

    # --- memory ----------------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        """Restart the CUDA peak-memory counter (no-op on CPU)."""
        if self.cuda:
            torch = _torch()
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def peak_memory(self) -> int | None:
        """Peak CUDA bytes allocated since `reset_peak_memory`; None on CPU."""
        if not self.cuda:
            return None
        torch = _torch()
        return int(torch.cuda.max_memory_allocated(torch.device(self.device)))

    # --- runs ------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Start one generation (resets the CUDA peak-memory counter)."""
        self.runs.append(RunRecord())
        self.reset_peak_memory()

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
        run.peak_gpu_mem_bytes = self.peak_memory()
        return run

    def add_stage(self, name: str, seconds: float) -> None:
        """Add a stage measured outside `generate` (e.g. `write`) to the latest run."""
        self._run().stages[name] = self._run().stages.get(name, 0.0) + float(seconds)

    # --- sampler steps (called from the step hook: no host sync) ---------------------
    def _mark(self) -> Any:
        return self.clock.mark()

    def _nvtx_step_open(self, name: str) -> None:
        self._nvtx_step_close()
        self._nvtx_step = self.nvtx.start(name)

    def _nvtx_step_close(self) -> None:
        if self._nvtx_step is not None:
            self.nvtx.end(self._nvtx_step)
            self._nvtx_step = None

    def _new_call(self, nvtx: bool = True) -> None:
        """Start a sampler call: a start mark; a call that has no step yet is restarted instead."""
        if self._calls and self._calls[-1] == len(self._steps) - 1:
            self._steps.pop()
            self._calls.pop()
            self._calls_t0.pop()
        self._calls.append(len(self._steps))
        self._calls_t0.append(time.perf_counter())
        self._steps.append(self._mark())
        if nvtx:
            self._nvtx_step_open("step 0")

    def begin_steps(self) -> None:
        """Start timing sampler steps (one or more sampler calls) until `end_steps`.

        Each `range("sampler")` inside starts a call (and its "step 0" NVTX range); steps
        of a call are timed from its start mark, so time between calls is in no step.
        """
        self._steps, self._calls, self._calls_t0 = [], [], []
        self._timing = True
        self._new_call(nvtx=False)  # a call outside any "sampler" range still has its start

    def step(self, i: int) -> None:
        """Step `i` has been enqueued: record its end (event or clock) and open the next NVTX range."""
        if not self._timing:
            return
        self._steps.append(self._mark())
        self._nvtx_step_open(f"step {i + 1}")

    def abort_steps(self) -> None:
        """Drop the steps being timed (a sampler call failed); nothing is recorded, nothing synchronizes."""
        self._nvtx_step_close()
        self._timing = False
        self._steps, self._calls, self._calls_t0 = [], [], []

    def end_steps(self) -> list[float]:
        """Read every step time (after the loop; synchronizes once on CUDA). Returns ms per step.

        The steps go to the open batch group (`begin_group`), else to the latest run.
        """
        self._nvtx_step_close()
        self._timing = False
        marks, starts = self._steps, self._calls
        if marks:
            self.clock.wait(marks[-1])  # the last mark: every earlier one has completed too
        bounds = [*starts, len(marks)]
        calls: list[list[float]] = []
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg = marks[a:b]
            ms = [self.clock.elapsed_ms(x, y) for x, y in zip(seg[:-1], seg[1:])]
            if not ms:
                continue
            args = {} if self._group is None else {"group": self._group.meta.get("index")}
            if len(starts) > 1:
                args["call"] = len(calls)
            t = self._calls_t0[k]
            for i, d in enumerate(ms):
                self._add_event(f"step {i}", t, d / 1e3, tid=2, args=args or None)
                t += d / 1e3
            calls.append(ms)
        self.clock.done()
        flat = [v for c in calls for v in c]
        target = self._group if self._group is not None else self._run()
        target.step_ms, target.step_ms_by_call = flat, calls
        self._steps, self._calls, self._calls_t0 = [], [], []
        return flat

    # --- batch mode (v2m.batch.run_batch) ------------------------------------
    def begin_batch(self, **meta: Any) -> None:
        """Start a batch run; `meta` (backend, preset, steps...) goes to the report."""
        self.meta.update(meta)
        self.batch = {}

    def begin_group(self, **meta: Any) -> RunRecord:
        """Start one sampled group: B videos of one latent length in one sampler call, or a long
        video's windows. Until `end_group`, step times go to the group and the CUDA peak-memory
        counter covers it. `meta`: kind, B, L, S, videos."""
        if self._group is not None:
            raise RuntimeError("begin_group: the previous group was not closed with end_group")
        rec = RunRecord(meta={"index": len(self.groups), **meta})
        self.groups.append(rec)
        self._group = rec
        self.reset_peak_memory()
        return rec

    def end_group(self, stages: dict[str, float], **meta: Any) -> RunRecord:
        """Close the open group with its stage seconds (sampler, vae, write) and more `meta` (status)."""
        rec = self._group
        if rec is None:
            raise RuntimeError("end_group: no group is open (begin_group)")
        if self._timing:
            self.abort_steps()  # its sampler call failed before end_steps
        rec.stages.update({k: float(v) for k, v in stages.items()})
        rec.meta.update(meta)
        rec.peak_gpu_mem_bytes = self.peak_memory()
        self._group = None
        return rec

    def add_run(self, stages: dict[str, float], meta: dict[str, Any] | None = None,
                peak_gpu_mem_bytes: int | None = None) -> RunRecord:
        """Add a finished generation timed elsewhere (a video of a batch; its steps are its group's)."""
        run = RunRecord({k: float(v) for k, v in stages.items()}, [], peak_gpu_mem_bytes, dict(meta or {}))
        self.runs.append(run)
        return run

    def end_batch(self, **info: Any) -> None:
        """Close the batch: an open group is ended as interrupted; `info` (wall_ms, counts, videos...)
        goes to `report()["batch"]`."""
        if self._group is not None:
            self.end_group({}, status="interrupted")
        if self.batch is None:
            self.batch = {}
        self.batch.update(info)

    # --- report ----------------------------------------------------------------------
    def device_name(self) -> str:
        if self.cuda:
            torch = _torch()
            return torch.cuda.get_device_name(torch.device(self.device))
        return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"

    def _batch_report(self) -> dict[str, Any] | None:
        if self.batch is None:
            return None
        groups = []
        for g in self.groups:
            groups.append({
                **g.meta,
                "sampler_calls": len(g.calls()),
                "stages_ms": {k: v * 1e3 for k, v in g.stages.items()},
                "step_ms": list(g.step_ms),
                "step_summary_ms": _stats(g.step_ms),
                "peak_gpu_mem_bytes": g.peak_gpu_mem_bytes,
            })
        return {**self.batch, "groups": groups}

    def report(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able report over all runs (stage and step statistics across runs).

        Steps are indexed within a sampler call; their statistics are over sampler calls
        (a run's calls, or in batch mode every group's). In batch mode a run is a finished
        video and `shapes` holds a list where the groups differ.
        """
        runs = self.runs
        stage_names = [s for s in STAGES if any(s in r.stages for r in runs)]
        stage_names += sorted({s for r in runs for s in r.stages} - set(stage_names))
        stages = {}
        for s in stage_names:
            ms = [r.stages[s] * 1e3 for r in runs if s in r.stages]
            st = _stats(ms)
            stages[s] = {"median_ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"], "runs_ms": ms}
        calls = [c for r in (self.groups or runs) for c in r.calls()]
        n_steps = max((len(c) for c in calls), default=0)
        steps = []
        for i in range(n_steps):
            ms = [c[i] for c in calls if i < len(c)]
            st = _stats(ms)
            steps.append({"index": i, "ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"], "runs_ms": ms})
        all_steps = [v for c in calls for v in c]
        totals = [sum(r.stages.values()) * 1e3 for r in runs]
        peaks = [r.peak_gpu_mem_bytes for r in (*runs, *self.groups) if r.peak_gpu_mem_bytes is not None]
        meta = {**self.meta, **extra}
        shapes = {k: meta.get(k) for k in ("L", "B", "S", "steps")}
        if self.groups:
            for k in ("L", "B", "S"):
                seen = sorted({g.meta[k] for g in self.groups if g.meta.get(k) is not None})
                shapes[k] = seen[0] if len(seen) == 1 else (seen or None)
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
            "batch": self._batch_report(),
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
    if report.get("batch"):
        lines += _format_batch(report["batch"])
    return "\n".join(lines)


def _format_batch(b: dict[str, Any]) -> list[str]:
    """Batch lines: counts and wall time, then one line per group shape (kind, B, L, S)."""
    c = b.get("counts", {})
    groups = b.get("groups", [])
    lines = [f"batch: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped "
             f"in {b.get('wall_ms', float('nan')) / 1e3:.2f} s; {len(groups)} sampled groups "
             f"(stages above: per video, sampler shared by its group)"]
    shapes: dict[tuple, list[dict[str, Any]]] = {}
    for g in groups:
        shapes.setdefault((g.get("kind"), g.get("B"), g.get("L"), g.get("S")), []).append(g)
    for (kind, bsz, length, s), gs in shapes.items():
        sampler = float(np.median([g["stages_ms"].get("sampler", float("nan")) for g in gs]))
        st = _stats([v for g in gs for v in g["step_ms"]])
        step = f", step median {st['median']:.3f} ms over {st['n']} steps" if st["n"] else ""
        lines.append(f"  {kind} B={bsz} L={length} S={s}: {len(gs)} group(s), sampler median {sampler:.2f} ms "
                     f"({sampler / max(bsz or 1, 1):.2f} ms per video){step}")
    return lines


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
