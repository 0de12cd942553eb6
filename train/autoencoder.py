"""The autoencoder trainer: a cheap STFT-conv encoder and v2m's Oobleck decoder, trained together.

Stable Audio's autoencoder (Evans et al. 2024) is an Oobleck encoder/decoder pair
trained with multi-resolution STFT losses, adversarial losses and a small KL term.
Here, in miniature and CPU-sized: the decoder is `v2m.models.vae.OobleckDecoder`
(the bundle's `vae` component, hop 3584 so the latent rate is the runtime's
12.3 frames/s); the encoder is a few convolutions over a log-magnitude STFT
(`STFTEncoder`, used only to make training latents); the loss is

    multi-resolution STFT (spectral convergence + log-magnitude L1, four sizes)
    + 0.1 * L1 on the waveform + 1e-3 * KL(q(z | x) || N(0, I))

with no discriminator. The loop follows nanoGPT's `train.py`: config, data,
model, optimizer, a fixed eval interval, checkpoints that resume exactly.

```
v2m train autoencoder -o runs/ae --steps 1500 --seed 0        # synthetic corpus
v2m train autoencoder -o runs/ae --audio my_music/            # your own music + captions file
```
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from v2m.models.checkpoint import save_safetensors
from v2m.models.vae import OobleckConfig, OobleckDecoder

from . import common
from .data import Source

__all__ = [
    "AutoencoderConfig",
    "AE_PRESETS",
    "AETrainConfig",
    "AE_TRAIN_PRESETS",
    "STFTEncoder",
    "OobleckPosterior",
    "bundle_vae_encoder",
    "distill_oobleck_encoder",
    "Autoencoder",
    "mrstft_loss",
    "mid_side_loss",
    "kl_loss",
    "train_autoencoder",
    "load_autoencoder",
    "check_autoencoder_run",
]

log = logging.getLogger("v2m.train.autoencoder")

HOP = 3584  # audio samples per latent frame: the runtime's geometry


@dataclass
class AutoencoderConfig:
    latent_channels: int = 16
    decoder_channels: int = 16  # Oobleck width of the last block; widest block = 16x
    encoder_hidden: int = 128
    encoder_fft: int = 1024  # encoder STFT size; its hop is HOP / 8 (8 frames per latent frame)
    # "stft": the cheap STFT-conv encoder, used only to make training latents; "oobleck": Stable
    # Audio's encoder (`v2m.models.vae_encoder`), written into bundles as their `vae_encoder`
    # component so `v2m train finetune` can encode music with them
    encoder: str = "stft"
    encoder_channels: int = 8  # "oobleck": width of its first block (x 1, 2, 4, 8, 16 as the decoder)

    def decoder_config(self) -> OobleckConfig:
        return OobleckConfig(latent_channels=self.latent_channels, channels=self.decoder_channels)

    def encoder_config(self) -> OobleckConfig:
        """The "oobleck" encoder's config: the decoder's strides, its own width."""
        return OobleckConfig(latent_channels=self.latent_channels, channels=self.encoder_channels)

    def to_dict(self) -> dict:
        return asdict(self)


AE_PRESETS: dict[str, AutoencoderConfig] = {
    # The feasibility study's size: a 1.25 M parameter decoder (2.5 MB in fp16).
    "demo": AutoencoderConfig(),
    # For tests: a few thousand parameters, one step in well under a second.
    "tiny": AutoencoderConfig(latent_channels=4, decoder_channels=2, encoder_hidden=16, encoder_fft=512),
    "tiny-oobleck": AutoencoderConfig(latent_channels=4, decoder_channels=2, encoder="oobleck", encoder_channels=2),
}


@dataclass
class AETrainConfig:
    steps: int = 1500
    batch: int = 8
    crop_frames: int = 12  # latent frames per training crop (about 1 s of audio)
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1e-3
    l1_weight: float = 0.1
    # stable-audio-tools' sum-and-difference loss: the multi-resolution STFT loss of the mid
    # (L + R) / 2 and side (L - R) / 2 signals. Per-channel magnitudes say nothing of the phase
    # between the channels: without it the demo's decoder learned anti-correlated channels
    # (left/right correlation -0.97, the mono mix 20 dB down)
    stereo_weight: float = 0.0
    pool_clips: int = 192  # clips rendered once and cropped from (synthetic source)
    pool_seconds: float = 4.0
    eval_interval: int = 100
    eval_clips: int = 8
    checkpoint_interval: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


AE_TRAIN_PRESETS: dict[str, AETrainConfig] = {
    "demo": AETrainConfig(),
    # a warm-started decoder and a new encoder, with the stereo loss (the paper recipe)
    "demo-stereo": AETrainConfig(steps=900, stereo_weight=1.0, warmup=20),
    "tiny": AETrainConfig(steps=6, batch=2, crop_frames=2, pool_clips=4, pool_seconds=2.0, eval_interval=3,
                          eval_clips=2, checkpoint_interval=3, warmup=2),
}


# --- model ----------------------------------------------------------------------------------------
class STFTEncoder(nn.Module):
    """audio [B, 2, L * HOP] -> posterior mean, log-variance [B, C, L] each.

    log(1 + |STFT|) of each channel (Hann window, hop HOP / 8, frames 0 .. 8L - 1),
    a 1x1 conv over the stacked bins, three stride-2 convs (8L -> L), a 3-tap conv to 2C.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.n_fft, self.hop = cfg.encoder_fft, HOP // 8
        bins = 2 * (cfg.encoder_fft // 2 + 1)
        h = cfg.encoder_hidden
        self.proj = nn.Conv1d(bins, h, 1)
        self.down = nn.ModuleList(nn.Conv1d(h, h, 4, stride=2, padding=1) for _ in range(3))
        self.out = nn.Conv1d(h, 2 * cfg.latent_channels, 3, padding=1)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, ch, n = audio.shape
        frames = n // self.hop  # 8 L
        spec = torch.stft(audio.reshape(b * ch, n), self.n_fft, self.hop, window=self.window,
                          center=True, return_complex=True)[..., :frames]  # (B*2, F, 8L)
        x = torch.log1p(spec.abs()).reshape(b, ch * spec.shape[1], frames)  # (B, 2F, 8L)
        x = F.gelu(self.proj(x))
        for conv in self.down:
            x = F.gelu(conv(x))  # (B, H, 8L -> 4L -> 2L -> L)
        mean, logvar = self.out(x).chunk(2, dim=1)  # (B, C, L) each
        return mean, logvar.clamp(-12.0, 6.0)


class OobleckPosterior(nn.Module):
    """Stable Audio's Oobleck encoder as a posterior: audio [B, 2, L * HOP] -> mean, log-variance
    [B, C, L] each, with stable-audio-tools' VAE bottleneck std = softplus(scale) + 1e-4."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        from v2m.models.vae_encoder import OobleckEncoder

        self.net = OobleckEncoder(cfg.encoder_config())

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, scale = self.net(audio).chunk(2, dim=1)  # (B, C, L) each
        std = F.softplus(scale) + 1e-4
        return mean, (2.0 * torch.log(std)).clamp(-12.0, 6.0)


ENCODERS = {"stft": STFTEncoder, "oobleck": OobleckPosterior}


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise common.InputError(f"autoencoder encoder {cfg.encoder!r}: choose one of {', '.join(ENCODERS)}")
        self.cfg = cfg
        self.encoder = ENCODERS[cfg.encoder](cfg)
        self.decoder = OobleckDecoder(cfg.decoder_config())

    def forward(self, audio: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction [B, 2, N], posterior mean and log-variance [B, C, L]."""
        mean, logvar = self.encoder(audio)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.decoder(z), mean, logvar


# --- loss -----------------------------------------------------------------------------------------
STFT_SIZES = ((2048, 512), (1024, 256), (512, 128), (256, 64))


def mrstft_loss(pred: torch.Tensor, target: torch.Tensor, sizes=STFT_SIZES) -> torch.Tensor:
    """Mean over sizes of spectral convergence + mean |log|P| - log|T||, per audio channel."""
    p = pred.reshape(-1, pred.shape[-1])
    t = target.reshape(-1, target.shape[-1])
    total = pred.new_zeros(())
    for n_fft, hop in sizes:
        w = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(p, n_fft, hop, window=w, return_complex=True).abs()  # (B*2, F, T)
        st = torch.stft(t, n_fft, hop, window=w, return_complex=True).abs()
        sc = torch.linalg.norm(st - sp) / torch.linalg.norm(st).clamp_min(1e-7)
        mag = (torch.log(sp + 1e-5) - torch.log(st + 1e-5)).abs().mean()
        total = total + sc + mag
    return total / len(sizes)


def mid_side_loss(pred: torch.Tensor, target: torch.Tensor, sizes=STFT_SIZES) -> torch.Tensor:
    """`mrstft_loss` of the mid (L + R) / 2 plus that of the side (L - R) / 2 signals ([B, 2, N] each)."""
    mid = lambda a: 0.5 * (a[:, :1] + a[:, 1:2])  # (B, 1, N)
    side = lambda a: 0.5 * (a[:, :1] - a[:, 1:2])
    return mrstft_loss(mid(pred), mid(target), sizes) + mrstft_loss(side(pred), side(target), sizes)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


# --- data -----------------------------------------------------------------------------------------
def _pool_source(source: Source, tc: AETrainConfig) -> Source:
    """What the crops are cut from: for a generated corpus (synthetic, scores, mix), `pool_clips`
    clips of `pool_seconds` of another seed (so none is a DiT training clip); a folder as it is."""
    resized = source.resized(getattr(source, "seed", 0) + 7919, tc.pool_clips, max(tc.pool_seconds, 2.0))
    return resized if resized is not None else source


def _pool(source: Source) -> list[np.ndarray]:
    return [source.clip(i)[0].astype(np.float16) for i in range(len(source))]


def _batch(pool: list[np.ndarray], n: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
    """n random crops of `frames` latent frames with random gains (0.5 to 1.2): [n, 2, frames * HOP]."""
    size = frames * HOP
    out = np.zeros((n, 2, size), dtype=np.float32)
    for b in range(n):
        a = pool[int(rng.integers(len(pool)))]
        start = int(rng.integers(0, max(1, a.shape[1] - size + 1)))
        crop = a[:, start : start + size].astype(np.float32)
        out[b, :, : crop.shape[1]] = crop * float(rng.uniform(0.5, 1.2))
    return torch.from_numpy(out)


# --- the loop -------------------------------------------------------------------------------------
def train_autoencoder(
    out_dir: str | Path,
    source: Source,
    model_cfg: AutoencoderConfig,
    train_cfg: AETrainConfig,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    init_decoder: str | Path | None = None,
) -> Path:
    """Train (or resume) an autoencoder in `out_dir`; returns the path of its final weights.

    `init_decoder`: a bundle whose `vae` (of this run's decoder config) the decoder starts from
    (a fresh run only; the bundle's folded latent scale is a linear map the encoder absorbs).

    `out_dir` holds run.json, ckpt.pt (resumable), losses.json/png, and at the end
    encoder.safetensors and decoder.safetensors (the bundle's `vae`).
    """
    out = common.check_workdir(out_dir, "autoencoder")
    common.set_threads(threads)
    t_start, cpu_start = time.perf_counter(), common.cpu_seconds()
    pool_source = _pool_source(source, train_cfg)
    run = {"kind": "autoencoder", "seed": seed, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
           "source": pool_source.describe()}
    torch.manual_seed(seed)
    model = Autoencoder(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, betas=(0.8, 0.99), weight_decay=train_cfg.weight_decay)
    ckpt_path = out / "ckpt.pt"
    states = {"model": model, "opt": opt}
    if init_decoder is not None:
        run["init_decoder"] = str(init_decoder)
    step0, losses = common.resume(ckpt_path, run, states)
    if step0 >= train_cfg.steps and (out / "decoder.safetensors").is_file():  # finished: no pool to render
        common.record_timing(out, time.perf_counter() - t_start, common.cpu_seconds() - cpu_start,
                             threads=torch.get_num_threads(), steps=[step0, step0])
        return out / "decoder.safetensors"
    if step0 == 0 and init_decoder is not None:
        from v2m.models.checkpoint import apply_state_dict, load_safetensors

        sd = {k: v.float() for k, v in load_safetensors(Path(init_decoder) / "vae.safetensors").items()}
        apply_state_dict(model.decoder, sd, str(Path(init_decoder) / "vae.safetensors"))
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")

    t0 = time.perf_counter()
    pool = _pool(pool_source)
    log.info("autoencoder: %d clips in the crop pool (%.1f s), %.2f M parameters (decoder %.2f M)",
             len(pool), time.perf_counter() - t0, sum(p.numel() for p in model.parameters()) / 1e6,
             sum(p.numel() for p in model.decoder.parameters()) / 1e6)
    eval_batch = _batch(pool, train_cfg.eval_clips, train_cfg.crop_frames, common.step_rng(seed, 0, stream=7))  # fixed eval crops

    bar = common.Progress(train_cfg.steps, step0, "autoencoder", enabled=progress)
    model.train()
    end = train_cfg.steps if stop_at is None else min(stop_at, train_cfg.steps)
    for step in range(step0, end):
        lr = common.cosine_lr(step, train_cfg.steps, train_cfg.lr, train_cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x = _batch(pool, train_cfg.batch, train_cfg.crop_frames, common.step_rng(seed, step))
        recon, mean, logvar = model(x, common.step_generator(seed, step))
        spec = mrstft_loss(recon, x)
        wave = (recon - x).abs().mean()
        kl = kl_loss(mean, logvar)
        loss = spec + train_cfg.l1_weight * wave + train_cfg.kl_weight * kl
        if train_cfg.stereo_weight:
            loss = loss + train_cfg.stereo_weight * mid_side_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        losses.add(step, {"loss": loss.item(), "stft": spec.item(), "l1": wave.item(), "kl": kl.item()})
        bar.update(step, f"loss {loss.item():.3f}")

        last = step + 1 == train_cfg.steps
        if (step + 1) % train_cfg.eval_interval == 0 or last:
            model.eval()
            with torch.no_grad():
                mean, _ = model.encoder(eval_batch)
                recon = model.decoder(mean)
                losses.add(step, {"stft": mrstft_loss(recon, eval_batch).item(),
                                  "l1": (recon - eval_batch).abs().mean().item()}, "eval")
            model.train()
            log.info("step %d: eval stft %.4f", step + 1, losses.eval["stft"][-1][1])
        if (step + 1) % train_cfg.checkpoint_interval == 0 or last or step + 1 == end:
            common.checkpoint(ckpt_path, run, states, step + 1, losses)
            losses.save(out, f"autoencoder ({source.describe()['kind']}, seed {seed})")
    bar.close()
    timing = common.record_timing(out, time.perf_counter() - t_start, common.cpu_seconds() - cpu_start,
                                  threads=torch.get_num_threads(), steps=[step0, end])
    log.info("autoencoder: %.1f s wall, %.1f s CPU (all invocations)", timing["wall_s"], timing["cpu_s"])
    if end < train_cfg.steps:  # stopped early (stop_at): the checkpoint resumes it
        return ckpt_path

    model.eval()
    meta = {"format": "v2m", "component": "vae", "trained": "v2m train autoencoder", "seed": str(seed)}
    save_safetensors(model.decoder.state_dict(), out / "decoder.safetensors", metadata=meta)
    save_safetensors(model.encoder.state_dict(), out / "encoder.safetensors", metadata={**meta, "component": "vae-encoder"})
    return out / "decoder.safetensors"


def bundle_vae_encoder(run_dir: str | Path, scale: np.ndarray) -> dict[str, torch.Tensor] | None:
    """The `vae_encoder` component of a bundle made from this run (`v2m.models.vae_encoder`'s
    native keys), or None for an "stft" encoder. The DiT samples z / scale, so the posterior
    mean rows of the last conv are divided by the per-channel latent scale: the bundle's
    encoder gives the DiT's latents, as stable-audio-tools folds its pretransform scale."""
    from v2m.models.checkpoint import load_safetensors

    run_dir = Path(run_dir)
    cfg = AutoencoderConfig(**json.loads((run_dir / "run.json").read_text())["model"])
    if cfg.encoder == "oobleck":
        sd = {k.removeprefix("net."): v for k, v in load_safetensors(run_dir / "encoder.safetensors").items()}
    elif (run_dir / DISTILLED).is_file():  # an "stft" run's distilled Oobleck encoder
        sd = dict(load_safetensors(run_dir / DISTILLED))
    else:
        return None
    c = cfg.latent_channels
    s = torch.from_numpy(np.asarray(scale, dtype=np.float32))
    sd["conv2.weight"] = sd["conv2.weight"].clone()
    sd["conv2.bias"] = sd["conv2.bias"].clone()
    sd["conv2.weight"][:c] /= s[:, None, None]
    sd["conv2.bias"][:c] /= s
    return sd


def write_bundle_autoencoder(folder: Path, run_dir: str | Path, scale: np.ndarray, meta: dict) -> None:
    """A bundle's `vae` (the run's decoder, taking latents / scale: the scale folded into its first
    conv) and `vae_encoder` (`bundle_vae_encoder`) components, written into `folder`."""
    from v2m.models.checkpoint import load_safetensors, save_safetensors

    run_dir = Path(run_dir)
    vae = load_safetensors(run_dir / "decoder.safetensors")
    vae["conv1.weight"] = vae["conv1.weight"] * torch.from_numpy(np.asarray(scale, np.float32))[None, :, None]
    meta = {**meta, "weights": "trained"}
    save_safetensors(vae, folder / "vae.safetensors", {**meta, "component": "vae"})
    enc = bundle_vae_encoder(run_dir, scale)
    if enc is not None:
        save_safetensors(enc, folder / "vae_encoder.safetensors", {**meta, "component": "vae_encoder"})


DISTILLED = "oobleck_encoder.safetensors"


def distill_oobleck_encoder(run_dir: str | Path, source: Source, steps: int = 300, batch: int = 8,
                            crop_frames: int = 12, lr: float = 1e-3, channels: int = 8, pool_clips: int = 96,
                            seed: int = 0, threads: int | None = None) -> Path:
    """An Oobleck encoder for an "stft" run, so its bundles carry a `vae_encoder`: trained to give the
    run's posterior means (MSE against the frozen STFT encoder's, on crops of another seed's clips).

    Trained jointly with a decoder, an Oobleck encoder can collapse to a constant posterior (seen
    here with a warm-started decoder: the same latents for every clip); regression onto a working
    encoder's means cannot. Writes `oobleck_encoder.safetensors` (native keys) once; returns it.
    """
    from v2m.models.vae_encoder import OobleckEncoder

    run_dir = check_autoencoder_run(run_dir)
    out = run_dir / DISTILLED
    if out.is_file():
        return out
    common.set_threads(threads)
    cfg = AutoencoderConfig(**json.loads((run_dir / "run.json").read_text())["model"])
    teacher = load_autoencoder(run_dir).encoder.requires_grad_(False)
    torch.manual_seed(seed)
    enc = OobleckEncoder(OobleckConfig(latent_channels=cfg.latent_channels, channels=channels))
    resized = source.resized(getattr(source, "seed", 0) + 104_729, pool_clips, 4.0)
    pool = _pool(resized if resized is not None else source)
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, betas=(0.8, 0.99))
    c = cfg.latent_channels
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = common.cosine_lr(step, steps, lr, 20)
        x = _batch(pool, batch, crop_frames, common.step_rng(seed, step, stream=11))
        with torch.no_grad():
            target, _ = teacher(x)  # (B, C, L)
        loss = F.mse_loss(enc(x)[:, :c], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log.info("oobleck encoder step %d: mse %.4f (target variance %.4f)", step + 1, loss.item(), target.var().item())
    tmp = run_dir / f".{DISTILLED}.tmp"
    save_safetensors(enc.state_dict(), tmp, metadata={"format": "v2m", "component": "vae_encoder",
                                                      "trained": "distilled from the run's STFT encoder"})
    tmp.replace(out)
    return out


def check_autoencoder_run(run_dir: str | Path) -> Path:
    """`run_dir` if it is a finished autoencoder run, else one InputError line."""
    run_dir = Path(run_dir)
    if not ((run_dir / "run.json").is_file() and (run_dir / "decoder.safetensors").is_file()
            and (run_dir / "encoder.safetensors").is_file()):
        raise common.InputError(f"{run_dir} is not a finished autoencoder run (no run.json / decoder.safetensors); "
                                "run `v2m train autoencoder` first")
    return run_dir


def load_autoencoder(run_dir: str | Path) -> Autoencoder:
    """The trained autoencoder of a finished `train_autoencoder` run (eval mode, fp32)."""
    from v2m.models.checkpoint import apply_state_dict, load_safetensors

    run_dir = check_autoencoder_run(run_dir)
    cfg = AutoencoderConfig(**json.loads((run_dir / "run.json").read_text())["model"])
    model = Autoencoder(cfg)
    apply_state_dict(model.decoder, load_safetensors(run_dir / "decoder.safetensors"), str(run_dir / "decoder.safetensors"))
    apply_state_dict(model.encoder, load_safetensors(run_dir / "encoder.safetensors"), str(run_dir / "encoder.safetensors"))
    return model.eval()
