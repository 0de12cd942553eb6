"""How well generated music follows its video: Scene Cut Hit, curve correlation, cut hits, flatness.

- Scene Cut Hit (SCH): for each source video, scene cuts from PySceneDetect's
  ContentDetector, beats of the generated audio from librosa's beat tracker; a cut
  is hit when some beat lies within `tolerance` seconds of it; SCH = hits / cuts.
- Curve correlation: Pearson's r between the output's music event curve
  (`v2m.runtime.music`) and the video's event curve (the bundle's encoder and
  curve settings), both at the latent rate.
- Cut hits: of the k strongest peaks of the output's music curve (k = the number
  of cuts; `curves.curve_peaks`), the fraction of cuts with one within
  `cut_tolerance` seconds (0.25). Peaks of the music curve are where the music
  changes most: its onsets of events.
- Spectral flatness: the median over the output's frames (`music.spectral_flatness`);
  near 0 for tonal music, 1 for white noise.
- Beat alignment, stereo and a Frechet distance (`v2m.eval.measures`): BCS and BHS of
  the output's beats against the video's motion beats (given `motion_fn`), left/right
  correlation and the mono mix's level (dB), and, given `reference`, the Frechet distance
  between the outputs and a folder of reference music over weight-free frame features.

Videos without cuts are reported as n/a and left out of the means. librosa and
scenedetect are the `[eval]` extra, imported only here and only when needed;
tests inject cuts and beats instead. SCH needs both (beats and cuts), cut hits
scenedetect (cuts); curve correlation and flatness need no extra.

```python
from v2m.eval.evaluate import evaluate_folder
report = evaluate_folder("out/", "videos/", tolerance=0.5)
print(report.table())
```
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError

from .measures import MissingExtra, require_eval  # noqa: F401 (their home was here)

__all__ = [
    "scene_cut_hit",
    "curve_correlation",
    "cut_hits",
    "median_flatness",
    "format_side_by_side",
    "plot_music_curve",
    "plot_alignment",
    "detect_cuts",
    "detect_beats",
    "match_outputs",
    "VideoScore",
    "EvalReport",
    "evaluate_folder",
    "reference_files",
    "require_eval",
]

log = logging.getLogger("v2m.evaluate")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi"}
OUTPUT_SUFFIXES = {".wav", ".flac", ".mp4", ".mov", ".mkv", ".m4v"}


def scene_cut_hit(cuts: Sequence[float], beats: Sequence[float], tolerance: float = 0.5) -> tuple[int, int]:
    """(hits, total): cuts with a beat within `tolerance` seconds (inclusive), out of all cuts.

    Args:
        cuts: scene cut times in seconds.
        beats: beat times in seconds.
        tolerance: the largest |beat - cut| that counts as a hit.
    """
    c = np.asarray(cuts, dtype=np.float64).reshape(-1)
    b = np.sort(np.asarray(beats, dtype=np.float64).reshape(-1))
    if c.size == 0:
        return 0, 0
    if b.size == 0:
        return 0, int(c.size)
    i = np.clip(np.searchsorted(b, c), 1, b.size - 1) if b.size > 1 else np.zeros(c.size, dtype=int)
    nearest = np.minimum(np.abs(b[i] - c), np.abs(b[np.maximum(i - 1, 0)] - c))
    return int((nearest <= tolerance + 1e-9).sum()), int(c.size)


def curve_correlation(music: np.ndarray, video: np.ndarray) -> float | None:
    """Pearson's r of two curves over their common length; None if either is constant there."""
    n = min(len(music), len(video))
    a, b = np.asarray(music[:n], np.float64), np.asarray(video[:n], np.float64)
    if n < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def cut_hits(curve: np.ndarray, cuts: Sequence[float], latent_rate: float, tolerance: float = 0.25) -> tuple[int, int]:
    """(hits, cuts): cuts with one of the curve's k strongest peaks (k = len(cuts)) within `tolerance` s.

    Peaks are `curves.curve_peaks` (local maxima, at least 4 latent frames apart) at
    time index / latent_rate.
    """
    from v2m.core.curves import curve_peaks

    c = np.asarray(cuts, dtype=np.float64).reshape(-1)
    if c.size == 0:
        return 0, 0
    peaks = curve_peaks(np.asarray(curve), int(c.size)) / latent_rate
    if peaks.size == 0:
        return 0, int(c.size)
    nearest = np.abs(peaks[None, :] - c[:, None]).min(axis=1)
    return int((nearest <= tolerance + 1e-9).sum()), int(c.size)


def median_flatness(audio: np.ndarray) -> float:
    """Median spectral flatness over the audio's (non-silent) frames."""
    from v2m.runtime.music import spectral_flatness

    f = spectral_flatness(audio)
    return float(np.median(f)) if f.size else 1.0


def detect_cuts(video: str | Path, threshold: float = 27.0) -> list[float]:
    """Scene cut times (s) by PySceneDetect's ContentDetector: the start of every scene but the first."""
    sd = require_eval("scenedetect")
    # PySceneDetect logs every video at INFO on its own logger: shown with -v, as v2m's own
    logging.getLogger("pyscenedetect").setLevel(max(log.getEffectiveLevel(), logging.INFO))
    scenes = sd.detect(str(video), sd.ContentDetector(threshold=threshold))
    return [float(start.seconds if hasattr(type(start), "seconds") else start.get_seconds()) for start, _ in scenes[1:]]


def detect_beats(audio_path: str | Path) -> list[float]:
    """Beat times (s) of an audio file or a video's audio track, by librosa's beat tracker."""
    librosa = require_eval("librosa")
    y, sr = _load_audio(audio_path)
    _, frames = librosa.beat.beat_track(y=y, sr=sr)
    return [float(t) for t in librosa.frames_to_time(frames, sr=sr)]


def _load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 audio of a .wav/.flac, or of a video's first audio stream (PyAV)."""
    p = Path(path)
    if p.suffix.lower() in (".wav", ".flac"):
        import soundfile as sf

        a, sr = sf.read(str(p), dtype="float32", always_2d=True)
        return a.mean(axis=1), int(sr)
    import av

    with av.open(str(p)) as c:
        if not c.streams.audio:
            raise InputError(f"{p.name} has no audio track to evaluate")
        s = c.streams.audio[0]
        chunks = [f.to_ndarray().reshape(f.to_ndarray().shape[0], -1) for f in c.decode(s)]
        sr = s.rate
    a = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    return a.astype(np.float32).mean(axis=0), int(sr)


def match_outputs(outputs: str | Path, videos: str | Path) -> list[tuple[Path, Path]]:
    """(output, source video) pairs matched by file stem (batch names: `a__clip` matches `a/clip`)."""
    out_dir, vid_dir = Path(outputs), Path(videos)
    for d, what in ((out_dir, "outputs"), (vid_dir, "videos")):
        if not d.is_dir():
            raise InputError(f"{what} folder {d} does not exist")
    sources: dict[str, Path] = {}
    for f in sorted(vid_dir.rglob("*")):
        if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES and not f.name.startswith("."):
            rel = f.relative_to(vid_dir)
            sources.setdefault("__".join([*rel.parts[:-1], rel.stem]), f)
            sources.setdefault(f.stem, f)
    pairs = []
    for o in sorted(out_dir.iterdir()):
        if o.is_file() and o.suffix.lower() in OUTPUT_SUFFIXES and not o.name.startswith("."):
            src = sources.get(o.stem)
            if src is None:
                log.warning("no source video for %s; skipped", o.name)
            elif not (os.path.exists(src) and os.path.samefile(src, o)):
                pairs.append((o, src))
    if not pairs:
        raise InputError(f"no outputs in {out_dir} match a video in {vid_dir} by name")
    return pairs


@dataclass
class VideoScore:
    video: str
    output: str
    cuts: list[float]
    beats: int
    hits: int
    sch: float | None  # None: no cuts (n/a)
    corr: float | None = None  # curve correlation (None: not measured, or a flat curve)
    cut_hits: int | None = None  # cuts with a strong music-curve peak within cut_tolerance
    cut_hit_rate: float | None = None  # cut_hits / cuts (None: no cuts or not measured)
    flatness: float | None = None  # median spectral flatness of the output
    motion_beats: int | None = None  # motion beats of the video (None: not measured)
    bcs: float | None = None  # beat coverage: music beats / motion beats
    bhs: float | None = None  # beat hit: motion beats with a music beat within beat_tolerance / motion beats
    lr_corr: float | None = None  # Pearson's r of the output's left and right channels
    mono_db: float | None = None  # the mono mix's level against the channels (dB)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


@dataclass
class EvalReport:
    tolerance: float
    videos: list[VideoScore] = field(default_factory=list)
    cut_tolerance: float = 0.25
    beat_tolerance: float = 0.1
    frechet: float | None = None  # against `reference` (None: no reference)
    reference: str | None = None

    @property
    def mean(self) -> float | None:
        return _mean(v.sch for v in self.videos)

    def means(self) -> dict[str, float | None]:
        """Mean SCH, curve correlation and cut-hit rate; median flatness (over videos); mean BCS,
        BHS and the F1 of the two means; mean stereo measures; the Frechet distance."""
        from .measures import BeatAlignment, beat_summary

        flat = [v.flatness for v in self.videos if v.flatness is not None]
        beats = beat_summary([BeatAlignment(0, 0, 0, v.bcs, v.bhs) for v in self.videos])
        return {"sch": self.mean, "corr": _mean(v.corr for v in self.videos),
                "cut_hits": _mean(v.cut_hit_rate for v in self.videos),
                "flatness": float(np.median(flat)) if flat else None, **beats,
                "lr_corr": _mean(v.lr_corr for v in self.videos), "mono_db": _mean(v.mono_db for v in self.videos),
                "frechet": self.frechet}

    def to_json(self) -> str:
        return json.dumps({"tolerance": self.tolerance, "cut_tolerance": self.cut_tolerance,
                           "beat_tolerance": self.beat_tolerance, "reference": self.reference, "mean_sch": self.mean,
                           "means": self.means(), "videos": [asdict(v) for v in self.videos]}, indent=2)

    def table(self) -> str:
        w = max([len("video")] + [len(v.video) for v in self.videos])
        curves = any(v.corr is not None or v.flatness is not None for v in self.videos)
        extra = f" {'corr':>6} {'cuthit':>6} {'flat':>6}" if curves else ""
        lines = [f"{'video':<{w}} {'cuts':>5} {'hits':>5} {'beats':>6} {'SCH':>6}{extra}"]
        for v in self.videos:
            row = f"{v.video:<{w}} {len(v.cuts):>5} {v.hits:>5} {v.beats:>6} {_fmt(v.sch):>6}"
            if curves:
                row += f" {_fmt(v.corr):>6} {_fmt(v.cut_hit_rate):>6} {_fmt(v.flatness):>6}"
            lines.append(row)
        m = self.means()
        tail = f" {_fmt(m['corr']):>6} {_fmt(m['cut_hits']):>6} {_fmt(m['flatness']):>6}" if curves else ""
        lines.append(f"{'mean':<{w}} {'':>5} {'':>5} {'':>6} {_fmt(self.mean):>6}{tail}  (tolerance {self.tolerance:g} s"
                     + (f", cut hits {self.cut_tolerance:g} s; flatness: median" if curves else "") + ")")
        return "\n".join(lines + self._paper_lines())

    def _paper_lines(self) -> list[str]:
        """Beat alignment, stereo and Frechet lines under the table (only what was measured)."""
        m, out = self.means(), []
        if m["bcs"] is not None:
            out.append(f"beat alignment (+-{self.beat_tolerance:g} s, motion beats): BCS {_fmt(m['bcs'])}  "
                       f"BHS {_fmt(m['bhs'])}  F1 {_fmt(m['beat_f1'])}")
        if m["mono_db"] is not None:
            out.append(f"stereo: left/right r {_fmt(m['lr_corr'])}  mono mix {m['mono_db']:+.1f} dB")
        if self.frechet is not None:
            out.append(f"Frechet distance to {self.reference}: {self.frechet:.3f} (log-mel + chroma)")
        return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_side_by_side(with_curve: EvalReport, baseline: EvalReport) -> str:
    """The means of two reports (generated with the curve, and with --no-curve) side by side."""
    a, b = with_curve.means(), baseline.means()
    rows = [("curve correlation", "corr"), (f"cut hits (+-{with_curve.cut_tolerance:g} s)", "cut_hits"),
            (f"SCH (+-{with_curve.tolerance:g} s)", "sch"), ("spectral flatness (median)", "flatness"),
            ("BCS (motion beats)", "bcs"), (f"BHS (+-{with_curve.beat_tolerance:g} s)", "bhs"), ("beat F1", "beat_f1"),
            ("left/right r", "lr_corr"), ("mono mix (dB)", "mono_db"), ("Frechet distance", "frechet")]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{w}}  {'with curve':>10}  {'--no-curve':>10}  {'difference':>10}",
             f"{'videos':<{w}}  {len(with_curve.videos):>10}  {len(baseline.videos):>10}"]
    for label, k in rows:
        diff = f"{a[k] - b[k]:+.3f}" if a[k] is not None and b[k] is not None else "n/a"
        lines.append(f"{label:<{w}}  {_fmt(a[k]):>10}  {_fmt(b[k]):>10}  {diff:>10}")
    return "\n".join(lines)


def evaluate_folder(
    outputs: str | Path,
    videos: str | Path,
    tolerance: float = 0.5,
    cuts_fn: Callable[[Path], Sequence[float]] | None = None,
    beats_fn: Callable[[Path], Sequence[float]] | None = None,
    curve_fn: Callable[[Path], np.ndarray] | None = None,
    music_fn: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
    latent_rate: float = 44100 / 3584,
    cut_tolerance: float = 0.25,
    sch: bool = True,
    motion_fn: Callable[[Path], Sequence[float]] | None = None,
    beat_tolerance: float = 0.1,
    reference: str | Path | None = None,
) -> EvalReport:
    """SCH (and, given `curve_fn`, the curve measures) of every output in `outputs` against its
    source in `videos`.

    Args:
        outputs: folder of generated audio or muxed videos.
        videos: folder of source videos (matched by stem).
        tolerance: seconds, for SCH.
        cuts_fn, beats_fn: injected detectors (default: PySceneDetect, librosa).
        curve_fn: video -> its event curve [L] at `latent_rate` (the bundle's conventions);
            None skips curve correlation, cut hits, flatness and the stereo measures.
        music_fn: (audio [N], sample rate, L) -> the music curve [L] (the same conventions).
        cut_tolerance: seconds, for cut hits.
        sch: False skips Scene Cut Hit (no beat tracking: librosa not needed); SCH is then n/a.
        motion_fn: video -> its motion beat times (`measures.motion_beats`); with `sch`, BCS and
            BHS of the output's beats against them, within `beat_tolerance` seconds.
        reference: a folder of reference music (audio files or videos with sound): the Frechet
            distance of the outputs to it (`measures.set_frechet`).
    """
    if tolerance < 0 or cut_tolerance < 0 or beat_tolerance < 0:
        raise InputError(f"tolerances must be >= 0, got {tolerance}, {cut_tolerance}, {beat_tolerance}")
    if curve_fn is not None and music_fn is None:
        raise ValueError("curve_fn needs music_fn (the music curve in the same conventions)")
    refs = reference_files(reference) if reference is not None else None
    cuts_fn = cuts_fn or detect_cuts
    beats_fn = beats_fn or detect_beats
    report = EvalReport(tolerance, cut_tolerance=cut_tolerance, beat_tolerance=beat_tolerance,
                        reference=None if reference is None else str(reference))
    generated = []
    for out, src in match_outputs(outputs, videos):
        cuts = [float(c) for c in cuts_fn(src)]
        beats = [float(b) for b in beats_fn(out)] if sch else []
        hits, total = scene_cut_hit(cuts, beats, tolerance)
        score = VideoScore(str(src.relative_to(Path(videos))), out.name, cuts, len(beats), hits,
                           hits / total if total and sch else None)
        if motion_fn is not None and sch:
            _beat_scores(score, beats, motion_fn(src), beat_tolerance)
        if curve_fn is not None or refs is not None:
            audio, sr = _load_channels(out)
            if curve_fn is not None:
                _curve_scores(score, audio, sr, np.asarray(curve_fn(src)), music_fn, cuts, latent_rate, cut_tolerance)
            if refs is not None:
                generated.append((audio, sr))
        report.videos.append(score)
    if refs is not None:
        from .measures import set_frechet

        report.frechet = set_frechet(generated, [_load_channels(f) for f in refs])
    return report


def _beat_scores(score: VideoScore, beats: Sequence[float], motion: Sequence[float], tolerance: float) -> None:
    from .measures import beat_alignment

    b = beat_alignment(beats, motion, tolerance)
    score.motion_beats, score.bcs, score.bhs = b.motion, b.bcs, b.bhs


def _curve_scores(score: VideoScore, audio: np.ndarray, sr: int, video_curve: np.ndarray, music_fn, cuts: list[float],
                  latent_rate: float, cut_tolerance: float) -> None:
    """Curve correlation, cut hits, flatness and the stereo measures of one output [C, N]."""
    from .measures import stereo_measures

    mono = audio.mean(axis=0)
    music = music_fn(mono, sr, video_curve.size)
    score.corr = curve_correlation(music, video_curve)
    h, n = cut_hits(music, cuts, latent_rate, cut_tolerance)
    score.cut_hits, score.cut_hit_rate = (h, h / n) if n else (None, None)
    score.flatness = median_flatness(mono)
    st = stereo_measures(audio)
    score.lr_corr, score.mono_db = st["lr_corr"], st["mono_db"]


def _load_channels(path: Path) -> tuple[np.ndarray, int]:
    """float32 [C, N] and the rate of an audio file or a video's first audio stream."""
    from v2m.runtime.music import load_audio

    return load_audio(path)


def reference_files(folder: str | Path) -> list[Path]:
    """The music of a `--reference` folder (audio files and videos, by suffix), sorted; InputError if none."""
    from v2m.runtime.music import AUDIO_SUFFIXES

    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"--reference folder {d} does not exist; give a folder of reference music")
    files = [f for f in sorted(d.rglob("*")) if f.is_file() and not f.name.startswith(".")
             and f.suffix.lower() in AUDIO_SUFFIXES | OUTPUT_SUFFIXES]
    if not files:
        raise InputError(f"--reference folder {d} holds no audio or video files")
    return files


def plot_curve(
    video: str | Path, curve: np.ndarray, latent_rate: float, out_png: str | Path,
    cuts: Sequence[float] | None = None, thumbs: int = 6,
) -> tuple[Path, str]:
    """Save a PNG: the event curve over time with cut markers, and `thumbs` frame thumbnails.

    Cuts default to PySceneDetect's scene cuts when installed, else the curve's peaks.
    Returns the path and which cuts were drawn ("given", "scenedetect" or "curve peaks").
    """
    from v2m.core.curves import curve_peaks
    from v2m.runtime import video as video_mod

    pyplot, out_png = _pyplot(out_png)
    source = "given"
    if cuts is None:
        try:
            cuts, source = detect_cuts(video), "scenedetect"
        except MissingExtra:
            cuts, source = [i / latent_rate for i in curve_peaks(curve, 8)], "curve peaks"
    t = np.arange(curve.size) / latent_rate
    duration = curve.size / latent_rate
    reader = video_mod.VideoReader(video)
    frames = [f for batch in reader.sample(max(thumbs / max(duration, 1e-3), 1e-3), 96, batch_size=thumbs) for f in batch]
    frames = frames[:thumbs]
    fig = pyplot.figure(figsize=(10, 4.5))
    ax = fig.add_axes((0.07, 0.42, 0.9, 0.52))
    ax.plot(t, curve, lw=1.2, label="event curve")
    for i, c in enumerate(cuts):
        ax.axvline(c, color="tab:red", ls="--", lw=0.8, label=f"cuts ({source})" if i == 0 else None)
    ax.set_xlim(0, duration)
    ax.set_xlabel("seconds")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(Path(video).name, fontsize=9)
    for i, f in enumerate(frames):
        tax = fig.add_axes((0.07 + i * 0.9 / max(len(frames), 1), 0.02, 0.9 / max(len(frames), 1) - 0.01, 0.25))
        tax.imshow(f)
        tax.set_axis_off()
        tax.set_title(f"{i * duration / max(len(frames), 1):.1f} s", fontsize=7)
    _save_png(fig, out_png)
    return out_png, source


def _save_png(fig, out_png: Path) -> Path:
    """Save a figure atomically (temporary file, rename) and close it."""
    import matplotlib.pyplot as pyplot

    from v2m.core.tempfiles import atomic_output

    try:
        with atomic_output(out_png) as tmp:  # a device is written in place, the umask's mode
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        pyplot.close(fig)
    return out_png


def _pyplot(out_png: str | Path):
    """matplotlib.pyplot (Agg) and the checked output path."""
    mpl = require_eval("matplotlib", "--plot")
    mpl.use("Agg")
    import matplotlib.pyplot as pyplot

    from v2m.runtime import media

    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise InputError(f"--plot writes a .png, not {out_png.name!r}")
    media.check_output_path(out_png.with_suffix(".wav"))  # same directory checks
    return pyplot, out_png


def plot_music_curve(name: str | Path, audio: np.ndarray, sample_rate: int, curve: np.ndarray, latent_rate: float,
                     out_png: str | Path, peaks: int = 5) -> Path:
    """Save a PNG: the waveform's envelope above the music event curve and its strongest peaks."""
    from v2m.core.curves import curve_peaks

    pyplot, out_png = _pyplot(out_png)
    mono = np.asarray(audio, np.float64).mean(axis=0) if np.ndim(audio) == 2 else np.asarray(audio, np.float64)
    hop = max(1, sample_rate // 200)
    n = mono.size // hop
    env = np.abs(mono[: n * hop]).reshape(n, hop).max(axis=1) if n else np.zeros(0)
    fig, (ax0, ax1) = pyplot.subplots(2, 1, figsize=(10, 4.5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    ax0.fill_between(np.arange(n) * hop / sample_rate, -env, env, color="0.5", lw=0)
    ax0.set_ylabel("audio")
    ax0.set_title(Path(name).name, fontsize=9)
    t = np.arange(curve.size) / latent_rate
    ax1.plot(t, curve, lw=1.2, label="music event curve")
    p = curve_peaks(curve, peaks)
    ax1.plot(p / latent_rate, curve[p], "v", color="tab:red", label=f"{len(p)} strongest peaks")
    ax1.set_xlabel("seconds")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_xlim(0, max(curve.size / latent_rate, 1e-3))
    fig.tight_layout()
    return _save_png(fig, out_png)


def plot_alignment(video_curve: np.ndarray, music_curves: dict[str, np.ndarray], cuts: Sequence[float],
                   latent_rate: float, out_png: str | Path, title: str = "") -> Path:
    """Save a PNG: the video's event curve, the output's music curve(s) and the cuts on one time axis."""
    pyplot, out_png = _pyplot(out_png)
    fig, ax = pyplot.subplots(figsize=(10, 3.6))
    t = np.arange(video_curve.size) / latent_rate
    ax.plot(t, video_curve, lw=1.6, color="tab:blue", label="video event curve (input)")
    styles = iter([("tab:orange", "-"), ("0.55", "--"), ("tab:green", "-.")])
    for label, c in music_curves.items():
        color, ls = next(styles)
        ax.plot(np.arange(c.size) / latent_rate, c, lw=1.3, color=color, ls=ls, label=label)
    for i, c in enumerate(cuts):
        ax.axvline(c, color="tab:red", lw=0.9, ls=":", label="cuts" if i == 0 else None)
    ax.set_xlim(0, video_curve.size / latent_rate)
    ax.set_xlabel("seconds")
    ax.set_ylabel("event curve (z-score, smoothed)")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_png(fig, out_png)
