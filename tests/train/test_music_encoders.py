"""Music encoders of the curves: Basic Pitch's activations where they should be, and `v2m curve music.wav`
reproducing a fine-tune's cached curves with the encoder its bundle records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from v2m.cli.main import main
from v2m.runtime.media import write_audio

SR = 44100


def _has_basic_pitch() -> bool:
    from v2m.core.errors import InputError
    from v2m.runtime.music_encoders import basic_pitch_model

    try:
        basic_pitch_model()
        return True
    except InputError:
        return False


needs_bp = pytest.mark.skipif(not _has_basic_pitch(), reason="basic-pitch (nmp.onnx) is not installed")


@needs_bp
def test_basic_pitch_finds_the_notes():
    from v2m.runtime.music_encoders import BasicPitchEncoder

    t = np.arange(int(5.0 * SR)) / SR
    a = 0.3 * np.sin(2 * np.pi * np.where(t < 3.0, 220.0, 440.0) * t)  # A3, then A4 at 3 s
    act = BasicPitchEncoder(SR).activations(np.stack([a, a]).astype(np.float32))
    n22 = int(5.0 * 22050)
    assert act["note"].shape == (int(np.floor(n22 * 86 / 22050)), 88) and act["contour"].shape[1] == 264
    fps = 86
    keys = act["note"].argmax(axis=1)  # key k is 27.5 * 2^(k / 12) Hz: A3 = 36, A4 = 48
    assert np.mean(keys[int(0.5 * fps) : int(2.5 * fps)] == 36) > 0.9
    assert np.mean(keys[int(3.5 * fps) : int(4.8 * fps)] == 48) > 0.9  # past the first window: the join is right


def tiny_hf_audio_model(directory) -> str:
    """A random tiny wav2vec 2.0 (transformers) saved as a local directory."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                      conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    transformers.Wav2Vec2Model(cfg).eval().save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("kind", ["logmel", pytest.param("basic-pitch", marks=needs_bp), "hf"])
def test_v2m_curve_reproduces_the_training_curves(kind, tmp_path, capsys):
    from v2m.core.bundle import load_config
    from v2m.models.bundle import init_bundle
    from v2m.train.finetune import FinetuneConfig, finetune

    encoder = tiny_hf_audio_model(tmp_path / "w2v") if kind == "hf" else kind

    base = init_bundle("tiny", tmp_path / "base", encoder="cut")
    cfg = load_config(base)
    music = tmp_path / "music"
    music.mkdir()
    n = 12 * cfg.audio.hop_length  # one clip of 12 latent frames exactly: its curve is the file's
    rng = np.random.default_rng(0)
    a = (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / SR) * (np.arange(n) > n // 2)
         + 0.01 * rng.standard_normal(n)).astype(np.float32)
    write_audio(music / "clip.wav", np.stack([a, a]), SR)
    tc = FinetuneConfig(steps=1, batch_size=1, warmup=1, clip_seconds=12 / cfg.latent_rate, clips_per_file=1,
                        eval_interval=1, checkpoint_interval=1, eval_clips=1, curve_encoder=encoder)
    bundle = finetune(tmp_path / "run", base, music, tc, workers=1, progress=False)
    assert load_config(bundle).curve.music == kind
    assert (bundle / "music_encoder" / "config.json").is_file() == (kind == "hf")  # the bundle carries it
    shutil.rmtree(tmp_path / "w2v", ignore_errors=True)  # `v2m curve` reads the bundle's copy
    (entry,) = (tmp_path / "run" / "cache" / "clips").glob("*.npz")
    cached = np.load(entry)["curves"][0]
    capsys.readouterr()
    assert main(["curve", str(music / "clip.wav"), "-m", str(bundle), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["music_encoder"] == kind
    np.testing.assert_allclose(shown["curve"], cached, atol=2e-6)
