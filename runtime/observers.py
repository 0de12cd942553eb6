"""The engine core's events, and the one list of observers that hears them.

`Pipeline.prepare / sample / render` report what they do through `Observers`: a stage begins
and ends (decode, encode, curve, text, sampler, vae, write), the sampling of a group begins and
ends ("sample": one group of videos, a long video's windows included), and each solver step
ends. The profiler (ranges, step times), a progress bar, the server's metrics and a request's
cancellation are observers; none of them is wired into the core by hand.

```python
obs = Observers([StepCallback(progress), ProfilerObserver(profiler), metrics])
prepared = pipe.prepare("clip.mp4", req, observers=obs)
```
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Observer", "Observers", "StepCallback", "ProfilerObserver", "StageMetrics", "STAGES"]

STAGES = ("decode", "encode", "curve", "text", "sampler", "vae", "write")


class Observer:
    """A listener of the core's events; every method is a no-op here (override what you need).

    `items` are the `Prepared` videos the event concerns (one, or a sampled group). An
    observer may raise from `step` to stop a sampling run (a cancelled request).
    """

    def begin(self, stage: str, items: Sequence[Any]) -> None:
        pass

    def end(self, stage: str, seconds: float, items: Sequence[Any], error: BaseException | None = None) -> None:
        pass

    def step(self, i: int) -> None:
        pass


class Observers:
    """The observers of one call (an empty list is fine: the core always has one)."""

    def __init__(self, observers: Iterable[Observer | None] = ()):
        self.observers: list[Observer] = [o for o in observers if o is not None]

    def __iter__(self):
        return iter(self.observers)

    def with_(self, *more: Observer | None) -> Observers:
        return Observers([*self.observers, *more])

    def begin(self, stage: str, items: Sequence[Any]) -> None:
        for o in self.observers:
            o.begin(stage, items)

    def end(self, stage: str, seconds: float, items: Sequence[Any], error: BaseException | None = None) -> None:
        for o in self.observers:
            o.end(stage, seconds, items, error)

    def step(self, i: int) -> None:
        for o in self.observers:
            o.step(i)

    def record(self, stage: str, seconds: float, items: Sequence[Any]) -> None:
        """A stage measured elsewhere (decode time not hidden by encoding): timings and observers."""
        _add(stage, seconds, items)
        self.end(stage, seconds, items)

    @contextmanager
    def stage(self, stage: str, items: Sequence[Any], sync: Callable[[], None] | None = None):
        """Time the block as `stage` of `items` (each item's `timings[stage]` gets its share);
        `sync` (the backend's) runs before the clock stops, so device work is counted."""
        self.begin(stage, items)
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
            if sync is not None:
                sync()
        except BaseException as e:
            error = e
            raise
        finally:
            dt = time.perf_counter() - t0
            _add(stage, dt, items)
            self.end(stage, dt, items, error)


def _add(stage: str, seconds: float, items: Sequence[Any]) -> None:
    share = seconds / max(len(items), 1)
    for it in items:
        t = getattr(it, "timings", None)
        if t is not None:
            t[stage] = t.get(stage, 0.0) + share


class StepCallback(Observer):
    """Calls `fn(i)` after each step (progress bars, `on_step=` of the Python API)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def step(self, i: int) -> None:
        self.fn(i)


class StageMetrics(Observer):
    """Calls `fn(stage, seconds)` at each stage's end (the server's latency histograms)."""

    def __init__(self, fn: Callable[[str, float], None]):
        self.fn = fn

    def end(self, stage: str, seconds: float, items: Sequence[Any], error: BaseException | None = None) -> None:
        if stage in STAGES:
            self.fn(stage, seconds)


class ProfilerObserver(Observer):
    """Feeds a `v2m.runtime.profiler.Profiler`: an NVTX/trace range per stage and per sampled
    group, and the step times of each group's sampling (`step_ms` after it ends)."""

    def __init__(self, profiler):
        self.profiler = profiler
        self._open: list[tuple[str, Any]] = []
        self.step_ms: list[float] = []

    def begin(self, stage: str, items: Sequence[Any]) -> None:
        if stage == "sample":
            self.profiler.begin_steps()
            return
        cm = self.profiler.range(stage)
        cm.__enter__()
        self._open.append((stage, cm))

    def end(self, stage: str, seconds: float, items: Sequence[Any], error: BaseException | None = None) -> None:
        if stage == "sample":
            if error is None:
                self.step_ms = self.profiler.end_steps()
            else:
                self.profiler.abort_steps()
            return
        if self._open and self._open[-1][0] == stage:
            _, cm = self._open.pop()
            cm.__exit__(None, None, None)

    def step(self, i: int) -> None:
        self.profiler.step(i)
