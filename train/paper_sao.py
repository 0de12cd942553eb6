"""The paper recipe on Stable Audio Open's architecture: the base of `--recipe paper-sao`.

V2M-Zero's claim is about a *pretrained* text-to-music backbone: add one input channel, the
music event curve, and fine-tune on music alone. The `paper` recipe shows it on v2m's own DiT;
this base puts Stable Audio Open's architecture under the same stages, in miniature:

- `SAODiT` (rotary self-attention, cross-attention to the conditioner's tokens, the prepended
  global token), Stable Audio Open Small's rules (context projected to the width, one
  seconds value) and its objective (`rf_denoiser`, rectified flow in sigma);
- the seconds conditioner (`SAOConditioner`) and a T5 encoder, as every SAO checkpoint has.
  No T5 weights can be had offline: this one is random and frozen, like a pretrained one in
  the fine-tune, and its tokenizer knows the corpus captions' words (`caption_words`), so
  prompts are token sequences it can tell apart;
- the recipe's autoencoder (decoder and distilled Oobleck encoder, latent scale folded in);
- **no curve channel at all** (`input_concat_dim` 0). Stage 1 (`finetune` with every curve
  dropped) adds V2M-Zero's zero-initialized channel, which gets no gradient and stays zero:
  its model is the text-to-music model. Stage 2 trains the channel with the music curves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from v2m.core import curves
from v2m.core.bundle import CurveConfig, encoder_config

__all__ = ["SAO_BACKBONE", "caption_words", "write_sao_base"]

# The base's parts: Stable Audio Open Small's shape rules at the demo DiT's size (1.3 M parameters).
SAO_BACKBONE = {
    "dit": dict(width=128, depth=4, heads=4, cond_dim=64, cross_dim=128, global_dim=64, rotary_dim=16, freq_dim=64),
    "cond": dict(text_dim=64, cond_dim=64, number_features=32),
    "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "objective": "rf_denoiser",
    "max_tokens": 32,
}
SAO_BACKBONE_TINY = {
    "dit": dict(width=32, depth=1, heads=2, cond_dim=16, cross_dim=32, global_dim=16, rotary_dim=8, freq_dim=16),
    "cond": dict(text_dim=16, cond_dim=16, number_features=8),
    "t5": dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
    "objective": "rf_denoiser",
    "max_tokens": 8,
}


def caption_words(corpus: Path) -> list[str]:
    """The distinct lower-case words of a corpus folder's `captions.jsonl`, most frequent first."""
    counts: dict[str, int] = {}
    for line in (Path(corpus) / "captions.jsonl").read_text().splitlines():
        if line.strip():
            for w in re.findall(r"[a-z]+", json.loads(line)["caption"].lower()):
                counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))


def write_sao_base(out: Path, ae_dir: Path, scale: np.ndarray, recipe, seed: int, corpus: Path) -> Path:
    """The stage-1 base of the SAO backbone (module doc), written beside `out` and renamed."""
    from v2m.models import sao_bundle, sao_cond, sao_dit, t5
    from v2m.models.bundle import init_bundle

    from .autoencoder import AutoencoderConfig, write_bundle_autoencoder

    spec = recipe.sao
    ae_cfg = AutoencoderConfig(**json.loads((ae_dir / "run.json").read_text())["model"])
    vae_cfg = ae_cfg.decoder_config()
    words = caption_words(corpus)
    # 3 specials, "▁" and 42 characters fit in 64; at least 256: `init_bundle`'s placeholder tokenizer
    t5_cfg = t5.T5Config(vocab_size=max(256, len(words) + 64), **spec["t5"])
    dit_cfg = sao_dit.SAODiTConfig(latent_channels=ae_cfg.latent_channels, **spec["dit"])
    cond_cfg = sao_cond.SAOCondConfig(**spec["cond"], numbers=sao_cond.PRESETS["sao-small"].numbers,
                                      cross_numbers=("seconds_total",), global_numbers=("seconds_total",))
    latent_frames = curves.latent_length(recipe.clip_seconds, vae_cfg.sample_rate / vae_cfg.hop_length)
    cfg = sao_bundle.assemble("paper-sao", dit_cfg.to_dict(), cond_cfg.to_dict(), vae_cfg,
                              sao_bundle.text_config(t5_cfg, spec["max_tokens"]), spec["objective"], latent_frames,
                              encoder_config(recipe.encoder))
    cfg = replace(cfg, sampler=replace(recipe.sampler, max_frames=latent_frames),
                  curve=CurveConfig(fps=None, kernel=recipe.kernel, std_floor=curves.STD_FLOORS.get(recipe.encoder, 0.0)))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        init_bundle("paper-sao", tmp, seed=seed, config=cfg)  # random DiT, conditioner and T5
        write_bundle_autoencoder(tmp, ae_dir, scale, {"format": "v2m", "preset": "paper-sao", "seed": str(seed)})
        t5.make_tokenizer(tmp / cfg.text["tokenizer"], t5_cfg.vocab_size, words)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
