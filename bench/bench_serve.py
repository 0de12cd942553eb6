"""Serving latency and throughput: `v2m serve` (local) and the Ray Serve app, at concurrency 1, 4, 8.

    python bench/bench_serve.py --presets tiny,small --concurrency 1,4,8 --requests 16 --modes local,ray

Per preset: a random bundle and a generated clip; per mode, one server on 127.0.0.1 (a
`v2m serve` process, or Ray Serve on a local Ray instance with one replica); per concurrency
C, C warm-up requests, then `--requests` requests from C client threads (httpx). One JSON
line per (mode, preset, C) in bench/results/serve.jsonl: latency p50/p95/p99 (ms), requests
per second, mean batch size (the server's X-V2M-Batch-Size), and the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def load(url: str, clip: Path, concurrency: int, n: int, steps: int) -> dict:
    """`n` requests from `concurrency` threads; latencies (ms), wall time, batch sizes."""
    import httpx

    data = clip.read_bytes()

    def one(i: int):
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/generate", data={"seed": str(i), "steps": str(steps), "format": "wav"},
                       files={"video": ("clip.mp4", data, "video/mp4")}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"request {i}: {r.status_code} {r.text[:200]}")
        return (time.perf_counter() - t0) * 1e3, int(r.headers["x-v2m-batch-size"])

    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(concurrency)))  # warm-up: every shape and thread once
        t0 = time.perf_counter()
        out = list(ex.map(one, range(1000, 1000 + n)))
        wall = time.perf_counter() - t0
    lat = np.array([o[0] for o in out])
    return {
        "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()), "n": n,
        "wall_s": wall, "requests_per_s": n / wall, "mean_batch": float(np.mean([o[1] for o in out])),
    }


def local_server(bundle: Path, work: Path, max_batch: int, wait_ms: float, threads: int):
    port = free_port()
    cmd = [sys.executable, "-m", "v2m.cli.main", "serve", "--model", str(bundle), "--backend", "torch", "--device",
           "cpu", "--port", str(port), "--quiet", "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms),
           "--tmp-dir", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 300, proc)
    except BaseException:
        proc.kill()
        raise

    def stop():
        proc.terminate()
        proc.wait(120)

    return url, stop


def ray_server(bundle: Path, work: Path, max_batch: int, wait_ms: float, threads: int):
    import ray
    from ray import serve

    from v2m.serve.config import ServeConfig
    from v2m.serve.ray_app import deployment_for

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(port=port, max_batch=max_batch, batch_wait_ms=wait_ms, tmp_dir=str(work))
    options = {"model": str(bundle), "backend": "torch", "device": "cpu", "precision": None}
    # one replica with the local server's threads
    serve.run(deployment_for(config, options, replicas=1, replica_cpus=float(threads)), name="v2m", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 300)
    return url, serve.shutdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", type=int, default=16, help="timed requests per concurrency")
    ap.add_argument("--modes", default="local,ray", help="local (v2m serve), ray (Ray Serve)")
    ap.add_argument("--duration", type=float, default=2.0, help="clip length, seconds")
    ap.add_argument("--steps", type=int, default=16, help="sampler steps per request (the bundle's 96 is long on a CPU)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads of the server (OMP_NUM_THREADS); 1 on a shared box, where spinning OpenMP "
                         "threads slow down many times over")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    ap.add_argument("--note", default="", help="free text stored in each row (e.g. 'shared CPU')")
    args = ap.parse_args()
    harness.setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from v2m.models.bundle import init_bundle
    from v2m.runtime import synth

    env = harness.environment("cpu")
    import fastapi
    env["fastapi"] = fastapi.__version__
    with tempfile.TemporaryDirectory(prefix="v2m-bench-serve-") as td:
        work = Path(td)
        clip = work / "clip.mp4"
        synth.make_test_video(clip, duration_s=args.duration, cuts=(args.duration / 3, 2 * args.duration / 3))
        for preset in args.presets.split(","):
            bundle = init_bundle(preset, work / f"{preset}-bundle", seed=0)
            for mode in args.modes.split(","):
                if mode == "ray":
                    import ray
                    env["ray"] = ray.__version__
                start = {"local": local_server, "ray": ray_server}[mode]
                url, stop = start(bundle, work, args.max_batch, args.batch_wait_ms, args.threads)
                try:
                    for c in (int(x) for x in args.concurrency.split(",")):
                        res = load(url, clip, c, args.requests, args.steps)
                        row = {"bench": "serve", "mode": mode, "preset": preset, "concurrency": c, "steps": args.steps,
                               "clip_s": args.duration, "max_batch": args.max_batch,
                               "batch_wait_ms": args.batch_wait_ms, "threads": args.threads, "note": args.note, **res, **env}
                        harness.append_result("serve", row, Path(args.out) if args.out else None)
                        log.info("%s %s C=%d: p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, %.2f req/s, mean batch %.1f",
                                 mode, preset, c, res["p50_ms"], res["p95_ms"], res["p99_ms"], res["requests_per_s"],
                                 res["mean_batch"])
                finally:
                    stop()


if __name__ == "__main__":
    main()
