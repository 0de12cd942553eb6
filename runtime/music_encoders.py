"""Music encoders for the music event curve: the bundle's `curve.music` names which one made its training curves.

V2M-Zero's curve is `curves.event_curve` of per-frame features; for music the features come
from a music encoder, and the paper found that choice matters most. Two here (numpy and, for
the pretrained one, ONNX Runtime; no torch):

- "logmel" (the default): `v2m.runtime.music.MusicEncoder`, pooled log-mel spectral shape.
- "basic-pitch": Spotify's Basic Pitch (Bittner et al., ICASSP 2022, Apache-2.0), the
  `nmp.onnx` polyphonic transcription network shipped inside the `basic-pitch` wheel
  (`pip install --no-deps basic-pitch`: its metadata pulls tensorflow, which is not needed).
  Audio at 22.05 kHz mono in windows of 43844 samples overlapping by 30 frames, exactly as
  `basic_pitch.inference.run_inference` cuts and joins them; the note and onset activations
  (88 piano keys each, 22050 / 256 = 86.13 frames/s) averaged over `pool_s` and a constant
  column appended (silence is not a zero vector), as the log-mel features are.
- "hf": a local Hugging Face audio-encoder directory (any `AutoModel` with an
  `AutoFeatureExtractor`, e.g. wav2vec 2.0, HuBERT, MERT; transformers and torch, offline),
  its last hidden states pooled the same way. The fine-tune copies the directory into the
  bundle (`music_encoder/`), so the bundle alone reproduces its curves. Its license is the model's.

`music_curve(kind, audio, sr, length, latent_rate, kernel)` is what the fine-tune's prepare
stage and `v2m curve music.wav` both call, so a bundle's curves are reproducible from its config.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from v2m.core import curves
from v2m.core.config_schema import MUSIC_ENCODERS
from v2m.core.errors import InputError

from . import music

__all__ = ["MUSIC_ENCODERS", "BasicPitchEncoder", "HFAudioEncoder", "basic_pitch_model", "music_encoder",
           "music_curve"]

HF_DIR = "music_encoder"  # a bundle's copy of its Hugging Face music encoder
BP_RATE, BP_HOP, BP_WINDOW, BP_OVERLAP = 22050, 256, 2 * 22050 - 256, 30  # Basic Pitch's constants


def basic_pitch_model() -> Path:
    """nmp.onnx: $V2M_BASIC_PITCH_ONNX, else inside an installed `basic_pitch` package (not imported)."""
    env = os.environ.get("V2M_BASIC_PITCH_ONNX")
    if env:
        if not Path(env).is_file():
            raise InputError(f"V2M_BASIC_PITCH_ONNX={env}: no such file")
        return Path(env)
    spec = importlib.util.find_spec("basic_pitch")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "saved_models" / "icassp_2022" / "nmp.onnx"
        if p.is_file():
            return p
    raise InputError("the basic-pitch music encoder needs Basic Pitch's nmp.onnx: `pip install --no-deps basic-pitch` "
                     "(or set V2M_BASIC_PITCH_ONNX to the file)")


class BasicPitchEncoder:
    """Basic Pitch activations: `encode(audio [C, N] at sample_rate) -> [T, 177]` at `fps` (86.13)."""

    kind = "basic-pitch"
    fps = BP_RATE / BP_HOP

    def __init__(self, sample_rate: int = 44100, pool_s: float = 0.5, model: str | Path | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("the basic-pitch music encoder runs on ONNX Runtime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model or basic_pitch_model()), opts, providers=["CPUExecutionProvider"])
        self.sample_rate, self.pool_s = int(sample_rate), float(pool_s)

    def activations(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """note, onset [T, 88] and contour [T, 264] of the whole clip (Basic Pitch's windowing)."""
        from .media import _resample

        x = np.asarray(audio, np.float32)
        x = x[None] if x.ndim == 1 else x
        stereo = np.repeat(x, 2, axis=0) if x.shape[0] == 1 else x[:2]
        mono = _resample(np.ascontiguousarray(stereo), self.sample_rate, BP_RATE).mean(axis=0)  # (N',) at 22.05 kHz
        n = mono.shape[0]
        olap = BP_OVERLAP * BP_HOP
        padded = np.concatenate([np.zeros(olap // 2, np.float32), mono])
        hop = BP_WINDOW - olap
        windows = [np.pad(padded[i : i + BP_WINDOW], (0, max(0, BP_WINDOW - len(padded[i : i + BP_WINDOW]))))
                   for i in range(0, padded.shape[0], hop)]
        names = ["StatefulPartitionedCall:1", "StatefulPartitionedCall:2", "StatefulPartitionedCall:0"]
        outs = [self.session.run(names, {"serving_default_input_2:0": w[None, :, None].astype(np.float32)})
                for w in windows]
        frames = int(np.floor(n * (BP_RATE // BP_HOP) / BP_RATE))  # as Basic Pitch trims (86 frames/s)
        half = BP_OVERLAP // 2
        out = {}
        for j, key in enumerate(("note", "onset", "contour")):
            a = np.concatenate([o[j] for o in outs])[:, half:-half]  # (W, 142, F)
            out[key] = a.reshape(-1, a.shape[-1])[:frames]
        return out

    def encode(self, audio: np.ndarray) -> np.ndarray:
        act = self.activations(audio)
        feats = np.concatenate([act["note"], act["onset"]], axis=1)  # (T, 176)
        pooled = music.box_mean(feats, max(1, int(round(self.pool_s * self.fps))))
        return np.concatenate([pooled, np.full((pooled.shape[0], 1), 0.1)], axis=1).astype(np.float32)


class HFAudioEncoder:
    """A Hugging Face audio encoder's last hidden states: `encode(audio [C, N]) -> [T, D + 1]`; `fps` is
    set by `encode` (frames over the clip's duration: the model's own hop, whatever its conv stack)."""

    kind = "hf"

    def __init__(self, directory: str | Path, sample_rate: int = 44100, pool_s: float = 0.5):
        from v2m.core.errors import require

        require("transformers", what="a Hugging Face music encoder", extra="train")
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        d = Path(directory)
        if not (d / "config.json").is_file():
            raise InputError(f"{d}: not a Hugging Face model directory (no config.json)")
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(str(d), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"{d}: cannot load it as an audio encoder ({str(e).splitlines()[0]})") from None
        self.torch = torch
        self.rate = int(getattr(self.extractor, "sampling_rate", 16000))
        self.sample_rate, self.pool_s = int(sample_rate), float(pool_s)
        self.fps = 50.0  # until the first clip says otherwise

    def encode(self, audio: np.ndarray) -> np.ndarray:
        from .media import _resample

        x = np.asarray(audio, np.float32)
        x = x[None] if x.ndim == 1 else x
        stereo = np.repeat(x, 2, axis=0) if x.shape[0] == 1 else x[:2]
        mono = _resample(np.ascontiguousarray(stereo), self.sample_rate, self.rate).mean(axis=0)
        inputs = self.extractor(mono, sampling_rate=self.rate, return_tensors="pt")
        with self.torch.no_grad():
            h = self.model(**inputs).last_hidden_state[0].float().numpy()  # (T, D)
        self.fps = h.shape[0] * self.rate / max(1, mono.shape[0])
        pooled = music.box_mean(h, max(1, int(round(self.pool_s * self.fps))))
        return np.concatenate([pooled, np.full((pooled.shape[0], 1), 0.1)], axis=1).astype(np.float32)


def music_encoder(kind: str, sample_rate: int, directory: str | Path | None = None):
    """The music encoder `kind` at `sample_rate`; "hf" loads `directory` (a bundle's `music_encoder/`)."""
    if kind == "logmel":
        return music.MusicEncoder(sample_rate)
    if kind == "basic-pitch":
        return BasicPitchEncoder(sample_rate)
    if kind == "hf":
        if directory is None:
            raise InputError("the hf music encoder needs its directory")
        return HFAudioEncoder(directory, sample_rate)
    raise InputError(f"unknown music encoder {kind!r}; choose one of {', '.join(MUSIC_ENCODERS)}")


def music_curve(kind: str, audio: np.ndarray, sample_rate: int, length: int, latent_rate: float, kernel: int,
                encoder=None) -> np.ndarray:
    """The music event curve [length] float32 of `audio` with music encoder `kind` (or a made `encoder`)."""
    if kind == "logmel":
        return music.music_curve(audio, sample_rate, length, latent_rate, kernel)
    enc = encoder or music_encoder(kind, sample_rate)
    if np.asarray(audio).shape[-1] == 0:
        return np.zeros(length, dtype=np.float32)
    return curves.event_curve(enc.encode(audio), length, enc.fps, latent_rate, kernel)
