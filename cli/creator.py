"""`v2m generate`'s creator options: hit points and curve edits, ranked candidates, loops,
music without a video (set length). Small adders the CLI calls: `creator_args(parser)` adds
the options, `creator_request_fields(args)` turns them into `Request` fields (every file read
and every value checked before any work)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from v2m.core import tempfiles
from v2m.core.errors import InputError
from v2m.runtime import media
from v2m.runtime.curve_edit import parse_hit, parse_range, read_curve, read_hits

log = logging.getLogger("v2m.cli")

__all__ = ["add_prompt_parser", "cmd_prompt", "prompt_model_args", "prompt_models_of", "run_creator", "creator_args", "curve_edit_args", "curve_edit_of", "creator_request_fields"]



def creator_args(g: argparse.ArgumentParser) -> None:
    """Add the creator options to `v2m generate`."""
    c = g.add_argument_group("curve edits, candidates, loops, music without a video")
    curve_edit_args(c)
    c.add_argument("--candidates", type=int, default=1, metavar="N",
                   help="sample N seeds (seed .. seed+N-1) in one batch, write the one whose music follows the curve "
                        "best (curve correlation, as `v2m eval`), e.g. --candidates 4 (default: 1)")
    c.add_argument("--keep-candidates", action="store_true",
                   help="with --candidates: also write every candidate as NAME-seedS.EXT (out-seed7.mp4, ...); "
                        "scores in --json (default: only the best)")
    c.add_argument("--loop", action="store_true",
                   help="music whose end flows into its start (curve and latents treated as circular, no fade-out), "
                        "e.g. --duration 30 --loop -o loop.wav (default: off)")
    c.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="music without a video: this many seconds, in (0, 3600], exactly (a flat curve unless "
                        "--hit/--hits/--curve-file shape it); give no input video and a .wav/.flac output, e.g. "
                        "v2m generate --duration 30 --prompt 'slow ambient' -o music.wav (default: the video's)")
    prompt_model_args(g.add_argument_group("models of --prompt auto (local folders; see `v2m prompt`)"))


def curve_edit_args(c) -> None:
    """--hit, --hits, --curve-file, --curve-mix, --suppress (`v2m generate` and `v2m curve`)."""
    c.add_argument("--hit", action="append", default=[], metavar="TIME[:WEIGHT]",
                   help="an accent the music should hit at TIME seconds (weight 1: as strong as the clip's "
                        "strongest change); repeatable, e.g. --hit 12.5 --hit 20:2 (default: none)")
    c.add_argument("--hits", default=None, metavar="FILE",
                   help="hit points from a file: CSV (time[,weight] per row), JSON ([12.5, [20, 2], ...]) or an "
                        "EDL / marker export (each event's record-in timecode, 25 fps frames), e.g. --hits markers.edl "
                        "(default: none)")
    c.add_argument("--curve-file", default=None, metavar="FILE",
                   help="a curve (JSON [[time, value], ...] or CSV time,value; a `v2m curve --json` result too) that "
                        "replaces the video's, or with --curve-mix is blended in, e.g. --curve-file curve.csv (default: none)")
    c.add_argument("--curve-mix", type=float, default=None, metavar="W",
                   help="the --curve-file's share in [0, 1], e.g. --curve-mix 0.5 (default: 1, it replaces the video's curve)")
    c.add_argument("--suppress", action="append", default=[], metavar="A-B",
                   help="flatten the curve from A to B seconds (no accents there); repeatable, e.g. --suppress 3-5.5 "
                        "(default: none)")


def curve_edit_of(args):
    """The `CurveEdit` of the command line's curve options, or None (files read, values checked)."""
    from v2m.runtime.curve_edit import CurveEdit

    f = creator_request_fields(args)
    mix = 1.0 if f["curve_mix"] is None else f["curve_mix"]
    if f["curve_mix"] is not None and not f.get("curve_points"):
        raise InputError("--curve-mix needs --curve-file")
    edit = CurveEdit(hits=f["hits"], points=f.get("curve_points", ()), mix=mix, suppress=f["suppress"])
    return edit if edit else None


def creator_request_fields(args) -> dict:
    """The `Request` fields of the creator options (files read here; the request checks the values)."""
    hits = tuple(parse_hit(h) for h in getattr(args, "hit", None) or [])
    if getattr(args, "hits", None):
        hits += read_hits(args.hits)
    out = {"hits": hits, "suppress": tuple(parse_range(r) for r in getattr(args, "suppress", None) or []),
           "loop": bool(getattr(args, "loop", False)), "duration": getattr(args, "duration", None),
           "curve_mix": getattr(args, "curve_mix", None)}
    if getattr(args, "curve_file", None):
        out["curve_points"] = read_curve(args.curve_file)
    if getattr(args, "prompt", None) == "auto" and len(getattr(args, "inputs", None) or []) == 1:
        from v2m.runtime.describe_models import write_prompt

        out["prompt"], _ = write_prompt(args.inputs[0], prompt_models_of(args), getattr(args, "video_stream", None))
        log.info("prompt from the video: %s", out["prompt"])
    return out


def prompt_model_args(p) -> None:
    """--whisper, --captioner, --lm, --frames (`v2m prompt` and `v2m generate --prompt auto`)."""
    p.add_argument("--whisper", default=None, metavar="DIR",
                   help="a local Whisper folder (save_pretrained, or CTranslate2 with faster-whisper installed) that "
                        "transcribes the video's speech for the prompt (default: none)")
    p.add_argument("--captioner", default=None, metavar="DIR",
                   help="a local image-to-text folder (BLIP, GIT, VisionEncoderDecoder) that captions --frames frames "
                        "for the prompt (default: none)")
    p.add_argument("--lm", "--llm", dest="lm", default=None, metavar="DIR",
                   help="a local causal LM folder that writes the prompt from what was measured, said and seen "
                        "(default: none, the describer's own words)")
    p.add_argument("--frames", type=int, default=None, metavar="K",
                   help="with --captioner: caption K evenly spaced frames, in [1, 64] (default: 8)")


def prompt_models_of(args):
    """The `PromptModels` of the command line (every folder checked), or None when none is named."""
    from v2m.runtime.describe_models import PromptModels

    dirs = {k: getattr(args, k, None) for k in ("whisper", "captioner", "lm")}
    frames = getattr(args, "frames", None)
    if frames is not None and dirs["captioner"] is None:
        raise InputError("--frames sets how many frames --captioner captions; give --captioner DIR too")
    if not any(dirs.values()):
        return None
    return PromptModels(**dirs, frames=8 if frames is None else frames)


def add_prompt_parser(sub) -> None:
    """`v2m prompt VIDEO`: the describer's prompt, or the model stages' (and what they found)."""
    p = sub.add_parser("prompt", help="write a music prompt from the video (no model needed; local models optional)",
                       description="Describe a video in the words of the bundle's captions: pace (cuts per minute, "
                                   "motion) -> tempo and drums, brightness and colour -> mood and pad. With local "
                                   "models: a Whisper transcript, frame captions and an LM that writes the prompt "
                                   "from all of it. Cached by content in $XDG_CACHE_HOME/v2m/prompts/ "
                                   "(~/.cache/v2m/prompts/). `v2m generate --prompt auto` uses it.",
                       examples=["v2m prompt clip.mp4 --json",
                                 "v2m prompt clip.mp4 --whisper models/whisper --captioner models/blip --lm models/lm",
                                 "v2m generate clip.mp4 -o out.mp4 --model demo --prompt auto"])
    p.add_argument("video", help="the video to describe")
    p.add_argument("--video-stream", type=int, default=None, metavar="N", help="the container's stream N (default: the default stream)")
    p.add_argument("--no-cache", action="store_true", help="describe again and write no cache entry (default: use the cache)")
    prompt_model_args(p)
    p.add_argument("--json", action="store_true",
                   help="print {prompt, traits, transcript, captions, ...} as one JSON object (default: the prompt alone)")
    p.set_defaults(func=cmd_prompt)


def cmd_prompt(args) -> int:
    from v2m.runtime.describe_models import write_prompt

    models = prompt_models_of(args)  # every folder checked before any work
    prompt, details = write_prompt(args.video, models, args.video_stream, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps({"video": str(args.video), "prompt": prompt, **details}))
    else:
        print(prompt)
    return 0


def check_creator_args(args) -> None:
    """What the creator options need of the command line, before any work."""
    if args.keep_candidates and args.candidates < 2:
        raise InputError("--keep-candidates needs --candidates N with N >= 2")
    if args.duration is not None:
        if args.inputs or args.manifest:
            raise InputError("--duration makes music without a video; give no input video (the video sets the length)")
        if media.check_output_path(args.output) == "video":
            raise InputError(f"{args.output}: music without a video is audio; write .wav or .flac")
    if args.prompt == "auto" and (args.manifest or len(args.inputs) != 1):
        raise InputError("--prompt auto describes one input video (for many: `v2m prompt VIDEO` each, or a manifest)")
    named = [f"--{k}" for k in ("whisper", "captioner", "lm", "frames") if getattr(args, k, None) is not None]
    if named and args.prompt != "auto":
        raise InputError(f"{named[0]} is a model of the prompt written from the video; add --prompt auto")
    prompt_models_of(args)  # the model folders, checked before any work
    if args.candidates != 1 and (args.manifest or len(args.inputs) > 1):
        raise InputError("--candidates works on one video (or --duration); batch mode writes one result per video")


def candidate_path(output, seed: int):
    """out.mp4 -> out-seed7.mp4."""
    o = Path(output)
    return o.with_name(f"{o.stem}-seed{seed}{o.suffix}")


def write_creator_outputs(pipe, prepared, args) -> dict:
    """Sample, render and write one prepared item (a video or --duration), or with --candidates N
    the best of N seeds (and with --keep-candidates all of them). Returns the JSON result's fields."""
    if args.candidates == 1:
        (s,) = pipe.sample([prepared])
        if isinstance(s, BaseException):
            raise s
        pipe.write(prepared, pipe.render(prepared, s), args.output)
        return {"seed": prepared.seed}
    from v2m.eval.candidates import rank_candidates

    ranked = rank_candidates(pipe, prepared, args.candidates)
    best = ranked[0]
    pipe.write(best.prepared, best.audio, args.output)
    rows = []
    for c in sorted(ranked, key=lambda c: c.seed):
        path = candidate_path(args.output, c.seed) if args.keep_candidates else None
        if path is not None:
            pipe.write(c.prepared, c.audio, path)
        rows.append({"seed": c.seed, "score": None if c.score is None else round(c.score, 4),
                     "output": None if path is None else str(path), "best": c is best})
    return {"seed": best.seed, "score": None if best.score is None else round(best.score, 4), "candidates": rows}


def creator_json(req) -> dict:
    """The creator fields of a `--json` result."""
    edit = req.curve_edit()
    return {"loop": req.loop, "curve_edit": None if edit is None else edit.to_json()}


def run_creator(args, req, load_pipeline, check_video_job) -> int:
    """`v2m generate` of one video (or none: --duration), sampled once or as --candidates N:
    the checks, `Pipeline.prepare`, `write_creator_outputs`, the result line or JSON."""
    video_path = Path(args.inputs[0]) if args.inputs else None
    source = None
    if video_path is not None:
        source = check_video_job(video_path, Path(args.output), args)
    else:
        tempfiles.clean_stale(Path(args.output).parent)
    t0 = time.perf_counter()
    pipe = load_pipeline(args)
    t_load = time.perf_counter() - t0
    p = pipe.prepare(video_path, req, source=source)
    out = write_creator_outputs(pipe, p, args)
    result = {"output": str(args.output), "video": None if video_path is None else str(video_path),
              "prompt": req.prompt, "duration_s": round(p.duration_s, 4), "sample_rate": pipe.config.audio.sample_rate,
              "backend": pipe.backend.describe().get("backend"), **out, **creator_json(req),
              "timings": {"load": round(t_load, 4), "total": round(time.perf_counter() - t0, 4)}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {args.output} ({p.duration_s:.2f} s, seed {result['seed']}"
              + (f", curve correlation {result['score']}" if "score" in result else "") + ")")
        for row in result.get("candidates", []):
            print(f"  seed {row['seed']}: score {row['score']}" + (f" -> {row['output']}" if row["output"] else "")
                  + ("  (best)" if row["best"] else ""))
    return 0
