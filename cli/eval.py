"""`v2m eval`: SCH, curve correlation, cut hits, flatness, beat alignment, stereo and a Frechet distance."""

from __future__ import annotations

import json
import logging

from .common import add_runtime_args, load_pipeline
from .output import eval_extras

log = logging.getLogger("v2m.cli")



def cmd_eval(args) -> int:
    from v2m.eval.evaluate import evaluate_folder, format_side_by_side, reference_files
    from v2m.eval.measures import motion_beats, motion_curve

    sch, have_cuts = eval_extras(args.no_curves)
    if args.reference is not None:
        reference_files(args.reference)  # a bad folder fails before the model loads
    curve_fn = music_fn = None
    rate, kernel = 44100 / 3584, 15
    if not args.no_curves:
        from v2m.runtime.music import music_curve

        pipe = load_pipeline(args)
        rate, kernel = pipe.config.latent_rate, pipe.config.curve.kernel
        curve_fn = lambda video: pipe.curve(video).curve
        music_fn = lambda audio, sr, n: music_curve(audio, sr, n, rate, kernel)
    kw = dict(tolerance=args.tolerance, curve_fn=curve_fn, music_fn=music_fn, latent_rate=rate,
              cut_tolerance=args.cut_tolerance, sch=sch, cuts_fn=None if have_cuts else lambda video: [],
              motion_fn=lambda video: motion_beats(motion_curve(video, rate, kernel), rate),
              beat_tolerance=args.beat_tolerance, reference=args.reference)
    report = evaluate_folder(args.outputs, args.videos, **kw)
    if args.baseline:
        base = evaluate_folder(args.baseline, args.videos, **kw)
        if args.json:
            print(json.dumps({"with_curve": json.loads(report.to_json()), "no_curve": json.loads(base.to_json())}, indent=2))
        else:
            print(report.table())
            print(f"\n--baseline {args.baseline} (generated with --no-curve):")
            print(base.table())
            print()
            print(format_side_by_side(report, base))
        return 0
    print(report.to_json() if args.json else report.table())
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    e = sub.add_parser("eval", help="SCH, curve correlation, cut hits and flatness of generated music vs its videos",
                       description="Measure generated outputs against their source videos: Scene Cut Hit "
                                   "(needs the [eval] extra: librosa for beats, scenedetect for cuts), cut hits "
                                   "(scenedetect), curve correlation and spectral flatness (no extra), BCS/BHS against "
                                   "the video's motion beats (librosa), stereo measures; --reference adds a Frechet "
                                   "distance, --baseline puts a --no-curve run beside it.",
                       examples=["v2m eval out/ --videos videos/ --baseline base/",
                                 "v2m eval out/ --videos videos/ --reference corpus/",
                                 "v2m eval out/ --videos videos/ --tolerance 0.25 --json"])
    e.add_argument("outputs", help="folder of generated audio or muxed videos")
    e.add_argument("--videos", required=True, help="folder of the source videos (matched by file name)")
    e.add_argument("--tolerance", type=float, default=0.5,
                   help="seconds between a cut and a beat for an SCH hit, in (0, 10]")
    e.add_argument("--cut-tolerance", type=float, default=0.25,
                   help="seconds between a cut and a music-curve peak, in (0, 10]")
    e.add_argument("--baseline", default=None, metavar="DIR",
                   help="outputs generated with --no-curve: both are measured and printed side by side (default: none)")
    e.add_argument("--beat-tolerance", type=float, default=0.1,
                   help="seconds between a motion beat and a music beat for a beat hit (BHS), in (0, 10]")
    e.add_argument("--reference", default=None, metavar="FOLDER",
                   help="reference music (audio files or videos with sound): the Frechet distance of the outputs "
                        "to it over log-mel and chroma frame features (default: none)")
    e.add_argument("--no-curves", action="store_true", help="SCH only (no curve correlation, cut hits, flatness)")
    add_runtime_args(e, model_default="demo")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_eval)
