"""`v2m convert`: a downloaded Stable Audio Open model (stable-audio-tools or diffusers folder) to a v2m bundle.

    v2m convert SRC -o BUNDLE [--t5 DIR] [--add-curve-channel] [--encoder DIR] [--overwrite]
"""

from __future__ import annotations

import logging

log = logging.getLogger("v2m.cli")


def cmd_convert(args) -> int:
    from v2m.core.bundle import load_config
    from v2m.models.sao_bundle import convert

    out = convert(args.source, args.output, t5_dir=args.t5, add_curve_channel=args.add_curve_channel,
                  encoder_dir=args.encoder, overwrite=args.overwrite)
    cfg = load_config(out)
    sao = cfg.sao_config
    curve = cfg.dit.get("input_concat_dim", 0)
    print(f"wrote {out}: Stable Audio Open ({sao.objective} objective, {sao.latent_frames} latent frames = "
          f"{sao.latent_frames / cfg.latent_rate:.1f} s, default {sao.sampler} {cfg.sampler.steps} steps "
          f"CFG {cfg.sampler.cfg_scale:g}; {'a curve channel' if curve else 'no curve channel'}"
          f"{'' if cfg.encoder.get('kind') != 'none' else ', no frame encoder'})")
    return 0


def register(sub) -> None:
    """Register `convert` on the CLI's subparsers."""
    c = sub.add_parser("convert", help="convert a downloaded Stable Audio Open model to a v2m bundle",
                       description="Convert a Stable Audio Open model (stable-audio-tools or diffusers layout) to a "
                                   "v2m bundle, offline. Needs PyTorch.",
                       examples=["v2m convert stable-audio-open-1.0/ -o sao-bundle --t5 t5-base/",
                                 "v2m convert stable-audio-open-1.0-diffusers/ -o sao-bundle",
                                 "v2m convert stable-audio-open-1.0/ -o sao-curve --t5 t5-base/ --add-curve-channel "
                                 "--encoder dinov2-large/"])
    c.add_argument("source", help="a stable-audio-tools folder (model_config.json + model.safetensors) "
                                  "or a diffusers StableAudioPipeline folder")
    c.add_argument("-o", "--output", required=True, help="the bundle directory to write")
    c.add_argument("--t5", default=None, metavar="DIR",
                   help="local T5 directory (config.json, model.safetensors, tokenizer.json); required for "
                        "stable-audio-tools folders, which do not include T5 (default: the diffusers folder's text_encoder/)")
    c.add_argument("--add-curve-channel", action="store_true",
                   help="give a model without one V2M-Zero's curve channel, zero-initialized (outputs unchanged)")
    c.add_argument("--encoder", default=None, metavar="DIR",
                   help="a Hugging Face Dinov2Model directory: the frame encoder of the event curve "
                        "(default: none, a text-only bundle)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle at -o")
    c.set_defaults(func=cmd_convert)
