"""One generation request: every option a caller can set, validated once, in the constructor.

Every edge builds a `Request` (argparse in the CLI, a batch manifest line, an HTTP form, a Ray
row) and nothing else re-checks its values: the engine core (`Pipeline.prepare / sample /
render`) takes it as it is. Sampler values left `None` are the bundle's to decide:
`request.options(bundle_defaults)` resolves them.

```python
req = Request(prompt="warm synth pop", seed=7, steps=32)       # InputError for a bad value
prepared = pipe.prepare("clip.mp4", req)
```
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from v2m.core.errors import InputError

from .curve_edit import CurveEdit
from .sampler import SEED_LIMIT, SamplerOptions

__all__ = ["Request", "KEEP_AUDIO_DB", "REENCODE_MODES", "SEED_LIMIT", "MAX_DURATION_S", "check_seed", "check_keep_audio",
           "max_duration_problem", "problem"]

KEEP_AUDIO_DB = (-60.0, 20.0)  # below -60 dB the original is inaudible under music; +20 drowns it
REENCODE_MODES = ("auto", "never")
# The longest video a run takes unless told otherwise (a 2 KB file whose last frame sits hours
# later, which would decode and sample for hours, does not). 0: no limit.
MAX_DURATION_S = 4 * 3600.0
MAX_DURATION_LIMIT_S = 7 * 24 * 3600.0  # the largest limit one may set
SAMPLER_FIELDS = ("steps", "cfg_scale", "solver", "shift", "use_curve", "curve_guidance")


def check_seed(seed: Any, what: str = "seed") -> int | None:
    """`seed` as an int in [0, 2^63), or None; InputError (one line) otherwise."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InputError(f"{what} must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)


def problem(check, value: Any) -> str | None:
    """What `check` (one of this module's `check_*`) says is wrong with `value`, or None (CLI tables)."""
    try:
        check(value)
    except InputError as e:
        return str(e)
    return None


def max_duration_problem(value: Any) -> str | None:
    """What is wrong with a `--max-duration` value (seconds; 0: no limit), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 <= value <= MAX_DURATION_LIMIT_S):
        return f"the longest video in seconds (0: no limit) must be in [0, {MAX_DURATION_LIMIT_S:g}], got {value!r}"
    return None


def check_keep_audio(value: Any, what: str = "keep_audio") -> float | None:
    """The original audio's level in dB, in [-60, 20], or None."""
    if value is None:
        return None
    lo, hi = KEEP_AUDIO_DB
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and lo <= value <= hi):
        raise InputError(f"{what} must be a level in dB in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Request:
    """What to make of one video (or, with the same video, of one variant).

    Args:
        prompt: text prompt (style, instruments, mood).
        negative_prompt: text the unconditional branch uses instead of empty embeddings.
        seed: noise seed in [0, 2^63); None draws one when the request is prepared.
        steps, cfg_scale, solver, shift, curve_guidance: the sampler's options (see
            `sampler.SamplerOptions`); None: the bundle's default.
        use_curve: False is the text-only baseline (the curve is zeros in every branch).
        video_stream: the container's index of the video stream (None: the default one).
        keep_audio_db: a muxed output mixes the source's audio under the music at this level.
        reencode: "auto" (re-encode the picture as H.264 when the output container cannot
            hold its codec) or "never" (refuse instead).
        text_embeddings: a safetensors file of precomputed prompt embeddings, instead of the prompt.
        hits: hit points, (time s, weight) pairs: accents added to the curve (`curve_edit`).
        curve_points: a given curve, (time s, value) pairs; `curve_mix` its share (1: replaces).
        suppress: (start s, end s) ranges of the curve flattened.
        loop: music whose end flows into its start (curve and latents treated as circular).
        duration: seconds of music without a video (text-only; the curve is flat unless edited),
            in (0, 3600]; None with a video (its duration).
    """

    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    solver: str | None = None
    shift: float | None = None
    use_curve: bool = True
    curve_guidance: float | None = None
    video_stream: int | None = None
    keep_audio_db: float | None = None
    reencode: str = "auto"
    text_embeddings: str | None = None
    hits: tuple[tuple[float, float], ...] = ()
    curve_points: tuple[tuple[float, float], ...] = ()
    curve_mix: float | None = None
    suppress: tuple[tuple[float, float], ...] = ()
    loop: bool = False
    duration: float | None = None

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise InputError(f"prompt must be text, got {type(self.prompt).__name__}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise InputError(f"negative prompt must be text, got {type(self.negative_prompt).__name__}")
        if not isinstance(self.use_curve, bool):
            raise InputError(f"use_curve must be true or false, got {self.use_curve!r}")
        check_seed(self.seed)
        check_keep_audio(self.keep_audio_db)
        if self.reencode not in REENCODE_MODES:
            raise InputError(f"reencode must be one of {', '.join(REENCODE_MODES)}, got {self.reencode!r}")
        if self.video_stream is not None and (
                isinstance(self.video_stream, bool) or not isinstance(self.video_stream, int) or self.video_stream < 0):
            raise InputError(f"video stream must be a stream index >= 0, got {self.video_stream!r}")
        if self.negative_prompt is not None and self.text_embeddings:
            raise InputError("a negative prompt needs the bundle's text encoder; it cannot be combined with "
                             "precomputed text embeddings")
        self._check_creator_fields()
        # The sampler values that are given, checked by the sampler's own rule (the bundle's
        # defaults fill the others when the request is resolved).
        given = {k: getattr(self, k) for k in SAMPLER_FIELDS if getattr(self, k) is not None}
        try:
            SamplerOptions(**given)
        except ValueError as e:
            raise InputError(str(e)) from None

    def _check_creator_fields(self) -> None:
        """The curve edits, loop and duration (lists given as lists become tuples)."""
        for name in ("hits", "curve_points", "suppress"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or any(not isinstance(x, (tuple, list)) or len(x) != 2 for x in v):
                raise InputError(f"{name} must be a list of pairs, got {v!r}")
            object.__setattr__(self, name, tuple((x[0], x[1]) for x in v))
        if self.curve_mix is not None and not self.curve_points:
            raise InputError("a curve mix needs a given curve (--curve-file)")
        self.curve_edit()  # checked by its own rule
        if not isinstance(self.loop, bool):
            raise InputError(f"loop must be true or false, got {self.loop!r}")
        d = self.duration
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not (math.isfinite(d) and 0 < d <= 3600)):
            raise InputError(f"duration must be seconds in (0, 3600], got {d!r}")

    def curve_edit(self) -> CurveEdit | None:
        """The curve's edits (hits, a given curve, suppressed ranges), or None when there are none."""
        e = CurveEdit(hits=self.hits, points=self.curve_points, mix=1.0 if self.curve_mix is None else self.curve_mix,
                      suppress=self.suppress)
        return e if e else None

    def replace(self, **changes: Any) -> Request:
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)

    def options(self, defaults) -> SamplerOptions:
        """The sampler options: the given values, else `defaults` (a bundle's sampler section:
        steps, cfg_scale, solver, shift, curve_guidance). Curve guidance defaults to 0 without
        the curve."""
        d = defaults
        try:
            return SamplerOptions(
                steps=d.steps if self.steps is None else self.steps,
                cfg_scale=d.cfg_scale if self.cfg_scale is None else self.cfg_scale,
                solver=d.solver if self.solver is None else self.solver,
                shift=d.shift if self.shift is None else self.shift,
                use_curve=self.use_curve,
                curve_guidance=((d.curve_guidance if self.use_curve else 0.0) if self.curve_guidance is None
                                else self.curve_guidance),
            )
        except ValueError as e:
            raise InputError(str(e)) from None

    def replay(self) -> dict[str, Any]:
        """The fields as JSON-able values (for `--json` results and sidecars)."""
        return dataclasses.asdict(self)
