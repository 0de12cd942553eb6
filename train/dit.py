"""The DiT trainer: V2M-Zero's recipe in miniature, on music alone (no video, no pairs).

V2M-Zero (zero-pair video-to-music) trains a text-to-music DiT with one extra input
channel, the event curve *of the music itself*; at inference the video's event
curve takes its place. Here:

1. `prepare`: every clip of the source is encoded by the trained autoencoder
   (posterior mean, [C, L]) and gets the music event curve of its decoded
   reconstruction (`v2m.runtime.music.music_curve`, the bundle's curve
   conventions: what the model's own output will sound like) and its caption's
   token ids; latents are scaled to unit variance per channel (the scale is
   folded into the shipped decoder's first convolution).
2. The loop (nanoGPT's `train.py` shape): rectified flow, x_t = t x1 + (1 - t) x0,
   the DiT predicts v = x1 - x0, t logit-normal; random crops of random length.
   Each example's curve is its music curve or, with probability `spike_prob`, a
   *video-like* curve: a spike train at the music curve's event peaks run through
   the same conventions (`spike_curve`), since a hard cut is one spike, a shape
   music curves do not have. Then a random gain (0.5x to 2x, log-uniform), curve
   dropout (the "without the curve" branch of curve guidance and of `--no-curve`)
   and text dropout (the unconditional branch of classifier-free guidance). An
   EMA of the weights is what ships.
3. `write_bundle`: an ordinary v2m bundle (config.json, dit, vae, text safetensors;
   the frame encoder weight-free), which `v2m export` turns into ONNX like any other.

```
v2m train dit --autoencoder runs/ae -o runs/dit --steps 4000 --seed 0
```
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from v2m.core import curves
from v2m.core.bundle import AudioConfig, BundleConfig, CurveConfig, SamplerConfig, encoder_config
from v2m.models.checkpoint import save_safetensors
from v2m.models.dit import DiT, DiTConfig
from v2m.runtime.music import music_curve
from v2m.runtime.text import PAD_ID, tokenize

from . import common
from .autoencoder import HOP, bundle_vae_encoder, check_autoencoder_run, load_autoencoder
from .data import SAMPLE_RATE, Source

__all__ = [
    "DiTTrainConfig",
    "DIT_TRAIN_PRESETS",
    "DIT_PRESETS",
    "TextTable",
    "Conditioned",
    "prepare",
    "spike_curve",
    "train_dit",
    "write_bundle",
    "load_trained",
]

log = logging.getLogger("v2m.train.dit")

LATENT_RATE = SAMPLE_RATE / HOP

DIT_PRESETS: dict[str, DiTConfig] = {
    # The feasibility study's size: width 128, depth 4 (about 1.3 M parameters).
    "demo": DiTConfig(latent_channels=16, width=128, depth=4, heads=4, mlp_dim=384, text_dim=64, freq_dim=64),
    "tiny": DiTConfig(latent_channels=4, width=32, depth=1, heads=2, mlp_dim=64, text_dim=16, freq_dim=16),
}


@dataclass
class DiTTrainConfig:
    model: str = "demo"  # DIT_PRESETS key
    steps: int = 6000
    batch: int = 16
    min_frames: int = 48  # crops of 48 .. max_frames latent frames (4 to 12 s)
    max_frames: int = 148
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    curve_dropout: float = 0.1
    text_dropout: float = 0.1
    spike_prob: float = 0.5
    gain_min: float = 0.5
    gain_max: float = 2.0
    vocab_size: int = 4096
    max_tokens: int = 32
    # The bundle's curve Hann window: 15 frames (1.2 s; half-height width 0.6 s). Measured on
    # the corpus, a wider window lets a music curve correlate better with a cut video's spike
    # curve (K 11: 0.73, 15: 0.77, 21: 0.80) but blurs close events (peaks on events: 88%, 88%, 78%).
    kernel: int = 15
    eval_interval: int = 250
    eval_clips: int = 16
    checkpoint_interval: int = 250

    def to_dict(self) -> dict:
        return asdict(self)


DIT_TRAIN_PRESETS: dict[str, DiTTrainConfig] = {
    "demo": DiTTrainConfig(),
    "tiny": DiTTrainConfig(model="tiny", steps=6, batch=4, min_frames=8, max_frames=12, warmup=2, vocab_size=64,
                           max_tokens=24, kernel=5, eval_interval=3, eval_clips=2, checkpoint_interval=3),
}


# --- model -----------------------------------------------------------------------------------------
class TextTable(nn.Module):
    """The runtime's built-in text encoder as a trainable table: ids -> table[ids] * mask."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embedding.weight)  # unit variance, as init_builtin_table

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (ids != PAD_ID).float()  # BOS always first, padding after: the runtime's mask
        return self.embedding(ids) * mask[..., None], mask  # (B, S, E), (B, S)


class Conditioned(nn.Module):
    """DiT + its text table: what is trained and averaged (EMA) together."""

    def __init__(self, dit_cfg: DiTConfig, vocab: int):
        super().__init__()
        self.dit = DiT(dit_cfg)
        self.text = TextTable(vocab, dit_cfg.text_dim)

    def forward(self, x, curve, t, ids, drop_text):
        emb, mask = self.text(ids)
        emb = emb * (1.0 - drop_text)[:, None, None]  # dropped text: zeros, same mask (the runtime's uncond)
        return self.dit(x, curve, t, emb, mask)


# --- data ------------------------------------------------------------------------------------------
_WORKER_AE = None  # the autoencoder of a prepare worker process


def _init_worker(ae_dir: str, threads: int) -> None:
    global _WORKER_AE
    torch.set_num_threads(threads)
    _WORKER_AE = load_autoencoder(ae_dir)


@torch.no_grad()
def _encode_clip(args):
    """One clip: posterior-mean latents [C, L], the music curve of their *decoded* audio, caption, events.

    The curve is that of decode(encode(audio)), not of the audio itself: generated music is
    always heard (and measured) through the decoder, whose smearing moves a curve's peaks
    (on the corpus the reconstruction's peaks come 0.07 s earlier than the original's), so
    the DiT learns the curve its own output will have.
    """
    source, i, kernel = args
    audio, caption, events = source.clip(i)
    length = audio.shape[1] // HOP
    mean, _ = _WORKER_AE.encoder(torch.from_numpy(np.ascontiguousarray(audio[:, : length * HOP]))[None])
    recon = _WORKER_AE.decoder(mean)[0].numpy()
    return mean[0].numpy(), music_curve(recon, SAMPLE_RATE, length, LATENT_RATE, kernel), caption, events


def _event_peaks(curve: np.ndarray, events: list[float] | None) -> list[int]:
    """Latent frames of the music curve's peak next to each known event (within -0.3 .. +0.5 s);
    for music without known events, its peaks above 1 (about one per 3 s at most)."""
    if events is None:
        top = curves.curve_peaks(curve, max(1, round(curve.size / LATENT_RATE / 3)))
        return [int(i) for i in top if curve[i] > 1.0]
    out = []
    for t in events:
        lo = max(0, int(np.floor((t - 0.3) * LATENT_RATE)))
        hi = min(curve.size, int(np.ceil((t + 0.5) * LATENT_RATE)) + 1)
        if hi > lo:
            out.append(lo + int(np.argmax(curve[lo:hi])))
    return out


@torch.no_grad()
def prepare(source: Source, ae_dir: str | Path, out_path: Path, kernel: int, vocab: int, max_tokens: int,
            workers: int = 2, progress: bool = True) -> dict[str, np.ndarray]:
    """Latents, music curves, token ids and event peaks of every clip of `source`, saved to `out_path` (.npz)."""
    import multiprocessing as mp

    from v2m.core.manifest import sha256_file

    # What the data depends on: a cached file made from other clips, another autoencoder or
    # other curve settings is made again.
    key = json.dumps({"source": source.describe(), "kernel": kernel, "vocab": vocab, "max_tokens": max_tokens,
                      "autoencoder": sha256_file(Path(ae_dir) / "encoder.safetensors"),
                      "decoder": sha256_file(Path(ae_dir) / "decoder.safetensors"), "curves": "reconstruction"},
                     sort_keys=True)
    if out_path.is_file():
        data = dict(np.load(out_path))
        if "key" in data and str(data["key"]) == key:
            return data
        log.info("%s was made from other data or settings; preparing again", out_path)
    n = len(source)
    rows = []
    bar = common.Progress(n, 0, "prepare", enabled=progress, every=100)
    threads = torch.get_num_threads()
    if workers > 1:  # one torch thread per worker process: the cores are shared out by processes
        per = max(1, threads // workers)
        # The workers' BLAS gets the same share before numpy loads in them: OpenBLAS's own helper
        # threads would otherwise spin against the other workers (and, seen once under a
        # real-time scheduling policy, never let the helper run: the pool hung).
        blas = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": str(per)}
        saved = {k: os.environ.get(k) for k in blas}
        os.environ.update(blas)
        try:
            pool = mp.get_context("spawn").Pool(workers, _init_worker, (str(ae_dir), per))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    else:
        pool = None
        _init_worker(str(ae_dir), threads)
    try:
        it = (pool.imap if pool else map)(_encode_clip, ((source, i, kernel) for i in range(n)))
        for i, (latents, curve, caption, events) in enumerate(it):
            rows.append((latents, curve, tokenize(caption, vocab, max_tokens), _event_peaks(curve, events)))
            bar.update(i)
    finally:
        if pool:
            pool.close()
            pool.join()
    bar.close()
    length = min(r[0].shape[1] for r in rows)
    peaks = np.full((n, 16), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        p = [j for j in r[3] if j < length][:16]
        peaks[i, : len(p)] = p
    data = {
        "latents": np.stack([r[0][:, :length] for r in rows]).astype(np.float32),  # (N, C, L)
        "curves": np.stack([r[1][:length] for r in rows]).astype(np.float32),  # (N, L)
        "tokens": np.stack([r[2] for r in rows]),  # (N, S)
        "peaks": peaks,  # (N, 16) latent frames, -1 = none
        "kernel": np.array(kernel),
        "key": np.array(key),
    }
    np.savez(out_path, **data)
    return data


def latent_scale(latents: np.ndarray) -> np.ndarray:
    """Per-channel std of the corpus latents [N, C, L] (floored at 1e-3: a collapsed channel
    stays near zero instead of being blown up): the DiT trains on latents / scale."""
    return np.maximum(latents.std(axis=(0, 2)), 1e-3).astype(np.float32)


def spike_curve(peaks: np.ndarray, length: int, kernel: int, rng: np.random.Generator) -> np.ndarray:
    """A video-like event curve with cuts at latent frames `peaks` (float32 [length]).

    The dissimilarity of a cut video at the latent rate is a spike per cut over small
    frame-to-frame noise (motion); here spike heights U(0.5, 1), noise |N(0, s)| with
    s log-uniform in [0.003, 0.1], and with probability 0.3 one weaker spurious spike
    (a flash, a fast pan). Then the curve conventions: standardize, Hann-smooth.
    """
    d = np.abs(rng.standard_normal(length)) * float(np.exp(rng.uniform(np.log(0.003), np.log(0.1))))
    for p in peaks:
        if 0 < p < length:
            d[p] += rng.uniform(0.5, 1.0)
    if rng.random() < 0.3:
        d[int(rng.integers(1, length))] += rng.uniform(0.1, 0.35)
    d[0] = 0.0
    return curves.hann_smooth(curves.standardize(d), kernel).astype(np.float32)


def _batch(data: dict, scale: np.ndarray, tc: DiTTrainConfig, rng: np.random.Generator, indices: np.ndarray):
    """One training batch drawn with `rng` from clips `indices`: x1, curve, ids (tensors), crop length."""
    n_total = data["latents"].shape[2]
    length = int(rng.integers(tc.min_frames, min(tc.max_frames, n_total) + 1))
    idx = rng.choice(indices, size=tc.batch)
    starts = rng.integers(0, n_total - length + 1, size=tc.batch)
    x1 = np.stack([data["latents"][i, :, s : s + length] for i, s in zip(idx, starts)]) / scale[None, :, None]
    curve = np.empty((tc.batch, length), dtype=np.float32)
    for b, (i, s) in enumerate(zip(idx, starts)):
        if rng.random() < tc.spike_prob:
            peaks = data["peaks"][i]
            full = spike_curve(peaks[peaks >= 0], n_total, tc.kernel, rng)
        else:
            full = data["curves"][i]
        gain = float(np.exp(rng.uniform(np.log(tc.gain_min), np.log(tc.gain_max))))
        curve[b] = full[s : s + length] * gain * (rng.random() >= tc.curve_dropout)
    drop_text = (rng.random(tc.batch) < tc.text_dropout).astype(np.float32)
    t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)
    return t(x1), t(curve[:, None, :]), t(data["tokens"][idx], torch.long), t(drop_text), length


def _flow_loss(model: Conditioned, x1, curve, ids, drop_text, gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow MSE at logit-normal t: x_t = t x1 + (1 - t) x0, target x1 - x0."""
    b = x1.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen))
    x0 = torch.randn(x1.shape, generator=gen)
    xt = t[:, None, None] * x1 + (1 - t[:, None, None]) * x0
    return F.mse_loss(model(xt, curve, t, ids, drop_text), x1 - x0)


def _make_model(dit_cfg, tc: DiTTrainConfig, seed: int):
    """The model (zero-initialized output layers), its EMA copy and AdamW (no decay on norms,
    biases and embeddings)."""
    torch.manual_seed(seed)
    model = Conditioned(dit_cfg, tc.vocab_size)
    model.dit.init_weights(torch.Generator().manual_seed(seed), zero_init=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(0.9, 0.99))
    return model, ema, opt


@torch.no_grad()
def _validate(ema, vb, vgen: torch.Generator, seed: int) -> dict[str, float]:
    """The EMA model's loss on the fixed validation batch, with and without the curve (same noise)."""
    vgen.manual_seed(seed)
    val = {"loss": _flow_loss(ema, *vb[:4], vgen).item()}
    zero = (vb[0], torch.zeros_like(vb[1]), *vb[2:4])
    vgen.manual_seed(seed)
    val["loss_no_curve"] = _flow_loss(ema, *zero, vgen).item()
    return val


# --- the loop --------------------------------------------------------------------------------------
def train_dit(
    out_dir: str | Path,
    source: Source,
    ae_dir: str | Path,
    tc: DiTTrainConfig,
    seed: int = 0,
    threads: int | None = None,
    encoder: str = "cut",
    progress: bool = True,
    workers: int = 2,
    stop_at: int | None = None,
    sampler: SamplerConfig | None = None,
) -> Path:
    """Train (or resume) the DiT in `out_dir` and write the bundle to `out_dir/bundle`.

    Args:
        source: training music (`SynthSource` or `FolderSource`).
        ae_dir: a finished `train_autoencoder` run.
        tc: `DiTTrainConfig`.
        encoder: the bundle's frame encoder, `cut` or `motion` (weight-free).
        stop_at: stop after this step (a checkpoint is written there; rerun to continue).
        sampler: the bundle's sampler defaults (default: `SamplerConfig()`).
    """
    check_autoencoder_run(ae_dir)  # before anything is written
    out = common.check_workdir(out_dir, "dit")
    common.set_threads(threads)
    t_start, cpu_start = time.perf_counter(), common.cpu_seconds()
    run = {"kind": "dit", "seed": seed, "train": tc.to_dict(), "source": source.describe(),
           "autoencoder": str(Path(ae_dir).resolve()), "encoder": encoder}
    data = prepare(source, ae_dir, out / "data.npz", tc.kernel, tc.vocab_size, tc.max_tokens, workers, progress)
    t_prep = time.perf_counter() - t_start
    scale = latent_scale(data["latents"])
    n = len(data["latents"])
    n_eval = min(tc.eval_clips, max(1, n // 10))
    train_idx, eval_idx = np.arange(n_eval, n), np.arange(n_eval)  # the first clips are held out

    dit_cfg = DIT_PRESETS[tc.model]
    model, ema, opt = _make_model(dit_cfg, tc, seed)
    ckpt_path = out / "ckpt.pt"
    states = {"model": model, "ema": ema, "opt": opt}
    step0, losses = common.resume(ckpt_path, run, states)
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    log.info("dit: %d clips (%d held out) of %d latent frames, %.2f M parameters, latent std %s",
             n, n_eval, data["latents"].shape[2], sum(p.numel() for p in model.dit.parameters()) / 1e6,
             np.array2string(scale, precision=2))

    # Fixed validation batch: held-out clips, fixed t, noise and crops; the curve as given (no dropout).
    vrng = common.step_rng(seed, 0, stream=7)
    vb = _batch(data, scale, DiTTrainConfig(**{**tc.to_dict(), "batch": 2 * n_eval, "curve_dropout": 0.0,
                                                "text_dropout": 0.0, "spike_prob": 0.5}), vrng, eval_idx)
    vgen = common.step_generator(seed, 0, stream=7)

    bar = common.Progress(tc.steps, step0, "dit", enabled=progress)
    model.train()
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    for step in range(step0, end):
        lr = common.cosine_lr(step, tc.steps, tc.lr, tc.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x1, curve, ids, drop_text, _ = _batch(data, scale, tc, common.step_rng(seed, step), train_idx)
        loss = _flow_loss(model, x1, curve, ids, drop_text, common.step_generator(seed, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        common.ema_update(ema, model, min(tc.ema, (1 + step) / (10 + step)))  # warm-up: early EMA follows
        losses.add(step, {"loss": loss.item()})
        bar.update(step, f"loss {loss.item():.4f}")

        last = step + 1 == tc.steps
        if (step + 1) % tc.eval_interval == 0 or last:
            val = _validate(ema, vb, vgen, seed)
            losses.add(step, val, "eval")
            log.info("step %d: eval loss %.4f (without the curve %.4f)", step + 1, val["loss"], val["loss_no_curve"])
        if (step + 1) % tc.checkpoint_interval == 0 or last or step + 1 == end:
            common.checkpoint(ckpt_path, run, states, step + 1, losses)
            losses.save(out, f"DiT ({source.describe()['kind']}, seed {seed})")
    bar.close()
    if end == tc.steps:
        bundle = write_bundle(out / "bundle", ema, dit_cfg, ae_dir, scale, tc, encoder, seed, sampler=sampler)
    timing = common.record_timing(out, time.perf_counter() - t_start, common.cpu_seconds() - cpu_start,
                                  prepare_wall_s=round(t_prep, 1), threads=torch.get_num_threads(), steps=[step0, end])
    log.info("dit: %.1f s wall, %.1f s CPU with the prepare workers (all invocations)", timing["wall_s"], timing["cpu_s"])
    if end < tc.steps:  # stopped early (stop_at): the checkpoint resumes it
        return ckpt_path
    return bundle


def write_bundle(
    out: str | Path,
    model: Conditioned,
    dit_cfg: DiTConfig,
    ae_dir: str | Path,
    scale: np.ndarray,
    tc: DiTTrainConfig,
    encoder: str,
    seed: int,
    dtype: torch.dtype = torch.float32,
    preset: str = "trained",
    sampler: SamplerConfig | None = None,
) -> Path:
    """An ordinary v2m bundle from trained weights: the latent scale folded into the decoder."""
    from v2m.models.checkpoint import load_safetensors

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_safetensors(Path(ae_dir) / "decoder.safetensors")
    # The DiT samples unit-variance latents z' = z / scale; the decoder's first conv is
    # linear in its input, so conv1(z' * scale) = conv1 with weight[:, c, :] * scale[c].
    vae["conv1.weight"] = vae["conv1.weight"] * torch.from_numpy(scale)[None, :, None]
    ae_cfg = json.loads((Path(ae_dir) / "run.json").read_text())["model"]
    from .autoencoder import AutoencoderConfig

    vae_cfg = AutoencoderConfig(**ae_cfg).decoder_config()
    meta = {"format": "v2m", "preset": preset, "seed": str(seed), "weights": "trained"}
    cast = lambda sd: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_safetensors(cast(model.dit.state_dict()), out / "dit.safetensors", {**meta, "component": "dit"})
    save_safetensors(cast(vae), out / "vae.safetensors", {**meta, "component": "vae"})
    vae_encoder = bundle_vae_encoder(ae_dir, scale)
    if vae_encoder is not None:  # what `v2m train finetune` encodes music with
        save_safetensors(cast(vae_encoder), out / "vae_encoder.safetensors", {**meta, "component": "vae_encoder"})
    save_safetensors(cast({"embedding.weight": model.text.embedding.weight.detach()}), out / "text.safetensors",
                     {**meta, "component": "text"})
    cfg = BundleConfig(
        preset=preset,
        dit=dit_cfg.to_dict(),
        vae=vae_cfg.to_dict(),
        encoder=encoder_config(encoder),
        text={"kind": "builtin", "vocab_size": tc.vocab_size, "max_tokens": tc.max_tokens},
        sampler=sampler or SamplerConfig(),
        curve=CurveConfig(fps=None, kernel=tc.kernel, std_floor=curves.STD_FLOORS.get(encoder, 0.0)),
        audio=AudioConfig(hop_length=vae_cfg.hop_length),
    )
    cfg.save(out)
    return out


def load_trained(run_dir: str | Path) -> tuple[Conditioned, np.ndarray]:
    """The EMA model and latent scale of a `train_dit` run (from its last checkpoint)."""
    run_dir = Path(run_dir)
    ck = common.load_checkpoint(run_dir / "ckpt.pt")
    tc = DiTTrainConfig(**ck["run"]["train"])
    model = Conditioned(DIT_PRESETS[tc.model], tc.vocab_size)
    model.load_state_dict(ck["ema"])
    return model.eval(), latent_scale(np.load(run_dir / "data.npz")["latents"])
