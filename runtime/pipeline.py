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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core import curves as curves_mod
from v2m.core.bundle import BundleConfig, load_config
from v2m.core.errors import InputError

from . import encoders as encoders_mod
from . import loops, media, sampler, video, windows
from .backends import Backend, create_backend
from .observers import STAGES, Observers, ProfilerObserver, StepCallback
from .prefetch import prefetch
from .prepared import CurveResult, GenerationResult, Prepared, Sampled
from .request import Request
from .sampling import SamplingStage
from .text import PrecomputedText, TextEncoder, load_text_encoder
from .timeline import timeline_of

__all__ = ["Pipeline", "GenerationResult", "CurveResult", "Prepared", "Sampled", "Request", "STAGES"]

log = logging.getLogger("v2m.pipeline")



class Pipeline(SamplingStage):
    """A loaded bundle on one backend. Build with `Pipeline.from_pretrained`."""

    def __init__(self, bundle_dir: Path, config: BundleConfig, backend: Backend, text_encoder: TextEncoder,
                 encoder: str | None = None):
        self.bundle_dir = bundle_dir
        self.config = config
        self.backend = backend
        self.text_encoder = text_encoder
        # The frame encoder that makes the curve: the bundle's, or a weight-free one asked for.
        self.encoder_config = encoders_mod.frame_encoder_config(config, encoder)
        self.curve_std_floor = encoders_mod.curve_std_floor(config, self.encoder_config)
        self.frame_encoder = (encoders_mod.make_frame_encoder(self.encoder_config)
                              if encoders_mod.is_weight_free(self.encoder_config) else None)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        precision: str = "fp32",
        encoder: str | None = None,
        **backend_options: Any,
    ) -> Pipeline:
        """Load a bundle directory.

        Args:
            path: bundle directory (`v2m init-model`, or an exported one from `v2m export`), or "demo".
            backend: torch, onnxruntime (or ort), tensorrt (or trt), or auto (as the CLI: TensorRT
                for an exported bundle on a GPU, PyTorch for a bundle with weights, else ONNX Runtime).
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

    @classmethod
    def load(cls, model: str | Path, backend: str = "auto", device: str = "auto", precision: str | None = None,
             **options: Any) -> Pipeline:
        """`from_pretrained` with `auto` resolved the way the CLI and the server do it: backend and
        device without importing a framework (the CUDA driver says whether there is a GPU, so a
        torch-free install with onnxruntime-gpu or TensorRT uses it), precision fp16 on CUDA and
        fp32 on a CPU; `--backend torch` without PyTorch is one line naming the extra.

        Args:
            model, backend, device, precision: as `from_pretrained` (None precision: the default).
            options: `from_pretrained`'s other keywords (encoder, fast, compile, kernels, ...);
                None values are left out.
        """
        from v2m.core import devices
        from v2m.core.errors import require

        from .backends import resolve_backend, torch_options_asked

        if backend == "torch":
            require("torch", what="--backend torch")
        torch_options = torch_options_asked(options.get("fast"), options.get("compile") or "none",
                                            options.get("kernels") or "torch", options.get("vae_precision"))
        backend, device = resolve_backend(backend, model, device, precision, torch_options)
        devices.check_device(device)  # cuda asked for: a GPU must be visible, before anything loads
        precision = precision or ("fp16" if str(device).startswith("cuda") else "fp32")
        kw = {k: v for k, v in options.items() if v is not None}
        return cls.from_pretrained(model, backend=backend, device=device, precision=precision, **kw)

    # --- building blocks ------------------------------------------------------------
    def _reader(self, video_path, stream: int | None, cancel=None, max_duration_s: float | None = None,
                info=None) -> tuple[video.VideoReader, threading.Event]:
        """A reader whose decode stops when `cancel` is set or its consumer leaves (the returned event)."""
        stop = threading.Event()  # set when `_features` leaves: the decode thread ends at its next frame
        return video.VideoReader(video_path, stream, max_duration_s, video.either(stop, cancel), info=info), stop

    def _features(self, reader: video.VideoReader, stop: threading.Event, obs: Observers, items: Sequence[Any],
                  cancel=None, batch_size: int = 32):
        """Decode (background thread) and encode (this thread) in batches: features [T, D].

        A weight-free frame encoder (cut, motion) runs here in numpy on the uint8 frames;
        DINOv2 runs in the backend on normalized pixels. `cancel` (an Event or a callable) stops
        both at the next frame or batch (`Cancelled`); the decode thread is joined before this returns.
        """
        enc = self.encoder_config
        # each distinct frame once (a video slower than curve_fps repeats frames), with its repeat counts
        batches = prefetch(reader.sample_runs(self.config.curve_fps, int(enc["input_size"]), batch_size=batch_size),
                           stop=stop)
        feats = []
        t_start = time.perf_counter()
        t_enc = 0.0
        if self.frame_encoder is not None:
            self.frame_encoder.reset()
        for frames, counts in batches:
            video.check_cancel(cancel)
            t0 = time.perf_counter()
            with obs.stage("encode", items):
                if self.frame_encoder is not None:  # compares consecutive samples: it sees every one
                    feats.append(self.frame_encoder.encode(video.repeat_runs(frames, counts)))
                else:  # per frame: encoded once, its features repeated
                    x = video.normalize(frames, enc["mean"], enc["std"])
                    feats.append(video.repeat_runs(self.backend.encode_frames(x), counts))
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
                     profiler=None, video_stream: int | None = None, cancel=None, max_duration_s: float | None = None):
        """Features [T, D] of a video and its finished `VideoReader` (see `prepare` for the whole stage;
        `cancel`, `max_duration_s`: see `video.VideoReader`)."""
        holder = _Timings({} if timings is None else timings)
        reader, stop = self._reader(video_path, video_stream, cancel, max_duration_s)
        obs = Observers([ProfilerObserver(profiler) if profiler is not None else None])
        return self._features(reader, stop, obs, [holder], cancel, batch_size), reader

    def compute_curve(self, features, duration_s: float, edit=None) -> tuple[np.ndarray, str]:
        """Event curve from features: the Triton kernel for CUDA tensors, else the numpy reference
        (always with an `edit`, a `curve_edit.CurveEdit`)."""
        length = curves_mod.latent_length(duration_s, self.config.latent_rate)
        fps, rate, k = self.config.curve_fps, self.config.latent_rate, self.config.curve.kernel
        floor = self.curve_std_floor
        if edit is not None:
            return curves_mod.event_curve(_host(features), length, fps, rate, k, edit, floor), "numpy"
        if not isinstance(features, np.ndarray) and features.device.type == "cuda":
            from v2m.kernels import event_curve as kernel

            if kernel.triton_available():
                import torch

                with torch.cuda.device(features.device):  # Triton launches on the current device (cuda:N)
                    t = torch.tensor([features.shape[0]], device=features.device)
                    out = kernel.event_curves(features[None], t, torch.tensor([length], device=features.device), fps, rate, k,
                                              std_floor=floor)
                log.debug("event curve: triton kernel")
                return out[0, :length].cpu().numpy(), "triton"
            features = features.cpu().numpy()
            log.info("event curve: numpy reference (triton not available)")
        elif not isinstance(features, np.ndarray):
            features = features.cpu().numpy()
        return curves_mod.event_curve(np.asarray(features), length, fps, rate, k, std_floor=floor), "numpy"

    def curve(self, video_path: str | Path, video_stream: int | None = None, cancel=None,
              max_duration_s: float | None = None, edit=None) -> CurveResult:
        """The event curve of a video, at the latent frame rate (`cancel`, `max_duration_s`: see
        `prepare`; `edit`: a `curve_edit.CurveEdit`)."""
        holder = _Timings({})
        obs = Observers()
        reader, stop = self._reader(video_path, video_stream, cancel, max_duration_s)
        features = self._features(reader, stop, obs, [holder], cancel)
        with obs.stage("curve", [holder]):
            c, impl = self.compute_curve(features, reader.duration_s, edit)
        return CurveResult(c, reader.duration_s, int(features.shape[0]), self.config.curve_fps, self.config.latent_rate,
                           impl, holder.timings, video_fps=reader.info.fps)

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






    # --- the three stages -----------------------------------------------------------
    def prepare(self, video_path: str | Path | None, request: Request | None = None, *,
                observers: Observers | None = None, source: media.Source | None = None, cancel=None,
                max_duration_s: float | None = None) -> Prepared:
        """One video's conditioning: the probe, the event curve and the prompt embeddings.

        The prompt and the sampler options are checked first (a bad one fails before the
        video is decoded); the video is probed once (its `VideoInfo` is kept; `source`: a
        `media.inspect` of it made earlier, not repeated) and decoded once. `cancel` (an Event
        or a callable) stops the decode and encode (`Cancelled`); a video longer than
        `max_duration_s` is refused (`VideoTooLong`, from the header or, where it lies, the frames).
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
            reader, stop = self._reader(video_path, req.video_stream, cancel, max_duration_s,
                                        None if source is None else source.info)
            p.info = reader.info
            features = self._features(reader, stop, obs, [p], cancel)
            p.packet_log = reader.packet_log
            p.duration_s, p.curve_frames, p.lost_s = reader.duration_s, int(features.shape[0]), reader.damage.lost_s
            with obs.stage("curve", [p]):
                p.dissim = curves_mod.dissimilarity(_host(features))  # kept: a variant may edit the curve
                p.curve, p.curve_impl = self.compute_curve(features, reader.duration_s, req.curve_edit())
            del features
        else:  # the model takes no curve: the video only sets the duration
            p.info = source.info if source is not None else video.probe(video_path, req.video_stream)
            video.check_duration(p.info.duration_s, max_duration_s, Path(video_path).name)
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
        p.null_prompt = self.null_prompt(req)
        self.plan_of(p)

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
            self.plan_of(p)
        return p



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
        max_duration_s: float | None = None,
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
            max_duration_s: refuse a video longer than this (`VideoTooLong`; None: no limit).
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
            p = self.prepare(video_path, req, observers=obs, source=source, max_duration_s=max_duration_s)
        else:
            p = self.variant(prepared, obs, **dataclasses.asdict(req))
        (s,) = self.sample([p], obs)
        if isinstance(s, BaseException):
            raise s
        audio = self.render(p, s, obs)
        return self._result(p, s, audio, prof_obs)

    def _result(self, p: Prepared, s: Sampled, audio: np.ndarray, prof_obs: ProfilerObserver | None) -> GenerationResult:
        cfg, opts = self.config, p.options
        plan = self.plan_of(p)
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


