"""Does the music land on the cuts? Held-out cut videos and the alignment check of a bundle.

`make_cut_videos` writes synthetic clips with hard cuts at random, known times (a
seed of their own: no model ever trains on video, and these seeds are kept apart
from anything tuned on). `alignment_check` generates music for each with the
curve, without it (`use_curve=False`, the `--no-curve` baseline) and, if asked,
with curve guidance, and measures what `v2m eval` measures
(`v2m.eval.evaluate`): curve correlation, cut hits within 0.25 s, median
spectral flatness; with `beats`, BCS, BHS and F1 against the video's motion beats
(`v2m.eval.measures`, needs librosa); left/right correlation and the mono mix's level;
given reference music, the Frechet distance of each variant's outputs to it. The
prompts are one of `PROMPT_SETS`: caption-like (the default), none, or free words. The demo recipe, `bench/bench_alignment.py` and the CI check
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

from . import evaluate, measures

__all__ = ["PROMPTS", "FREE_PROMPTS", "PROMPT_SETS", "make_cut_videos", "alignment_check", "score_output"]

log = logging.getLogger("v2m.alignment")

# Prompts in the words the demo model was trained on (synthetic captions).
PROMPTS = (
    "medium 120 bpm major groove, backbeat drums, warm pad, bass",
    "fast 140 bpm minor groove, four on the floor drums, bright pad, bass",
    "slow 90 bpm minor groove, half time drums, warm pad, bass",
    "medium 110 bpm major groove, sparse drums, bright pad, bass",
)
# Prompts in words absent from every caption of both corpora, the synthetic grooves' and the score
# corpus's (tests/runtime/test_prompt_following.py checks the words; until 2026-12-08 two of them had
# score-caption words, "calm" and "frantic").
FREE_PROMPTS = (
    "sleepy drowsy lullaby",
    "energetic techno rave",
    "shimmering glassy bells",
    "deep rumbling tuba",
)
PROMPT_SETS = {"caption": PROMPTS, "none": ("",), "free": FREE_PROMPTS}


def make_cut_videos(folder: str | Path, count: int, seed: int, duration: tuple[float, float] = (8.0, 12.0),
                    size: tuple[int, int] = (160, 120), fps: tuple[float, ...] = (24.0,),
                    fades: float = 0.0) -> list[tuple[Path, list[float]]]:
    """`count` clips of 8 to 12 s with 2 to 5 cuts at least 1.2 s apart (a moving square in every
    shot): [(path, cut times)]. Each clip's frame rate is drawn from `fps`; a share `fades` of them
    turn every cut into a cross-fade of 0.4 to 1 s centred on it. The cut times and lengths for a
    seed do not depend on `fps` and `fades` (drawn from a stream of their own)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    look = np.random.default_rng([seed, 37])  # frame rate and fades
    out = []
    for i in range(count):
        dur = round(float(rng.uniform(*duration)), 1)
        want = int(rng.integers(2, min(5, int(dur // 2)) + 1))
        cuts: list[float] = []
        while len(cuts) < want:
            c = round(float(rng.uniform(0.8, dur - 0.8)), 3)
            if all(abs(c - u) >= 1.2 for u in cuts):
                cuts.append(c)
        rate = float(look.choice(np.asarray(fps, dtype=np.float64)))
        fade = round(float(look.uniform(0.4, 1.0)), 2) if look.random() < fades else 0.0
        tag = "" if (rate, fade) == (24.0, 0.0) else f"_{rate:g}fps" + (f"_fade{fade:g}" if fade else "")
        path = folder / f"cuts_{seed}_{i:03d}{tag}.mp4"
        if not path.is_file():
            synth.make_test_video(path, duration_s=dur, fps=rate, size=size, cuts=tuple(sorted(cuts)), fade_s=fade)
        out.append((path, sorted(cuts)))
    return out


def score_output(audio: np.ndarray, sample_rate: int, video_curve: np.ndarray, cuts: list[float],
                 latent_rate: float, kernel: int, cut_tolerance: float = 0.25,
                 motion: np.ndarray | None = None, beat_tolerance: float = 0.1) -> dict[str, float | None]:
    """Curve correlation, cut-hit rate, median flatness and the stereo measures of one output
    [C, N] against its video; BCS and BHS too given the video's motion beat times `motion`."""
    music = music_curve(audio, sample_rate, video_curve.size, latent_rate, kernel)
    hits, n = evaluate.cut_hits(music, cuts, latent_rate, cut_tolerance)
    out = {"corr": evaluate.curve_correlation(music, video_curve), "cut_hits": hits / n if n else None,
           "flatness": evaluate.median_flatness(audio), **measures.stereo_measures(audio)}
    if motion is not None:
        b = measures.beat_alignment(measures.music_beats(audio, sample_rate), motion, beat_tolerance)
        out.update(bcs=b.bcs, bhs=b.bhs)
    return out


def _summary(rows: list[dict]) -> dict[str, float | None]:
    """Means over videos (flatness: the median); the F1 of the mean BCS and BHS."""
    out: dict[str, float | None] = {}
    for k in ("corr", "cut_hits", "flatness", "lr_corr", "mono_db", "bcs", "bhs"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = (float(np.median(vals)) if k == "flatness" else float(np.mean(vals))) if vals else None
    out["beat_f1"] = measures.beat_summary([measures.BeatAlignment(0, 0, 0, out["bcs"], out["bhs"])])["beat_f1"]
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
    prompts: str = "caption",
    beats: bool = False,
    reference: list[tuple[np.ndarray, int]] | None = None,
    duration: tuple[float, float] = (8.0, 12.0),
    fps: tuple[float, ...] = (24.0,),
    fades: float = 0.0,
) -> dict[str, Any]:
    """Generate for `count` held-out cut videos with and without the curve; return the figures.

    Args:
        bundle: a bundle directory or "demo".
        workdir: where the videos are written (reused when present).
        curve_guidance: also generate with this curve-guidance weight (the variant "guided").
        pipeline: an already loaded `Pipeline` (then bundle and backend are not used).
        prompts: a key of `PROMPT_SETS` ("caption", "none", "free"); video i gets prompt i mod n.
        beats: also BCS, BHS and F1 against each video's motion beats (needs librosa).
        reference: (audio, sample rate) pieces: each variant's Frechet distance to them.
        duration, fps, fades: the videos' range of lengths in seconds, frame rates and share
            of cross-faded cuts (`make_cut_videos`).

    Returns:
        {"videos": n, "prompts": ..., "curve": {corr, cut_hits, flatness, lr_corr, mono_db[, bcs, bhs,
         beat_f1][, frechet]}, "no_curve": {...}[, "guided": {...}], "per_video": [...]}; means over
        videos, flatness the median.
    """
    from v2m.runtime.pipeline import Pipeline
    from v2m.runtime.request import Request

    if prompts not in PROMPT_SETS:
        raise ValueError(f"prompts must be one of {', '.join(PROMPT_SETS)}, got {prompts!r}")
    texts = PROMPT_SETS[prompts]
    pipe = pipeline or Pipeline.from_pretrained(bundle, backend=backend, device="cpu", precision="fp32")
    cfg = pipe.config
    variants: dict[str, dict] = {"curve": {}, "no_curve": {"use_curve": False}}
    if curve_guidance is not None:  # 0 too: the curve without the bundle's default guidance
        variants["guided"] = {"curve_guidance": curve_guidance}
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    audios: dict[str, list[tuple[np.ndarray, int]]] = {k: [] for k in variants}
    per_video = []
    for i, (path, cuts) in enumerate(make_cut_videos(Path(workdir) / "videos", count, seed, duration,
                                                                  fps=fps, fades=fades)):
        prepared = pipe.prepare(path, Request(prompt=texts[i % len(texts)], seed=seed + i, steps=steps))
        video_curve = prepared.curve  # decoded and encoded once for every variant
        motion = (measures.motion_beats(measures.motion_curve(path, cfg.latent_rate, cfg.curve.kernel), cfg.latent_rate)
                  if beats else None)
        entry: dict[str, Any] = {"video": path.name, "cuts": cuts, "prompt": prepared.request.prompt}
        for name, kw in variants.items():
            res = pipe.generate(path, prepared=prepared, request=prepared.request.replace(**kw), profile_steps=False)
            score = score_output(res.audio, res.sample_rate, video_curve, cuts, cfg.latent_rate, cfg.curve.kernel,
                                 motion=motion)
            rows[name].append(score)
            entry[name] = score
            if reference:
                audios[name].append((res.audio, res.sample_rate))
        per_video.append(entry)
        log.info("alignment %s: %s", path.name, {k: entry[k] for k in variants})
    summary = {k: _summary(v) for k, v in rows.items()}
    if reference:
        for name in variants:
            summary[name]["frechet"] = measures.set_frechet(audios[name], reference)
    return {"videos": count, "seed": seed, "prompts": prompts, **summary, "per_video": per_video}
