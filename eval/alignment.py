"""Does the music land on the cuts? Held-out cut videos and the alignment check of a bundle.

`make_cut_videos` writes synthetic clips with hard cuts at random, known times (a
seed of their own: no model ever trains on video, and these seeds are kept apart
from anything tuned on). `alignment_check` generates music for each with the
curve, without it (`use_curve=False`, the `--no-curve` baseline) and, if asked,
with curve guidance, and measures what `v2m eval` measures
(`v2m.eval.evaluate`): curve correlation, cut hits within 0.25 s, median
spectral flatness. The demo recipe, `bench/bench_alignment.py` and the CI check
of the shipped bundle all call it.

```python
from v2m.eval.alignment import alignment_check
summary = alignment_check("demo", "work/", count=8, seed=20_000)
summary["curve"]["corr"], summary["no_curve"]["cut_hits"]
```
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from v2m.runtime import synth
from v2m.runtime.music import music_curve

from . import evaluate

__all__ = ["PROMPTS", "make_cut_videos", "alignment_check", "score_output"]

log = logging.getLogger("v2m.alignment")

# Prompts in the words the demo model was trained on (synthetic captions).
PROMPTS = (
    "medium 120 bpm major groove, backbeat drums, warm pad, bass",
    "fast 140 bpm minor groove, four on the floor drums, bright pad, bass",
    "slow 90 bpm minor groove, half time drums, warm pad, bass",
    "medium 110 bpm major groove, sparse drums, bright pad, bass",
)


def make_cut_videos(folder: str | Path, count: int, seed: int, duration: tuple[float, float] = (8.0, 12.0),
                    size: tuple[int, int] = (160, 120)) -> list[tuple[Path, list[float]]]:
    """`count` clips of 8 to 12 s with 2 to 5 hard cuts at least 1.2 s apart: [(path, cuts)]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    out = []
    for i in range(count):
        dur = round(float(rng.uniform(*duration)), 1)
        want = int(rng.integers(2, min(5, int(dur // 2)) + 1))
        cuts: list[float] = []
        while len(cuts) < want:
            c = round(float(rng.uniform(0.8, dur - 0.8)), 3)
            if all(abs(c - u) >= 1.2 for u in cuts):
                cuts.append(c)
        path = folder / f"cuts_{seed}_{i:03d}.mp4"
        if not path.is_file():
            synth.make_test_video(path, duration_s=dur, size=size, cuts=tuple(sorted(cuts)))
        out.append((path, sorted(cuts)))
    return out


def score_output(audio: np.ndarray, sample_rate: int, video_curve: np.ndarray, cuts: list[float],
                 latent_rate: float, kernel: int, cut_tolerance: float = 0.25) -> dict[str, float | None]:
    """Curve correlation, cut-hit rate and median flatness of one output against its video."""
    music = music_curve(audio, sample_rate, video_curve.size, latent_rate, kernel)
    hits, n = evaluate.cut_hits(music, cuts, latent_rate, cut_tolerance)
    return {"corr": evaluate.curve_correlation(music, video_curve), "cut_hits": hits / n if n else None,
            "flatness": evaluate.median_flatness(audio)}


def _summary(rows: list[dict]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in ("corr", "cut_hits", "flatness"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = (float(np.median(vals)) if k == "flatness" else float(np.mean(vals))) if vals else None
    return out


def alignment_check(
    bundle: str | Path,
    workdir: str | Path,
    count: int = 6,
    seed: int = 10_000,
    curve_guidance: float | None = None,
    backend: str = "torch",
    steps: int | None = None,
    pipeline=None,
) -> dict[str, Any]:
    """Generate for `count` held-out cut videos with and without the curve; return the figures.

    Args:
        bundle: a bundle directory or "demo".
        workdir: where the videos are written (reused when present).
        curve_guidance: also generate with this curve-guidance weight (the variant "guided").
        pipeline: an already loaded `Pipeline` (then bundle and backend are not used).

    Returns:
        {"videos": n, "curve": {corr, cut_hits, flatness}, "no_curve": {...}[, "guided": {...}],
         "per_video": [...]}; corr and cut_hits are means, flatness the median over videos.
    """
    from v2m.runtime.pipeline import Pipeline
    from v2m.runtime.request import Request

    pipe = pipeline or Pipeline.from_pretrained(bundle, backend=backend, device="cpu", precision="fp32")
    cfg = pipe.config
    variants: dict[str, dict] = {"curve": {}, "no_curve": {"use_curve": False}}
    if curve_guidance is not None:  # 0 too: the curve without the bundle's default guidance
        variants["guided"] = {"curve_guidance": curve_guidance}
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    per_video = []
    for i, (path, cuts) in enumerate(make_cut_videos(Path(workdir) / "videos", count, seed)):
        prepared = pipe.prepare(path, Request(prompt=PROMPTS[i % len(PROMPTS)], seed=seed + i, steps=steps))
        video_curve = prepared.curve  # decoded and encoded once for every variant
        entry: dict[str, Any] = {"video": path.name, "cuts": cuts}
        for name, kw in variants.items():
            res = pipe.generate(path, prepared=prepared, request=prepared.request.replace(**kw), profile_steps=False)
            score = score_output(res.audio, res.sample_rate, video_curve, cuts, cfg.latent_rate, cfg.curve.kernel)
            rows[name].append(score)
            entry[name] = score
        per_video.append(entry)
        log.info("alignment %s: %s", path.name, {k: entry[k] for k in variants})
    return {"videos": count, "seed": seed, **{k: _summary(v) for k, v in rows.items()}, "per_video": per_video}
