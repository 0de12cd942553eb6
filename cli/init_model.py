"""`v2m init-model`: a random-weight bundle of a preset."""

from __future__ import annotations

import logging

from v2m.core.bundle import ENCODER_KINDS, SAO_PRESET_NAMES
from v2m.core.errors import require

log = logging.getLogger("v2m.cli")



def cmd_init_model(args) -> int:
    require("torch", what="`v2m init-model`")
    import torch

    from v2m.models.bundle import init_bundle

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    out = init_bundle(args.preset, args.output, seed=args.seed, dtype=dtype, overwrite=args.overwrite,
                      encoder=args.encoder)
    print(f"wrote {args.preset} bundle (random weights, seed {args.seed}, {args.encoder} encoder) to {out}")
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    i = sub.add_parser("init-model", help="write a random-weight bundle of a preset",
                       description="Write a bundle of a preset with random weights (for tests and timing). "
                                   "Needs PyTorch.",
                       examples=["v2m init-model -o tiny-bundle",
                                 "v2m init-model --encoder cut -o tiny-cut-bundle",
                                 "v2m init-model --preset full --dtype fp16 --seed 1 -o full-bundle"])
    i.add_argument("--preset", default="tiny", choices=["tiny", "small", "full", *SAO_PRESET_NAMES], help="model size")
    i.add_argument("--seed", type=int, default=0, help="weight seed, in [0, 2^63)")
    i.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weight precision on disk")
    i.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle (without it an existing non-empty folder is refused)")
    i.add_argument("--encoder", default="dinov2", choices=ENCODER_KINDS,
                   help="frame encoder: dinov2 (random weights), or weight-free cut / motion (default: dinov2)")
    i.add_argument("-o", "--output", required=True, help="the bundle directory to write")
    i.set_defaults(func=cmd_init_model)
