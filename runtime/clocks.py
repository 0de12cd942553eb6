"""How sampler steps are timed: a mark at the end of each step, read after the loop.

The backend says which clock fits it (`Backend.step_clock`): device events where there are
some, the host clock for synchronous engines, the host clock after a sync (asked for only).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["StepClock", "HostClock", "SyncHostClock", "TorchCudaClock"]


def _torch():
    import torch

    return torch


class StepClock:
    """Marks the end of each sampler step and reads the times after the loop.

    `kind` names the method for reports: "cuda_events", "perf_counter" or "host_sync".
    `needs_sync`: marking synchronizes the device (so it is used only when asked for).
    """

    kind = "perf_counter"
    needs_sync = False

    def mark(self) -> Any:
        return time.perf_counter()

    def wait(self, last: Any) -> None:
        """Block until the `last` mark has happened (after the loop)."""

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return (b - a) * 1e3

    def done(self) -> None:
        """The marks were read: release them (device events)."""


class HostClock(StepClock):
    """The host clock: exact for engines whose calls return when the work is done (CPU)."""


class SyncHostClock(StepClock):
    """The host clock after a device sync: for asynchronous engines without device events."""

    kind = "host_sync"
    needs_sync = True

    def __init__(self, sync):
        self._sync = sync

    def mark(self) -> float:
        self._sync()
        return time.perf_counter()


class TorchCudaClock(StepClock):
    """`torch.cuda.Event`s on a device's current stream (cuda:N: that device's, not GPU 0's)."""

    kind = "cuda_events"

    def __init__(self, device):
        self.torch = _torch()
        self.device = self.torch.device(device)

    def mark(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.torch.cuda.current_stream(self.device))
        return ev

    def wait(self, last: Any) -> None:
        last.synchronize()

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b)
