"""`v2m curve`: the event curve of a video, or of music."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from v2m.core.errors import require

from .common import add_runtime_args, load_pipeline, max_duration
from .creator import curve_edit_args, curve_edit_of

log = logging.getLogger("v2m.cli")



def cmd_curve(args) -> int:
    from v2m.runtime import video
    from v2m.runtime.music import AUDIO_SUFFIXES

    if args.plot:
        require("matplotlib", what="`v2m curve --plot`")  # before any work
    if Path(args.video).suffix.lower() in AUDIO_SUFFIXES:
        return cmd_music_curve(args)
    info = video.probe(args.video, args.video_stream)  # before loading the model
    video.check_duration(info.duration_s, max_duration(args), Path(args.video).name)
    edit = curve_edit_of(args)  # files read and values checked before the model loads
    pipe = load_pipeline(args)
    res = pipe.curve(args.video, video_stream=args.video_stream, max_duration_s=max_duration(args), edit=edit)
    if args.json:
        print(json.dumps({"video": str(args.video), **res.to_json()}))
    else:
        from v2m.core.curves import curve_peaks

        peaks = curve_peaks(res.curve, 5)
        print(f"{args.video}: {res.duration_s:.2f} s of {res.video_fps:g} fps video; {res.num_frames} frames "
              f"sampled at {res.curve_fps:.3f} fps give a curve of {res.curve.size} latent frames ({res.curve_impl})")
        print("strongest events at: " + ", ".join(f"{i / res.latent_rate:.2f} s" for i in peaks))
    if args.plot:
        from v2m.eval.evaluate import plot_curve

        path, source = plot_curve(args.video, res.curve, res.latent_rate, args.plot)
        print(f"wrote {path} (cuts from {source})", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_music_curve(args) -> int:
    """`v2m curve music.wav`: the music event curve, in the conventions of --model (default: demo)."""
    from v2m.core.bundle import load_config
    from v2m.core.curves import curve_peaks, latent_length
    from v2m.runtime.demo import resolve_model
    from v2m.runtime.music import load_audio
    from v2m.runtime.music_encoders import HF_DIR, music_curve, music_encoder

    bundle = resolve_model(args.model)
    cfg = load_config(bundle)
    audio, sr = load_audio(args.video)
    duration = audio.shape[1] / sr
    enc = music_encoder(cfg.curve.music, sr, Path(bundle) / HF_DIR)  # what the bundle's training curves came from
    curve = music_curve(cfg.curve.music, audio, sr, latent_length(duration, cfg.latent_rate), cfg.latent_rate,
                        cfg.curve.kernel, encoder=enc)
    if args.json:
        frames = int(audio.shape[1] // enc.hop + 1) if hasattr(enc, "hop") else int(audio.shape[1] * enc.fps / sr) + 1
        print(json.dumps({
            "audio": str(args.video), "duration_s": duration, "feature_fps": enc.fps, "feature_frames": frames,
            "latent_rate": cfg.latent_rate, "latent_frames": int(curve.size), "impl": "numpy", "encoder": "music",
            "music_encoder": cfg.curve.music, "curve": [round(float(v), 6) for v in curve],
        }))
    else:
        peaks = curve_peaks(curve, 5)
        print(f"{args.video}: {duration:.2f} s of audio, music features at {enc.fps:.2f} frames/s, "
              f"curve of {curve.size} latent frames (numpy)")
        print("strongest events at: " + ", ".join(f"{i / cfg.latent_rate:.2f} s" for i in peaks))
    if args.plot:
        from v2m.eval.evaluate import plot_music_curve

        path = plot_music_curve(args.video, audio, sr, curve, cfg.latent_rate, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    c = sub.add_parser("curve", help="print the event curve of a video, or of music (.wav, .flac, .mp3, ...)",
                       description="Print the event curve (when the video, or the music, changes) at the latent "
                                   "frame rate, in the conventions of --model.",
                       examples=["v2m curve clip.mp4 --model tiny-bundle --json > curve.json",
                                 "v2m curve clip.mp4 --encoder motion --plot curve.png",
                                 "v2m curve clip.mp4 --hit 4.5:2 --suppress 1-2 --plot edited.png"])
    c.add_argument("video", help="a video, or an audio file (its music event curve)")
    add_runtime_args(c, model_default="demo")
    c.add_argument("--video-stream", type=int, default=None, metavar="N",
                   help="use the container's stream N (default: the stream marked default, else the largest)")
    c.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                   help="refuse a video longer than this, from its header before decoding and from its frames' "
                        "times while decoding; 0: no limit (default: 14400, four hours)")
    c.add_argument("--json", action="store_true", help="print the curve as one JSON object")
    c.add_argument("--plot", default=None, metavar="PNG",
                   help="save the curve with cuts and thumbnails (matplotlib) (default: none)")
    curve_edit_args(c.add_argument_group("curve edits (the curve `v2m generate` would use with the same options)"))
    c.set_defaults(func=cmd_curve)
