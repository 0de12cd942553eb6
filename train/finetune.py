"""`v2m train finetune`: V2M-Zero's zero-pair fine-tune of a bundle on music alone, one readable loop.

    v2m train finetune --base BUNDLE --audio FOLDER -o RUN [--steps N --batch-size B --lr LR --lora-rank R]
    torchrun --nproc-per-node N -m v2m.train.finetune --base BUNDLE --audio FOLDER -o RUN ...   # DDP

The paper (V2M-Zero) makes its model by fine-tuning a pretrained text-to-music DiT with one
added input channel, the music event curve of the training music itself; at inference the
video's curve takes its place. Here, for any family a bundle holds (v2m's DiT; Stable Audio
Open 1.0, v-diffusion; SAO Small, rectified flow):

1. prepare (`finetune_data`): latents (the bundle's VAE encoder), music curves (the bundle's
   curve conventions) and text embeddings (once per caption), cached by content.
2. the loop, nanoGPT's shape: the objective of the bundle's own sampler
   (`v2m.runtime.sampler.training_pair`: input, time and target at a level from
   `training_levels`); curve dropout (zeros: exactly what `--no-curve` feeds) and text
   dropout (zero embeddings with the prompt's mask: the "null" branch of CFG); full
   fine-tune or LoRA; AdamW, warm-up + cosine, gradient accumulation and clipping, EMA;
   a fixed validation batch (loss with and without the curve, and the curve correlation of a few
   clips generated with and without it: `finetune_eval`); checkpoints that resume
   exactly (every random draw of step s comes from (seed, s)); losses.png.
3. RUN/bundle: an ordinary bundle (EMA weights, LoRA merged, fp16 by default).

Under torchrun every rank draws the same global batch of step s and takes its slice, so the
global batch, and the loss curve up to float rounding, is the same for any number of
processes; DDP averages the gradients (gloo on CPU, NCCL on CUDA). Rank 0 prepares the data
(the others wait), writes checkpoints, losses and the bundle.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from v2m.core.errors import InputError
from v2m.runtime.sampler import training_levels, training_pair

from . import common
from .finetune_data import DataSettings, prepare
from .finetune_eval import generated_curve_correlation
from .finetune_model import Base, add_lora, merge_lora, text_key, write_bundle

__all__ = ["FinetuneConfig", "finetune"]

log = logging.getLogger("v2m.train.finetune")


@dataclass
class FinetuneConfig:
    steps: int = 2000
    batch_size: int = 8  # the global batch: the same for any number of processes
    grad_accum: int = 1  # micro-batches a step (each process): batch_size / (processes * grad_accum) each
    lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    lora_rank: int = 0  # 0 = full fine-tune
    lora_alpha: float | None = None  # default: the rank (scale 1)
    curve_dropout: float = 0.1
    text_dropout: float = 0.1
    clip_seconds: float | None = None  # v2m family (SAO: its fixed length); default 10 s
    clips_per_file: int = 4
    eval_interval: int = 100
    eval_clips: int = 4
    checkpoint_interval: int = 100
    dtype: str = "fp16"  # of the written bundle
    curve_encoder: str = "logmel"  # logmel, basic-pitch or a Hugging Face model directory (`runtime.music_encoders`)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (big models)
    fsdp: bool = False  # under torchrun: shard the DiT, its EMA and the optimizer state (FSDP2)
    eval_generate: int = 2  # held-out clips generated at each validation (curve correlation; 0 = off)
    eval_steps: int = 8  # solver steps of those generations
    # v2m family: this share of steps trains on shorter clips (one length a step, drawn in
    # [min_clip_seconds, the clip], each row at its own offset), so short videos are a trained case
    short_clip_share: float = 0.0
    min_clip_seconds: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


class _Text:
    """The bundle's text encoder with the content key its cached embeddings go by."""

    def __init__(self, base: Base):
        from v2m.runtime.text import load_text_encoder

        self.enc = load_text_encoder(base.bundle, base.cfg.text, base.cfg.text_dim)
        self.key = text_key(base.bundle, base.cfg)

    def encode(self, caption: str):
        return self.enc.encode(caption)


def _dist() -> tuple[int, int]:
    """(rank, world size), initializing the process group under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():  # a long timeout: the other ranks wait while rank 0 prepares the data
        from datetime import timedelta

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _batch(data, idx, rng, tc: FinetuneConfig, objective: str, seconds_names, latent_rate: float = 0.0):
    """Everything random of one global batch from `rng` (numpy): tensors in batch order
    (`latent_rate`: the v2m family's, for `short_clip_share`)."""
    from v2m.families.sao import seconds_values

    b = len(idx)
    x, curves = data.latents[idx], data.curves[idx]  # (B, C, L), (B, L)
    if tc.short_clip_share and latent_rate and rng.random() < tc.short_clip_share:
        x, curves = _short_clips(x, curves, rng, max(2, round(tc.min_clip_seconds * latent_rate)))
    keep_curve = (rng.random(b) >= tc.curve_dropout).astype(np.float32)
    keep_text = (rng.random(b) >= tc.text_dropout).astype(np.float32)
    levels = training_levels(objective, rng, b)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    cid = data.caption_ids[idx]
    seconds = np.stack([seconds_values(seconds_names, float(s)) for s in data.seconds[idx]]) if seconds_names \
        else np.zeros((b, 0), np.float32)
    return {"x": t(x), "curve": t(curves[:, None, :] * keep_curve[:, None, None]),
            "text": t(data.text[cid] * keep_text[:, None, None]), "mask": t(data.text_mask[cid]),
            "seconds": t(seconds), "levels": levels}


def _short_clips(x: np.ndarray, curves: np.ndarray, rng, min_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of one length n in [min_frames, L] at each row's own offset. A video of n frames has
    its curve standardized over those frames: each crop is re-centred and scaled to its clip's
    curve std (the clip's curve was standardized before smoothing, so its std is not 1)."""
    b, _, length = x.shape
    n = int(rng.integers(min(min_frames, length), length + 1))
    starts = rng.integers(0, length - n + 1, size=b)
    xs = np.stack([x[i, :, s : s + n] for i, s in enumerate(starts)])  # (B, C, n)
    cs = np.stack([curves[i, s : s + n] for i, s in enumerate(starts)]).astype(np.float64)  # (B, n)
    sd_clip, sd_crop = curves.std(axis=1, keepdims=True), cs.std(axis=1, keepdims=True)
    cs = np.where(sd_crop > 1e-6, (cs - cs.mean(axis=1, keepdims=True)) * sd_clip / np.maximum(sd_crop, 1e-6), 0.0)
    return xs, cs.astype(np.float32)


def _loss(model, objective: str, batch: dict, noise: torch.Tensor, sl: slice = slice(None),
          device: torch.device | str = "cpu") -> torch.Tensor:
    """MSE between the model's output and the objective's target, on the rows `sl` of the batch."""
    pair = training_pair(batch["levels"][sl], objective)
    on = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32).to(device)
    col = lambda a: on(a)[:, None, None]
    x, n = batch["x"][sl].to(device), noise[sl].to(device)
    x_in = col(pair.in_data) * x + col(pair.in_noise) * n
    target = col(pair.out_data) * x + col(pair.out_noise) * n
    out = model(x_in, on(pair.t_model), *(batch[k][sl].to(device) for k in ("text", "mask", "curve", "seconds")))
    return F.mse_loss(out.float(), target)


def _clip_frames(base: Base, tc: FinetuneConfig) -> int:
    if base.clip_frames is not None:
        return base.clip_frames
    return max(4, round((tc.clip_seconds or 10.0) * base.cfg.latent_rate))


def _check_inputs(base_dir: Path, audio: Path, tc: FinetuneConfig, world: int) -> int:
    """Everything knowable before work, one line each; returns the rows a process runs per micro-batch."""
    per_rank = tc.batch_size // (world * tc.grad_accum)
    if per_rank < 1 or tc.batch_size % (world * tc.grad_accum):
        raise InputError(f"--batch-size {tc.batch_size} must be a multiple of processes x --grad-accum "
                         f"({world} x {tc.grad_accum})")
    if not audio.is_dir():
        raise InputError(f"--audio {audio}: no such folder")
    if not (base_dir / "vae_encoder.safetensors").is_file():
        from v2m.core.errors import BundleError

        raise BundleError(f"{base_dir}: no VAE encoder (vae_encoder.safetensors), so music cannot be encoded to its "
                          "latents; use a bundle made by `v2m init-model` or `v2m convert` (which carry it)")
    if tc.curve_encoder == "basic-pitch":
        from v2m.runtime.music_encoders import basic_pitch_model

        basic_pitch_model()  # one line if its model is missing
    elif tc.curve_encoder != "logmel" and not (Path(tc.curve_encoder) / "config.json").is_file():
        raise InputError(f"--curve-encoder {tc.curve_encoder}: not logmel, basic-pitch or a Hugging Face model "
                         "directory (config.json)")
    return per_rank


def _prepare_data(base: Base, audio: Path, cache: Path, tc: FinetuneConfig, seed: int, workers: int,
                  rank: int, world: int, progress: bool):
    """Rank 0 fills the cache (workers); the other ranks then read it. Returns (data, settings)."""
    import hashlib

    from v2m.runtime.music import AUDIO_SUFFIXES

    enc_sha = hashlib.sha256((base.bundle / "vae_encoder.safetensors").read_bytes()).hexdigest()[:16]
    cfg = base.cfg
    kind, hf_dir = _music_kind(tc)
    settings = DataSettings(cfg.audio.sample_rate, cfg.audio.hop_length, _clip_frames(base, tc), cfg.latent_rate,
                            cfg.curve.kernel, tc.clips_per_file, seed, enc_sha, kind, hf_dir)
    data = None
    if rank == 0:
        files = sum(p.suffix.lower() in AUDIO_SUFFIXES for p in audio.iterdir())
        bar = common.Progress(files, 0, "prepare", enabled=progress, every=20)
        data = prepare(audio, base.bundle, cache, settings, _Text(base), workers, torch.get_num_threads(), bar.update)
        bar.close()
    _barrier(world)
    if rank:
        data = prepare(audio, base.bundle, cache, settings, _Text(base), 1, torch.get_num_threads())
    return data, settings


def _music_kind(tc: FinetuneConfig) -> tuple[str, str]:
    """(music encoder kind, its Hugging Face directory or "") of `--curve-encoder`."""
    if tc.curve_encoder in ("logmel", "basic-pitch"):
        return tc.curve_encoder, ""
    return "hf", str(Path(tc.curve_encoder).resolve())


def _make_trainable(base: Base, tc: FinetuneConfig, seed: int, dev: torch.device, fsdp: bool):
    """LoRA (or not), the model on `dev`, the EMA copy, FSDP2 shards, AdamW (decay on matrices).
    Returns (trainable count, ema, params, opt, template: an unsharded EMA to gather into, or None)."""
    torch.manual_seed(seed)
    if tc.lora_rank:
        trainable = add_lora(base.dit, tc.lora_rank, tc.lora_alpha, seed)
    else:
        trainable = sum(p.numel() for p in base.dit.parameters())
    base.to(dev)
    ema = copy.deepcopy(base.dit).requires_grad_(False)
    if tc.activation_checkpointing:  # after the EMA copy: the EMA never runs backward
        _checkpoint_blocks(base.dit)
    template = None
    if fsdp:
        from .finetune_fsdp import shard

        template = copy.deepcopy(ema).cpu()
        shard(base.dit, ema)
    params = [p for p in base.dit.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=tc.lr, betas=(0.9, 0.99))
    return trainable, ema, params, opt, template


def _checkpoint_blocks(dit: torch.nn.Module) -> None:
    """Activation checkpointing per transformer block: its activations are recomputed in backward.
    The forward is rebound on the instance, so parameter names (and checkpoints) stay the same."""
    from torch.utils.checkpoint import checkpoint

    for blk in dit.blocks:
        blk.forward = functools.partial(checkpoint, blk.forward, use_reentrant=False)


def _device(name: str, world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and world > 1:  # one GPU a process
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def finetune(out_dir, base_dir, audio, tc: FinetuneConfig, seed: int = 0, threads: int | None = None,
             workers: int = 2, cache: str | Path | None = None, progress: bool = True,
             stop_at: int | None = None, device: str = "cpu") -> Path:
    """Fine-tune (or resume) in `out_dir`; returns RUN/bundle (or the checkpoint when `stop_at` stops early)."""
    rank, world = _dist()
    base_dir, audio = Path(base_dir), Path(audio)
    per_rank = _check_inputs(base_dir, audio, tc, world)
    out = common.check_workdir(out_dir, "finetune") if rank == 0 else Path(out_dir)
    common.set_threads(threads)
    t_start, cpu_start = time.perf_counter(), common.cpu_seconds()
    base = Base(base_dir)
    # Not the process count, device, sharding or recomputation: a run may resume under other ones.
    train = {k: v for k, v in tc.to_dict().items() if k not in ("fsdp", "activation_checkpointing")}
    run = {"kind": "finetune", "seed": seed, "train": train, "base": str(base_dir.resolve()), "audio": str(audio.resolve())}
    cache = Path(cache) if cache else out / "cache"
    data, settings = _prepare_data(base, audio, cache, tc, seed, workers, rank, world, progress)
    t_prep = time.perf_counter() - t_start
    n = len(data.seconds)
    n_eval = min(tc.eval_clips, max(1, n // 10))
    eval_idx, train_idx = np.arange(n_eval), (np.arange(n_eval, n) if n > n_eval else np.arange(n))

    dev = _device(device, world)
    fsdp = tc.fsdp and world > 1
    trainable, ema, params, opt, template = _make_trainable(base, tc, seed, dev, fsdp)
    ckpt_path = out / "ckpt.pt"
    states = {"model": base.dit, "ema": ema, "opt": opt}
    if fsdp:  # checkpoints hold full state dicts, gathered by every process
        from .finetune_fsdp import FullState, Snapshot

        states = {"model": FullState(base.dit), "ema": FullState(ema), "opt": FullState(base.dit, opt)}
    step0, losses = common.resume(ckpt_path, run, states)
    model = base
    if world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(base)
    if rank == 0:
        (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        log.info("finetune %s (%s, objective %s%s): %d clips of %d latent frames (%d held out), %d files skipped, "
                 "%.2f M trainable parameters, %d process(es) on %s", base_dir, base.family, base.objective,
                 ", curve channel added" if base.added_curve else "", n, settings.clip_frames, n_eval,
                 len(data.skipped), trainable / 1e6, world, dev)
    # bf16 autocast on CUDA (the weights and the optimizer stay fp32); fp32 on the CPU
    autocast = lambda: torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    # The fixed validation batch: held-out clips, curve and text kept, fixed levels and noise.
    vtc = FinetuneConfig(**{**tc.to_dict(), "curve_dropout": 0.0, "text_dropout": 0.0, "short_clip_share": 0.0})
    vb = _batch(data, eval_idx, common.step_rng(seed, 0, stream=7), vtc, base.objective, base_seconds(base))
    vnoise = torch.randn(vb["x"].shape, generator=common.step_generator(seed, 0, stream=7))

    bar = common.Progress(tc.steps, step0, "finetune", enabled=progress and rank == 0)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    for step in range(step0, end):
        lr = common.cosine_lr(step, tc.steps, tc.lr, tc.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = common.step_rng(seed, step)  # everything random of step s comes from (seed, s)
        batch = _batch(data, rng.choice(train_idx, size=tc.batch_size), rng, tc, base.objective, base_seconds(base),
                       base.cfg.latent_rate if base.family != "sao" else 0.0)
        noise = torch.randn(batch["x"].shape, generator=common.step_generator(seed, step))
        total = _optimizer_step(model, base.objective, batch, noise, tc, rank, world, per_rank, dev, autocast, params,
                                opt)
        common.ema_update(ema, base.dit, min(tc.ema, (1 + step) / (10 + step)))
        losses.add(step, {"loss": total.item()})
        bar.update(step, f"loss {total.item():.4f}")

        last = step + 1 == tc.steps
        if (step + 1) % tc.eval_interval == 0 or last:  # every process (a sharded forward is collective)
            with autocast():
                val = _validate(base, ema, vb, vnoise, dev)
                if tc.eval_generate:
                    val.update(generated_curve_correlation(base, ema, vb, tc.eval_generate, tc.eval_steps,
                                                           _music_kind(tc), seed, dev))
                    log.info("generated clips' curve correlation %.3f (without the curve %.3f)", val["curve_corr"],
                             val["curve_corr_no_curve"])
            losses.add(step, val, "eval")
        if (step + 1) % tc.checkpoint_interval == 0 or last or step + 1 == end:
            snap = {k: Snapshot(v.state_dict()) for k, v in states.items()} if fsdp else states
            if rank == 0:
                common.checkpoint(ckpt_path, run, snap, step + 1, losses)
                losses.save(out, f"finetune of {base_dir.name} ({base.objective}, seed {seed})")
    bar.close()
    result = (_write_result(out, base, base_dir, tc, seed, ema, template, states, fsdp, rank) if end == tc.steps
              else None) or ckpt_path
    if rank == 0:
        timing = common.record_timing(out, time.perf_counter() - t_start, common.cpu_seconds() - cpu_start,
                                      prepare_wall_s=round(t_prep, 1), threads=torch.get_num_threads(),
                                      steps=[step0, end], processes=world, device=str(dev), fsdp=fsdp)
        _report(out, data, settings, base, tc, trainable, n_eval, cache, timing, losses)
    _barrier(world)
    return Path(result)


def _optimizer_step(model, objective: str, batch, noise, tc: FinetuneConfig, rank: int, world: int, per_rank: int,
                    dev, autocast, params, opt) -> torch.Tensor:
    """One step over the global batch: this process's rows of each micro-batch, gradients reduced
    across processes (DDP at the last backward), clipped; the mean loss over every process."""
    opt.zero_grad(set_to_none=True)
    total = torch.zeros((), device=dev)
    for m in range(tc.grad_accum):  # this process's rows of micro-batch m of the global batch
        rows = slice((m * world + rank) * per_rank, (m * world + rank + 1) * per_rank)
        sync = m + 1 == tc.grad_accum or world == 1
        with contextlib.nullcontext() if sync else model.no_sync():  # DDP reduces at the last backward
            with autocast():
                loss = _loss(model, objective, batch, noise, rows, dev) / tc.grad_accum
            loss.backward()
        total += loss.detach()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
        total /= world
    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
    opt.step()
    return total


def _write_result(out: Path, base: Base, base_dir: Path, tc: FinetuneConfig, seed: int, ema, template, states,
                  fsdp: bool, rank: int) -> Path | None:
    """The finished run's bundle (the EMA weights, LoRA merged) at RUN/bundle, written by rank 0
    (None on the other processes)."""
    final = ema.cpu() if not fsdp else template
    if fsdp:
        full = states["ema"].state_dict()  # every process gathers; rank 0 gets the tensors and writes
        if rank == 0:
            template.load_state_dict(full)
    if rank != 0:
        return None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[tc.dtype]
    return write_bundle(out / "bundle", base, merge_lora(final), base.cfg.curve.kernel, dtype,
                        {"seed": str(seed), "base": base_dir.name}, music=_music_kind(tc))


def _report(out: Path, data, settings, base: Base, tc: FinetuneConfig, trainable: int, n_eval: int, cache: Path,
            timing: dict, losses) -> None:
    """RUN/report.json: the data summary (skipped files and why), the model, the times, the last validation."""
    report = {"data": {"clips": len(data.seconds), "files": len(set(data.files)), "captions": len(data.captions),
                       "held_out_clips": int(n_eval), "clip_frames": settings.clip_frames, "skipped": data.skipped,
                       "cache": str(cache)},
              "model": {"family": base.family, "objective": base.objective, "curve_channel_added": base.added_curve,
                        "trainable_parameters": int(trainable), "lora_rank": tc.lora_rank},
              "curve_encoder": settings.curve_encoder, "timing": timing,
              "final_eval": {k: v[-1][1] for k, v in losses.eval.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def base_seconds(base: Base) -> list[str]:
    return base.seconds_names if base.family == "sao" else []


@torch.no_grad()
def _validate(base: Base, ema, vb: dict, vnoise: torch.Tensor, device="cpu") -> dict[str, float]:
    """The EMA model's loss on the fixed validation batch, with its curves and without (zeros)."""
    trained = base.dit
    base.dit = ema
    try:
        val = {"loss": _loss(base, base.objective, vb, vnoise, device=device).item()}
        no_curve = {**vb, "curve": torch.zeros_like(vb["curve"])}  # exactly what --no-curve feeds
        val["loss_no_curve"] = _loss(base, base.objective, no_curve, vnoise, device=device).item()
    finally:
        base.dit = trained
    log.info("eval loss %.4f (without the curve %.4f)", val["loss"], val["loss_no_curve"])
    return val


if __name__ == "__main__":  # `python -m v2m.train.finetune` / torchrun: the CLI's `train finetune` options
    import sys

    from v2m.cli.main import (
        main as cli_main,  # an entry point, not a dependency: nothing imports it from here
    )

    raise SystemExit(cli_main(["train", "finetune", *sys.argv[1:]]))
