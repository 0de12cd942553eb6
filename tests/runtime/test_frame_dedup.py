"""A video slower than the curve rate: each distinct frame is encoded once, features repeated.

Oracle: `VideoReader.sample` (one row per sample, repeated frames included) fed to the same
encoder; the encoder's calls are counted with a fake.
"""

import numpy as np
import pytest

from v2m.runtime import video
from v2m.runtime.pipeline import Pipeline

FPS = 8.0  # below the latent rate (12.3 fps): 10 s -> 80 frames for 124 samples


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory):
    from v2m.runtime.synth import make_test_video

    path = tmp_path_factory.mktemp("slow") / "slow.mp4"
    make_test_video(path, duration_s=10.0, fps=FPS, size=(64, 48), cuts=(2.5, 5.0, 7.5))
    return path


@pytest.mark.parametrize("batch_size,max_samples", [(32, None), (5, 7), (1, 1)])
def test_runs_expand_to_the_sampled_frames(slow_video, batch_size, max_samples):
    rate = 44100 / 3584
    ref = np.concatenate(list(video.VideoReader(slow_video).sample(rate, 32, batch_size=16)))
    reader = video.VideoReader(slow_video)
    runs = list(reader.sample_runs(rate, 32, batch_size=batch_size, max_samples=max_samples))
    frames = np.concatenate([f for f, _ in runs])
    counts = np.concatenate([c for _, c in runs])
    assert all(len(f) <= batch_size and c.sum() <= (max_samples or 8 * batch_size) for f, c in runs)
    assert reader.num_samples == len(ref) == counts.sum() == video.num_samples(10.0, rate)
    if max_samples is None:
        assert len(frames) == 80  # every source frame once
    np.testing.assert_array_equal(video.repeat_runs(frames, counts), ref)


class CountingEncoder:
    """Fake frame encoder: features = per-channel means and a pixel checksum; counts frames seen."""

    def __init__(self, backend):
        self.backend, self.frames = backend, 0

    def __call__(self, pixels):
        self.frames += len(pixels)
        return np.stack([pixels.mean(axis=(2, 3)).T, pixels.std(axis=(2, 3)).T]).reshape(-1, len(pixels)).T.copy()


def test_encoder_runs_once_per_distinct_frame(tiny_bundle, slow_video):
    pipe = Pipeline.from_pretrained(tiny_bundle, device="cpu")
    fake = CountingEncoder(pipe.backend)
    pipe.backend.encode_frames = fake
    feats, reader = pipe.encode_video(slow_video)
    assert fake.frames == 80 and feats.shape[0] == reader.num_samples == video.num_samples(10.0, pipe.config.curve_fps)

    enc = pipe.encoder_config
    frames = np.concatenate(list(video.VideoReader(slow_video).sample(pipe.config.curve_fps, int(enc["input_size"]))))
    ref = fake(video.normalize(frames, enc["mean"], enc["std"]))  # every sample encoded, repeats included
    np.testing.assert_array_equal(feats, ref)
    curve, _ = pipe.compute_curve(feats, reader.duration_s)
    ref_curve, _ = pipe.compute_curve(ref, reader.duration_s)
    np.testing.assert_array_equal(curve, ref_curve)


def test_weight_free_encoder_still_sees_every_sample(tiny_bundle, slow_video):
    """The motion encoder compares consecutive samples: it gets the repeated frames as before."""
    from v2m.runtime import encoders

    pipe = Pipeline.from_pretrained(tiny_bundle, device="cpu", encoder="motion")
    feats, reader = pipe.encode_video(slow_video, batch_size=7)
    enc = encoders.make_frame_encoder(pipe.encoder_config)
    size = int(pipe.encoder_config["input_size"])
    ref = np.concatenate([enc.encode(b) for b in video.VideoReader(slow_video).sample(pipe.config.curve_fps, size)])
    assert feats.shape[0] == reader.num_samples == len(ref)
    np.testing.assert_allclose(feats, ref, rtol=1e-6, atol=1e-6)
