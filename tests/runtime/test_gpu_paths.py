"""Defects a first GPU run would hit, checked on the CPU with fakes (issue 10).

- no host sync per step for non-torch backends (sync counting with a fake asynchronous backend);
- batch groups respect the engine's profile (a fake backend with a small max_batch);
- cuda:N: Triton launches, torch step clocks and TensorRT's device all use device N (fakes);
- ONNX Runtime runs carry `disable_synchronize_execution_providers`; its CUDA step clock
  syncs (named host_sync) instead of timing enqueues;
- one text length default for encoders and export profiles.

Checked by reading only (they need a GPU): that `torch.cuda.graph` capture in
`torch_fast.FastSampler._capture` runs under `torch.cuda.device(self.device)`, and that
ORT's CUDA graphs replay per `gpu_graph_id`.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

from v2m.runtime import sampler
from v2m.runtime.backends.base import Backend
from v2m.runtime.clocks import StepClock, SyncHostClock


class AsyncFakeBackend(Backend):
    """An engine that returns before its work is done and has no device events."""

    name = "fake"
    device = "cuda:1"

    def __init__(self, cfg, max_videos=None):
        self.cfg, self.max_videos = cfg, max_videos
        self.syncs = 0
        self.calls: list[int] = []

    def encode_frames(self, pixels):
        return np.tile(pixels.mean(axis=(2, 3)), (1, self.cfg.feature_dim // 3 + 1))[:, : self.cfg.feature_dim]

    def sample(self, noise, cond, plan, on_step=None, stage_noise=None):
        assert self.max_videos is None or noise.shape[0] <= self.max_videos
        self.calls.append(noise.shape[0])
        for i in range(plan.steps):
            if on_step:
                on_step(i)
        return noise * 0.5

    def decode(self, latents):
        return np.zeros((latents.shape[0], 2, latents.shape[-1] * self.cfg.audio.hop_length), np.float32)

    def max_batch(self, guidance_size):
        return self.max_videos

    def step_clock(self):
        return SyncHostClock(self.synchronize)

    def synchronize(self):
        self.syncs += 1


@pytest.fixture
def fake_pipe(tiny_bundle):
    from v2m.core.bundle import load_config
    from v2m.runtime.pipeline import Pipeline
    from v2m.runtime.text import load_text_encoder

    def make(max_videos=None):
        cfg = load_config(tiny_bundle)
        be = AsyncFakeBackend(cfg, max_videos)
        return Pipeline(tiny_bundle, cfg, be, load_text_encoder(tiny_bundle, cfg.text, cfg.text_dim))

    return make


def test_no_sync_per_step_for_an_async_backend(fake_pipe, short_video):
    pipe = fake_pipe()
    res = pipe.generate(short_video.path, "x", seed=1, steps=40)
    assert pipe.backend.syncs < 10, f"{pipe.backend.syncs} syncs for 40 steps"  # stage boundaries only
    assert res.step_ms == [] and res.info["step_timer"] is None  # no timing that would need a sync


def test_explicit_profile_of_an_async_backend_says_host_sync(fake_pipe, short_video):
    from v2m.runtime.profiler import Profiler

    pipe = fake_pipe()
    prof = Profiler(device=pipe.backend.device, clock=pipe.backend.step_clock())
    res = pipe.generate(short_video.path, "x", seed=1, steps=12, profiler=prof)
    assert len(res.step_ms) == 12 and prof.report()["step_timer"] == "host_sync"
    assert pipe.backend.syncs >= 12  # asked for: one per step, and the report says so


def test_batch_groups_respect_the_engine(fake_pipe, make_video, tmp_path):
    from v2m import batch
    from v2m.runtime.request import Request

    pipe = fake_pipe(max_videos=2)
    videos = [make_video(f"v{i}.mp4", duration_s=1.0) for i in range(5)]
    jobs = batch.collect_inputs([str(v) for v in videos], tmp_path / "out", seed=3)
    opts = batch.BatchOptions(tmp_path / "out", format="wav", batch_size=8, request=Request(steps=3), progress=False)
    summary = batch.run_batch(pipe, jobs, opts)
    assert summary.count("ok") == 5
    assert pipe.backend.calls == [2, 2, 1]


def test_triton_launches_on_the_tensors_device(monkeypatch):
    import torch

    from v2m.kernels._triton import on_device

    seen = []

    @contextlib.contextmanager
    def fake_device(dev):
        seen.append(str(dev))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    t = types.SimpleNamespace(device=torch.device("cuda:1"))
    with on_device(t):
        pass
    with on_device(torch.zeros(1)):  # CPU: no device switch
        pass
    assert seen == ["cuda:1"]


def test_torch_step_clock_records_on_the_backends_device(monkeypatch):
    import torch

    from v2m.runtime.clocks import TorchCudaClock

    streams = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            streams.append(stream)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {device}")
    TorchCudaClock("cuda:1").mark()
    assert streams == ["stream of cuda:1"]


def test_tensorrt_uses_its_own_device():
    """The backend's CUDA wrapper makes device N current before it creates its stream (engines
    built and run on GPU N, not GPU 0)."""
    from v2m.runtime.backends.trt_backend import _Cuda

    calls = []
    ok = object()

    class Err:
        cudaSuccess = ok

    rt = types.SimpleNamespace(
        cudaError_t=Err,
        cudaSetDevice=lambda i: (calls.append(("set", i)), ok)[1],
        cudaStreamCreate=lambda: (calls.append(("stream",)), (ok, 7))[1],
    )
    cuda = _Cuda(rt, 3)
    assert calls == [("set", 3), ("stream",)] and cuda.stream_handle == 7


def test_ort_runs_do_not_sync_and_its_cuda_clock_says_so(tiny_bundle, tmp_path):
    from v2m.core.bundle import load_config
    from v2m.export.exporter import export_bundle
    from v2m.runtime.backends.ort_backend import OrtBackend

    out = tmp_path / "e"
    export_bundle(tiny_bundle, out, names=("encoder", "vae", "text", "schedule", "step"), check=False)
    be = OrtBackend(out, load_config(out))
    assert be.run_options.get_run_config_entry("disable_synchronize_execution_providers") == "1"
    assert be.step_clock().kind == "perf_counter"  # CPU: runs return when done
    be.device_type = "cuda"
    clock = be.step_clock()
    assert isinstance(clock, StepClock) and clock.kind == "host_sync" and clock.needs_sync


def test_one_text_length_default():
    from v2m.core.bundle import DEFAULT_MAX_TOKENS, text_max_tokens
    from v2m.core.contracts import max_tokens
    from v2m.models.bundle import bundle_config

    assert text_max_tokens({"kind": "hf", "path": "x"}) == DEFAULT_MAX_TOKENS  # the HF encoder's default too
    cfg = bundle_config("tiny")
    cfg.text = {"kind": "hf", "path": "x"}
    assert max_tokens(cfg) == DEFAULT_MAX_TOKENS
    cfg.text = {"kind": "hf", "path": "x", "max_tokens": 77}
    assert max_tokens(cfg) == 77


def test_plan_keys_cover_every_option():
    base = sampler.SamplerOptions(steps=8)
    keys = {sampler.Plan.make(o).table.key for o in (base, sampler.SamplerOptions(steps=8, solver="heun"),
                                                     sampler.SamplerOptions(steps=8, shift=3.0))}
    assert len(keys) == 3
