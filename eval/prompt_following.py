"""Does the music follow its prompt? Contrasting prompt pairs on one video and seed.

Each pair (prompt a, prompt b, the expected direction of each measure from a to b) is
generated with the same video, seed and sampler options; only the prompt differs. The
measures are `v2m.eval.measures.prompt_measures`: tempo (librosa's beat tracker),
spectral centroid and onset rate. A pair follows when every measure it names moves
the expected way (a tie does not); the report gives the fraction of pairs that follow,
over all pairs and per kind:

- "caption": the words of the demo corpus captions (`train/synth_music.py`'s
  `caption()`): tempo words and BPM, warm or bright pad, drum patterns.
- "free": words absent from every caption (tested): what a user may type; the demo
  model has never seen them.

```python
from v2m.eval.prompt_following import PAIRS, prompt_following
report = prompt_following(pipe, "clip.mp4", PAIRS, seed=7)
report["fraction"], report["by_kind"]["free"]
```
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .measures import prompt_measures

__all__ = ["PromptPair", "CAPTION_PAIRS", "FREE_PAIRS", "PAIRS", "follows", "prompt_following"]

log = logging.getLogger("v2m.prompt_following")


@dataclass(frozen=True)
class PromptPair:
    """Two prompts and the expected direction of each measure from `a` to `b` (+1 up, -1 down)."""

    a: str
    b: str
    expect: dict[str, int] = field(hash=False)
    kind: str = "caption"


_GROOVE = "medium 120 bpm major groove, {drums} drums, {pad} pad, bass"
CAPTION_PAIRS = (
    PromptPair("slow 85 bpm minor groove, backbeat drums, warm pad, bass",
               "fast 150 bpm minor groove, backbeat drums, warm pad, bass", {"tempo": +1}),
    PromptPair(_GROOVE.format(drums="backbeat", pad="warm"), _GROOVE.format(drums="backbeat", pad="bright"),
               {"centroid": +1}),
    PromptPair(_GROOVE.format(drums="sparse", pad="warm"), _GROOVE.format(drums="four on the floor", pad="warm"),
               {"onset_rate": +1}),
    PromptPair(_GROOVE.format(drums="backbeat", pad="bright"), _GROOVE.format(drums="half time", pad="bright"),
               {"onset_rate": -1}),
)
FREE_PAIRS = (  # no word of either corpus's captions (synth_music, score_captions.caption_words: a test)
    PromptPair("sleepy drowsy lullaby", "energetic techno rave", {"tempo": +1, "onset_rate": +1}, "free"),
    PromptPair("muffled murky rumble", "shimmering glassy bells", {"centroid": +1}, "free"),
    PromptPair("still ambient drone", "busy rapid drumming", {"onset_rate": +1}, "free"),
    PromptPair("sparkling twinkly piccolo", "deep rumbling tuba", {"centroid": -1}, "free"),
)
PAIRS = CAPTION_PAIRS + FREE_PAIRS


def follows(a: dict[str, float], b: dict[str, float], expect: dict[str, int]) -> dict[str, bool]:
    """Per measure: did it move from `a` to `b` the expected way (strictly)?"""
    return {k: bool(np.sign(b[k] - a[k]) == np.sign(d)) for k, d in expect.items()}


def _fraction(rows: list[dict]) -> float | None:
    return float(np.mean([r["follows"] for r in rows])) if rows else None


def prompt_following(
    pipe,
    video: str | Path,
    pairs: Sequence[PromptPair] = PAIRS,
    seed: int = 0,
    steps: int | None = None,
    use_curve: bool = True,
    measure: Callable[[np.ndarray, int], dict[str, float]] = prompt_measures,
) -> dict[str, Any]:
    """Generate every prompt of `pairs` for one video and seed; the fraction of pairs that follow.

    Args:
        pipe: a loaded `Pipeline` (its `prepare` and `generate`).
        video: the one video every prompt is generated for (decoded once).
        seed, steps, use_curve: the same for every prompt.
        measure: (audio, sample rate) -> measures (default: tempo, centroid, onset rate).

    Returns:
        {"pairs": n, "fraction": of all pairs, "by_kind": {kind: fraction},
         "rows": [{a, b, kind, expect, measures_a, measures_b, moved, follows}]}.
    """
    from v2m.runtime.request import Request

    if not pairs:
        raise ValueError("prompt_following needs at least one pair")
    prepared = pipe.prepare(video, Request(prompt=pairs[0].a, seed=seed, steps=steps, use_curve=use_curve))
    cache: dict[str, dict[str, float]] = {}

    def measured(prompt: str) -> dict[str, float]:
        if prompt not in cache:
            res = pipe.generate(video, prepared=prepared, request=prepared.request.replace(prompt=prompt),
                                profile_steps=False)
            cache[prompt] = measure(res.audio, res.sample_rate)
            log.info("prompt %r: %s", prompt, cache[prompt])
        return cache[prompt]

    rows = []
    for p in pairs:
        ma, mb = measured(p.a), measured(p.b)
        moved = follows(ma, mb, p.expect)
        rows.append({"a": p.a, "b": p.b, "kind": p.kind, "expect": dict(p.expect), "measures_a": ma,
                     "measures_b": mb, "moved": moved, "follows": all(moved.values())})
    kinds = sorted({r["kind"] for r in rows})
    return {"pairs": len(rows), "seed": seed, "fraction": _fraction(rows),
            "by_kind": {k: _fraction([r for r in rows if r["kind"] == k]) for k in kinds}, "rows": rows}
