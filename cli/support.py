"""What every `v2m` subcommand shares: one-line usage errors, help that shows each
option's default and ends with examples, option values checked before any work,
and the progress bar of a single generation.

Option checks are one table, `CHECKS`: an option's `dest` -> a function that returns
what is wrong with a value (or None). `check_options` runs every entry whose option
the parsed command has, before a video is decoded or a model loaded. A new option
needs one line there; sampler options reuse `SamplerOptions`' own rules.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from v2m.core import devices
from v2m.core.errors import InputError
from v2m.runtime.request import check_seed, max_duration_problem, problem
from v2m.runtime.sampler import SamplerOptions

__all__ = [
    "CHECKS",
    "ArgumentParser",
    "HelpFormatter",
    "StepProgress",
    "UsageError",
    "check_options",
    "flag",
]

MAX_CLIP_S = 600.0  # generated test clips (demo, bench): ten minutes is already a long wait
MAX_BATCH = 1024
KEEP_AUDIO_DB = (-60.0, 20.0)  # below -60 dB the original is inaudible under music
# --max-duration: generate/curve refuse longer videos (a feature film fits; a 3 KB file whose
# last frame sits hours later, which would decode and sample for hours, does not): see `request`.
MAX_CUDA_DEVICES = 1024  # cuda:N; more than any node holds (a 20-digit N overflowed torch's parser)
MAX_WORKERS = 4096  # --ray-actors, --replicas
MAX_WORKER_CPUS = 1024.0  # --ray-cpus, --replica-cpus: CPUs one Ray actor or replica asks for


class UsageError(Exception):
    """A command line argparse cannot parse: one line, exit 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends each option's default to its help (flags: "default: off"), unless the help
    already says it; keeps the examples epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        if action.default is False or action.nargs == 0 and action.default is None:
            return text + " (default: off)"
        if action.default is None:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`UsageError`) and an examples epilog.

    Args:
        examples: command lines shown at the end of `--help`.
    """

    def __init__(self, *args: Any, examples: Sequence[str] = (), **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description"):  # the epilog is kept as written; the description is wrapped
            kwargs["description"] = textwrap.fill(kwargs["description"], 79)
        if examples:
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# --- option checks -----------------------------------------------------------------------
Check = Callable[[Any], "str | None"]


def flag(dest: str) -> str:
    """The command-line spelling of an option's dest: cfg_scale -> --cfg-scale (train_steps: --steps)."""
    return {"train_steps": "--steps"}.get(dest) or "--" + dest.replace("_", "-")


def _sampler(field: str) -> Check:
    """SamplerOptions' own rule for one field (one rule for the CLI, the API and the server)."""

    def check(value: Any) -> str | None:
        try:
            SamplerOptions(**{field: value})
        except ValueError as e:
            return str(e)
        return None

    return check


def _int_in(lo: int, hi: int, what: str) -> Check:
    def check(value: int) -> str | None:
        if not lo <= value <= hi:
            return f"{what} must be an integer in [{lo}, {hi}], got {value}"
        return None

    return check


def _number_in(lo: float, hi: float, what: str, lo_open: bool = False) -> Check:
    def check(value: float) -> str | None:
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            return f"{what} must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value}"
        return None

    return check


def _device(value: str) -> str | None:
    """Syntax and index range; the index against the GPUs the CUDA driver shows, where it shows any
    (a machine without one is told so where a backend needs the GPU: `devices.check_device`)."""
    m = re.fullmatch(r"cuda:(\d+)", value)
    if value not in ("auto", "cpu", "cuda") and not m:
        return f"device must be cpu, cuda, cuda:N or auto, got {value!r}"
    if m is None:
        return None
    index, visible = int(m.group(1)), devices.cuda_device_count()
    if index >= MAX_CUDA_DEVICES or 0 < visible <= index:
        shown = f"cuda:0 .. cuda:{visible - 1}" if visible else f"N below {MAX_CUDA_DEVICES}"
        return f"device index {m.group(1)[:24]} is out of range ({shown})"
    return None


def _existing_file(value: str) -> str | None:
    p = Path(value)
    if not p.is_file():
        return f"{value}: no such file"
    return None


def _size(value: tuple[int, int]) -> str | None:
    w, h = value
    if w % 2 or h % 2 or not (16 <= w <= 7680 and 16 <= h <= 4320):
        return f"size must be even, from 16x16 to 7680x4320, got {w}x{h}"
    return None


def _opset(value: int) -> str | None:
    hi = 99
    try:  # the newest opset the installed onnx knows (torch's exporter may know fewer)
        import onnx

        hi = int(onnx.defs.onnx_opset_version())
    except ImportError:
        pass
    return _int_in(17, hi, "opset")(value)


# dest -> check. Every parsed option of every subcommand with an entry here is checked
# before any work; None values (option not given) are skipped.
CHECKS: dict[str, Check] = {
    "steps": _sampler("steps"),
    "cfg_scale": _sampler("cfg_scale"),
    "solver": _sampler("solver"),
    "shift": _sampler("shift"),
    "curve_guidance": _sampler("curve_guidance"),
    "seed": lambda v: problem(check_seed, v),
    "device": _device,
    "keep_audio": _number_in(*KEEP_AUDIO_DB, "the original audio's level in dB"),
    "max_duration": max_duration_problem,
    "batch_size": _int_in(1, MAX_BATCH, "batch size"),
    "duration": _number_in(0.0, MAX_CLIP_S, "duration in seconds", lo_open=True),
    "repeats": _int_in(1, 1000, "repeats"),
    "video_stream": _int_in(0, 65535, "the video stream index"),
    "text_embeddings": _existing_file,
    "size": _size,
    "opset": _opset,
    "tolerance": _number_in(0.0, 10.0, "tolerance in seconds", lo_open=True),
    "cut_tolerance": _number_in(0.0, 10.0, "tolerance in seconds", lo_open=True),
    "beat_tolerance": _number_in(0.0, 10.0, "tolerance in seconds", lo_open=True),
    # v2m train
    "train_steps": _int_in(1, 10_000_000, "training steps"),
    "clips": _int_in(1, 1_000_000, "clips"),
    "clip_seconds": _number_in(0.0, MAX_CLIP_S, "clip length in seconds", lo_open=True),
    "threads": _int_in(1, 1024, "threads"),
    # Ray (generate --ray, serve --ray): checked before Ray starts
    "ray_actors": _int_in(1, MAX_WORKERS, "actors"),
    "ray_cpus": _number_in(0.0, MAX_WORKER_CPUS, "CPUs per actor", lo_open=True),
    "replicas": _int_in(1, MAX_WORKERS, "replicas"),
    "replica_cpus": _number_in(0.0, MAX_WORKER_CPUS, "CPUs per replica", lo_open=True),
    "lr": _number_in(0.0, 1.0, "learning rate", lo_open=True),
    "lora_rank": _int_in(0, 4096, "LoRA rank"),
    "grad_accum": _int_in(1, 4096, "gradient accumulation"),
    "clips_per_file": _int_in(1, 10_000, "clips per file"),
    "eval_interval": _int_in(1, 10_000_000, "eval interval"),
    "workers": _int_in(1, 64, "workers"),
    "eval_generate": _int_in(0, 64, "generated validation clips"),
    "frames": _int_in(1, 64, "frames to caption"),  # describe_models.MAX_FRAMES (PromptModels checks it too)
}


def check_options(args: argparse.Namespace) -> None:
    """Run `CHECKS` over the parsed options; the first problem is an InputError (one line)."""
    for dest, value in vars(args).items():
        check = CHECKS.get(dest)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem:
            raise InputError(f"{flag(dest)}: {problem}")


# --- progress ----------------------------------------------------------------------------
def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class StepProgress:
    """`[#########---------] step 40/96 | 1.2 s | ETA 1.8 s` on stderr, redrawn in place.

    The ETA is the remaining steps times the median of the last 16 step times (the
    first step, which compiles or captures, does not skew it). Off unless the stream
    is a terminal (a pipe or a log file gets nothing), or when `enabled=False`. Use as
    `on_step` of `Pipeline.generate`; `close()` ends the line.
    """

    WIDTH = 24

    def __init__(self, total: int, enabled: bool | None = None, stream: TextIO | None = None, label: str = "step"):
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.total, self.label = max(1, int(total)), label
        self.done = 0
        self.t0 = self._tick = time.perf_counter()
        self.recent: collections.deque[float] = collections.deque(maxlen=16)  # seconds per step
        self._drawn_at = -1.0

    def __call__(self, i: int) -> None:
        now = time.perf_counter()
        self.recent.append(now - self._tick)
        self._tick = now
        self.done += 1
        if self.enabled and (self.done >= self.total or now - self._drawn_at >= 0.1):
            self._drawn_at = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float) -> str:
        """The bar's text at time `now` (perf_counter seconds)."""
        filled = self.WIDTH * min(self.done, self.total) // self.total
        left = max(self.total - self.done, 0) * statistics.median(self.recent) if self.recent else None
        eta = "?" if left is None else f"{left:.1f} s"
        return (f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {self.label} {self.done}/{self.total}"
                f" | {now - self.t0:.1f} s | ETA {eta}  ")

    def close(self) -> None:
        if self._drawn_at >= 0:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn_at = -1.0
