"""The batch run: prepared jobs grouped for the sampler, rendered and written with sidecars,
a summary after each video, a progress line and the profiler's batch report.

Generation is the engine core's (`Pipeline.prepare / sample / render / write`); this module
adds the grouping policy (per latent and text length, chunks of `--batch-size` in input order;
a long video alone), failure isolation, resume and reports.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from v2m.core.errors import InputError, V2MError
from v2m.runtime.observers import Observers, ProfilerObserver, StepCallback

from .jobs import (
    SIDECAR_FORMAT,
    SUMMARY_NAME,
    BatchOptions,
    BatchSummary,
    Job,
    _atomic_write_text,
    _input_key,
    _input_name,
    _is_complete,
    _sha256,
    _sidecar,
    assign_outputs,
    check_output_dir,
    model_hash,
    show,
)

__all__ = ["Progress", "run_batch", "prepare_item", "complete", "write_output", "reason_of", "write_summary"]

log = logging.getLogger("v2m.batch")


# --- progress ----------------------------------------------------------------------------
class Progress:
    """A one-line carriage-return progress bar on stderr: videos done, sampler step, elapsed, ETA."""

    def __init__(self, total: int, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done = total, 0
        self.step, self.steps, self.batch = 0, 0, 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def _render(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        el = now - self.t0
        frac = self.done / max(self.total, 1)
        eta = f"{el / frac * (1 - frac):.0f} s" if self.done else "?"
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        step = f" | step {self.step}/{self.steps} (B={self.batch})" if self.steps else ""
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} videos{step} | {el:.0f} s | ETA {eta}  ")
        self.stream.flush()

    def on_step(self, i: int) -> None:
        self.step = i + 1
        self._render()

    def start_batch(self, b: int, steps: int) -> None:
        self.batch, self.steps, self.step = b, steps, 0
        self._render(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._render(force=True)

    def message(self, line: str) -> None:
        """Print a line above the bar."""
        if self.enabled:
            self.stream.write("\r\033[K")
        print(line, file=self.stream)
        self._render(force=True)

    def close(self) -> None:
        if self.enabled:
            self._render(force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- the run -----------------------------------------------------------------------------
@dataclass(eq=False)
class _Item:
    """A prepared job: the core's `Prepared` and the job's resume key."""

    job: Job
    prepared: Any  # pipeline.Prepared
    key: dict[str, Any]
    peak_gpu_mem_bytes: int | None = None  # while it was decoded and encoded (profiled on CUDA)


def reason_of(e: BaseException) -> str:
    """A job's one-line failure reason: the message of a V2MError, else 'internal error: ...'."""
    if isinstance(e, V2MError):
        return str(e)
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"internal error: {type(e).__name__}: {msg}"


def prepare_item(pipe, job: Job, opts: BatchOptions, model: str, options, observers=None) -> _Item | None:
    """A job's resume check and the core's `prepare` (the batch's request with the job's prompt
    and seed). None when its output is complete already (the job is marked skipped); raises
    what failed it."""
    try:
        key = _input_key(job, opts, model, options)
    except OSError as e:
        raise InputError(f"cannot read {show(job.video)} ({e.strerror})") from None
    if not opts.overwrite and (side := _is_complete(job.output, key)) is not None:
        job.status, job.reason, job.used_seed = "skipped", "complete (verified by sha256)", side.get("seed")
        return None
    p = pipe.prepare(job.video, opts.request.replace(prompt=job.prompt, seed=job.seed), observers=observers,
                     max_duration_s=opts.max_duration_s)
    job.used_seed, job.timings = p.seed, p.timings
    return _Item(job, p, key)


def complete(pipe, it: _Item, sampled, observers=None) -> BaseException | None:
    """Render a sampled job and write its output and sidecar; marks it ok. Returns what failed
    it instead (the sampler's exception in `sampled`, or the render's or write's)."""
    job = it.job
    job.info["batch_size"] = getattr(sampled, "batch_size", 1)
    if isinstance(sampled, BaseException):
        return sampled
    try:
        write_output(pipe, it, pipe.render(it.prepared, sampled, observers))
    except Exception as e:  # noqa: BLE001 - recorded per video; the batch goes on
        return e
    job.status = "ok"
    job.info.update(latent_frames=it.prepared.length, duration_s=round(it.prepared.duration_s, 4))
    return None


def write_output(pipe, item: _Item, audio: np.ndarray) -> None:
    """Write the job's output (muxed or audio, `Pipeline.write`) and its sidecar, atomically."""
    job = item.job
    pipe.write(item.prepared, audio, job.output)
    side = {
        "format": SIDECAR_FORMAT,
        "output": show(job.output.name),
        "output_sha256": _sha256(job.output),
        "seed": job.used_seed,
        "inputs": item.key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_text(_sidecar(job.output), json.dumps(side, indent=2) + "\n")


class _Run:
    """One `run_batch`: the jobs, their reports (summary, progress, profiler) and the grouping
    policy (per latent and text length, chunks of `group_size` in input order; a long video
    alone). Generation itself is the core's: `Pipeline.prepare / sample / render / write`."""

    def __init__(self, pipe, jobs: list[Job], opts: BatchOptions, progress: Progress, profiler, t_start: float):
        self.pipe, self.jobs, self.opts, self.progress, self.prof = pipe, jobs, opts, progress, profiler
        self.t_start = t_start
        self.options = opts.request.options(pipe.config.sampler)
        self.summary_path = Path(opts.out_dir) / SUMMARY_NAME
        self.group_of: dict[int, int] = {}  # id(job) -> its profiled group
        self.obs = Observers([ProfilerObserver(profiler) if profiler is not None else None,
                              StepCallback(progress.on_step)])

    def span(self, name: str, **args: Any):
        """A profiler range (NVTX + trace event) when profiling."""
        return self.prof.range(name, args or None) if self.prof is not None else nullcontext()

    def write_summary_now(self) -> None:
        o = self.options
        write_summary(self.summary_path, self.jobs, self.pipe, o.steps, o.cfg_scale, time.perf_counter() - self.t_start)

    def failed(self, job: Job, e: BaseException) -> None:
        job.fail(reason_of(e))
        self.progress.message(f"v2m: failed: {show(job.video)}: {job.reason}")
        self.progress.advance()
        self.write_summary_now()

    def prepare(self, job: Job, model: str) -> _Item | None:
        """`prepare_item` with this run's failure and skip reporting."""
        if self.prof is not None:
            self.prof.reset_peak_memory()
        try:
            with self.span(f"video {show(job.video.name)}", video=show(job.video)):
                it = prepare_item(self.pipe, job, self.opts, model, self.options, self.obs)
        except Exception as e:  # noqa: BLE001 - recorded per video; the batch goes on
            self.failed(job, e)
            return None
        if it is None:  # complete already
            self.progress.advance()
            return None
        it.peak_gpu_mem_bytes = self.prof.peak_memory() if self.prof is not None else None
        return it

    def flush(self, group: list[_Item]) -> None:
        """Sample a group in one core call, then render and write each video (`complete`)."""
        if not group:
            return
        kind = "windows" if group[0].prepared.windowed else "batched"
        self.progress.start_batch(len(group), self.options.steps)
        name = self._begin_group(kind, group)
        errors = []
        with self.span(name, videos=[show(it.job.video) for it in group]):
            for it, r in zip(group, self.pipe.sample([it.prepared for it in group], self.obs)):
                with self.span("write", video=show(it.job.video)):
                    error = complete(self.pipe, it, r, self.obs)
                if error is not None:
                    errors.append(error)
                    self.failed(it.job, error)
                    continue
                self._finished(it)
            self._end_group(group, errors[0] if len(errors) == len(group) else None)

    def _finished(self, it: _Item) -> None:
        job = it.job
        if self.prof is not None:
            self.prof.add_run(job.timings, {
                "video": show(job.video), "group": self.group_of.get(id(job)), "B": job.info.get("batch_size", 1),
                "L": it.prepared.length, "S": int(it.prepared.mask.shape[-1]),
            }, it.peak_gpu_mem_bytes)
        self.progress.advance()
        self.write_summary_now()

    def _begin_group(self, kind: str, group: list[_Item]) -> str:
        """Open a profiled group (no-op without a profiler); returns its range name."""
        if self.prof is None:
            return ""
        p0 = group[0].prepared
        shape = {"B": len(group), "L": p0.length, "S": int(p0.mask.shape[-1])}
        rec = self.prof.begin_group(kind=kind, **shape, videos=[show(it.job.video) for it in group])
        for it in group:
            self.group_of[id(it.job)] = rec.meta["index"]
        return f"group {rec.meta['index']} {kind} B={shape['B']} L={shape['L']}"

    def _end_group(self, group: list[_Item], error: BaseException | None) -> None:
        if self.prof is None:
            return
        stages = {s: sum(it.job.timings.get(s, 0.0) for it in group) for s in ("sampler", "vae", "write")}
        self.prof.end_group(stages, status="failed" if error else "ok", reason=reason_of(error) if error else None)


def run_batch(
    pipe, jobs: list[Job], opts: BatchOptions, progress: Progress | None = None, profiler=None
) -> BatchSummary:
    """Run every pending job; write `summary.json` in the output folder (also after each video).

    Args:
        pipe: a loaded `Pipeline`.
        jobs: from `collect_inputs` or `read_manifest` (outputs assigned here if missing).
        opts: output folder, format, batch size, the request every job starts from.
        progress: a `Progress`; default: one on stderr when it is a terminal.
        profiler: a `v2m.runtime.profiler.Profiler`: one run per finished video, one group per
            sampler call (B videos, or a long video's windows) with its steps; closed with
            `end_batch` (also when interrupted) so its report and trace can be written after.
    """
    t_start = time.perf_counter()
    out_dir = check_output_dir(opts.out_dir)
    if any(j.output is None for j in jobs if j.status == "pending"):
        assign_outputs(jobs, out_dir, opts.format)
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {opts.batch_size}")
    todo = [j for j in jobs if j.status == "pending"]
    progress = progress or Progress(len(todo), opts.progress)
    progress.total = len(todo)
    run = _Run(pipe, jobs, opts, progress, profiler, t_start)
    plan = pipe.plan(run.options, opts.request.negative_prompt is not None, pipe.null_prompt(opts.request))
    engine_max = pipe.max_batch(plan)
    group_size = opts.batch_size if engine_max is None else min(opts.batch_size, engine_max)
    if group_size < opts.batch_size:
        log.info("groups of %d videos (the engine's profile takes %d with %d guidance branches; --batch-size %d)",
                 group_size, engine_max, plan.guidance.size, opts.batch_size)
    model = model_hash(pipe)
    for j in jobs:
        if j.status == "failed":
            progress.message(f"v2m: failed: {show(j.source or j.video)}: {j.reason}")
    buckets: dict[tuple, list[_Item]] = {}
    interrupted = False
    if profiler is not None:
        profiler.begin_batch(**{**pipe.backend.describe(), "preset": pipe.config.preset, "steps": run.options.steps,
                                "cfg_scale": run.options.cfg_scale, "batch_size": opts.batch_size, "format": opts.format})
    try:
        for job in todo:
            it = run.prepare(job, model)
            if it is None:
                continue
            if it.prepared.windowed:  # long: windows, alone
                run.flush([it])
                continue
            key = it.prepared.group_key()
            group = buckets.setdefault(key, [])
            group.append(it)
            if len(group) >= group_size:
                run.flush(buckets.pop(key))
        for k in list(buckets):
            run.flush(buckets.pop(k))
    except KeyboardInterrupt:
        interrupted = True
        for j in jobs:
            if j.status == "pending":
                j.reason = "interrupted"
        run.write_summary_now()
        raise
    finally:
        progress.close()
        if profiler is not None:
            _end_profile(profiler, jobs, run.group_of, time.perf_counter() - t_start, interrupted)
    run.write_summary_now()
    return BatchSummary(jobs, run.summary_path, time.perf_counter() - t_start)


def _end_profile(prof, jobs: list[Job], group_of: dict[int, int], wall_s: float, interrupted: bool) -> None:
    """Hand the batch's own figures to the profiler: counts, wall time, stage totals, per-video items."""
    totals: dict[str, float] = {}
    for j in jobs:
        for k, v in j.timings.items():
            totals[k] = totals.get(k, 0.0) + v * 1e3
    ok = sum(j.status == "ok" for j in jobs)
    prof.end_batch(
        interrupted=interrupted,
        wall_ms=wall_s * 1e3,
        counts={s: sum(j.status == s for j in jobs) for s in ("ok", "failed", "skipped", "pending")},
        videos_per_s=ok / wall_s if wall_s > 0 else None,
        stage_totals_ms=totals,
        videos=[{
            "input": _input_name(j),
            "output": show(j.output) if j.output is not None else None,
            "status": j.status,
            "reason": j.reason,
            "group": group_of.get(id(j)),
            "stages_ms": {k: v * 1e3 for k, v in j.timings.items()},
        } for j in jobs],
    )


def write_summary(path: Path, jobs: list[Job], pipe, steps: int, cfg_scale: float, wall_s: float) -> None:
    items = []
    for j in jobs:
        items.append({
            "input": _input_name(j),
            "status": j.status,
            "reason": j.reason,
            "output": show(j.output) if j.output is not None else None,
            "prompt": j.prompt,
            "seed": j.used_seed if j.used_seed is not None else j.seed,
            "timings": {k: round(v, 4) for k, v in j.timings.items()},
            **j.info,
        })
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "failed", "skipped", "pending")}
    data = {
        "format": "v2m-batch-summary/1",
        "model": show(pipe.bundle_dir),
        **{k: v for k, v in pipe.backend.describe().items() if isinstance(v, str | int | float)},
        "steps": steps,
        "cfg_scale": cfg_scale,
        "counts": counts,
        "wall_s": round(wall_s, 3),
        "items": items,
    }
    _atomic_write_text(path, json.dumps(data, indent=2) + "\n")
