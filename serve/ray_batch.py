"""`v2m generate DIR -o OUT --ray [ADDRESS]`: the local batch's jobs on a Ray cluster (Ray Data).

Two passes over the inputs, each a Ray Data `map_batches` over an actor pool (one loaded
pipeline per actor, the same `_Worker` class):

1. prepare: per video, the resume check (sidecar verified by sha256) and the conditioning
   (`batch.prepare_item`: the core's `Pipeline.prepare`); failures are recorded per video.
2. sample: the driver forms exactly the groups the local run would (per latent and text
   length, chunks of `--batch-size` in input order; long videos alone, in windows), and each
   group is sampled by one actor with `engine._sample_group` and written with
   `batch.write_output` (output and sidecar, atomically).

So a video's output is bit-identical to the local run's for the same seed whenever the
actor's numerics equal the local process's (same backend and device; on CPU, the same
thread count: `--ray-cpus` sets it), and `summary.json`, resume, output names and failure
isolation are the local batch's own (`runtime/batch.py`). Inputs and the output folder
must be on a filesystem every node sees.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from v2m import batch
from v2m.batch import BatchOptions, BatchSummary, Job, show
from v2m.core.errors import InputError

from .options import load_pipeline

__all__ = ["run_batch_ray", "plan_groups"]

log = logging.getLogger("v2m.serve.ray")


class _Worker:
    """A Ray Data actor: one loaded pipeline; runs 'prepare' and 'sample' tasks (pickled rows)
    through the local batch's own steps (`batch.prepare_item`, `Pipeline.sample`, `batch.complete`)."""

    def __init__(self, options: dict, opts: BatchOptions):
        self.pipe = load_pipeline(options)
        self.opts = opts
        self.options = opts.request.options(self.pipe.config.sampler)
        self.model = batch.model_hash(self.pipe)
        self.describe = self.pipe.backend.describe()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: list[bytes] = []
        for payload in rows["payload"]:
            kind, data = pickle.loads(payload)
            results = [self.prepare(*data)] if kind == "prepare" else self.sample(data)
            out += [pickle.dumps(r) for r in results]
        return {"payload": np.array(out, dtype=object)}

    def prepare(self, index: int, job: Job) -> dict[str, Any]:
        res: dict[str, Any] = {"index": index, "job": job, "describe": self.describe}
        try:
            it = batch.prepare_item(self.pipe, job, self.opts, self.model, self.options)
        except Exception as e:  # noqa: BLE001 - recorded per video; the batch goes on
            job.fail(batch.reason_of(e))
            return res
        if it is not None:
            res["item"] = it
        return res

    def sample(self, group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = [r["item"] for r in group]
        results = self.pipe.sample([it.prepared for it in items])
        for it, r in zip(items, results):
            error = batch.complete(self.pipe, it, r)
            if error is not None:
                it.job.fail(batch.reason_of(error))
        return [{"index": r["index"], "job": it.job} for r, it in zip(group, items)]


def plan_groups(prepared: list[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """The local run's sampler groups: per `Prepared.group_key`, consecutive chunks of
    `batch_size` in input order; a long video alone. `prepared` is in input order."""
    groups: list[list[dict[str, Any]]] = []
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for r in prepared:
        p = r["item"].prepared
        if p.windowed:
            groups.append([r])
            continue
        key = p.group_key()
        bucket = buckets.setdefault(key, [])
        bucket.append(r)
        if len(bucket) >= batch_size:
            groups.append(buckets.pop(key))
    groups += list(buckets.values())
    return groups


def _actor_resources(actors: int | None, cpus: float | None) -> tuple[int, dict[str, float]]:
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        per = {"num_gpus": 1.0, "num_cpus": float(cpus or 1)}
        most = gpus
    else:
        per = {"num_cpus": float(cpus or min(2.0, res.get("CPU", 1.0)))}
        most = max(1, int(res.get("CPU", 1.0) // per["num_cpus"]))
    return (min(actors, most) if actors else most), per


def _map(ds, options: dict, opts: BatchOptions, actors: int, per: dict[str, float]):
    import ray.data

    return ds.map_batches(_Worker, fn_constructor_kwargs={"options": options, "opts": opts}, batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy", **per)


def run_batch_ray(jobs: list[Job], opts: BatchOptions, options: dict, address: str | None = None,
                  actors: int | None = None, cpus: float | None = None) -> BatchSummary:
    """Run every pending job on Ray; write `summary.json` like `batch.run_batch`.

    Args:
        jobs: from `batch.collect_inputs` or `batch.read_manifest` (outputs assigned here if missing).
        opts: the local batch's options (format, batch size, steps, cfg scale, overwrite, ...).
        options: `pipeline_options` (model, backend, device, precision, ...) each actor loads.
        address: a Ray cluster; None: the running Ray (or a new local one).
        actors, cpus: actors in the pool and CPUs each (default: one per GPU, else per 2 CPUs).
    """
    import ray

    from v2m.core.bundle import load_config
    from v2m.runtime.demo import resolve_model

    t_start = time.perf_counter()
    out_dir = batch.check_output_dir(opts.out_dir)
    if any(j.output is None for j in jobs if j.status == "pending"):
        batch.assign_outputs(jobs, out_dir, opts.format)
    if opts.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {opts.batch_size}")
    options = {**options, "model": str(resolve_model(options["model"]))}  # `demo` as every command reads it
    sopts = opts.request.options(load_config(options["model"]).sampler)
    steps, cfg_scale = sopts.steps, sopts.cfg_scale
    info = SimpleNamespace(bundle_dir=Path(options["model"]), describe={
        k: v for k, v in (("backend", options.get("backend")), ("device", options.get("device"))) if v})
    summary_path = out_dir / batch.SUMMARY_NAME
    pipe_like = SimpleNamespace(bundle_dir=info.bundle_dir, backend=SimpleNamespace(describe=lambda: info.describe))

    def write_summary() -> None:
        batch.write_summary(summary_path, jobs, pipe_like, steps, cfg_scale, time.perf_counter() - t_start)

    def record(i: int, job: Job) -> None:
        mine = jobs[i]
        for name in ("status", "reason", "used_seed", "timings", "info"):
            setattr(mine, name, getattr(job, name))
        if mine.status == "failed":
            print(f"v2m: failed: {show(mine.video)}: {mine.reason}", file=sys.stderr)

    for j in jobs:
        if j.status == "failed":
            print(f"v2m: failed: {show(j.source or j.video)}: {j.reason}", file=sys.stderr)
    todo = [i for i, j in enumerate(jobs) if j.status == "pending"]
    if not ray.is_initialized():
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=False)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    n, per = _actor_resources(actors, cpus)
    if options.get("threads") is None:  # an actor's CPU threads are its CPUs (--ray-cpus), as documented
        options = {**options, "threads": max(1, int(per["num_cpus"]))}
    log.info("ray: %d actor(s), %s each, over %d videos", n, per, len(todo))
    try:
        if todo:
            rows = [{"payload": pickle.dumps(("prepare", (i, jobs[i])))} for i in todo]
            prepared = []
            for row in _map(ray.data.from_items(rows, override_num_blocks=len(rows)), options, opts, n, per).iter_rows():
                r = pickle.loads(row["payload"])
                info.describe = r.pop("describe")
                record(r["index"], r["job"])
                if r["job"].status == "pending":
                    r["item"].job = r["job"]
                    prepared.append(r)
            write_summary()
            prepared.sort(key=lambda r: r["index"])
            groups = plan_groups(prepared, opts.batch_size)
            log.info("ray: %d sampler groups of sizes %s", len(groups), [len(g) for g in groups])
            if groups:
                rows = [{"payload": pickle.dumps(("sample", g))} for g in groups]
                for row in _map(ray.data.from_items(rows, override_num_blocks=len(rows)), options, opts, n, per).iter_rows():
                    r = pickle.loads(row["payload"])
                    record(r["index"], r["job"])
                    write_summary()
    except KeyboardInterrupt:
        for j in jobs:
            if j.status == "pending":
                j.reason = "interrupted"
        write_summary()
        raise
    write_summary()
    return BatchSummary(jobs, summary_path, time.perf_counter() - t_start)
