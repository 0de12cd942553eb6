"""A/B: the whole pipeline of two v2m versions, interleaved in one run (medians).

    pip install --no-deps --target /tmp/v2m-old /path/to/old/checkout      # the version to compare with
    python bench/bench_versions.py --base /tmp/v2m-old --presets tiny,small --rounds 3

Each round runs every preset once per version, alternating (base, this checkout), in a fresh
interpreter each (PYTHONPATH puts the base's `v2m` first), so background load hits both
alike. A run makes a random bundle with the *base* version (old versions must read it), one
warm-up generation and `--repeats` timed ones on a generated clip; the row per preset and
version holds the medians over all rounds: total, sampler seconds and step ms. One JSON line
per (preset, version) in bench/results/versions.jsonl. Used for the "no slower than
before" check of the sampler rewrite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.versions")

CHILD = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[5]))
import v2m.runtime
from v2m.runtime import Pipeline
bundle, clip, repeats = sys.argv[2], sys.argv[3], int(sys.argv[4])
if sys.argv[1] == "init":
    from v2m.models.bundle import init_bundle
    from v2m.runtime.synth import make_test_video
    init_bundle(sys.argv[6], bundle, seed=0)
    make_test_video(clip, duration_s=float(sys.argv[7]))
    sys.exit(0)
pipe = Pipeline.from_pretrained(bundle, backend="torch", device="cpu", precision="fp32")
pipe.generate(clip, "warm synth pop", seed=1, steps=96)
rows = []
for _ in range(repeats):
    t0 = time.perf_counter()
    res = pipe.generate(clip, "warm synth pop", seed=1, steps=96)
    rows.append({"total_s": time.perf_counter() - t0, "sampler_s": res.timings["sampler"],
                 "step_ms": float(np.median(res.step_ms)) if res.step_ms else float("nan")})
print(json.dumps({"src": v2m.runtime.__file__, "rows": rows, "latents": float(np.abs(res.latents).mean())}))
"""


def run_child(args: list[str], base: str | None) -> dict | None:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    if base:
        env["PYTHONPATH"] = os.pathsep.join([base, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a directory holding the base version's `v2m` package")
    ap.add_argument("--base-name", default="base", help="the base's label in the results (a commit)")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    harness.setup_logging()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-versions-"))
    versions = {args.base_name: args.base, harness.git_commit(): None}
    for preset in args.presets.split(","):
        bundle, clip = work / f"{preset}-bundle", work / f"clip-{preset}.mp4"
        if not bundle.is_dir():  # made by the base: the older version must read it
            run_child(["init", str(bundle), str(clip), "0", "1", preset, str(args.duration)], args.base)
        got: dict[str, list[dict]] = {v: [] for v in versions}
        for _ in range(args.rounds):
            for name, path in versions.items():
                got[name] += run_child(["run", str(bundle), str(clip), str(args.repeats), str(args.threads)], path)["rows"]
        for name, rows in got.items():
            med = {k: float(np.median([r[k] for r in rows])) for k in ("total_s", "sampler_s", "step_ms")}
            row = {"bench": "versions", "preset": preset, "version": name, "duration_s": args.duration,
                   "threads": args.threads, "n": len(rows), **med, **harness.environment("cpu")}
            harness.append_result("versions", row, Path(args.out) if args.out else None)
            print(f"{preset:<6} {name:<16} total {med['total_s']:.3f} s  sampler {med['sampler_s']:.3f} s  "
                  f"step {med['step_ms']:.2f} ms  (n={len(rows)})")


if __name__ == "__main__":
    main()
