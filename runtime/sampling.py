"""The engine core's `sample` stage: groups, one backend call per group, windows, the NaN check.

`Pipeline` inherits it (`Pipeline.sample`); it needs the pipeline's `config` and `backend`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from v2m import families
from v2m.core.errors import InputError, NumericalError

from . import loops, sampler, windows
from .observers import Observers
from .prepared import Prepared, Sampled

__all__ = ["SamplingStage", "NAN_MESSAGE"]

log = logging.getLogger("v2m.pipeline")

NAN_MESSAGE = "the sampler produced NaN/Inf latents; nothing was written (try --precision fp32)"


class SamplingStage:
    """Sampling of prepared items: plan, conditioning, noise, one backend call per group."""

    config: object
    backend: object

    def plan(self, opts: sampler.SamplerOptions, has_negative: bool = False, null_prompt: bool = False) -> sampler.Plan:
        """The sampler plan (guidance branches and weights, solver table) of `opts` for this bundle:
        its family's time grid or noise schedule and model convention (`v2m.families`). A solver
        that does not fit the model is an InputError. `null_prompt`: see `null_prompt`."""
        fam = families.of(self.config)
        try:
            return sampler.Plan.make(opts, self.config.sampler.uncond_keeps_curve, has_negative,
                                     sigmas=fam.sigmas(self.config), objective=fam.objective(self.config),
                                     null_prompt=null_prompt)
        except ValueError as e:
            raise InputError(f"{e} (this is a {fam.kind(self.config)} model)") from None

    def plan_of(self, p: Prepared) -> sampler.Plan:
        """The plan of one prepared item (its options, negative prompt and `null_prompt`)."""
        return self.plan(p.options, p.neg is not None, p.null_prompt)

    def null_prompt(self, request) -> bool:
        """True when `request` has no prompt (nor precomputed embeddings) and the bundle conditions
        that on the unconditional branch's zeros (`sampler.empty_prompt == "null"`): the case text
        dropout trained, where the empty string's embedding is one the model never saw."""
        return (self.config.sampler.empty_prompt == "null" and not request.prompt.strip()
                and not request.text_embeddings)

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
        return self.backend.sample(_initial_state(noise, plan), cond, plan, on_step, stage_noise)[:, :, :length]

    def max_batch(self, plan: sampler.Plan) -> int | None:
        """Videos one backend call may take under `plan` (None: unbounded)."""
        return self.backend.max_batch(plan.guidance.size)

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
            plan = self.plan_of(first)
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
        `sampler.window_mode` "joint" samples the windows together (`_joint_windows`), where the
        solver allows it (one without state across steps); "separate" samples each alone.
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
            if cfg.sampler.window_mode == "joint" and plan.table.steps_independent and noise.shape[-1] == length:
                latents = self._joint_windows(noise, stage_noise, cond, plan, plan_w, obs, group)
                obs.end("sample", 0.0, group)
                return [_checked(Sampled(latents[0], [(w, latents[0, :, w.start : w.end]) for w in plan_w], 1))]
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

    def _joint_windows(self, noise: np.ndarray, stage_noise: np.ndarray | None, cond: sampler.Conditioning,
                       plan: sampler.Plan, plan_w: list, obs: Observers, group: list[Prepared]) -> np.ndarray:
        """Latents [1, C, L] of one long video, its windows sampled jointly (MultiDiffusion, Bar-Tal
        et al. 2023): one state x over all L frames; each step, every window takes that step from its
        slice of x (the windows batched into one backend call, `Plan.step_plan`), and x becomes the
        weighted mean of the windows' results over each frame (`windows.blend_weights`). Overlapping
        windows so agree on the music where they meet, where windows sampled alone each make their
        own. Costs the same model evaluations as separate windows, in one backend call per step
        (and chunk of the engine's batch). Engines that keep per-schedule state (ONNX Runtime's and
        TensorRT's bindings, captured CUDA graphs) set up each step's one-step table anew: the mode
        is for long-video quality, not speed."""
        spans = [(w.start, w.end) for w in plan_w]
        weights = windows.blend_weights(plan_w)
        total = np.zeros(noise.shape[-1], np.float64)
        for (a, b), wt in zip(spans, weights):
            total[a:b] += wt
        # the windows in chunks of the engine's batch, each chunk's conditioning made once
        size = self.max_batch(plan) or len(spans)
        chunks = []
        for c in range(0, len(spans), size):
            idx = range(c, min(c + size, len(spans)))
            shared = [None if v is None else np.repeat(v, len(idx), axis=0) for v in (
                cond.text, cond.text_mask, cond.negative_text, cond.negative_mask, cond.global_cond)]
            curve = np.concatenate([cond.curve[:, :, spans[i][0] : spans[i][1]] for i in idx])  # (windows, 1, M)
            chunks.append((idx, sampler.Conditioning(curve, *shared)))
        x = _initial_state(noise, plan)
        with obs.stage("sampler", group, self.backend.synchronize):
            for k in range(plan.steps):
                step = plan.step_plan(k)
                acc = np.zeros(x.shape, np.float64)
                for idx, part in chunks:
                    xb = np.ascontiguousarray(np.concatenate([x[:, :, spans[i][0] : spans[i][1]] for i in idx]))
                    sn = None
                    if stage_noise is not None:
                        rows = stage_noise[plan.table.step_rows(k)]  # (stages, 1, C, L)
                        sn = np.ascontiguousarray(np.concatenate([rows[..., spans[i][0] : spans[i][1]] for i in idx],
                                                                 axis=1))  # (stages, windows, C, M)
                    out = self.backend.sample(xb, part, step, None, sn)
                    for j, i in enumerate(idx):
                        a, b = spans[i]
                        acc[0, :, a:b] += out[j] * weights[i]
                x = (acc / total).astype(np.float32)
                obs.step(k)
        return x


def _initial_state(noise: np.ndarray, plan: sampler.Plan) -> np.ndarray:
    """The sampler's initial state: the noise scaled by the table's `x0_scale` (v-diffusion starts
    at sigma_max)."""
    return noise if plan.table.x0_scale == 1.0 else noise * np.float32(plan.table.x0_scale)


def _checked(s: Sampled) -> Sampled | BaseException:
    """The item's latents, or a NumericalError when they hold NaN/Inf (its companions go on)."""
    return s if np.isfinite(s.latents).all() else NumericalError(NAN_MESSAGE)
