"""The papers' measures: beat alignment (BCS, BHS, F1), a Frechet distance, prompt and stereo measures.

- Beat alignment (D2M-GAN: Zhu et al., "Quantized GAN for Complex Music Generation
  from Dance Videos", ECCV 2022, arXiv 2204.00604, section 4, "beats coverage" and
  "beats hit", after Dance2Music, Aggarwal and Parikh 2021): with B_k the motion
  (kinematic) beats of the video, B_m the beats of the generated music and B_a the
  motion beats that a music beat hits (|music - motion| <= tolerance),
  BCS = B_m / B_k (beat coverage: above 1 when the music has more beats than the motion)
  and BHS = B_a / B_k (beat hit). F1 = 2 BCS BHS / (BCS + BHS) of the means over
  videos, as LORIS (Yu et al., ICML 2023; its `beats_scores.py`) and the papers after
  it report it. LORIS's code counts beats in 1 s bins and divides hits by the music's
  beats for its "coverage"; v2m keeps D2M-GAN's counts, with a tolerance in seconds.
- Motion beats: the local maxima of the video's motion event curve (the weight-free
  block-matching `motion` frame encoder of `v2m.runtime.encoders`, then
  `core.curves.event_curve`) that rise above the curve's mean (z > 0), at least 4 latent
  frames (0.33 s) apart: where the motion field changes, a dancer's turn or stop.
- Frechet distance (as FID and FAD: Heusel et al. 2017, Kilgour et al. 2019):
  ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between Gaussians fitted to
  per-frame features of two sets of music, pooled over each set's files. Features that
  need no downloaded weights: log-mel (32 bands) and chroma (12 pitch classes) per
  frame of 2048 samples, hop 1024, at 22.05 kHz. Lower is closer; the numbers are not
  comparable with published FAD (VGGish, CLAP) values.
- Prompt measures: tempo (librosa's beat tracker, BPM), spectral centroid (Hz, mean
  over frames) and onset rate (librosa's onset detector, onsets a second).
- Stereo: Pearson's r of left and right, and the level of the mono mix (L + R) / 2
  against the channels' mean power, in dB: 0 dB for identical channels, -3 dB for
  uncorrelated ones of equal power, far below for anti-correlated ones (they cancel).

librosa is the `[eval]` extra and is imported only by the beat, tempo and onset measures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2m.core.errors import V2MError

__all__ = [
    "MissingExtra",
    "require_eval",
    "BeatAlignment",
    "beat_alignment",
    "beat_summary",
    "motion_curve",
    "motion_beats",
    "music_beats",
    "FEATURE_RATE",
    "frame_features",
    "gaussian_stats",
    "frechet_distance",
    "set_frechet",
    "tempo",
    "spectral_centroid",
    "onset_rate",
    "prompt_measures",
    "stereo_measures",
]

log = logging.getLogger("v2m.measures")

FEATURE_RATE = 22050  # Frechet features: audio resampled to this rate
_N_FFT, _HOP, _N_MELS = 2048, 1024, 32


@dataclass(frozen=True)
class BeatAlignment:
    """Counts and scores of one video: music beats, motion beats, motion beats hit; BCS, BHS
    (None without motion beats)."""

    music: int
    motion: int
    hits: int
    bcs: float | None
    bhs: float | None


def beat_alignment(music: Sequence[float], motion: Sequence[float], tolerance: float = 0.1) -> BeatAlignment:
    """BCS = music beats / motion beats, BHS = motion beats with a music beat within `tolerance`
    seconds (inclusive) / motion beats (D2M-GAN's beats coverage and beats hit).

    Args:
        music: beat times of the music, seconds.
        motion: motion (kinematic) beat times of the video, seconds.
        tolerance: the largest |music beat - motion beat| that hits.
    """
    m = np.sort(np.asarray(music, dtype=np.float64).reshape(-1))
    k = np.asarray(motion, dtype=np.float64).reshape(-1)
    if k.size == 0:
        return BeatAlignment(int(m.size), 0, 0, None, None)
    if m.size == 0:
        return BeatAlignment(0, int(k.size), 0, 0.0, 0.0)
    i = np.clip(np.searchsorted(m, k), 0, m.size - 1)
    nearest = np.minimum(np.abs(m[i] - k), np.abs(m[np.maximum(i - 1, 0)] - k))
    hits = int((nearest <= tolerance + 1e-9).sum())
    return BeatAlignment(int(m.size), int(k.size), hits, m.size / k.size, hits / k.size)


def _f1(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def beat_summary(scores: Sequence[BeatAlignment]) -> dict[str, float | None]:
    """Mean BCS and BHS over videos with motion beats, and the F1 of the two means (LORIS)."""
    bcs = [s.bcs for s in scores if s.bcs is not None]
    bhs = [s.bhs for s in scores if s.bhs is not None]
    mb = float(np.mean(bcs)) if bcs else None
    mh = float(np.mean(bhs)) if bhs else None
    return {"bcs": mb, "bhs": mh, "beat_f1": _f1(mb, mh)}


def motion_curve(video: str | Path, latent_rate: float, kernel: int = 15, size: int = 64,
                 grid: int = 8, radius: int = 4) -> np.ndarray:
    """The event curve [L] of the video's motion field (the `motion` frame encoder), at `latent_rate`."""
    from v2m.core.curves import event_curve, latent_length
    from v2m.runtime import video as video_mod
    from v2m.runtime.encoders import MotionEncoder

    reader = video_mod.VideoReader(video)
    enc = MotionEncoder(grid=grid, radius=radius)
    feats = [enc.encode(batch) for batch in reader.sample(latent_rate, size)]
    features = np.concatenate(feats) if feats else np.zeros((0, 2 * grid**2 + 1), np.float32)
    return event_curve(features, latent_length(reader.duration_s, latent_rate), latent_rate, latent_rate, kernel)


def motion_beats(curve: np.ndarray, latent_rate: float, min_distance: int = 4, threshold: float = 0.0) -> np.ndarray:
    """Times (s) of the curve's local maxima above `threshold`, at least `min_distance` frames apart
    (`core.curves.curve_peaks`: the higher of two close maxima wins). The first and last frames
    are not beats: a curve still rising at the end of the video shows no maximum."""
    from v2m.core.curves import curve_peaks

    c = np.asarray(curve, dtype=np.float64)
    peaks = curve_peaks(c, c.size, min_distance)
    keep = (c[peaks] > threshold) & (peaks > 0) & (peaks < c.size - 1)
    return peaks[keep] / latent_rate


class MissingExtra(V2MError):
    """An optional dependency of `v2m eval` is not installed."""


def require_eval(module: str, what: str = "`v2m eval`"):
    """Import `module` or raise one line naming `what` needs it and the [eval] extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module}: pip install 'v2m-runtime[eval]'") from None


def _librosa():
    return require_eval("librosa")


def _mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    return a.mean(axis=0) if a.ndim == 2 else a


def music_beats(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Beat times (s) of audio [N] or [C, N] by librosa's beat tracker."""
    librosa = _librosa()
    _, frames = librosa.beat.beat_track(y=_mono(audio), sr=sample_rate)
    return librosa.frames_to_time(frames, sr=sample_rate)


def tempo(audio: np.ndarray, sample_rate: int) -> float:
    """Tempo (BPM) by librosa's beat tracker."""
    librosa = _librosa()
    bpm, _ = librosa.beat.beat_track(y=_mono(audio), sr=sample_rate)
    return float(np.atleast_1d(bpm)[0])


def onset_rate(audio: np.ndarray, sample_rate: int) -> float:
    """Onsets a second by librosa's onset detector."""
    librosa = _librosa()
    y = _mono(audio)
    onsets = librosa.onset.onset_detect(y=y, sr=sample_rate, units="time")
    return float(len(onsets) / max(y.size / sample_rate, 1e-9))


def spectral_centroid(audio: np.ndarray, sample_rate: int, n_fft: int = 2048, hop: int = 512) -> float:
    """Mean spectral centroid (Hz) over the frames with energy: sum f |X(f)|^2 / sum |X(f)|^2."""
    from v2m.runtime.music import stft_power

    p = stft_power(_mono(audio), n_fft, hop)  # (T, F)
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    total = p.sum(axis=1)
    keep = total > 1e-10 * max(float(total.max(initial=0.0)), 1e-30)
    if not keep.any():
        return 0.0
    return float(np.mean((p[keep] @ f) / total[keep]))


def prompt_measures(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Tempo (BPM), spectral centroid (Hz) and onset rate (a second) of one piece."""
    return {"tempo": tempo(audio, sample_rate), "centroid": spectral_centroid(audio, sample_rate),
            "onset_rate": onset_rate(audio, sample_rate)}


def _resample(audio: np.ndarray, sample_rate: int, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    y = _mono(audio).astype(np.float64)
    if sample_rate == rate:
        return y
    g = gcd(int(sample_rate), int(rate))
    return resample_poly(y, rate // g, sample_rate // g)


def frame_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-frame features [T, 44] of audio [N] or [C, N]: log-mel (32 bands, 30 Hz to 11 kHz,
    log10 of power + 1e-10) and chroma (the power of each pitch class, over 55 Hz to 5 kHz,
    divided by the frame's chroma sum). Frames under -80 dB of the loudest are dropped."""
    from v2m.runtime.music import mel_filterbank, stft_power

    y = _resample(audio, sample_rate, FEATURE_RATE)
    p = stft_power(y, _N_FFT, _HOP)  # (T, F)
    total = p.sum(axis=1)
    p = p[total > 1e-8 * max(float(total.max(initial=0.0)), 1e-30)]
    mel = np.log10(p @ mel_filterbank(FEATURE_RATE, _N_FFT, _N_MELS, 30.0, 11000.0).T + 1e-10)  # (T, 32)
    f = np.fft.rfftfreq(_N_FFT, 1.0 / FEATURE_RATE)
    band = (f >= 55.0) & (f <= 5000.0)
    pitch_class = np.round(12 * np.log2(f[band] / 440.0)).astype(np.int64) % 12  # A = 0
    fold = np.zeros((band.sum(), 12))
    fold[np.arange(band.sum()), pitch_class] = 1.0
    chroma = p[:, band] @ fold  # (T, 12)
    chroma /= np.maximum(chroma.sum(axis=1, keepdims=True), 1e-20)
    return np.concatenate([mel, chroma], axis=1)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (ddof 1, as pytorch-fid) of features [T, D]."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs features [T >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), by scipy.linalg.sqrtm.

    A product whose square root is not finite (near-singular covariances) is retried with
    eps added to both diagonals, as pytorch-fid does; a small imaginary part (rounding)
    is dropped, a large one raises.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched Gaussians: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("Frechet distance: singular product; eps %g added to the covariances' diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, float(np.abs(covmean).max()))):
            raise ValueError(f"Frechet distance: sqrtm has a large imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def set_frechet(generated: Sequence[tuple[np.ndarray, int]], reference: Sequence[tuple[np.ndarray, int]]) -> float:
    """The Frechet distance between two sets of (audio, sample rate): per-frame features pooled per set."""
    if not generated or not reference:
        raise ValueError("a Frechet distance needs music in both sets")
    a = np.concatenate([frame_features(x, sr) for x, sr in generated])
    b = np.concatenate([frame_features(x, sr) for x, sr in reference])
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def stereo_measures(audio: np.ndarray) -> dict[str, float | None]:
    """{"lr_corr": Pearson's r of left and right (None: a silent channel or mono), "mono_db": the
    mono mix's level against the channels' mean power (dB; None for mono or silence)}."""
    a = np.asarray(audio, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != 2 or a.shape[1] < 2:
        return {"lr_corr": None, "mono_db": None}
    left, right = a[0], a[1]
    power = 0.5 * (np.mean(left**2) + np.mean(right**2))
    corr = None if left.std() < 1e-12 or right.std() < 1e-12 else float(np.corrcoef(left, right)[0, 1])
    if power < 1e-20:
        return {"lr_corr": corr, "mono_db": None}
    mono = np.mean((0.5 * (left + right)) ** 2)
    return {"lr_corr": corr, "mono_db": float(10 * np.log10(max(mono, 1e-30) / power))}
