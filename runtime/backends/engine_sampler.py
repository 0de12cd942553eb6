"""The engine sampler the ONNX Runtime and TensorRT backends share.

Both run `v2m.runtime.sampler.sample_loop` over the exported `step` graph (the one guided
stage definition) with everything on the device. What they share is here, written once:

- `StageRing`: the one state-routing scheme. The solver state (x, d, the stage index k)
  rotates through seven buffers (x: two bases and a stage scratch; d and k: two each), so
  no stage writes what it reads and nothing is copied; the pattern repeats every two steps.
- `step_bindings`: the buffer of every step input and output by name, from the engine's
  own I/O names: the state from the ring, every other input (the tables coef, noise,
  weights, curve and the hoisted tensors of the `text` and `schedule` graphs, whatever a
  model family calls them) from one dict; a name nothing makes is a one-line error.
- `text_feeds`: the `text` graph's inputs from the branch batch, by name.
- `ShapeCache`: per-shape state (buffers, bindings, captured graphs) in a small LRU.
- `run_steps`: the loop itself, a step at a time: a backend runs (or replays a captured)
  step of the ring's phase; returns the buffer name holding the result.

A backend supplies only its engine calls: allocate, upload, run a binding, capture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from v2m.core.errors import BundleError

from ..sampler import sample_loop
from .base import EngineCall

__all__ = ["STATE", "STATE_OUTPUTS", "BUFFERS", "StageRing", "step_bindings", "text_feeds", "ShapeCache", "run_steps"]

STATE = ("x", "x_eval", "d_prev", "k", "x_out", "d", "k_next")  # the step graph's state I/O
STATE_OUTPUTS = ("x_out", "d", "k_next")
BUFFERS = {"X0": "x", "X1": "x", "XE": "x", "D0": "x", "D1": "x", "K0": "k", "K1": "k"}  # ring buffer -> kind


class StageRing:
    """Which buffers stage call n of a solver with `stages` stages a step reads and writes.

    x: X0/X1 hold the step's base (alternating each step), XE the scratch of a step's
    non-final stages; d and k alternate every stage call. No output aliases an input,
    and the pattern repeats every 2 x stages calls (two steps): call n uses binding
    `n % period`, which is what a captured graph is keyed by.
    """

    def __init__(self, stages: int):
        self.stages = stages
        self.period = 2 * stages

    def binding(self, n: int) -> dict[str, str]:
        step, s = divmod(n, self.stages)
        base = "X0" if step % 2 == 0 else "X1"
        last = s == self.stages - 1
        return {
            "x": base,
            "x_eval": base if s == 0 else "XE",
            "d_prev": "D0" if n % 2 == 0 else "D1",
            "k": "K0" if n % 2 == 0 else "K1",
            "x_out": ("X1" if base == "X0" else "X0") if last else "XE",
            "d": "D1" if n % 2 == 0 else "D0",
            "k_next": "K1" if n % 2 == 0 else "K0",
        }


def step_bindings(ring: StageRing, inputs: list[str], outputs: list[str], state: dict[str, Any],
                  fixed: dict[str, Any], what: str = "exported step graph") -> list[tuple[dict, dict]]:
    """Per ring phase, (inputs, outputs) of the step: name -> buffer (`state` by ring name,
    `fixed` by the graph's own input names)."""
    missing = [n for n in inputs if n not in STATE and n not in fixed]
    if missing:
        raise BundleError(f"the {what} takes {missing}, which no other graph makes; re-export")
    if set(STATE_OUTPUTS) - set(outputs):
        raise BundleError(f"the {what} lacks outputs {sorted(set(STATE_OUTPUTS) - set(outputs))}; re-export")
    out = []
    for phase in range(ring.period):
        names = ring.binding(phase)
        ins = {n: state[names[n]] if n in STATE else fixed[n] for n in inputs}
        out.append((ins, {n: state[names[n]] for n in STATE_OUTPUTS}))
    return out


def text_feeds(call: EngineCall, names: list[str], what: str = "exported text graph") -> dict[str, np.ndarray]:
    """The text graph's inputs from the branch batch, by name (v2m: text, text_mask; SAO: text, global_cond)."""
    have = {"text": call.text, "text_mask": call.mask, "global_cond": call.global_cond}
    missing = [k for k in names if have.get(k) is None]
    if missing:
        raise BundleError(f"the {what} takes {missing}, which this generation does not have")
    return {k: have[k] for k in names}


def shape_key(call: EngineCall, table) -> tuple:
    return (call.b, call.c, call.n, call.s, call.g, table.key, call.n_noise)


class ShapeCache(OrderedDict):
    """key -> per-shape state, at most `size`, the least recently used dropped (`on_drop(state)`)."""

    def __init__(self, size: int, on_drop: Callable[[Any], None] | None = None):
        super().__init__()
        self.size, self.on_drop = size, on_drop

    def get_or_make(self, key, make: Callable[[], Any]) -> tuple[Any, bool]:
        """(state, made now)."""
        if key in self:
            self.move_to_end(key)
            return self[key], False
        self[key] = state = make()
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            if self.on_drop is not None:
                self.on_drop(old)
        return state, True


def run_steps(ring: StageRing, steps: int, run_step: Callable[[int], None],
              on_step: Callable[[int], None] | None = None) -> str:
    """`steps` solver steps through `sampler.sample_loop`, a step at a time: `run_step(p)` runs
    the stages of ring phase-step p (0 or 1: calls p*stages .. p*stages + stages - 1), eagerly
    or as one captured graph. Returns the ring buffer that holds the result (X0 or X1)."""
    def one_step(x_base, x_eval, d_prev):
        n = calls[0]
        names = ring.binding(n)
        assert (x_base, d_prev) == (names["x"], names["d_prev"])  # the ring's contract
        run_step((n // ring.stages) % 2)
        calls[0] += ring.stages
        last = ring.binding(n + ring.stages - 1)
        return last["x_out"], last["d"]

    calls = [0]
    return sample_loop(one_step, "X0", "D0", steps, 1, on_step)
