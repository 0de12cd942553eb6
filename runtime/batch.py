"""Many videos at once: folders, file lists and JSONL manifests, batched through the sampler.

```python
from v2m.runtime import Pipeline
from v2m.runtime.batch import BatchOptions, collect_inputs, run_batch
pipe = Pipeline.from_pretrained("tiny-bundle")
jobs = collect_inputs(["videos/"], "out/", prompt="warm synth pop", seed=7)
summary = run_batch(pipe, jobs, BatchOptions("out/"))     # writes out/summary.json
```

- Each video is decoded, encoded and turned into an event curve on its own;
  videos of the same latent length are then sampled together (one
  `Pipeline.sample` call of B <= batch_size, and <= what the engine's profile takes),
  each from its own seed's noise, so a video's music is the same batched or alone. Longer-than-`max_frames`
  videos go through `Pipeline.sample_windows` one at a time.
- One bad input never stops the rest: it is recorded in `summary.json` with a
  one-line reason, and the run goes on.
- Every output gets a sidecar `<output>.v2m.json` holding the sha256 of the
  output and the inputs it was made from (video path, size, mtime, prompt,
  seed, settings, model hash). A re-run skips an output only when both match,
  so an interrupted run resumes with the missing ones (outputs are written
  atomically: a half file never appears).
- With a `Profiler` (`v2m generate ... --profile R.json --trace T.json`), each
  finished video is one run of its report (its own stages, its share of its
  group's sampler time) and each sampler call over a group of B videos (or a
  long video's windows) is one group with its step times, B and shapes; the
  trace shows every video's preparation and every group as host ranges.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import jsonio, media, sampler, tempfiles
from .errors import InputError, NumericalError, OutputError, V2MError

__all__ = [
    "Job",
    "BatchOptions",
    "BatchSummary",
    "Progress",
    "collect_inputs",
    "read_manifest",
    "assign_outputs",
    "check_output_dir",
    "run_batch",
    "prepare_job",
    "write_output",
    "SUMMARY_NAME",
    "SIDECAR_SUFFIX",
]

log = logging.getLogger("v2m.batch")

SUMMARY_NAME = "summary.json"
SIDECAR_SUFFIX = ".v2m.json"
SIDECAR_FORMAT = "v2m-output/1"
FORMATS = ("mp4", "wav", "flac")
MANIFEST_KEYS = {"video", "prompt", "seed", "output"}


@dataclass
class Job:
    """One input video and what to make of it. `error` set = failed before any work."""

    video: Path
    prompt: str = ""
    seed: int | None = None  # as requested; None draws one
    output: Path | None = None
    root: Path | None = None  # the folder it was found in (for output names)
    explicit_output: bool = False
    status: str = "pending"  # pending, ok, failed, skipped
    reason: str | None = None
    used_seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it came from (manifest line)

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", " ".join(str(reason).split())


@dataclass
class BatchOptions:
    """How `run_batch` runs. Args mirror `v2m generate`'s flags."""

    out_dir: Path | str
    format: str = "mp4"
    batch_size: int = 8
    steps: int | None = None
    cfg_scale: float | None = None
    negative_prompt: str | None = None
    solver: str | None = None
    shift: float | None = None
    use_curve: bool = True
    curve_guidance: float | None = None
    overwrite: bool = False
    keep_audio_db: float | None = None
    text_embeddings: str | Path | None = None
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass
class BatchSummary:
    jobs: list[Job]
    path: Path
    wall_s: float

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs)


def show(path: Any) -> str:
    """A path as printable text (undecodable bytes as \\xNN), for messages and JSON."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _input_name(job: Job) -> str:
    """How a job's input is named in summaries and reports (a manifest line for a bad line)."""
    return job.source if str(job.video).startswith("<") else show(job.video)


# --- inputs ------------------------------------------------------------------------------
def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(root: Path, skip: set[str]) -> tuple[list[Path], list[str]]:
    """Regular files under `root` (recursive, symlinks followed but never into a loop), sorted; and problems."""
    files: list[Path] = []
    problems: list[str] = []
    visited: set[str] = set()

    def onerror(e: OSError) -> None:
        problems.append(f"cannot list {show(e.filename)} ({e.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        real = os.path.realpath(dirpath)
        if real in visited or real in skip:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and os.path.realpath(os.path.join(dirpath, d)) not in visited)
        for name in sorted(filenames):
            if not _hidden(name) and not name.endswith(SIDECAR_SUFFIX) and name != SUMMARY_NAME:
                files.append(Path(dirpath) / name)
    return files, problems


def collect_inputs(inputs: list[str | Path], out_dir: str | Path, prompt: str = "", seed: int | None = None) -> list[Job]:
    """Jobs for files and folders (recursive). Raises InputError if there is nothing to do.

    Hidden files, sidecars and anything inside `out_dir` are left out. Every other
    file is a job (a non-video file fails with its reason); the same real file
    reached twice runs once.
    """
    skip = {os.path.realpath(out_dir)}
    jobs: list[Job] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if os.path.realpath(p) in skip:
                raise OutputError(f"the output folder {show(out_dir)} is the input folder; choose another -o")
            files, problems = _walk(p, skip)
            for msg in problems:
                log.warning("%s", msg)
            if not files:
                raise InputError(f"no videos found in {show(p)}; pass a folder with video files")
            jobs += [Job(f, prompt, seed, root=p) for f in files]
        else:
            jobs.append(Job(p, prompt, seed))
    if not jobs:
        raise InputError("no input videos; pass video files, a folder, or --manifest")
    seen: dict[str, Job] = {}
    for j in jobs:
        real = os.path.realpath(j.video)
        if real in seen and j.video.exists():
            j.status, j.reason = "skipped", f"same file as {show(seen[real].video)}"
        else:
            seen.setdefault(real, j)
    return jobs


def read_manifest(path: str | Path, prompt: str = "", seed: int | None = None) -> list[Job]:
    """Jobs from a JSONL file: one {"video", "prompt", "seed", "output"} object per line.

    Relative `video` paths are relative to the manifest's folder; `output` is
    relative to the output folder. Blank lines and lines starting with # are
    ignored. A bad line becomes a failed job with its reason; the others run.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise InputError(f"cannot read manifest {show(path)} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"manifest {show(path)} is not UTF-8 text") from None
    jobs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path.name} line {n}"
        job = Job(Path(f"<{where}>"), prompt, seed, source=where)
        jobs.append(job)
        try:
            entry = jsonio.loads(line, where, InputError)
        except InputError as e:
            job.fail(str(e))
            continue
        if not isinstance(entry, dict):
            job.fail(f"{where}: expected a JSON object, got {type(entry).__name__}")
            continue
        unknown = sorted(set(entry) - MANIFEST_KEYS)
        if unknown:
            job.fail(f"{where}: unknown keys {unknown}; expected some of {sorted(MANIFEST_KEYS)}")
            continue
        video, p, s, out = entry.get("video"), entry.get("prompt", prompt), entry.get("seed", seed), entry.get("output")
        if not isinstance(video, str) or not video:
            job.fail(f"{where}: 'video' must be a non-empty string")
        elif not isinstance(p, str):
            job.fail(f"{where}: 'prompt' must be a string")
        elif s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63):
            job.fail(f"{where}: 'seed' must be an integer in [0, 2^63)")
        elif out is not None and (not isinstance(out, str) or not out):
            job.fail(f"{where}: 'output' must be a non-empty string")
        else:
            job.video = Path(video) if os.path.isabs(video) else path.parent / video
            job.prompt, job.seed = p, s
            if out is not None:
                job.output, job.explicit_output = Path(out), True
    if not jobs:
        raise InputError(f"manifest {show(path)} has no jobs")
    return jobs


def check_output_dir(out_dir: str | Path) -> Path:
    """Create `out_dir` if missing and check it is a writable folder (before any work); remove
    the stale temporary files a killed run left there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {show(out)} is a file; batch mode writes into a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {show(out)} ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {show(out)} is not writable; choose another -o")
    tempfiles.clean_stale(out)  # what a killed run left (see tempfiles)
    return out


def _name_parts(job: Job) -> list[str]:
    """Path components naming the output, most specific last, without the suffix."""
    if job.root is not None:
        rel = Path(os.path.relpath(job.video, job.root))
        return [*rel.parts[:-1], rel.stem]
    parts = [p for p in Path(os.path.abspath(job.video)).parts[1:]]
    return [*parts[:-1], Path(parts[-1]).stem] if parts else ["video"]


def assign_outputs(jobs: list[Job], out_dir: str | Path, fmt: str = "mp4") -> None:
    """Give every job a distinct output path in `out_dir`; refuse outputs that are inputs.

    Folder inputs are named by their relative path (`a/clip.mp4` -> `a__clip.mp4`);
    file inputs by their stem, with parent folders prepended only on a clash;
    a remaining clash gets `-2`, `-3`... Manifest `output` values are kept.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    ext = "." + fmt
    taken: set[str] = set()
    for j in jobs:
        if j.explicit_output and j.output is not None:
            if not j.output.suffix:
                j.output = j.output.with_name(j.output.name + ext)
            j.output = j.output if j.output.is_absolute() else out_dir / j.output
            taken.add(str(j.output).lower())
    auto = [j for j in jobs if not j.explicit_output and j.status == "pending"]
    parts = {id(j): _name_parts(j) for j in auto}
    depth = {id(j): (len(parts[id(j)]) if j.root is not None else 1) for j in auto}
    for _ in range(64):  # widen names of clashing file inputs with their parent folders
        names: dict[str, list[Job]] = {}
        for j in auto:
            names.setdefault("__".join(parts[id(j)][-depth[id(j)] :]).lower(), []).append(j)
        clash = [j for group in names.values() if len(group) > 1 for j in group if depth[id(j)] < len(parts[id(j)])]
        if not clash:
            break
        for j in clash:
            depth[id(j)] += 1
    for j in auto:
        base = "__".join(parts[id(j)][-depth[id(j)] :])
        name, k = base + ext, 2
        while str(out_dir / name).lower() in taken:
            name, k = f"{base}-{k}{ext}", k + 1
        taken.add(str(out_dir / name).lower())
        j.output = out_dir / name
    for j in jobs:
        if j.status != "pending" or j.output is None:
            continue
        try:
            media.check_output_path(j.output, j.video)
        except OutputError as e:
            j.fail(str(e))


# --- sidecars ----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def model_hash(pipe) -> str:
    """sha256 of the bundle config, its weight files' names/sizes/mtimes and the backend settings."""
    h = hashlib.sha256()
    h.update((pipe.bundle_dir / "config.json").read_bytes())
    for f in sorted(Path(pipe.bundle_dir).rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".onnx", ".data", ".plan", ".engine"):
            st = f.stat()
            h.update(f"{f.relative_to(pipe.bundle_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    d = pipe.backend.describe()
    h.update(f"{d.get('backend')}:{d.get('precision')}".encode())
    return h.hexdigest()


def _input_key(job: Job, opts: BatchOptions, model: str, sopts: sampler.SamplerOptions) -> dict[str, Any]:
    st = job.video.stat()
    steps, cfg_scale = sopts.steps, sopts.cfg_scale
    # Sampler choices beyond steps and cfg join the key only when not the defaults, so sidecars
    # written before they existed still verify.
    extra = {k: v for k, v in (("solver", sopts.solver), ("shift", sopts.shift), ("use_curve", sopts.use_curve),
                               ("curve_guidance", sopts.curve_guidance), ("negative_prompt", opts.negative_prompt))
             if v != {"solver": "euler", "shift": 1.0, "use_curve": True, "curve_guidance": 0.0}.get(k)}
    return {**({"sampler": extra} if extra else {}),
        "video": show(os.path.realpath(job.video)),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "prompt": job.prompt,
        "seed": job.seed,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "keep_audio_db": opts.keep_audio_db,
        "text_embeddings": _sha256(Path(opts.text_embeddings)) if opts.text_embeddings else None,
        "model": model,
    }


def _sidecar(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def _is_complete(output: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar if `output` is complete and was made from `key`, else None."""
    side = _sidecar(output)
    if not output.is_file() or not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("inputs") != key:
        return None
    return data if data.get("output_sha256") == _sha256(output) else None


def _atomic_write_text(path: Path, text: str) -> None:
    with tempfiles.atomic_output(path) as tmp:
        tmp.write_text(text)


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
@dataclass
class _Prepared:
    job: Job
    curve: np.ndarray  # [L]
    emb: np.ndarray  # [S, E]
    mask: np.ndarray  # [S]
    duration_s: float
    key: dict[str, Any]
    peak_gpu_mem_bytes: int | None = None  # while it was decoded and encoded (profiled on CUDA)


def _reason(e: BaseException) -> str:
    if isinstance(e, V2MError):
        return str(e)
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"internal error: {type(e).__name__}: {msg}"


def prepare_job(pipe, job: Job, text_embeddings=None, timings: dict[str, float] | None = None, profiler=None):
    """One video's conditioning: (curve [L], text emb [S, E], mask [S], duration_s); stage times into `timings`."""
    from .pipeline import _timed

    t = job.timings if timings is None else timings
    features, reader = pipe.encode_video(job.video, t, profiler=profiler)
    with _timed(t, "curve", None, profiler):
        curve, _ = pipe.compute_curve(features, reader.duration_s)
    del features
    with _timed(t, "text", None, profiler):
        emb, mask = pipe.encode_text(job.prompt, text_embeddings)
    return curve, emb, mask, reader.duration_s


def write_output(job: Job, audio: np.ndarray, duration_s: float, key: dict[str, Any], cfg, keep_audio_db=None) -> None:
    """Fit `audio` to the video, write `job.output` (muxed or audio) and its sidecar, atomically."""
    audio = media.finalize_audio(audio, duration_s, cfg.audio.sample_rate, cfg.audio.fade_out_s)
    if media.check_output_path(job.output, job.video) == "video":
        media.mux(job.video, audio, cfg.audio.sample_rate, job.output, keep_audio_db=keep_audio_db)
    else:
        media.write_audio(job.output, audio, cfg.audio.sample_rate)
    side = {
        "format": SIDECAR_FORMAT,
        "output": show(job.output.name),
        "output_sha256": _sha256(job.output),
        "seed": job.used_seed,
        "inputs": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_text(_sidecar(job.output), json.dumps(side, indent=2) + "\n")


def run_batch(
    pipe, jobs: list[Job], opts: BatchOptions, progress: Progress | None = None, profiler=None
) -> BatchSummary:
    """Run every pending job; write `summary.json` in the output folder (also after each video).

    Args:
        pipe: a loaded `Pipeline`.
        jobs: from `collect_inputs` or `read_manifest` (outputs assigned here if missing).
        opts: output folder, format, batch size, sampler settings.
        progress: a `Progress`; default: one on stderr when it is a terminal.
        profiler: a `v2m.runtime.profiler.Profiler`: one run per finished video, one group per
            sampler call (B videos, or a long video's windows) with its steps; closed with
            `end_batch` (also when interrupted) so its report and trace can be written after.
    """
    from .pipeline import _timed

    t_start = time.perf_counter()
    out_dir = check_output_dir(opts.out_dir)
    if any(j.output is None for j in jobs if j.status == "pending"):
        assign_outputs(jobs, out_dir, opts.format)
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {opts.batch_size}")
    cfg = pipe.config
    sopts = pipe.sampler_options(opts.steps, opts.cfg_scale, opts.solver, opts.shift, opts.use_curve, opts.curve_guidance)
    steps, cfg_scale = sopts.steps, sopts.cfg_scale
    neg = None
    if opts.negative_prompt is not None:
        _, _, *neg = pipe.encode_prompts("", opts.negative_prompt, opts.text_embeddings)  # once for the batch
    plan = pipe.plan(sopts, neg is not None)
    engine_max = pipe.max_batch(plan)
    group_size = opts.batch_size if engine_max is None else min(opts.batch_size, engine_max)
    if group_size < opts.batch_size:
        log.info("groups of %d videos (the engine's profile takes %d with %d guidance branches; --batch-size %d)",
                 group_size, engine_max, plan.guidance.size, opts.batch_size)
    model = model_hash(pipe)
    summary_path = out_dir / SUMMARY_NAME
    todo = [j for j in jobs if j.status == "pending"]
    progress = progress or Progress(len(todo), opts.progress)
    if progress.total != len(todo):
        progress.total = len(todo)
    for j in jobs:
        if j.status == "failed":
            progress.message(f"v2m: failed: {show(j.source or j.video)}: {j.reason}")
    prof = profiler
    group_of: dict[int, int] = {}  # id(job) -> its profiled group

    def span(name: str, **args: Any):
        """A profiler range (NVTX + trace event) when profiling."""
        return prof.range(name, args or None) if prof is not None else nullcontext()

    def on_step(i: int) -> None:
        if prof is not None:
            prof.step(i)  # a mark per step, read after the call: no sync here
        progress.on_step(i)

    def begin_group(kind: str, group: list[_Prepared]) -> str:
        """Open a profiled group (no-op without a profiler); returns its range name."""
        if prof is None:
            return ""
        shape = {"B": len(group), "L": int(group[0].curve.shape[0]), "S": int(group[0].mask.shape[-1])}
        rec = prof.begin_group(kind=kind, **shape, videos=[show(p.job.video) for p in group])
        for p in group:
            group_of[id(p.job)] = rec.meta["index"]
        return f"group {rec.meta['index']} {kind} B={shape['B']} L={shape['L']}"

    def end_group(group: list[_Prepared], sampler_s: float, error: BaseException | None = None) -> None:
        if prof is None:
            return
        stages = {"sampler": sampler_s}
        for s in ("vae", "write"):
            stages[s] = sum(p.job.timings.get(s, 0.0) for p in group)
        prof.end_group(stages, status="failed" if error else "ok", reason=_reason(error) if error else None)

    def write_summary() -> None:
        _write_summary(summary_path, jobs, pipe, steps, cfg_scale, time.perf_counter() - t_start)

    def failed(job: Job, e: BaseException) -> None:
        job.fail(_reason(e))
        progress.message(f"v2m: failed: {show(job.video)}: {job.reason}")
        progress.advance()
        write_summary()

    def finish(p: _Prepared, audio: np.ndarray, lat_frames: int) -> None:
        job = p.job
        try:
            t0 = time.perf_counter()
            with span("write", video=show(job.video)):
                write_output(job, audio, p.duration_s, p.key, cfg, opts.keep_audio_db)
            job.timings["write"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - recorded per video; the batch goes on
            failed(job, e)
            return
        job.status = "ok"
        job.info.update(latent_frames=lat_frames, duration_s=round(p.duration_s, 4))
        if prof is not None:
            prof.add_run(job.timings, {
                "video": show(job.video), "group": group_of.get(id(job)), "B": job.info.get("batch_size", 1),
                "L": lat_frames, "S": int(p.mask.shape[-1]),
            }, p.peak_gpu_mem_bytes)
        progress.advance()
        write_summary()

    def flush(group: list[_Prepared]) -> None:
        if not group:
            return
        length = group[0].curve.shape[0]
        seeds = [p.job.used_seed for p in group]
        noise = np.concatenate([pipe.initial_noise(s, length) for s in seeds])  # each video from its own seed
        stage_noise = pipe.stage_noise(seeds, plan, length)
        b = len(group)
        rep = lambda a: None if a is None else np.repeat(a[None], b, axis=0)
        try:
            cond = pipe.conditioning(
                np.stack([p.curve for p in group]), np.stack([p.emb for p in group]), np.stack([p.mask for p in group]),
                rep(neg and neg[0]), rep(neg and neg[1]), [p.duration_s for p in group],
            )
        except Exception as e:  # noqa: BLE001
            for p in group:
                failed(p.job, e)
            return
        progress.start_batch(len(group), steps)
        timings: dict[str, float] = {}
        name = begin_group("batched", group)
        with span(name, videos=[show(p.job.video) for p in group]):
            try:
                if prof is not None:
                    prof.begin_steps()
                with _timed(timings, "sampler", pipe.backend.synchronize, prof):
                    latents = pipe.sample(noise, cond, plan, on_step, check_finite=False, stage_noise=stage_noise)
                if prof is not None:
                    prof.end_steps()
            except Exception as e:  # noqa: BLE001
                for p in group:
                    p.job.timings["sampler"] = timings.get("sampler", 0.0) / len(group)
                    failed(p.job, e)
                end_group(group, timings.get("sampler", 0.0), e)
                return
            for i, p in enumerate(group):
                p.job.timings["sampler"] = timings["sampler"] / len(group)
                p.job.info["batch_size"] = len(group)
                try:
                    if not np.isfinite(latents[i]).all():
                        raise NumericalError("the sampler produced NaN/Inf latents; nothing was written (try --precision fp32)")
                    t0 = time.perf_counter()
                    with span("vae", video=show(p.job.video)):
                        audio = pipe.backend.decode(latents[i : i + 1])[0]
                    p.job.timings["vae"] = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    failed(p.job, e)
                    continue
                finish(p, audio, length)
            end_group(group, timings["sampler"])

    buckets: dict[tuple[int, int], list[_Prepared]] = {}
    interrupted = False
    if prof is not None:
        prof.begin_batch(**{**pipe.backend.describe(), "preset": cfg.preset, "steps": steps, "cfg_scale": cfg_scale,
                            "batch_size": opts.batch_size, "format": opts.format})
    try:
        for job in todo:
            try:
                key = _input_key(job, opts, model, sopts)
            except OSError as e:
                failed(job, InputError(f"cannot read {show(job.video)} ({e.strerror})"))
                continue
            if not opts.overwrite and (side := _is_complete(job.output, key)) is not None:
                job.status, job.reason, job.used_seed = "skipped", "complete (verified by sha256)", side.get("seed")
                progress.advance()
                continue
            try:
                job.used_seed = sampler.resolve_seed(job.seed)
                t = job.timings
                if prof is not None:
                    prof.reset_peak_memory()
                with span(f"video {show(job.video.name)}", video=show(job.video)):
                    curve, emb, mask, duration_s = prepare_job(pipe, job, opts.text_embeddings, t, prof)
            except Exception as e:  # noqa: BLE001 - recorded per video; the batch goes on
                failed(job, e)
                continue
            p = _Prepared(job, curve, emb, mask, duration_s, key)
            if prof is not None:
                p.peak_gpu_mem_bytes = prof.peak_memory()
            if curve.shape[0] > cfg.sampler.max_frames:  # long: windows, alone
                noise = pipe.initial_noise(job.used_seed, curve.shape[0])
                progress.start_batch(1, steps)
                name = begin_group("windows", [p])
                with span(name, videos=[show(job.video)]):
                    try:
                        if prof is not None:
                            prof.begin_steps()
                        cond = pipe.conditioning(
                            curve[None], emb[None], mask[None], None if neg is None else neg[0][None],
                            None if neg is None else neg[1][None], cfg.max_seconds,
                        )
                        _, audio = pipe.sample_windows(noise, cond, plan, on_step, job.timings, prof,
                                                       pipe.stage_noise([job.used_seed], plan, curve.shape[0]))
                        if prof is not None:
                            prof.end_steps()
                    except Exception as e:  # noqa: BLE001
                        failed(job, e)
                        end_group([p], job.timings.get("sampler", 0.0), e)
                        continue
                    finish(p, audio, curve.shape[0])
                    end_group([p], job.timings.get("sampler", 0.0))
                continue
            group = buckets.setdefault((curve.shape[0], mask.shape[-1]), [])
            group.append(p)
            if len(group) >= group_size:
                flush(buckets.pop((curve.shape[0], mask.shape[-1])))
        for k in list(buckets):
            flush(buckets.pop(k))
    except KeyboardInterrupt:
        interrupted = True
        for j in jobs:
            if j.status == "pending":
                j.reason = "interrupted"
        write_summary()
        raise
    finally:
        progress.close()
        if prof is not None:
            _end_profile(prof, jobs, group_of, time.perf_counter() - t_start, interrupted)
    write_summary()
    return BatchSummary(jobs, summary_path, time.perf_counter() - t_start)


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


def _write_summary(path: Path, jobs: list[Job], pipe, steps: int, cfg_scale: float, wall_s: float) -> None:
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
