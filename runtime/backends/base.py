"""The one small interface every backend implements.

A backend owns the three networks of a bundle in its own engine (PyTorch,
ONNX Runtime, TensorRT) and exposes exactly what the pipeline needs:

- `encode_frames(pixels [N, 3, H, W] float32) -> features [N, D]`
- `sample(noise, cond, plan) -> latents`: the sampler over `v2m.runtime.sampler`'s plan
  (guidance branches, solver table) and loop; the backend supplies the guided stage
  (`backends.torch_step.guided_stage`, eager, compiled, captured, or as the exported `step`
  graph) and its buffers, never its own loop, combine or solver update.
- `decode(latents [B, C, L]) -> audio [B, 2, L * hop]`
- `max_batch(g)`: how many videos one `sample` call may take with g guidance branches
  (an engine's optimization profile bounds it; None: unbounded).
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core.errors import InputError

from ..sampler import Conditioning, Plan, branch_batch, global_batch

__all__ = ["Backend", "StepHook", "EngineCall", "runtime_graphs", "default_threads"]

log = logging.getLogger("v2m.backend")

StepHook = Callable[[int], None]


class Backend(abc.ABC):
    name: str = "abstract"
    device: str = "cpu"
    precision: str = "fp32"

    @abc.abstractmethod
    def encode_frames(self, pixels: np.ndarray) -> Any:
        """[N, 3, H, W] float32 normalized pixels -> [N, D] features (numpy, or a device tensor)."""

    @abc.abstractmethod
    def sample(
        self,
        noise: np.ndarray,
        cond: Conditioning,
        plan: Plan,
        on_step: StepHook | None = None,
        stage_noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run the sampler from the initial state [B, C, L] (the noise, already scaled by the
        table's `x0_scale`: `Pipeline.sample` does that) to latents [B, C, L] (float32 numpy).

        Args:
            cond: curves, prompt (and negative prompt) embeddings of the B videos.
            plan: guidance branches and weights, the solver table (`sampler.Plan.make`).
            on_step: called with the step index after each step is enqueued (no sync).
            stage_noise: (N, B, C, L) noise of noise-injecting solvers (None: none).
        """

    @abc.abstractmethod
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [B, C, L] -> audio [B, 2, L * hop] float32 numpy."""

    def condition(self, text: np.ndarray, text_mask: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A Stable Audio Open conditioner: T5 tokens [B, S, E], mask [B, S], seconds [B, K] ->
        (cross-attention tokens [B, S + Kx, Dc], global conditioning [B, Dg]), float32 numpy."""
        from v2m.core.errors import BundleError

        raise BundleError(f"the {self.name} backend has no conditioner for this bundle (only Stable Audio Open "
                          "bundles have one)")

    def max_batch(self, guidance_size: int) -> int | None:
        """Videos per `sample` call with `guidance_size` branches; None when unbounded."""
        return None

    def step_clock(self):
        """How sampler steps are timed (`v2m.runtime.profiler.StepClock`); default: the host
        clock, exact for engines that return when the work is done."""
        from ..clocks import HostClock

        return HostClock()

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU). Profilers call it; the sampler does not."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def close(self) -> None:
        """Release engines and buffers."""


class EngineCall:
    """One sampler call of an engine backend, its shapes and branch batch (numpy, float32)."""

    def __init__(self, backend: Backend, noise: np.ndarray, cond: Conditioning, plan: Plan, stage_noise, what: str):
        self.b, self.c, self.n = noise.shape
        self.g = plan.guidance.size
        limit = backend.max_batch(self.g)
        if limit is not None and self.b > limit:
            raise InputError(f"{self.b} videos in one sampler call exceed {what} ({limit} with {self.g} guidance "
                             "branches); sample fewer at once")
        self.curve, self.text, self.mask = branch_batch(plan.guidance, cond)  # (G*B, 1, L), (G*B, S, E), (G*B, S)
        self.global_cond = global_batch(plan.guidance, cond)  # (G*B, Dg) or None
        self.s = self.text.shape[1]
        self.n_noise = 1 if stage_noise is None else stage_noise.shape[0]
        self.noise = (np.zeros((1, self.b, self.c, self.n), np.float32) if stage_noise is None
                      else np.ascontiguousarray(stage_noise, dtype=np.float32))


def runtime_graphs(cfg) -> tuple[str, ...]:
    """The exported graphs an engine backend runs for a bundle: every one its family exports but
    the T5 text encoder (`v2m.runtime.t5_text` runs that)."""
    from v2m.families import graph_names

    return tuple(n for n in graph_names(cfg) if n != "t5")


def default_threads() -> int:
    """The CPU threads an engine uses by default: OMP_NUM_THREADS when set (the standard
    variable, honoured for both engines), else the physical cores this process may run on
    (SMT siblings share one core's vector units; more threads than cores only contend)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cpus = sorted(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            siblings = str(cpu)
        cores.add(siblings)
    return max(1, len(cores))
