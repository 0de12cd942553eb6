"""The score corpus: render time per clip second and whether the events are audible.

    python bench/bench_score_corpus.py --clips 20 --seconds 12 --seed 0

For clips 0..N-1 of a seed (`v2m.train.score_music`): the time to read the work (the
notes cache warmed first, so this is the cached read), to arrange and to render through
FluidSynth, per second of audio; and a cut-hit measure of the events: of the music event
curve's k strongest peaks (k = the clip's events; `music_curve`, kernel 11 as in the
synthetic corpus's test), the share of events with a peak within 0.25 s, overall and per
event kind. One JSON line in bench/results/score_corpus.jsonl (or --out).
"""

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.core.curves import curve_peaks  # noqa: E402
from v2m.runtime.music import music_curve  # noqa: E402
from v2m.train import score_music  # noqa: E402
from v2m.train.score_corpus import load_notes  # noqa: E402

LATENT_RATE = 44100 / 3584


def event_hits(audio: np.ndarray, events: list[tuple[float, str]], tolerance: float = 0.25) -> list[bool]:
    """Per event: is one of the music curve's k strongest peaks (k = len(events)) within `tolerance` s."""
    curve = music_curve(audio, score_music.SAMPLE_RATE, kernel=11)
    peaks = curve_peaks(curve, len(events)) / LATENT_RATE
    return [bool(peaks.size) and bool(np.abs(peaks - t).min() <= tolerance + 1e-9) for t, _ in events]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for i in range(args.clips):  # warm the notes cache: first parses are the corpus's one-time cost
        load_notes(score_music.arrange(args.seed, i, args.seconds).work.ref)
    render_s = arrange_s = 0.0
    hits, kinds, total = Counter(), Counter(), 0
    for i in range(args.clips):
        t0 = time.perf_counter()
        arr = score_music.arrange(args.seed, i, args.seconds)
        notes = load_notes(arr.work.ref)
        t1 = time.perf_counter()
        audio = score_music.render(arr, notes)
        t2 = time.perf_counter()
        arrange_s, render_s = arrange_s + t1 - t0, render_s + t2 - t1
        for (_, kind), hit in zip(arr.events, event_hits(audio, list(arr.events))):
            kinds[kind] += 1
            hits[kind] += int(hit)
        total += len(arr.events)
        logging.info("clip %d %s: %d events, render %.2f s", i, arr.work.ref, len(arr.events), t2 - t1)
    audio_s = args.clips * args.seconds
    row = {"bench": "score_corpus", "clips": args.clips, "clip_seconds": args.seconds, "seed": args.seed,
           "render_s_per_audio_s": round(render_s / audio_s, 4), "arrange_s_per_audio_s": round(arrange_s / audio_s, 4),
           "events": total, "event_hit_rate": round(sum(hits.values()) / max(total, 1), 3),
           "per_kind": {k: {"events": kinds[k], "hit_rate": round(hits[k] / kinds[k], 3)} for k in sorted(kinds)}}
    row.update(harness.environment())
    harness.append_result("score_corpus", row, args.out)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
