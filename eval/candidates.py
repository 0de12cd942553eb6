"""Ranked candidates: one prepared video, N seeds sampled together, each scored by how well
its music follows the conditioning curve (the eval's curve correlation), best first.

```python
from v2m.eval.candidates import rank_candidates
ranked = rank_candidates(pipe, pipe.prepare("clip.mp4", Request(seed=7)), 4)   # seeds 7..10, one batch
pipe.write(ranked[0].prepared, ranked[0].audio, "best.mp4")
```

The video is decoded once (`Pipeline.prepare`); the N variants differ only by seed and go to
`Pipeline.sample` in one call, so the engine samples them as one batch of B = N where its
batch allows (the CPU cost is N generations' sampling and decoding; the decode of the video,
the curve and the prompt are paid once). A batching engine (`v2m serve`) takes the same
variants (`candidate_variants`) into its own queue, where they are sampled as one group, and
ranks what comes back (`rank`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from v2m.core.errors import InputError
from v2m.runtime.music import music_curve
from v2m.runtime.prepared import Prepared

from .evaluate import curve_correlation

__all__ = ["Candidate", "MAX_CANDIDATES", "candidate_variants", "rank", "rank_candidates", "score_audio"]

log = logging.getLogger("v2m.candidates")

MAX_CANDIDATES = 64


@dataclass(eq=False)
class Candidate:
    """One seed's music: its prepared item, audio [2, N] and score (None: a flat curve, no measure)."""

    prepared: Prepared
    audio: np.ndarray
    score: float | None

    @property
    def seed(self) -> int:
        return self.prepared.seed


def score_audio(pipe, prepared: Prepared, audio: np.ndarray) -> float | None:
    """Pearson's r between the music curve of `audio` and `prepared`'s conditioning curve, in the
    bundle's curve settings (`eval.evaluate.curve_correlation`)."""
    cfg = pipe.config
    mc = music_curve(audio, cfg.audio.sample_rate, prepared.length, cfg.latent_rate, cfg.curve.kernel)
    return curve_correlation(mc, prepared.curve)


def candidate_variants(pipe, prepared: Prepared, count: int, observers=None) -> list[Prepared]:
    """`prepared` and its `count - 1` variants of seeds seed + 1 .. seed + count - 1 (the video's
    decode, encode, curve and prompt reused): what one `Pipeline.sample` call (or a batching
    engine's queue) samples together. InputError for a count outside [1, MAX_CANDIDATES] or seeds
    past 2^63."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CANDIDATES:
        raise InputError(f"candidates must be an integer in [1, {MAX_CANDIDATES}], got {count!r}")
    seed = prepared.seed
    if seed + count > 2**63:
        raise InputError("the candidates' seeds seed .. seed + N - 1 must stay below 2^63")
    return [prepared] + [pipe.variant(prepared, observers, seed=seed + k) for k in range(1, count)]


def rank(pipe, items: list[Prepared], audios: list[np.ndarray]) -> list[Candidate]:
    """Score each item's rendered audio (`score_audio`), best first (ties and unscored keep the
    given order)."""
    out = []
    for item, audio in zip(items, audios):
        out.append(Candidate(item, audio, score_audio(pipe, item, audio)))
        log.info("candidate seed %d: curve correlation %s", item.seed, out[-1].score)
    return sorted(out, key=lambda c: np.inf if c.score is None else -c.score)


def rank_candidates(pipe, prepared: Prepared, count: int, observers=None) -> list[Candidate]:
    """`count` candidates of `prepared` (seeds seed .. seed + count - 1), sampled in one call,
    best score first (ties and unscored keep seed order). A candidate whose sampling failed raises."""
    items = candidate_variants(pipe, prepared, count, observers)
    audios = []
    for item, sampled in zip(items, pipe.sample(items, observers)):
        if isinstance(sampled, BaseException):
            raise sampled
        audios.append(pipe.render(item, sampled, observers))
    return rank(pipe, items, audios)
