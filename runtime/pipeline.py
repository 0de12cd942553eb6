"""The whole path: video -> frames -> features -> event curve -> sampler -> VAE -> audio.

```python
from v2m.runtime import Pipeline
pipe = Pipeline.from_pretrained("tiny-bundle", backend="torch", device="cpu", precision="fp32")
result = pipe.generate("clip.mp4", prompt="warm synth pop", seed=7)
result.mux("clip.mp4", "clip_music.mp4")      # or result.save("music.wav")
```
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import curves as curves_mod
from . import encoders as encoders_mod
from . import media, sampler, video, windows
from .backends import Backend, create_backend
from .bundle import BundleConfig, load_config
from .errors import InputError, NumericalError
from .text import PrecomputedText, TextEncoder, load_text_encoder

__all__ = ["Pipeline", "GenerationResult", "CurveResult"]

log = logging.getLogger("v2m.pipeline")

STAGES = ("decode", "encode", "curve", "text", "sampler", "vae", "write")


@dataclass
class CurveResult:
    curve: np.ndarray  # [L] float32
    duration_s: float
    num_frames: int  # frames sampled at curve_fps
    curve_fps: float
    latent_rate: float
    curve_impl: str  # "numpy" or "triton"
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationResult:
    """What `Pipeline.generate` returns. `audio` is float32 [2, N] at `sample_rate`."""

    audio: np.ndarray
    sample_rate: int
    curve: np.ndarray
    seed: int
    prompt: str
    duration_s: float
    latents: np.ndarray  # [C, L] float32
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    step_ms: list[float] = field(default_factory=list)  # per sampler step (CPU clock or CUDA events)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the audio to .wav or .flac (atomically)."""
        t0 = time.perf_counter()
        kind = media.check_output_path(path)
        if kind == "video":
            raise InputError(f"{path}: saving music to a video needs the source video; use result.mux(video, path)")
        media.write_audio(path, self.audio, self.sample_rate)
        self.timings["write"] = time.perf_counter() - t0
        return Path(path)

    def mux(
        self, video_path: str | Path, path: str | Path, keep_audio_db: float | None = None, reencode: str = "auto"
    ) -> Path:
        """Write `path`: the video stream of `video_path` (the one the music was made for) copied
        bit-for-bit, or re-encoded when the container cannot hold it (see `media.mux`), plus this
        music as AAC."""
        t0 = time.perf_counter()
        media.check_output_path(path, video_path)
        media.mux(video_path, self.audio, self.sample_rate, path, keep_audio_db=keep_audio_db,
                  reencode=reencode, video_stream=self.info.get("video_stream"))
        self.timings["write"] = time.perf_counter() - t0
        return Path(path)


@contextmanager
def _timed(timings: dict[str, float], stage: str, sync: Callable[[], None] | None = None, profiler=None):
    """Add the wall time of the block to `timings[stage]`; also an NVTX/trace range when profiled."""
    rng = profiler.range(stage) if profiler is not None else nullcontext()
    t0 = time.perf_counter()
    try:
        with rng:
            yield
            if sync is not None:
                sync()
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run iterator `it` in a background thread (PyAV decodes without the GIL), `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    th = threading.Thread(target=work, name="v2m-decode", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():  # drain so the worker is not stuck on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(timeout=0.05)


class Pipeline:
    """A loaded bundle on one backend. Build with `Pipeline.from_pretrained`."""

    def __init__(self, bundle_dir: Path, config: BundleConfig, backend: Backend, text_encoder: TextEncoder,
                 encoder: str | None = None):
        self.bundle_dir = bundle_dir
        self.config = config
        self.backend = backend
        self.text_encoder = text_encoder
        # The frame encoder that makes the curve: the bundle's, or a weight-free one asked for.
        self.encoder_config = _encoder_config(config, encoder)
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
            path: bundle directory (`v2m init-model`, or an exported one from `v2m export`).
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
        _encoder_config(cfg, encoder)  # a bad --encoder fails before the backend loads
        be = create_backend(backend, path, cfg, device=device, precision=precision, **backend_options)
        text = load_text_encoder(path, cfg.text, cfg.text_dim, device=be.device)
        log.info("loaded %s (preset %s) on %s", path, cfg.preset, be.describe())
        return cls(path, cfg, be, text, encoder)

    # --- stages ---------------------------------------------------------------------
    def encode_video(
        self, video_path: str | Path, timings: dict[str, float] | None = None, batch_size: int = 32, profiler=None,
        video_stream: int | None = None,
    ):
        """Decode (background thread) and encode (this thread) in batches: features [T, D].
        `video_stream`: the container's index of the video stream (None: see `video.select_video_stream`).

        A weight-free frame encoder (cut, motion) runs here in numpy on the uint8 frames;
        DINOv2 runs in the backend on normalized pixels.
        """
        timings = {} if timings is None else timings
        enc = self.encoder_config
        size = int(enc["input_size"])
        reader = video.VideoReader(video_path, video_stream)
        # each distinct frame once (a video slower than curve_fps repeats frames), with its repeat counts
        batches = _prefetch(reader.sample_runs(self.config.curve_fps, size, batch_size=batch_size))
        feats = []
        t_enc = 0.0
        t_start = time.perf_counter()
        if self.frame_encoder is not None:
            self.frame_encoder.reset()
        for frames, counts in batches:
            t0 = time.perf_counter()
            with profiler.range("encode") if profiler is not None else nullcontext():
                if self.frame_encoder is not None:  # compares consecutive samples: it sees every one
                    feats.append(self.frame_encoder.encode(video.repeat_runs(frames, counts)))
                else:  # per frame: encoded once, its features repeated
                    x = video.normalize(frames, enc["mean"], enc["std"])
                    feats.append(video.repeat_runs(self.backend.encode_frames(x), counts))
            t_enc += time.perf_counter() - t0
        self.backend.synchronize()
        total = time.perf_counter() - t_start
        timings["encode"] = timings.get("encode", 0.0) + t_enc
        timings["decode"] = timings.get("decode", 0.0) + max(total - t_enc, 0.0)  # decode not hidden by encode
        if not feats:
            raise InputError(f"{video_path}: no video frames could be decoded")
        if isinstance(feats[0], np.ndarray):
            features = np.concatenate(feats)
        else:  # device tensors (torch backend on CUDA)
            import torch

            features = torch.cat(feats)
        return features, reader

    def compute_curve(self, features, duration_s: float) -> tuple[np.ndarray, str]:
        """Event curve from features: the Triton kernel for CUDA tensors, else the numpy reference."""
        length = curves_mod.latent_length(duration_s, self.config.latent_rate)
        fps, rate, k = self.config.curve_fps, self.config.latent_rate, self.config.curve.kernel
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

    def curve(self, video_path: str | Path, video_stream: int | None = None) -> CurveResult:
        """The event curve of a video, at the latent frame rate."""
        timings: dict[str, float] = {}
        features, reader = self.encode_video(video_path, timings, video_stream=video_stream)
        with _timed(timings, "curve"):
            c, impl = self.compute_curve(features, reader.duration_s)
        return CurveResult(c, reader.duration_s, int(features.shape[0]), self.config.curve_fps, self.config.latent_rate, impl, timings)

    def encode_text(self, prompt: str, text_embeddings: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        enc = PrecomputedText(text_embeddings, dim=self.config.text_dim) if text_embeddings else self.text_encoder
        emb, mask = enc.encode(prompt)
        return emb, mask

    # --- the main job ----------------------------------------------------------------
    def sampler_options(
        self,
        steps: int | None = None,
        cfg_scale: float | None = None,
        solver: str | None = None,
        shift: float | None = None,
        use_curve: bool = True,
        curve_guidance: float | None = None,
    ) -> sampler.SamplerOptions:
        """The sampler options of a generation: the given values, else the bundle's defaults.
        Raises InputError (one line) for a bad value."""
        d = self.config.sampler
        try:
            return sampler.SamplerOptions(
                steps=d.steps if steps is None else steps,
                cfg_scale=d.cfg_scale if cfg_scale is None else cfg_scale,
                solver=d.solver if solver is None else solver,
                shift=d.shift if shift is None else shift,
                use_curve=use_curve,
                curve_guidance=(d.curve_guidance if use_curve else 0.0) if curve_guidance is None else curve_guidance,
            )
        except ValueError as e:
            raise InputError(str(e)) from None

    def plan(self, opts: sampler.SamplerOptions, has_negative: bool = False) -> sampler.Plan:
        """The sampler plan (guidance branches and weights, solver table) of `opts` for this bundle:
        v2m's rectified flow, or a Stable Audio Open model's sigma-space solvers over its own
        noise schedule. A solver that does not fit the model is an InputError."""
        keeps = self.config.sampler.uncond_keeps_curve
        try:
            if self.config.family == "sao":
                from .sao import sigma_schedule

                sao = self.config.sao_config
                return sampler.Plan.make(opts, keeps, has_negative, sigmas=lambda n: sigma_schedule(sao, n),
                                         objective=sao.objective)
            return sampler.Plan.make(opts, keeps, has_negative)
        except ValueError as e:
            raise InputError(f"{e} (this is a {self._model_kind()} model)") from None

    def _model_kind(self) -> str:
        if self.config.family == "sao":
            return f"Stable Audio Open, {self.config.sao_config.objective!r} objective"
        return "V2M-Zero rectified-flow"

    def sampling_length(self, length: int) -> int:
        """Latent frames a generation of `length` is sampled at: a fixed-length model (Stable Audio
        Open) generates its own length and the result is cropped; windows take longer videos."""
        if self.config.family == "sao":
            return max(length, self.config.sao_config.latent_frames)
        return length

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
        if self.config.family != "sao":
            return sampler.Conditioning(curve, emb, mask, neg, neg_mask)
        from .sao import seconds_values

        totals = np.broadcast_to(np.asarray(seconds_total, dtype=np.float64), (emb.shape[0],))
        names = self.config.sao_config.seconds_names
        sec = np.stack([seconds_values(names, float(t)) for t in totals])  # (B, K)
        cross, glob = self.backend.condition(emb, mask, sec)
        ones = np.ones(cross.shape[:2], np.float32)
        neg_cross = None
        if neg is not None:
            neg_cross, _ = self.backend.condition(neg, neg_mask, sec)
        return sampler.Conditioning(curve, cross, ones, neg_cross, None if neg is None else ones, global_cond=glob)

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

    def sample(
        self, noise: np.ndarray, cond: sampler.Conditioning, plan: sampler.Plan, on_step=None, check_finite: bool = True,
        stage_noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Latents [B, C, L] for B videos of one latent length L (the curves') from their noise
        [B, C, L'] (`initial_noise`; L' > L for a fixed-length model: the curves are padded with
        zeros and the latents cropped); one backend call (the caller keeps B within `max_batch`).
        NaN/Inf is an error unless `check_finite=False` (a batch checks each video on its own)."""
        length, n = cond.curve.shape[-1], noise.shape[-1]
        if n > length:
            pad = np.zeros((*cond.curve.shape[:2], n - length), np.float32)
            cond = dataclasses.replace(cond, curve=np.concatenate([cond.curve, pad], axis=-1))
        x0 = noise if plan.table.x0_scale == 1.0 else (noise * np.float32(plan.table.x0_scale))
        latents = self.backend.sample(x0, cond, plan, on_step, stage_noise)[:, :, :length]
        if check_finite and not np.isfinite(latents).all():
            raise NumericalError("the sampler produced NaN/Inf latents; nothing was written (try --precision fp32)")
        return latents

    def max_batch(self, plan: sampler.Plan) -> int | None:
        """Videos one `sample` call may take under `plan` (None: unbounded)."""
        return self.backend.max_batch(plan.guidance.size)

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
    ) -> GenerationResult:
        """Generate music for a video.

        Args:
            video_path: any container/codec FFmpeg reads.
            prompt: text prompt (style, instruments, mood).
            seed: noise seed; None draws one (returned in the result).
            steps: solver steps (default: the bundle's, 96).
            cfg_scale: classifier-free guidance weight on the text (default: the bundle's).
            negative_prompt: text the unconditional branch uses instead of zero embeddings.
            solver: "euler" or "heun" (default: the bundle's, euler).
            shift: SD3 timestep shift S > 0 (default: the bundle's, 1 = none).
            use_curve: False is the text-only baseline (the curve is zeros in every branch).
            curve_guidance: extra guidance weight on the curve (default: the bundle's).
            text_embeddings: a safetensors file of precomputed embeddings, instead of the prompt.
            video_stream: the container's index of the video stream (None: the default one, see
                `video.select_video_stream`); `result.mux` copies the same stream.
            profile_steps: record per-step latency (`result.step_ms`) when the backend can do so
                without a host sync (device events, or a synchronous CPU engine).
            on_step: called with the step index after each step (progress bars).
            profiler: a `v2m.runtime.profiler.Profiler`; stages and steps are recorded through it.
        """
        cfg = self.config
        opts = self.sampler_options(steps, cfg_scale, solver, shift, use_curve, curve_guidance)
        seed = sampler.resolve_seed(seed)
        timings: dict[str, float] = {}
        sync = self.backend.synchronize

        if profiler is None and profile_steps:
            from .profiler import Profiler

            clock = self.backend.step_clock()
            if not clock.needs_sync:  # device events or a synchronous engine: no sync in the loop
                profiler = Profiler(device=self.backend.device, nvtx=False, clock=clock)
        if profiler is not None:
            profiler.begin_run()
        with _timed(timings, "text", None, profiler):  # before the video: a bad prompt option fails fast
            emb, mask, neg, neg_mask = self.encode_prompts(prompt, negative_prompt, text_embeddings)
        plan = self.plan(opts, neg is not None)
        features, reader = self.encode_video(video_path, timings, profiler=profiler, video_stream=video_stream)
        duration = reader.duration_s
        with _timed(timings, "curve", None, profiler):
            curve, curve_impl = self.compute_curve(features, duration)
        length = curve.shape[0]
        if length > cfg.sampler.max_frames:
            log.info(
                "video is %.1f s, longer than the %.1f s the model was trained on; generating it in overlapping windows",
                duration, cfg.max_seconds,
            )
        windowed = length > cfg.sampler.max_frames
        with _timed(timings, "text", None, profiler):  # the conditioner, where the model has one
            cond = self.conditioning(
                curve[None], emb[None], mask[None], None if neg is None else neg[None],
                None if neg_mask is None else neg_mask[None], cfg.max_seconds if windowed else duration,
            )
        noise = self.initial_noise(seed, length)
        stage_noise = self.stage_noise([seed], plan, length)

        def step_hook(i: int) -> None:
            if profiler is not None:
                profiler.step(i)  # a mark per step, read after the loop: no sync here
            if on_step is not None:
                on_step(i)

        step_ms: list[float] = []
        if profiler is not None:
            profiler.begin_steps()
        if windowed:
            latents, audio = self.sample_windows(noise, cond, plan, step_hook, timings, profiler, stage_noise)
        else:
            with _timed(timings, "sampler", sync, profiler):
                latents = self.sample(noise, cond, plan, step_hook, stage_noise=stage_noise)
            if profiler is not None:
                step_ms = profiler.end_steps()
            with _timed(timings, "vae", sync, profiler):
                audio = self.backend.decode(latents)[0]
        if profiler is not None and windowed:
            step_ms = profiler.end_steps()
        audio = media.finalize_audio(audio, duration, cfg.audio.sample_rate, cfg.audio.fade_out_s)
        log.info("generated %.2f s of audio (seed %d) in %.2f s", duration, seed, sum(timings.values()))
        result = GenerationResult(
            audio=audio,
            sample_rate=cfg.audio.sample_rate,
            curve=curve,
            seed=seed,
            prompt=prompt,
            duration_s=duration,
            latents=latents[0],
            timings=timings,
            step_ms=step_ms,
            info={
                **self.backend.describe(),
                "preset": cfg.preset,
                "steps": opts.steps,
                "cfg_scale": opts.cfg_scale,
                "solver": opts.solver,
                "shift": opts.shift,
                "use_curve": opts.use_curve,
                "curve_guidance": opts.curve_guidance,
                "negative_prompt": negative_prompt,
                "guidance_branches": [br.name for br in plan.guidance.branches],
                "model_evals_per_step": plan.table.stages,
                "latent_frames": length,
                "curve_frames": int(features.shape[0]),
                "curve_impl": curve_impl,
                "step_timer": profiler.step_timer if profiler is not None else None,
                "video_stream": reader.info.stream_index,
                "video_lost_s": round(reader.damage.lost_s, 3),
            },
        )
        if profiler is not None:
            profiler.end_run(timings, {
                **result.info, "L": length, "B": int(noise.shape[0]), "S": int(mask.shape[-1]),
            })
        return result

    def sample_windows(
        self, noise, cond: sampler.Conditioning, plan: sampler.Plan, on_step=None, timings=None, profiler=None,
        stage_noise: np.ndarray | None = None,
    ):
        """Sample and decode a video longer than `max_frames` in overlapping windows (see `windows`).

        Each window gets its slice of the whole-video curve and noise, so the result
        depends only on the seed; its latents are decoded at once and crossfaded into
        the output, so memory holds one window's latents plus the final audio.

        Args:
            noise: [1, C, L] whole-video noise.
            cond: the whole video's conditioning (curve [1, 1, L]).
            plan, on_step: as for `Pipeline.sample`.
            stage_noise: [K, 1, C, L] whole-video stage noise of a noise-injecting solver, or None.

        Returns:
            latents [1, C, L] (each frame from the last window that sampled it) and audio [2, L * hop].
        """
        cfg = self.config
        timings = {} if timings is None else timings
        sync = self.backend.synchronize
        hop = cfg.audio.hop_length
        length = cond.curve.shape[-1]
        plan_w = windows.plan_windows(
            length, cfg.sampler.max_frames, windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap)
        )
        log.info("%d windows of %d latent frames over %d", len(plan_w), cfg.sampler.max_frames, length)
        latents = np.zeros_like(noise)
        audio = None
        for w in plan_w:
            part = dataclasses.replace(cond, curve=np.ascontiguousarray(cond.curve[:, :, w.start : w.end]))
            with _timed(timings, "sampler", sync, profiler):
                sn = None if stage_noise is None else np.ascontiguousarray(stage_noise[..., w.start : w.end])
                lat = self.sample(np.ascontiguousarray(noise[:, :, w.start : w.end]), part, plan, on_step, stage_noise=sn)
            latents[:, :, w.start : w.end] = lat
            with _timed(timings, "vae", sync, profiler):
                a = self.backend.decode(lat)[0]
            if audio is None:
                audio = np.zeros((a.shape[0], length * hop), dtype=np.float32)
            windows.overlap_add(audio, a[:, : (w.keep_end - w.start) * hop], w.start * hop, w.fade_in * hop, w.fade_out * hop)
        return latents, audio


def _encoder_config(cfg: BundleConfig, kind: str | None) -> dict[str, Any]:
    """The bundle's encoder section, or the default one of a weight-free `kind` asked for instead."""
    own = cfg.encoder.get("kind", "dinov2")
    if kind is None or kind == own:
        return cfg.encoder
    if kind not in encoders_mod.ENCODER_KINDS:
        raise InputError(f"--encoder {kind!r}: choose one of {', '.join(encoders_mod.ENCODER_KINDS)}")
    if kind not in encoders_mod.WEIGHT_FREE:
        raise InputError(f"--encoder {kind}: this bundle has no {kind} weights (its encoder is {own}); "
                         f"use {' or '.join(encoders_mod.WEIGHT_FREE)}")
    return encoders_mod.encoder_config(kind)
