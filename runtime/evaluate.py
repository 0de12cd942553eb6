"""Scene Cut Hit (SCH): how often the generated music has a beat at the video's scene cuts.

For each source video: scene cuts from PySceneDetect's ContentDetector, beats of
the generated audio from librosa's beat tracker; a cut is hit when some beat lies
within `tolerance` seconds of it; SCH = hits / cuts. Videos without cuts are
reported as n/a and left out of the mean. librosa and scenedetect are the
`[eval]` extra, imported only here and only when needed; tests inject cuts and
beats instead.

```python
from v2m.runtime.evaluate import evaluate_folder
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

from .errors import InputError, V2MError

__all__ = [
    "scene_cut_hit",
    "detect_cuts",
    "detect_beats",
    "match_outputs",
    "VideoScore",
    "EvalReport",
    "evaluate_folder",
    "require_eval",
]

log = logging.getLogger("v2m.evaluate")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi"}
OUTPUT_SUFFIXES = {".wav", ".flac", ".mp4", ".mov", ".mkv", ".m4v"}


class MissingExtra(V2MError):
    """An optional dependency of `v2m eval` is not installed."""


def require_eval(module: str):
    """Import `module` or raise one line telling the user to install the [eval] extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"`v2m eval` needs {module}: pip install 'v2m-runtime[eval]'") from None


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


def detect_cuts(video: str | Path, threshold: float = 27.0) -> list[float]:
    """Scene cut times (s) by PySceneDetect's ContentDetector: the start of every scene but the first."""
    sd = require_eval("scenedetect")
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


@dataclass
class EvalReport:
    tolerance: float
    videos: list[VideoScore] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        vals = [v.sch for v in self.videos if v.sch is not None]
        return float(np.mean(vals)) if vals else None

    def to_json(self) -> str:
        return json.dumps({"tolerance": self.tolerance, "mean_sch": self.mean, "videos": [asdict(v) for v in self.videos]}, indent=2)

    def table(self) -> str:
        w = max([len("video")] + [len(v.video) for v in self.videos])
        lines = [f"{'video':<{w}} {'cuts':>5} {'hits':>5} {'beats':>6} {'SCH':>6}"]
        for v in self.videos:
            sch = "n/a" if v.sch is None else f"{v.sch:.3f}"
            lines.append(f"{v.video:<{w}} {len(v.cuts):>5} {v.hits:>5} {v.beats:>6} {sch:>6}")
        mean = "n/a" if self.mean is None else f"{self.mean:.3f}"
        lines.append(f"{'mean':<{w}} {'':>5} {'':>5} {'':>6} {mean:>6}  (tolerance {self.tolerance:g} s)")
        return "\n".join(lines)


def evaluate_folder(
    outputs: str | Path,
    videos: str | Path,
    tolerance: float = 0.5,
    cuts_fn: Callable[[Path], Sequence[float]] | None = None,
    beats_fn: Callable[[Path], Sequence[float]] | None = None,
) -> EvalReport:
    """SCH of every output in `outputs` against its source in `videos`.

    Args:
        outputs: folder of generated audio or muxed videos.
        videos: folder of source videos (matched by stem).
        tolerance: seconds.
        cuts_fn, beats_fn: injected detectors (default: PySceneDetect, librosa).
    """
    if tolerance < 0:
        raise InputError(f"--tolerance must be >= 0, got {tolerance}")
    cuts_fn = cuts_fn or detect_cuts
    beats_fn = beats_fn or detect_beats
    report = EvalReport(tolerance)
    for out, src in match_outputs(outputs, videos):
        cuts = [float(c) for c in cuts_fn(src)]
        beats = [float(b) for b in beats_fn(out)]
        hits, total = scene_cut_hit(cuts, beats, tolerance)
        report.videos.append(VideoScore(str(src.relative_to(Path(videos))), out.name, cuts, len(beats), hits, hits / total if total else None))
    return report


def plot_curve(
    video: str | Path, curve: np.ndarray, latent_rate: float, out_png: str | Path,
    cuts: Sequence[float] | None = None, thumbs: int = 6,
) -> tuple[Path, str]:
    """Save a PNG: the event curve over time with cut markers, and `thumbs` frame thumbnails.

    Cuts default to PySceneDetect's scene cuts when installed, else the curve's peaks.
    Returns the path and which cuts were drawn ("given", "scenedetect" or "curve peaks").
    """
    plt = require_eval("matplotlib")
    plt.use("Agg")
    import matplotlib.pyplot as pyplot

    from . import media
    from . import video as video_mod
    from .curves import curve_peaks

    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise InputError(f"--plot writes a .png, not {out_png.name!r}")
    media.check_output_path(out_png.with_suffix(".wav"))  # same directory checks
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
    tmp = out_png.with_name(f".{out_png.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out_png)
    finally:
        pyplot.close(fig)
        tmp.unlink(missing_ok=True)
    return out_png, source
