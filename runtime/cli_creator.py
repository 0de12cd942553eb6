"""`v2m generate`'s creator options: hit points and curve edits, ranked candidates, loops,
music without a video (set length). Small adders the CLI calls: `creator_args(parser)` adds
the options, `creator_request_fields(args)` turns them into `Request` fields (every file read
and every value checked before any work)."""

from __future__ import annotations

import argparse

from .curve_edit import parse_hit, parse_range, read_curve, read_hits

__all__ = ["creator_args", "creator_request_fields", "CREATOR_EXAMPLES"]

CREATOR_EXAMPLES = [
    "v2m generate clip.mp4 -o out.mp4 --hit 12.5 --hit 20:2 --suppress 3-5   # accents at 12.5 s and 20 s",
    "v2m generate clip.mp4 -o out.mp4 --hits markers.edl --curve-file curve.csv --curve-mix 0.5",
    "v2m generate clip.mp4 -o best.mp4 --candidates 4 --keep-candidates --json   # seeds S..S+3, the best kept",
    "v2m generate --duration 30 --prompt 'slow ambient pads' --loop -o loop.wav   # no video: a 30 s loop",
]


def creator_args(g: argparse.ArgumentParser) -> None:
    """Add the creator options to `v2m generate`."""
    c = g.add_argument_group("curve edits, candidates, loops, music without a video")
    c.add_argument("--hit", action="append", default=[], metavar="TIME[:WEIGHT]",
                   help="an accent the music should hit at TIME seconds (weight 1: as strong as the clip's "
                        "strongest change); repeatable, e.g. --hit 12.5 --hit 20:2")
    c.add_argument("--hits", default=None, metavar="FILE",
                   help="hit points from a file: CSV (time[,weight] per row), JSON ([12.5, [20, 2], ...]) or an "
                        "EDL / marker export (each event's record-in timecode, 25 fps frames) (default: none)")
    c.add_argument("--curve-file", default=None, metavar="FILE",
                   help="a curve (JSON [[time, value], ...] or CSV time,value; a `v2m curve --json` result too) that "
                        "replaces the video's, or with --curve-mix is blended in (default: none)")
    c.add_argument("--curve-mix", type=float, default=None, metavar="W",
                   help="the --curve-file's share in [0, 1] (default: 1, it replaces the video's curve)")
    c.add_argument("--suppress", action="append", default=[], metavar="A-B",
                   help="flatten the curve from A to B seconds (no accents there); repeatable")
    c.add_argument("--candidates", type=int, default=1, metavar="N",
                   help="sample N seeds (seed .. seed+N-1) in one batch, write the one whose music follows the curve "
                        "best (curve correlation, as `v2m eval`) (default: 1)")
    c.add_argument("--keep-candidates", action="store_true",
                   help="with --candidates: also write every candidate as NAME-seedS.EXT; scores in --json")
    c.add_argument("--loop", action="store_true",
                   help="music whose end flows into its start (curve and latents treated as circular, no fade-out)")
    c.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="music without a video: this many seconds, in (0, 3600], exactly (a flat curve unless "
                        "--hit/--hits/--curve-file shape it); give no input video and a .wav/.flac output")


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
    return out


def check_creator_args(args) -> None:
    """What the creator options need of the command line, before any work."""
    from v2m.core.errors import InputError

    from . import media

    if args.keep_candidates and args.candidates < 2:
        raise InputError("--keep-candidates needs --candidates N with N >= 2")
    if args.duration is not None:
        if args.inputs or args.manifest:
            raise InputError("--duration makes music without a video; give no input video (the video sets the length)")
        if media.check_output_path(args.output) == "video":
            raise InputError(f"{args.output}: music without a video is audio; write .wav or .flac")
    if args.candidates != 1 and (args.manifest or len(args.inputs) > 1):
        raise InputError("--candidates works on one video (or --duration); batch mode writes one result per video")


def candidate_path(output, seed: int):
    """out.mp4 -> out-seed7.mp4."""
    from pathlib import Path

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
