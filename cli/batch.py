"""`v2m generate` in batch mode: a folder, several videos or --manifest; -o is a folder (locally or on Ray)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from v2m.batch import Job
from v2m.core.errors import EXIT_INTERNAL, EXIT_USAGE, InputError, V2MError

from .common import load_pipeline, max_duration, pipeline_options, request_from_args
from .serve import check_ray_args, require_extra

log = logging.getLogger("v2m.cli")



def _jobs(args, out_dir: Path) -> list:
    """The batch's jobs, named, with what can fail before the model loads failed already."""
    from v2m import batch

    if args.manifest and args.inputs:
        raise InputError("give either input videos or --manifest, not both")
    if not args.manifest and not args.inputs:
        raise InputError("give input videos, a folder, or --manifest")
    if args.video_stream is not None:
        raise InputError("--video-stream picks a stream of one video; in batch mode each video uses its default stream")
    if out_dir.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v", ".wav", ".flac") and not out_dir.is_dir():
        raise InputError(f"with several inputs -o is a folder, not {batch.show(out_dir)}")
    if args.manifest:
        jobs = batch.read_manifest(args.manifest, prompt=args.prompt, seed=args.seed)
    else:
        jobs = batch.collect_inputs(args.inputs, out_dir, prompt=args.prompt, seed=args.seed)
    batch.check_output_dir(out_dir)  # before loading the model
    batch.assign_outputs(jobs, out_dir, args.format)
    if args.reencode == "never" and args.format == "mp4":
        _refuse_reencodes(jobs)
    return jobs


def cmd_generate_batch(args) -> int:
    """Batch mode: a folder, several videos or --manifest; -o is a folder. Exit 2 when a video
    failed on its input (or output), 1 when one failed from a bug; 0 when none failed.

    --profile writes one report of the whole run (per-video stages, each sampled group's steps
    with its B and shapes, stage totals, wall time); --trace one Chrome trace of it. Both are
    also written when the run is interrupted (what ran until then).
    """
    from v2m import batch

    req = request_from_args(args, seed=None, prompt="")  # checked before any work; jobs set prompt and seed
    out_dir = Path(args.output)
    jobs = _jobs(args, out_dir)
    if getattr(args, "ray", None) is not None:  # the same jobs on a Ray cluster (v2m.serve.ray_batch)
        return _generate_ray(args, jobs, out_dir)
    profiling = bool(args.profile or args.trace)
    if profiling:  # before loading the model: a long run must not end in an unwritable report
        from v2m.runtime.profiler import check_report_paths

        taken = {out_dir / batch.SUMMARY_NAME: "the batch summary"}
        for j in jobs:
            if j.output is not None:
                taken[j.output] = f"the output of {batch.show(j.video)}"
                taken[j.output.with_name(j.output.name + batch.SIDECAR_SUFFIX)] = f"the sidecar of {batch.show(j.output)}"
        check_report_paths({"--profile": args.profile, "--trace": args.trace}, taken)
    pipe = load_pipeline(args)
    opts = batch.BatchOptions(out_dir, format=args.format, batch_size=args.batch_size, request=req,
                              overwrite=args.overwrite, progress=False if args.quiet else None,
                              max_duration_s=max_duration(args))
    profiler = None
    if profiling:
        from v2m.runtime.profiler import Profiler, format_report, write_json_atomic

        profiler = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())

    def write_profile():
        """Write --profile / --trace; returns the report (None without --profile)."""
        report = None
        if args.profile:
            report = profiler.report()
            print(f"wrote profile report {write_json_atomic(args.profile, report)}")
        if args.trace:
            print(f"wrote Chrome trace {profiler.write_trace(args.trace)}")
        return report

    try:
        summary = batch.run_batch(pipe, jobs, opts, profiler=profiler)
    except KeyboardInterrupt:
        if profiler is not None:
            try:
                write_profile()  # what ran until the interrupt
            except (OSError, V2MError) as e:
                log.warning("could not write the profile of the interrupted run: %s", e)
        raise
    counts = {s: summary.count(s) for s in ("ok", "failed", "skipped")}
    if args.json:
        print(json.dumps({"summary": batch.show(summary.path), **counts, "wall_s": round(summary.wall_s, 3)}))
    else:
        print(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
              f"in {summary.wall_s:.1f} s; summary in {batch.show(summary.path)}")
    if profiler is not None:
        report = write_profile()
        if report is not None and not args.quiet and not args.json:
            print(format_report(report))
    return batch_exit_code(summary)


def batch_exit_code(summary) -> int:
    """0 when every video is ok or skipped; 1 when a failure was a bug; else 2 (bad input)."""
    failed = [j for j in summary.jobs if j.status == "failed"]
    if any((j.reason or "").startswith("internal error") for j in failed):
        return EXIT_INTERNAL
    return EXIT_USAGE if failed else 0


def _refuse_reencodes(jobs) -> None:
    """--reencode never in batch mode: fail (before the model loads) the videos whose codec
    their .mp4 output cannot hold; the others run, copied."""
    from v2m.runtime import media

    for j in jobs:
        if j.status != "pending" or j.output is None or not Path(j.video).is_file():
            continue
        try:
            media.plan_mux(j.video, j.output, "never")
        except V2MError as e:
            j.fail(str(e))


def _generate_ray(args, jobs: list[Job], out_dir: Path) -> int:
    """The CLI's batch mode with --ray (jobs collected and named by `cmd_generate_batch`)."""
    require_extra("ray", "ray")
    check_ray_args(args)
    if args.profile or args.trace:
        raise InputError("--profile and --trace are not available with --ray; profile a local run")
    from v2m.batch import BatchOptions, show
    from v2m.serve.ray_batch import run_batch_ray

    req = request_from_args(args)
    if req.text_embeddings:
        req = req.replace(text_embeddings=os.path.abspath(req.text_embeddings))
    opts = BatchOptions(out_dir, format=args.format, batch_size=args.batch_size, request=req,
                        overwrite=args.overwrite, progress=False)
    summary = run_batch_ray(jobs, opts, pipeline_options(args), address=args.ray or None,
                            actors=args.ray_actors, cpus=args.ray_cpus)
    print(f"{summary.count('ok')} ok, {summary.count('failed')} failed, {summary.count('skipped')} skipped "
          f"in {summary.wall_s:.1f} s (ray); summary in {show(summary.path)}")
    return batch_exit_code(summary)  # as the local batch
