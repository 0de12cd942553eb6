"""Music event curves: STFT and mel filterbank against plain loops and librosa, analytic changes, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from v2m.cli.main import main
from v2m.core import curves
from v2m.runtime import music

SR = 44100
RATE = SR / 3584


def test_stft_power_matches_a_plain_dft():
    """Frame t is centred on sample t * hop of the zero-padded signal; a direct DFT sum per frame."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300)
    n_fft, hop = 64, 16
    got = music.stft_power(x, n_fft, hop)
    xp = np.concatenate([np.zeros(n_fft // 2), x, np.zeros(n_fft // 2)])
    window = [0.5 - 0.5 * np.cos(2 * np.pi * m / n_fft) for m in range(n_fft)]
    assert got.shape == (300 // hop + 1, n_fft // 2 + 1)
    for t in (0, 7, got.shape[0] - 1):
        for k in (0, 5, n_fft // 2):
            acc = sum(xp[t * hop + m] * window[m] * np.exp(-2j * np.pi * k * m / n_fft) for m in range(n_fft))
            assert got[t, k] == pytest.approx(abs(acc) ** 2, rel=1e-9, abs=1e-9)


def test_mel_filterbank_triangles():
    """Peaks of 1 at the mel-spaced centres, zero outside each triangle, HTK mel scale round trip."""
    fb = music.mel_filterbank(SR, 2048, 10, 30.0, 16000.0)
    assert fb.shape == (10, 1025) and fb.min() >= 0 and fb.max() <= 1 + 1e-12
    edges = music.mel_to_hz(np.linspace(music.hz_to_mel(30.0), music.hz_to_mel(16000.0), 12))
    freqs = np.arange(1025) * SR / 2048
    for m in range(10):
        inside = (freqs > edges[m]) & (freqs < edges[m + 2])
        assert np.all(fb[m, ~inside] == 0)
        k = int(np.argmin(np.abs(freqs - edges[m + 1])))  # the bin nearest the centre is near the top
        assert fb[m, k] > 1 - SR / 2048 / (edges[m + 2] - edges[m + 1]) - 1e-9
    np.testing.assert_allclose(music.mel_to_hz(music.hz_to_mel([0.0, 700.0, 8000.0])), [0.0, 700.0, 8000.0])


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=48, fmin=30.0, fmax=16000.0, htk=True, norm=None)
    np.testing.assert_allclose(music.mel_filterbank(SR, 2048, 48, 30.0, 16000.0), ref, atol=2e-6)


def test_box_mean_against_a_loop():
    x = np.random.default_rng(1).standard_normal((23, 3))
    for width in (1, 2, 5, 8):
        got = music.box_mean(x, width)
        for t in range(23):
            lo, hi = max(t - width // 2, 0), min(t + width - width // 2, 23)
            np.testing.assert_allclose(got[t], x[lo:hi].mean(axis=0) if width > 1 else x[t], atol=1e-12)


def _tone_switch(t_switch: float, duration: float = 6.0, sr: int = SR) -> np.ndarray:
    """A chord that changes at t_switch (A minor -> F major), with a steady click track over it."""
    t = np.arange(int(duration * sr)) / sr
    a = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.6, 329.6))
    b = sum(np.sin(2 * np.pi * f * t) for f in (174.6, 220.0, 349.2, 523.3))
    x = np.where(t < t_switch, a, b) * 0.2
    clicks = np.zeros_like(t)
    clicks[:: sr // 2] = 1.0  # a click every 0.5 s: steady, should not make peaks
    return np.stack([x + 0.3 * clicks, x - 0.3 * clicks]).astype(np.float32)


@pytest.mark.parametrize("t_switch", [2.0, 3.37])
def test_music_curve_peaks_at_a_change(t_switch):
    audio = _tone_switch(t_switch)
    c = music.music_curve(audio, SR, kernel=11)
    assert c.shape == (curves.latent_length(6.0, RATE),) and c.dtype == np.float32
    assert abs(int(np.argmax(c)) / RATE - t_switch) <= 0.25


def test_music_curve_other_sample_rate():
    """Sizes scale with the rate: 22.05 kHz gives the same curve shape, the peak at the same time."""
    audio = _tone_switch(3.0, sr=22050)
    c = music.music_curve(audio, 22050, kernel=11)
    assert c.size == curves.latent_length(6.0, RATE)
    assert abs(int(np.argmax(c)) / RATE - 3.0) <= 0.25
    assert music.MusicEncoder(22050).fps == pytest.approx(music.MusicEncoder(SR).fps, rel=0.01)


def test_silence_and_short_audio():
    assert (music.music_curve(np.zeros((2, SR)), SR) == 0).all()  # silent: flat, not NaN
    assert music.music_curve(np.zeros((2, 0)), SR, length=5).shape == (5,)
    f = music.MusicEncoder().encode(np.zeros(SR))
    assert np.isfinite(f).all() and (f[:, -1] == 1).all()


def test_spectral_flatness_references():
    """White noise: the flatness of exponential power values, e^-gamma = 0.561; a sine: near 0."""
    noise = np.random.default_rng(2).standard_normal(SR * 2)
    assert np.median(music.spectral_flatness(noise)) == pytest.approx(np.exp(-np.euler_gamma), abs=0.03)
    sine = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    assert np.median(music.spectral_flatness(sine)) < 0.01


def test_curve_cli_on_audio(capsys, tmp_path):
    wav = tmp_path / "m.wav"
    sf.write(wav, _tone_switch(3.0).T, SR)
    assert main(["curve", str(wav), "--json"]) == 0  # --model defaults to the demo bundle's conventions
    data = json.loads(capsys.readouterr().out)
    assert data["encoder"] == "music" and len(data["curve"]) == curves.latent_length(6.0, RATE)
    assert abs(int(np.argmax(data["curve"])) / RATE - 3.0) <= 0.25
    pytest.importorskip("matplotlib")
    png = tmp_path / "m.png"
    assert main(["curve", str(wav), "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000 and "strongest events" in capsys.readouterr().out


def test_curve_cli_bad_audio(capsys, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    assert main(["curve", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("v2m: error:") and len(err.strip().splitlines()) == 1
    assert main(["curve", str(tmp_path / "missing.flac")]) == 2
