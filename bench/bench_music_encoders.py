"""Which music encoder's event curve marks the music's events: logmel against Basic Pitch.

On synthetic clips with known event times (`v2m.train.synth_music`: section changes,
accents, chord changes), each encoder's music curve (bundle conventions: latent rate
44100 / 3584, Hann kernel 15) is scored with bench_alignment's cut-hit measure
(`v2m.eval.evaluate.cut_hits`: events with one of the curve's k strongest peaks within
0.25 s, k = events) and its correlation with the events' own spike curve.

    python bench/bench_music_encoders.py --clips 20 --seed 20000 [--json bench/results/music_encoders.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    from v2m.core import curves
    from v2m.eval.evaluate import cut_hits
    from v2m.runtime.music_encoders import MUSIC_ENCODERS, music_curve, music_encoder
    from v2m.train.synth_music import SAMPLE_RATE, make_clip

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=20000)
    p.add_argument("--kernel", type=int, default=15)
    p.add_argument("--json", default=None)
    p.add_argument("--hf", default=None, metavar="DIR", help="also a Hugging Face audio-model directory")
    a = p.parse_args(argv)
    rate = SAMPLE_RATE / 3584
    encs = {k: music_encoder(k, SAMPLE_RATE, a.hf) for k in MUSIC_ENCODERS if k != "hf" or a.hf}
    rows = {k: {"hits": 0, "events": 0, "corr": [], "seconds": 0.0} for k in encs}
    for i in range(a.clips):
        clip = make_clip(a.seed, i, a.seconds)
        events = [t for t, _ in clip.events]
        n = curves.latent_length(clip.audio.shape[1] / SAMPLE_RATE, rate)
        spikes = np.zeros(n)
        for t in events:
            spikes[min(n - 1, int(round(t * rate)))] = 1.0
        ref = curves.hann_smooth(curves.standardize(spikes), a.kernel)
        for k, enc in encs.items():
            t0 = time.perf_counter()
            c = music_curve(k, clip.audio, SAMPLE_RATE, n, rate, a.kernel, encoder=enc)
            rows[k]["seconds"] += time.perf_counter() - t0
            h, m = cut_hits(c, events, rate)
            rows[k]["hits"] += h
            rows[k]["events"] += m
            rows[k]["corr"].append(float(np.corrcoef(c, ref)[0, 1]))
    out = {"clips": a.clips, "seconds": a.seconds, "seed": a.seed, "kernel": a.kernel, "encoders": {}}
    for k, r in rows.items():
        out["encoders"][k] = {"event_hits": round(r["hits"] / max(1, r["events"]), 3),
                              "corr_mean": round(float(np.mean(r["corr"])), 3),
                              "cpu_s_per_clip": round(r["seconds"] / a.clips, 3)}
        print(f"{k:<12} event hits {out['encoders'][k]['event_hits']:.3f}  corr with the events' curve "
              f"{out['encoders'][k]['corr_mean']:.3f}  {out['encoders'][k]['cpu_s_per_clip']:.2f} s/clip")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
