"""The engine core: video -> event curve -> sampler -> VAE -> audio, in three stages.

```python
from v2m.runtime import Pipeline, Request
pipe = Pipeline.from_pretrained("tiny-bundle", backend="torch", device="cpu", precision="fp32")
result = pipe.generate("clip.mp4", prompt="warm synth pop", seed=7)
result.mux("clip.mp4", "clip_music.mp4")      # or result.save("music.wav")

# The stages every caller (batch, serve, Ray, eval, the demo) runs:
p = pipe.prepare("clip.mp4", Request(prompt="warm synth pop", seed=7))   # probe, decode, curve, text
(s,) = pipe.sample([p])                                                   # one backend call per group
audio = pipe.render(p, s)                                                 # decode, fit to the video
pipe.write(p, audio, "clip_music.mp4")
```

- `prepare(video, request)`: the probe (once), decode and frame encoding (a background
  decode thread feeds this thread's encoder), the event curve, the prompt embeddings.
  `variant(prepared, seed=..., use_curve=...)` reuses the video for another request.
- `sample(items)`: groups compatible items (latent length, text length, sampler options),
  one backend call per group of at most the engine's batch, each item from its own seed's
  noise (so its music does not depend on its companions); a video longer than the model's
  window alone, in overlapping windows. The NaN check is per item: a failed item is an
  exception in its slot, its companions go on.
- `render(prepared, sampled)`: the VAE decode (a long video window by window, crossfaded)
  and the fit to the video's duration. `write` muxes or saves.
- Every stage reports to `Observers` (profiler, progress bar, server metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from v2m import families
from v2m.core import curves as curves_mod
from v2m.core.bundle import BundleConfig, load_config
from v2m.core.errors import InputError, NumericalError

from . import encoders as encoders_mod
from . import loops, media, sampler, video, windows
from .backends import Backend, create_backend
from .observers import STAGES, Observers, ProfilerObserver, StepCallback
from .prepared import CurveResult, GenerationResult, Prepared, Sampled
from .request import Request
from .text import PrecomputedText, TextEncoder, load_text_encoder
from .timeline import timeline_of

__all__ = ["Pipeline", "GenerationResult", "CurveResult", "Prepared", "Sampled", "Request", "STAGES"]

log = logging.getLogger("v2m.pipeline")

NAN_MESSAGE = "the sampler produced NaN/Inf latents; nothing was written (try --precision fp32)"


class Pipeline:
    """A loaded bundle on one backend. Build with `Pipeline.from_pretrained`."""

    def __init__(self, bundle_dir: Path, config: BundleConfig, backend: Backend, text_encoder: TextEncoder,
                 encoder: str | None = None):
        self.bundle_dir = bundle_dir
        self.config = config
        self.backend = backend
        self.text_encoder = text_encoder
        # The frame encoder that makes the curve: the bundle's, or a weight-free one asked for.
        self.encoder_config = encoders_mod.frame_encoder_config(config, encoder)
        self.frame_encoder = (encoders_mod.make_frame_encoder(self.encoder_config)
                              if encoders_mod.is_weight_free(self.encoder_config) else None)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        backend: str = "torch",
        device: str = "cpu",
        precision: str = "fp32",
        encoder: str | None = None,
        **backend_options: Any,
    ) -> Pipeline:
        """Load a bundle directory.

        Args:
            path: bundle directory (`v2m init-model`, or an exported one from `v2m export`), or "demo".
            backend: torch, onnxruntime, tensorrt or auto.
            device: cpu, cuda, cuda:N or auto.
            precision: fp32, fp16 or bf16 (the backend's compute precision).
            encoder: the frame encoder of the curve: None (the bundle's), or a weight-free one,
                "cut" or "motion" (`v2m.runtime.encoders`), in place of the bundle's.
            backend_options: `create_backend`'s options, documented there: fast, compile,
                kernels, vae_precision (torch) and engine_cache (tensorrt).
        """
        from .demo import resolve_model

        path = resolve_model(path)
        cfg = load_config(path)
        encoders_mod.frame_encoder_config(cfg, encoder)  # a bad --encoder fails before the backend loads
        be = create_backend(backend, path, cfg, device=device, precision=precision, **backend_options)
        text = load_text_encoder(path, cfg.text, cfg.text_dim, device=be.device)
        log.info("loaded %s (preset %s) on %s", path, cfg.preset, be.describe())
        return cls(path, cfg, be, text, encoder)

    # --- building blocks ------------------------------------------------------------
    def _features(self, reader: video.VideoReader, obs: Observers, items: Sequence[Any], batch_size: int = 32):
        """Decode (background thread) and encode (this thread) in batches: features [T, D].

        A weight-free frame encoder (cut, motion) runs here in numpy on the uint8 frames;
        DINOv2 runs in the backend on normalized pixels.
        """
        enc = self.encoder_config
        batches = video.prefetch(reader.sample(self.config.curve_fps, int(enc["input_size"]), batch_size=batch_size))
        feats = []
        t_start = time.perf_counter()
        t_enc = 0.0
        if self.frame_encoder is not None:
            self.frame_encoder.reset()
        for frames in batches:
            t0 = time.perf_counter()
            with obs.stage("encode", items):
                if self.frame_encoder is not None:
                    feats.append(self.frame_encoder.encode(frames))
                else:
                    feats.append(self.backend.encode_frames(video.normalize(frames, enc["mean"], enc["std"])))
            t_enc += time.perf_counter() - t0
        self.backend.synchronize()
        obs.record("decode", max(time.perf_counter() - t_start - t_enc, 0.0), items)  # decode not hidden by encode
        if not feats:
            raise InputError(f"{reader.path}: no video frames could be decoded")
        if isinstance(feats[0], np.ndarray):
            return np.concatenate(feats)
        import torch  # device tensors (torch backend on CUDA)

        return torch.cat(feats)

    def encode_video(self, video_path: str | Path, timings: dict[str, float] | None = None, batch_size: int = 32,
                     profiler=None, video_stream: int | None = None):
        """Features [T, D] of a video and its finished `VideoReader` (see `prepare` for the whole stage)."""
        holder = _Timings({} if timings is None else timings)
        reader = video.VideoReader(video_path, video_stream)
        obs = Observers([ProfilerObserver(profiler) if profiler is not None else None])
        return self._features(reader, obs, [holder], batch_size), reader

    def compute_curve(self, features, duration_s: float, edit=None) -> tuple[np.ndarray, str]:
        """Event curve from features: the Triton kernel for CUDA tensors, else the numpy reference
        (always with an `edit`, a `curve_edit.CurveEdit`)."""
        length = curves_mod.latent_length(duration_s, self.config.latent_rate)
        fps, rate, k = self.config.curve_fps, self.config.latent_rate, self.config.curve.kernel
        if edit is not None:
            return curves_mod.event_curve(_host(features), length, fps, rate, k, edit), "numpy"
        if not isinstance(features, np.ndarray) and features.device.type == "cuda":
            from v2m.kernels import event_curve as kernel

            if kernel.triton_available():
                import torch

                with torch.cuda.device(features.device):  # Triton launches on the current device (cuda:N)
                    t = torch.tensor([features.shape[0]], device=features.device)
                    out = kernel.event_curves(features[None], t, torch.tensor([length], device=features.device), fps, rate, k)
                log.debug("event curve: triton kernel")
                return out[0, :length].cpu().numpy(), "triton"
            features = features.cpu().numpy()
            log.info("event curve: numpy reference (triton not available)")
        elif not isinstance(features, np.ndarray):
            features = features.cpu().numpy()
        return curves_mod.event_curve(np.asarray(features), length, fps, rate, k), "numpy"

    def curve(self, video_path: str | Path, video_stream: int | None = None, edit=None) -> CurveResult:
        """The event curve of a video, at the latent frame rate (`edit`: a `curve_edit.CurveEdit`)."""
        holder = _Timings({})
        obs = Observers()
        reader = video.VideoReader(video_path, video_stream)
        features = self._features(reader, obs, [holder])
        with obs.stage("curve", [holder]):
            c, impl = self.compute_curve(features, reader.duration_s, edit)
        return CurveResult(c, reader.duration_s, int(features.shape[0]), self.config.curve_fps, self.config.latent_rate,
                           impl, holder.timings)

    def encode_text(self, prompt: str, text_embeddings: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        enc = PrecomputedText(text_embeddings, dim=self.config.text_dim) if text_embeddings else self.text_encoder
        emb, mask = enc.encode(prompt)
        return emb, mask

    def encode_prompts(
        self, prompt: str, negative_prompt: str | None = None, text_embeddings: str | Path | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(emb [S, E], mask [S], negative emb or None, negative mask or None)."""
        if text_embeddings and negative_prompt:
            raise InputError("--negative-prompt needs a text encoder; with --text-embeddings precompute the "
                             "negative prompt too (not supported) or drop one of the two")
        emb, mask = self.encode_text(prompt, text_embeddings)
        if negative_prompt is None:
            return emb, mask, None, None
        neg, neg_mask = self.text_encoder.encode(negative_prompt)
        return emb, mask, neg, neg_mask

    def sampler_options(self, steps: int | None = None, cfg_scale: float | None = None, solver: str | None = None,
                        shift: float | None = None, use_curve: bool = True,
                        curve_guidance: float | None = None) -> sampler.SamplerOptions:
        """The sampler options of a generation: the given values, else the bundle's defaults.
        Raises InputError (one line) for a bad value."""
        req = Request(steps=steps, cfg_scale=cfg_scale, solver=solver, shift=shift, use_curve=use_curve,
                      curve_guidance=curve_guidance)
        return req.options(self.config.sampler)

    def plan(self, opts: sampler.SamplerOptions, has_negative: bool = False) -> sampler.Plan:
        """The sampler plan (guidance branches and weights, solver table) of `opts` for this bundle:
        its family's time grid or noise schedule and model convention (`v2m.families`). A solver
        that does not fit the model is an InputError."""
        fam = families.of(self.config)
        try:
            return sampler.Plan.make(opts, self.config.sampler.uncond_keeps_curve, has_negative,
                                     sigmas=fam.sigmas(self.config), objective=fam.objective(self.config))
        except ValueError as e:
            raise InputError(f"{e} (this is a {fam.kind(self.config)} model)") from None

    def sampling_length(self, length: int) -> int:
        """Latent frames a generation of `length` is sampled at: a fixed-length model (Stable Audio
        Open) generates its own length and the result is cropped; windows take longer videos."""
        return families.of(self.config).sampling_length(self.config, length)

    def initial_noise(self, seed: int, length: int) -> np.ndarray:
        """The seeded initial noise [1, C, L'] of a video of `length` latent frames (L' = `sampling_length`)."""
        return sampler.initial_noise(seed, (1, self.config.latent_channels, self.sampling_length(length)))

    def stage_noise(self, seeds: list[int], plan: sampler.Plan, length: int) -> np.ndarray | None:
        """Per-stage noise [K, B, C, L'] of a noise-injecting solver (None for the others)."""
        if not plan.table.stochastic:
            return None
        k = plan.table.coef.shape[0]
        return sampler.stage_noise(seeds, k, (self.config.latent_channels, self.sampling_length(length)))

    def conditioning(
        self, curve: np.ndarray, emb: np.ndarray, mask: np.ndarray, neg: np.ndarray | None, neg_mask: np.ndarray | None,
        seconds_total: float | list[float],
    ) -> sampler.Conditioning:
        """The sampler's conditioning of B videos: curves [B, L], prompt embeddings [B, S, E] and mask.

        V2M-Zero: as given. Stable Audio Open: the conditioner turns the T5 tokens and the
        seconds values (the clip's duration, `seconds_total`) into cross-attention tokens and
        the global embedding; the negative prompt gets the same seconds. `seconds_total`: one
        value, or one per video.
        """
        curve = np.ascontiguousarray(curve[:, None, :], dtype=np.float32)  # (B, 1, L)
        totals = np.broadcast_to(np.asarray(seconds_total, dtype=np.float64), (emb.shape[0],))
        sec = families.of(self.config).seconds(self.config, totals)  # (B, K), or None: no conditioner
        if sec is None:
            return sampler.Conditioning(curve, emb, mask, neg, neg_mask)
        cross, glob = self.backend.condition(emb, mask, sec)
        ones = np.ones(cross.shape[:2], np.float32)
        neg_cross = None
        if neg is not None:
            neg_cross, _ = self.backend.condition(neg, neg_mask, sec)
        return sampler.Conditioning(curve, cross, ones, neg_cross, None if neg is None else ones, global_cond=glob)

    def sample_latents(
        self, noise: np.ndarray, cond: sampler.Conditioning, plan: sampler.Plan, on_step=None,
        stage_noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """One backend call: latents [B, C, L] for B videos of one latent length L (the curves')
        from their noise [B, C, L'] (`initial_noise`; L' > L for a fixed-length model: the curves
        are padded with zeros and the latents cropped). Not checked for NaN (`sample` is)."""
        length, n = cond.curve.shape[-1], noise.shape[-1]
        if n > length:
            pad = np.zeros((*cond.curve.shape[:2], n - length), np.float32)
            cond = dataclasses.replace(cond, curve=np.concatenate([cond.curve, pad], axis=-1))
        x0 = noise if plan.table.x0_scale == 1.0 else (noise * np.float32(plan.table.x0_scale))
        return self.backend.sample(x0, cond, plan, on_step, stage_noise)[:, :, :length]

    def max_batch(self, plan: sampler.Plan) -> int | None:
        """Videos one backend call may take under `plan` (None: unbounded)."""
        return self.backend.max_batch(plan.guidance.size)

    # --- the three stages -----------------------------------------------------------
    def prepare(self, video_path: str | Path | None, request: Request | None = None, *,
                observers: Observers | None = None, source: media.Source | None = None) -> Prepared:
        """One video's conditioning: the probe, the event curve and the prompt embeddings.

        The prompt and the sampler options are checked first (a bad one fails before the
        video is decoded); the video is probed once (its `VideoInfo` is kept; `source`: a
        `media.inspect` of it made earlier, not repeated) and decoded once.
        """
        req = request or Request()
        obs = observers or Observers()
        cfg = self.config
        if (video_path is None) != (req.duration is not None):
            raise InputError("give a video, or a duration (--duration) for music without a video, not both"
                             if video_path is not None else "music without a video needs a duration (--duration SECONDS)")
        p = Prepared(request=req, options=req.options(cfg.sampler), seed=sampler.resolve_seed(req.seed),
                     video=None if video_path is None else Path(video_path), info=None, duration_s=0.0, curve=np.zeros(0, np.float32),
                     curve_frames=0, curve_impl="none", emb=np.zeros((0, 0), np.float32), mask=np.zeros(0, np.float32))
        self._encode_request(p, obs)
        p.source = source
        if video_path is None:
            self._prepare_without_video(p, obs)
        elif cfg.has_curve_channel:
            reader = video.VideoReader(video_path, req.video_stream, None if source is None else source.info)
            p.info = reader.info
            features = self._features(reader, obs, [p])
            p.packet_log = reader.packet_log
            p.duration_s, p.curve_frames, p.lost_s = reader.duration_s, int(features.shape[0]), reader.damage.lost_s
            with obs.stage("curve", [p]):
                p.dissim = curves_mod.dissimilarity(_host(features))  # kept: a variant may edit the curve
                p.curve, p.curve_impl = self.compute_curve(features, reader.duration_s, req.curve_edit())
            del features
        else:  # the model takes no curve: the video only sets the duration
            p.info = source.info if source is not None else video.probe(video_path, req.video_stream)
            p.duration_s = p.info.duration_s
            p.curve = np.zeros(curves_mod.latent_length(p.duration_s, cfg.latent_rate), np.float32)
            log.info("this model has no curve channel: the video sets the duration only")
        p.windowed = p.length > cfg.sampler.max_frames
        if req.loop:
            loops.margin(p.length, cfg.sampler.max_frames)  # too long to loop: fails here
        if p.windowed:
            log.info("video is %.1f s, longer than the %.1f s the model was trained on; generating it in "
                     "overlapping windows", p.duration_s, cfg.max_seconds)
        return p

    def _prepare_without_video(self, p: Prepared, obs: Observers) -> None:
        """Music of `request.duration` seconds: the curve is flat (all-zero dissimilarities at the
        curve rate) unless the request edits it (hits, a given curve)."""
        cfg = self.config
        p.duration_s = float(p.request.duration)
        p.dissim = np.zeros(max(1, round(p.duration_s * cfg.curve_fps)) if cfg.has_curve_channel else 0)
        with obs.stage("curve", [p]):  # no curve channel: an empty d is a flat curve, edits or not
            p.curve, p.curve_impl = self._edited_curve(p), "numpy"

    def _edited_curve(self, p: Prepared) -> np.ndarray:
        """The curve of `p.dissim` with `p.request`'s edits (numpy: the one curve definition)."""
        cfg = self.config
        length = curves_mod.latent_length(p.duration_s, cfg.latent_rate)
        return curves_mod.curve_from_dissimilarity(p.dissim, length, cfg.curve_fps, cfg.latent_rate, cfg.curve.kernel,
                                                   p.request.curve_edit())

    def _encode_request(self, p: Prepared, obs: Observers) -> None:
        """The prompt embeddings of `p.request` (and a plan check: a solver that does not fit fails here)."""
        req = p.request
        with obs.stage("text", [p]):
            p.emb, p.mask, p.neg, p.neg_mask = self.encode_prompts(req.prompt, req.negative_prompt, req.text_embeddings)
        self.plan(p.options, p.neg is not None)

    def variant(self, prepared: Prepared, observers: Observers | None = None, **changes: Any) -> Prepared:
        """The same video with another request (`Request` fields: seed, prompt, use_curve...):
        the video's decode, encode and curve are reused; the prompt is encoded again if it changed."""
        req = prepared.request.replace(**changes)
        if req.video_stream != prepared.request.video_stream:
            raise InputError("a variant reuses the prepared video stream; prepare the video again for another stream")
        if req.duration != prepared.request.duration:
            raise InputError("a variant keeps the prepared duration; prepare again for another length")
        p = dataclasses.replace(prepared, request=req, options=req.options(self.config.sampler),
                                seed=sampler.resolve_seed(req.seed), timings={}, info_extra={})
        if req.curve_edit() != prepared.request.curve_edit() and p.dissim is not None and self.config.has_curve_channel:
            p.curve, p.curve_impl = self._edited_curve(p), "numpy"  # the kept dissimilarities, edited anew
        if req.loop:
            loops.margin(p.length, self.config.sampler.max_frames)
        text_fields = ("prompt", "negative_prompt", "text_embeddings")
        if any(getattr(req, k) != getattr(prepared.request, k) for k in text_fields):
            self._encode_request(p, observers or Observers())
        else:
            self.plan(p.options, p.neg is not None)
        return p

    def sample(self, items: Sequence[Prepared], observers: Observers | None = None) -> list[Sampled | BaseException]:
        """Latents for every item, in order: a `Sampled`, or the exception that failed it.

        Compatible items (`Prepared.group_key`) are sampled together in chunks of at most the
        engine's batch, in input order; a windowed item alone. An exception that is not about
        one item (a cancelled group, an interrupt) propagates.
        """
        obs = observers or Observers()
        out: list[Sampled | BaseException | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(p.group_key(), []).append(i)
        for idx in groups.values():
            first = items[idx[0]]
            plan = self.plan(first.options, first.neg is not None)
            size = self.max_batch(plan) or len(idx)
            for k in range(0, len(idx), size):
                chunk = idx[k : k + size]
                group = [items[i] for i in chunk]
                run = self._sample_windows if first.windowed else self._sample_group
                for i, r in zip(chunk, run(group, plan, obs)):
                    out[i] = r
        return out  # type: ignore[return-value]

    def _sample_group(self, group: list[Prepared], plan: sampler.Plan, obs: Observers) -> list[Sampled | BaseException]:
        """B items of one latent length in one backend call, each from its own seed's noise."""
        length = group[0].length
        seeds = [p.seed for p in group]
        has_neg = group[0].neg is not None
        # A loop: L + m frames, the last m the circular continuation of the first (curve and noise), folded back
        m = loops.margin(length, self.config.sampler.max_frames) if group[0].request.loop else 0
        obs.begin("sample", group)
        try:
            with obs.stage("text", group):  # the conditioner, where the model has one
                cond = self.conditioning(
                    loops.extend(np.stack([p.curve for p in group]), m), np.stack([p.emb for p in group]),
                    np.stack([p.mask for p in group]), np.stack([p.neg for p in group]) if has_neg else None,
                    np.stack([p.neg_mask for p in group]) if has_neg else None, [p.duration_s for p in group],
                )
            noise = np.concatenate([self.initial_noise(s, length + m) for s in seeds])  # each video from its own seed
            stage_noise = self.stage_noise(seeds, plan, length + m)
            if m:
                noise = loops.wrap(noise, length, m)
                stage_noise = None if stage_noise is None else loops.wrap(stage_noise, length, m)
            with obs.stage("sampler", group, self.backend.synchronize):
                latents = self.sample_latents(noise, cond, plan, obs.step, stage_noise)
            if m:
                latents = loops.fold(latents, length, m)
        except Exception as e:  # noqa: BLE001 - every item of the group gets it
            obs.end("sample", 0.0, group, e)
            return [e] * len(group)
        obs.end("sample", 0.0, group)
        return [_checked(Sampled(latents[i], None, len(group))) for i in range(len(group))]

    def _sample_windows(self, group: list[Prepared], plan: sampler.Plan, obs: Observers) -> list[Sampled | BaseException]:
        """A video longer than `max_frames`, alone, in overlapping windows (see `windows`).

        Each window gets its slice of the whole-video curve and noise, so the result depends
        only on the seed; `render` decodes each window's own latents and crossfades them.
        """
        (p,) = group
        cfg = self.config
        length = p.length
        plan_w = windows.plan_windows(
            length, cfg.sampler.max_frames, windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap)
        )
        log.info("%d windows of %d latent frames over %d", len(plan_w), cfg.sampler.max_frames, length)
        obs.begin("sample", group)
        try:
            with obs.stage("text", group):
                cond = self.conditioning(p.curve[None], p.emb[None], p.mask[None],
                                         None if p.neg is None else p.neg[None],
                                         None if p.neg_mask is None else p.neg_mask[None], cfg.max_seconds)
            noise = self.initial_noise(p.seed, length)
            stage_noise = self.stage_noise([p.seed], plan, length)
            latents = np.zeros_like(noise)
            parts = []
            for w in plan_w:
                part = dataclasses.replace(cond, curve=np.ascontiguousarray(cond.curve[:, :, w.start : w.end]))
                sn = None if stage_noise is None else np.ascontiguousarray(stage_noise[..., w.start : w.end])
                with obs.stage("sampler", group, self.backend.synchronize):
                    lat = self.sample_latents(np.ascontiguousarray(noise[:, :, w.start : w.end]), part, plan, obs.step, sn)
                latents[:, :, w.start : w.end] = lat
                parts.append((w, lat[0]))
        except Exception as e:  # noqa: BLE001
            obs.end("sample", 0.0, group, e)
            return [e]
        obs.end("sample", 0.0, group)
        return [_checked(Sampled(latents[0], parts, 1))]

    def render(self, prepared: Prepared, sampled: Sampled, observers: Observers | None = None) -> np.ndarray:
        """Audio [2, N] of one sampled item: the VAE decode (window by window for a long video,
        crossfaded), fitted to the video's duration (`media.finalize_audio`)."""
        obs = observers or Observers()
        cfg = self.config
        loop = prepared.request.loop
        if sampled.windows is None:  # a loop: decoded with circular context on both sides, cropped
            pad, hop = (min(loops.PAD, prepared.length) if loop else 0), cfg.audio.hop_length
            with obs.stage("vae", [prepared], self.backend.synchronize):
                audio = self.backend.decode(loops.circular_pad(sampled.latents, pad)[None])[0]
            audio = audio[:, pad * hop : (pad + prepared.length) * hop] if loop else audio
        else:
            hop = cfg.audio.hop_length
            audio = None
            for w, lat in sampled.windows:
                with obs.stage("vae", [prepared], self.backend.synchronize):
                    a = self.backend.decode(lat[None])[0]
                if audio is None:
                    audio = np.zeros((a.shape[0], prepared.length * hop), dtype=np.float32)
                windows.overlap_add(audio, a[:, : (w.keep_end - w.start) * hop], w.start * hop, w.fade_in * hop,
                                    w.fade_out * hop)
        fade = 0.0 if loop else cfg.audio.fade_out_s  # a loop's end runs into its start, not into silence
        return media.finalize_audio(audio, prepared.duration_s, cfg.audio.sample_rate, fade)

    def write(self, prepared: Prepared, audio: np.ndarray, output: str | Path,
              observers: Observers | None = None) -> Path:
        """Write `output`: .wav/.flac (the music), or a video container (the source's picture,
        copied or re-encoded per the request, with the music)."""
        obs = observers or Observers()
        rate = self.config.audio.sample_rate
        req = prepared.request
        with obs.stage("write", [prepared]):
            if media.check_output_path(output, prepared.video) == "video":
                if prepared.video is None:
                    raise InputError(f"{output}: a video output needs a source video; write .wav or .flac")
                src = prepared.source
                plan = src.plan if src is not None and src.output == Path(output) else None
                timeline = None
                if prepared.packet_log is not None and (plan is None or plan.stream_index == prepared.info.stream_index):
                    timeline = timeline_of(*prepared.packet_log, prepared.video.name)
                media.mux(prepared.video, audio, rate, output, keep_audio_db=req.keep_audio_db, reencode=req.reencode,
                          video_stream=None if prepared.info is None else prepared.info.stream_index, plan=plan,
                          timeline=timeline)
            else:
                media.write_audio(output, audio, rate)
        return Path(output)

    # --- the three in a row ---------------------------------------------------------
    def generate(
        self,
        video_path: str | Path,
        prompt: str = "",
        seed: int | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        *,
        negative_prompt: str | None = None,
        solver: str | None = None,
        shift: float | None = None,
        use_curve: bool = True,
        curve_guidance: float | None = None,
        text_embeddings: str | Path | None = None,
        video_stream: int | None = None,
        profile_steps: bool = True,
        on_step: Callable[[int], None] | None = None,
        profiler=None,
        request: Request | None = None,
        prepared: Prepared | None = None,
        observers: Observers | None = None,
        source: media.Source | None = None,
    ) -> GenerationResult:
        """Generate music for a video: `prepare`, `sample` and `render` in a row.

        Args:
            video_path: any container/codec FFmpeg reads.
            prompt: text prompt (style, instruments, mood).
            seed: noise seed; None draws one (returned in the result).
            steps, cfg_scale, solver, shift, curve_guidance: the sampler's options (default: the bundle's).
            negative_prompt: text the unconditional branch uses instead of zero embeddings.
            use_curve: False is the text-only baseline (the curve is zeros in every branch).
            text_embeddings: a safetensors file of precomputed embeddings, instead of the prompt.
            video_stream: the container's index of the video stream (None: the default one, see
                `video.select_video_stream`); `result.mux` copies the same stream.
            profile_steps: record per-step latency (`result.step_ms`) when the backend can do so
                without a host sync (device events, or a synchronous CPU engine).
            on_step: called with the step index after each step (progress bars).
            profiler: a `v2m.runtime.profiler.Profiler`; stages and steps are recorded through it.
            request: a `Request` instead of the keywords above (prompt ... video_stream).
            prepared: a `Prepared` of this video to reuse (its request is replaced by this one).
            observers: more observers of the stages and steps.
            source: `media.inspect`'s probe (and mux plan) of this video, made earlier: not repeated.
        """
        req = request or Request(
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, cfg_scale=cfg_scale, solver=solver,
            shift=shift, use_curve=use_curve, curve_guidance=curve_guidance, video_stream=video_stream,
            text_embeddings=None if text_embeddings is None else str(text_embeddings))
        if profiler is None and profile_steps:
            from .profiler import Profiler

            clock = self.backend.step_clock()
            if not clock.needs_sync:  # device events or a synchronous engine: no sync in the loop
                profiler = Profiler(device=self.backend.device, nvtx=False, clock=clock)
        prof_obs = ProfilerObserver(profiler) if profiler is not None else None
        obs = (observers or Observers()).with_(prof_obs, StepCallback(on_step) if on_step is not None else None)
        if profiler is not None:
            profiler.begin_run()
        if prepared is None:
            p = self.prepare(video_path, req, observers=obs, source=source)
        else:
            p = self.variant(prepared, obs, **dataclasses.asdict(req))
        (s,) = self.sample([p], obs)
        if isinstance(s, BaseException):
            raise s
        audio = self.render(p, s, obs)
        return self._result(p, s, audio, prof_obs)

    def _result(self, p: Prepared, s: Sampled, audio: np.ndarray, prof_obs: ProfilerObserver | None) -> GenerationResult:
        cfg, opts = self.config, p.options
        plan = self.plan(opts, p.neg is not None)
        log.info("generated %.2f s of audio (seed %d) in %.2f s", p.duration_s, p.seed, sum(p.timings.values()))
        info = {
            **self.backend.describe(),
            "preset": cfg.preset,
            "steps": opts.steps,
            "cfg_scale": opts.cfg_scale,
            "solver": opts.solver,
            "shift": opts.shift,
            "use_curve": opts.use_curve,
            "curve_guidance": opts.curve_guidance,
            "negative_prompt": p.request.negative_prompt,
            "guidance_branches": [br.name for br in plan.guidance.branches],
            "model_evals_per_step": plan.table.stages,
            "latent_frames": p.length,
            "curve_frames": p.curve_frames,
            "curve_impl": p.curve_impl,
            "step_timer": prof_obs.profiler.step_timer if prof_obs is not None else None,
            "video_stream": None if p.info is None else p.info.stream_index,
            "video_lost_s": round(p.lost_s, 3),
        }
        result = GenerationResult(audio=audio, sample_rate=cfg.audio.sample_rate, curve=p.curve, seed=p.seed,
                                  prompt=p.request.prompt, duration_s=p.duration_s, latents=s.latents, timings=p.timings,
                                  step_ms=prof_obs.step_ms if prof_obs is not None else [], info=info, prepared=p)
        if prof_obs is not None:
            prof_obs.profiler.end_run(p.timings, {**info, "L": p.length, "B": 1, "S": int(p.mask.shape[-1])})
        return result


@dataclasses.dataclass
class _Timings:
    """A stage-time holder for observers outside a `Prepared` (`curve`, `encode_video`)."""

    timings: dict[str, float]


def _host(features) -> np.ndarray:
    """Features as a host numpy array (a device tensor is copied)."""
    return features if isinstance(features, np.ndarray) else features.float().cpu().numpy()


def _checked(s: Sampled) -> Sampled | BaseException:
    """The item's latents, or a NumericalError when they hold NaN/Inf (its companions go on)."""
    return s if np.isfinite(s.latents).all() else NumericalError(NAN_MESSAGE)
