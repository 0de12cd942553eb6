"""What the trainers share: checkpoints that resume exactly, a progress bar, the loss log and its PNG.

The loops themselves stay in `autoencoder.py` and `dit.py`, one readable loop each
(nanoGPT's `train.py`): this file holds only their I/O.

Exact resumption: a trainer draws everything random at step s from generators
seeded by (seed, s) (`step_rng`, `step_generator`), never from a generator that
runs across steps, so the state to save is the model, the optimizer, the EMA and
the step; a run stopped at a checkpoint and resumed gives the same weights, bit
for bit, as one that never stopped (same machine and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from v2m.core.errors import InputError, OutputError

__all__ = [
    "step_rng",
    "step_generator",
    "cosine_lr",
    "set_threads",
    "save_checkpoint",
    "load_checkpoint",
    "resume",
    "checkpoint",
    "LossLog",
    "Progress",
    "ema_update",
    "check_workdir",
    "cpu_seconds",
    "record_timing",
]

log = logging.getLogger("v2m.train")


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """numpy generator for everything random at `step` of a run seeded `seed` (stream: which use)."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """torch CPU generator for `step`, seeded from `step_rng` (so both come from one (seed, step))."""
    return torch.Generator().manual_seed(int(step_rng(seed, step, 1000 + stream).integers(2**62)))


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_threads(threads: int | None) -> int:
    """torch intra-op threads (default: the CPUs this process may use); returns the number set."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def record_timing(directory: Path, wall_s: float, cpu_s: float, **extra: Any) -> dict[str, Any]:
    """Add this invocation's wall and CPU time to `directory/timing.json`; its totals add up every
    invocation, so a run stopped and resumed reports what it cost in all."""
    path = directory / "timing.json"
    runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    runs.append({"wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1), **extra})
    data = {"wall_s": round(sum(r["wall_s"] for r in runs), 1), "cpu_s": round(sum(r["cpu_s"] for r in runs), 1),
            "runs": runs}
    tmp = directory / ".timing.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def check_workdir(path: str | Path, kind: str) -> Path:
    """A training directory: created if missing; refused if it holds another kind of run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory")
    meta = path / "run.json"
    if meta.is_file():
        got = json.loads(meta.read_text()).get("kind")
        if got != kind:
            raise InputError(f"{path} holds a '{got}' run, not '{kind}'; choose another directory")
    elif path.is_dir() and any(path.iterdir()):
        raise OutputError(f"{path} exists, is not empty and is not a v2m training directory; choose another")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A trainer's checkpoint, loaded with `weights_only=True` (tensors, numbers, strings, dicts: no code)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(f"{path}: not a readable v2m training checkpoint ({type(e).__name__}); "
                         "delete it to start over") from None


def resume(path: Path, run: dict[str, Any], states: dict[str, Any]) -> tuple[int, LossLog]:
    """Load `states` (checkpoint key -> module or optimizer) from the checkpoint at `path`, if any.

    Returns the step to continue from (0 for a new run) and the loss log up to it. A
    checkpoint of other settings (`run` differs) is refused: resuming it would silently
    mix two runs.
    """
    if not path.is_file():
        return 0, LossLog()
    ck = load_checkpoint(path)
    if ck["run"] != run:
        raise InputError(f"{path} was made with other settings; use another directory or delete it")
    for key, obj in states.items():
        obj.load_state_dict(ck[key])
    step = int(ck["step"])
    losses = LossLog.from_dict(ck["losses"])
    losses.truncate(step - 1)
    log.info("resuming %s at step %d", path.parent, step)
    return step, losses


def checkpoint(path: Path, run: dict[str, Any], states: dict[str, Any], step: int, losses: LossLog) -> None:
    """Save what `resume` loads: the run's settings, every state dict, the step and the losses."""
    save_checkpoint(path, {"run": run, **{k: v.state_dict() for k, v in states.items()}, "step": step,
                           "losses": losses.to_dict()})


@dataclass
class LossLog:
    """Losses by step: `train` every logged step, `eval` at each eval interval; saved as JSON and PNG."""

    train: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def add(self, step: int, values: dict[str, float], which: str = "train") -> None:
        table = self.train if which == "train" else self.eval
        for k, v in values.items():
            table.setdefault(k, []).append((int(step), float(v)))

    def truncate(self, step: int) -> None:
        """Forget entries after `step` (a resumed run re-logs them)."""
        for table in (self.train, self.eval):
            for k in table:
                table[k] = [(s, v) for s, v in table[k] if s <= step]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LossLog:
        conv = lambda t: {k: [(int(s), float(v)) for s, v in rows] for k, rows in t.items()}
        return cls(conv(d.get("train", {})), conv(d.get("eval", {})))

    def save(self, directory: Path, title: str) -> None:
        """losses.json and losses.png (matplotlib, when installed) in `directory`."""
        tmp = directory / ".losses.json.tmp"
        tmp.write_text(json.dumps(self.to_dict()) + "\n")
        os.replace(tmp, directory / "losses.json")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.info("matplotlib is not installed: no losses.png")
            return
        keys = sorted(self.train)
        fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.2 * max(1, len(keys)), 3.2), squeeze=False)
        for ax, k in zip(axes[0], keys):
            s, v = zip(*self.train[k])
            ax.plot(s, v, lw=0.6, alpha=0.5, label="train")
            if len(v) >= 20:  # a running mean over 5% of the run reads better than raw steps
                w = max(5, len(v) // 20)
                ax.plot(s[w - 1 :], np.convolve(v, np.ones(w) / w, mode="valid"), lw=1.4, label=f"train (mean of {w})")
            if k in self.eval:
                es, ev = zip(*self.eval[k])
                ax.plot(es, ev, "o-", ms=3, lw=1.2, label="eval")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step")
            if min(v) > 0 and max(v) / max(min(v), 1e-12) > 30:
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        tmp_png = directory / ".losses.tmp.png"
        fig.savefig(tmp_png, dpi=90)
        plt.close(fig)
        os.replace(tmp_png, directory / "losses.png")


class Progress:
    """A one-line progress bar on stderr: step/total, loss, steps/s, elapsed, ETA.

    Redrawn in place on a terminal (at most 10 times a second); elsewhere (a log
    file) one plain line every `every` steps.
    """

    def __init__(self, total: int, start: int = 0, label: str = "train", stream: TextIO | None = None,
                 enabled: bool = True, every: int = 50):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.start, self.label, self.enabled, self.every = total, start, label, enabled, every
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        done = step + 1
        if self.tty and now - self._last < 0.1 and done < self.total:
            return
        if not self.tty and done % self.every and done < self.total:
            return
        self._last = now
        el = now - self.t0
        rate = (done - self.start) / max(el, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        frac = done / max(self.total, 1)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = f"{self.label} [{bar}] {done}/{self.total} {info} | {rate:.2f} steps/s | {el:.0f} s | ETA {eta:.0f} s"
        self.stream.write(("\r" + line + "  ") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
