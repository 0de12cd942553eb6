"""Many videos at once: folders, file lists and JSONL manifests, batched through the sampler.

```python
from v2m.runtime import Pipeline
from v2m.batch import BatchOptions, collect_inputs, run_batch
pipe = Pipeline.from_pretrained("tiny-bundle")
jobs = collect_inputs(["videos/"], "out/", prompt="warm synth pop", seed=7)
summary = run_batch(pipe, jobs, BatchOptions("out/"))     # writes out/summary.json
```

- Each video is decoded, encoded and turned into an event curve on its own;
  videos of the same latent length are then sampled together (one
  `Pipeline.sample` call of B <= batch_size, and <= what the engine's profile takes),
  each from its own seed's noise, so a video's music is the same batched or alone. Longer-than-`max_frames`
  videos are sampled alone, in windows.
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

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from v2m.core import jsonio, tempfiles
from v2m.core.errors import InputError, OutputError
from v2m.runtime import media, sampler
from v2m.runtime.request import Request, check_seed, problem

__all__ = [
    "Job",
    "BatchOptions",
    "BatchSummary",
    "collect_inputs",
    "read_manifest",
    "assign_outputs",
    "refuse_output_clashes",
    "check_output_dir",
    "model_hash",
    "show",
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
    """How `run_batch` runs: the output folder and format, the largest group, and the `Request`
    every job starts from (each job sets its own prompt and seed)."""

    out_dir: Path | str
    format: str = "mp4"
    batch_size: int = 8
    request: Request = field(default_factory=Request)  # every job's, with its own prompt and seed
    overwrite: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    max_duration_s: float | None = None  # a longer video fails (its line in the summary); None: no limit


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
        elif (bad_seed := problem(check_seed, s)) is not None:
            job.fail(f"{where}: {bad_seed}")
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
    a remaining clash gets `-2`, `-3`... Manifest `output` values are kept; a job
    whose output is another's output or any job's input fails (`refuse_output_clashes`).
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
            taken.add(_output_key(j.output))
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
        while _output_key(out_dir / name) in taken:
            name, k = f"{base}-{k}{ext}", k + 1
        taken.add(_output_key(out_dir / name))
        j.output = out_dir / name
    refuse_output_clashes(jobs)
    for j in jobs:
        if j.status != "pending" or j.output is None:
            continue
        try:
            media.check_output_path(j.output, j.video)
            tempfiles.check_name_length(_sidecar(j.output))  # written next to it, after the work
        except OutputError as e:
            j.fail(str(e))


def _output_key(path: Path) -> str:
    """A path as outputs are compared: absolute, links resolved, `..` folded, case-insensitive."""
    return os.path.realpath(path).lower()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def refuse_output_clashes(jobs: list[Job]) -> None:
    """Fail, before any work, every pending job whose output would overwrite what another job
    needs: another job's output (every line after the first that names it fails), or any job's
    input (compared by real path and by file identity: links, `..`, another spelling)."""
    inputs: dict[str, Job] = {}
    input_ids: dict[tuple[int, int], Job] = {}
    for j in jobs:
        if str(j.video).startswith("<"):  # a bad manifest line: no input
            continue
        inputs.setdefault(os.path.realpath(j.video), j)
        fid = _file_id(j.video)
        if fid is not None:
            input_ids.setdefault(fid, j)
    claimed: dict[str, Job] = {}
    for j in jobs:
        if j.status != "pending" or j.output is None:
            continue
        key = _output_key(j.output)
        reader = inputs.get(os.path.realpath(j.output)) or input_ids.get(_file_id(j.output) or (-1, -1))
        if reader is not None and reader is not j:
            j.fail(f"output {show(j.output)} is the input of {_job_name(reader)}; choose another output")
        elif key in claimed:
            j.fail(f"output {show(j.output)} is also the output of {_job_name(claimed[key])}; give each its own output")
        else:
            claimed[key] = j


def _job_name(job: Job) -> str:
    """A job as messages name it: its manifest line, else its input."""
    return job.source or show(job.video)


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
                               ("curve_guidance", sopts.curve_guidance), ("negative_prompt", opts.request.negative_prompt))
             if v != {"solver": "euler", "shift": 1.0, "use_curve": True, "curve_guidance": 0.0}.get(k)}
    extra.update(_creator_key(opts.request))
    return {**({"sampler": extra} if extra else {}),
        "video": show(os.path.realpath(job.video)),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "prompt": job.prompt,
        "seed": job.seed,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "keep_audio_db": opts.request.keep_audio_db,
        "text_embeddings": _sha256(Path(opts.request.text_embeddings)) if opts.request.text_embeddings else None,
        "model": model,
    }


def _creator_key(req) -> dict[str, Any]:
    """The curve edits and loop of the request, as JSON values, where given (older sidecars still verify)."""
    out = {k: [list(x) for x in getattr(req, k)] for k in ("hits", "curve_points", "suppress") if getattr(req, k)}
    return {**out, **({"curve_mix": req.curve_mix} if req.curve_mix is not None else {}),
            **({"loop": True} if req.loop else {})}


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
