"""The fine-tune's data: a folder of music -> a content-keyed cache of latents, music curves and text.

    FOLDER/                       any audio PyAV decodes (wav, flac, mp3, ogg/opus, m4a, ...), any rate,
      a.flac  b.mp3  ...          mono or stereo: resampled to the VAE's rate, stereo (swresample)
      captions.jsonl | .tsv       optional: {"file": "a.flac", "caption": "..."} or FILE<TAB>CAPTION

A file's caption is its line there, else its tags ("title by artist, genre, comment"), else
its file name. Each file gives up to `clips_per_file` clips of the model's length at offsets
drawn from (seed, the file's content hash); a file shorter than a clip is one clip, padded
with silence, whose true length is its `seconds_total` (SAO's seconds conditioning).

`prepare` runs in worker processes (at most `workers`), one file a task, and writes per file
`CACHE/clips/<key>.npz`: latents [K, C, L] (the VAE encoder's posterior mean), music curves
[K, L] (`v2m.runtime.music_encoders.music_curve` of the clip's audio with the chosen music
encoder, in the bundle's curve conventions: what `v2m curve music.wav -m RUN/bundle` computes),
seconds [K]. The key hashes the file's bytes and every
setting the result depends on (encoder weights, clip length, rate, kernel, seed), so a rerun
skips what is done and a shared cache serves any run of the same settings. Text embeddings are
made once per caption (`CACHE/text/<sha>.npz`). An unreadable file is skipped and named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError
from v2m.runtime import music, music_encoders

__all__ = ["DataSettings", "Prepared", "read_captions", "tag_caption", "prepare", "load_cache"]

log = logging.getLogger("v2m.train.finetune")


@dataclass(frozen=True)
class DataSettings:
    """What a clip's cached data depends on besides the file's bytes."""

    sample_rate: int
    hop: int
    clip_frames: int  # latent frames per clip
    latent_rate: float
    kernel: int  # the bundle's curve Hann window
    clips_per_file: int
    seed: int
    encoder_sha: str  # the VAE encoder weights'
    curve_encoder: str = "logmel"  # `v2m.runtime.music_encoders`: logmel, basic-pitch or hf
    curve_encoder_dir: str = ""  # hf: the model directory

    def key(self, content_sha: str) -> str:
        blob = json.dumps({"file": content_sha, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class Prepared:
    """The cache of a run: clip arrays stacked over files, captions by index, skipped files."""

    latents: np.ndarray  # (N, C, L) float32
    curves: np.ndarray  # (N, L) float32
    seconds: np.ndarray  # (N,) float32, each clip's audio length
    caption_ids: np.ndarray  # (N,) int64 into `captions`
    captions: list[str]
    text: np.ndarray  # (T, S, E) per caption
    text_mask: np.ndarray  # (T, S)
    files: list[str]  # (N,) the file each clip came from
    skipped: dict[str, str]  # file -> why


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_captions(folder: Path) -> dict[str, str]:
    """captions.jsonl or captions.tsv of `folder` (file name -> caption), {} without one."""
    jsonl, tsv = folder / "captions.jsonl", folder / "captions.tsv"
    out: dict[str, str] = {}
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    out[str(row["file"])] = str(row["caption"])
                except (ValueError, KeyError, TypeError):
                    raise InputError(f"{jsonl}:{n}: expected {{\"file\": ..., \"caption\": ...}}") from None
    elif tsv.is_file():
        for n, line in enumerate(tsv.read_text().splitlines(), 1):
            if line.strip():
                name, sep, text = line.partition("\t")
                if not sep:
                    raise InputError(f"{tsv}:{n}: expected FILE<TAB>CAPTION")
                out[name.strip()] = text.strip()
    return out


def tag_caption(path: Path) -> str:
    """A caption from the file's tags ("title by artist, genre, comment"), else its name."""
    import av

    tags: dict[str, str] = {}
    try:
        with av.open(str(path)) as c:
            meta = dict(c.metadata)
            if c.streams.audio:
                meta = {**dict(c.streams.audio[0].metadata), **meta}
        tags = {k.lower(): str(v).strip() for k, v in meta.items() if str(v).strip()}
    except (av.FFmpegError, OSError):
        pass
    head = tags.get("title", "")
    if tags.get("artist"):
        head = f"{head} by {tags['artist']}" if head else tags["artist"]
    parts = [p for p in (head, tags.get("genre", ""), tags.get("comment", "")) if p]
    return ", ".join(parts) if parts else path.stem.replace("_", " ").replace("-", " ")


# --- the worker ---------------------------------------------------------------------------------
_ENCODER = None  # the VAE encoder of a worker process
_MUSIC = {}  # its music encoders by kind (a pretrained one loads once)


def _init_worker(bundle: str, sample_rate: int, threads: int) -> None:
    global _ENCODER
    import torch

    from v2m.models.vae_encoder import load_vae_encoder

    torch.set_num_threads(threads)
    _ENCODER = load_vae_encoder(bundle, sample_rate)
    _MUSIC.clear()


def _clip_offsets(total: int, size: int, count: int, seed: int, content_sha: str) -> list[int]:
    if total <= size:
        return [0]
    rng = np.random.default_rng([int(seed), int(content_sha[:15], 16)])
    n = max(1, min(count, total // size))
    return sorted(int(o) for o in rng.integers(0, total - size + 1, size=n))


def _prepare_file(task: tuple) -> tuple[str, str, str | None]:
    """One file -> its cache entry. Returns (file name, status "ok" or "skip", cache key or why)."""
    import torch

    path, out_dir, s = Path(task[0]), Path(task[1]), task[2]
    try:
        sha = _sha256(path)
        key = s.key(sha)
        target = out_dir / f"{key}.npz"
        if target.is_file():
            return path.name, "ok", key
        audio, _ = music.load_audio(path, s.sample_rate)  # (2, N) at the VAE's rate
    except (InputError, OSError) as e:
        return path.name, "skip", str(e).splitlines()[0]
    size = s.clip_frames * s.hop
    lat, crv, sec, offs = [], [], [], []
    for off in _clip_offsets(audio.shape[1], size, s.clips_per_file, s.seed, sha):
        clip = audio[:, off : off + size]
        n = clip.shape[1]
        if n < size:  # shorter than a clip: silence after it, its true length in seconds
            clip = np.pad(clip, ((0, 0), (0, size - n)))
        with torch.no_grad():
            z = _ENCODER.encode(torch.from_numpy(np.ascontiguousarray(clip))[None])[0, :, : s.clip_frames]
        lat.append(z.numpy())
        if s.curve_encoder not in _MUSIC:
            _MUSIC[s.curve_encoder] = music_encoders.music_encoder(s.curve_encoder, s.sample_rate,
                                                                   s.curve_encoder_dir or None)
        crv.append(music_encoders.music_curve(s.curve_encoder, clip, s.sample_rate, s.clip_frames, s.latent_rate,
                                              s.kernel, encoder=_MUSIC[s.curve_encoder]))
        sec.append(n / s.sample_rate)
        offs.append(off)
    tmp = out_dir / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, latents=np.stack(lat).astype(np.float32), curves=np.stack(crv).astype(np.float32),
             seconds=np.asarray(sec, np.float32), offsets=np.asarray(offs, np.int64))
    os.replace(tmp, target)  # a stopped prepare never leaves a half-written entry
    return path.name, "ok", key


def _pool(bundle: Path, sample_rate: int, workers: int, threads: int):
    """A spawn pool of `workers` processes, one BLAS thread each (see `train/dit.py`'s prepare)."""
    import multiprocessing as mp

    per = max(1, threads // workers)
    env = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": str(per)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return mp.get_context("spawn").Pool(workers, _init_worker, (str(bundle), sample_rate, per))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prepare(folder: Path, bundle: Path, cache: Path, settings: DataSettings, text_encoder, workers: int = 2,
            threads: int = 2, progress=None) -> Prepared:
    """Fill `cache` for every audio file of `folder` (resumable) and return the run's data.

    Args:
        text_encoder: `encode(caption) -> (emb [S, E], mask [S])`, the bundle's.
        progress: a callable(i) after each file, or None.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--audio {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in music.AUDIO_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no audio files ({', '.join(sorted(music.AUDIO_SUFFIXES))})")
    captions = read_captions(folder)
    clip_dir = cache / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(str(p), str(clip_dir), settings) for p in files]
    workers = max(1, min(workers, len(files)))
    results = []
    if workers > 1:
        pool = _pool(bundle, settings.sample_rate, workers, threads)
        try:
            for i, r in enumerate(pool.imap(_prepare_file, tasks)):
                results.append(r)
                progress and progress(i)
        finally:
            pool.close()
            pool.join()
    else:
        _init_worker(str(bundle), settings.sample_rate, threads)
        for i, t in enumerate(tasks):
            results.append(_prepare_file(t))
            progress and progress(i)
    skipped = {name: why for name, status, why in results if status == "skip"}
    for name, why in skipped.items():
        log.warning("skipped %s: %s", name, why)
    kept = [(folder / name, key) for name, status, key in results if status == "ok"]
    if not kept:
        raise InputError(f"{folder}: none of the {len(files)} audio files could be read")
    by_file = {p.name: captions.get(p.name) or tag_caption(p) for p, _ in kept}
    return load_cache(cache, kept, by_file, text_encoder, skipped)


def load_cache(cache: Path, kept: list[tuple[Path, str]], caption_of: dict[str, str], text_encoder,
               skipped: dict[str, str]) -> Prepared:
    """Stack the cached clips of `kept` (path, key) and embed each distinct caption once (cached)."""
    text_dir = cache / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    captions = sorted(set(caption_of.values()))
    embs, masks = [], []
    for cap in captions:
        f = text_dir / f"{hashlib.sha256(cap.encode()).hexdigest()[:24]}-{getattr(text_encoder, 'key', 'text')}.npz"
        if not f.is_file():
            emb, mask = text_encoder.encode(cap)
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, emb=np.asarray(emb, np.float32), mask=np.asarray(mask, np.float32))
            os.replace(tmp, f)
        d = np.load(f)
        embs.append(d["emb"])
        masks.append(d["mask"])
    lat, crv, sec, cid, names = [], [], [], [], []
    for path, key in kept:
        d = np.load(cache / "clips" / f"{key}.npz")
        k = len(d["seconds"])
        lat.append(d["latents"])
        crv.append(d["curves"])
        sec.append(d["seconds"])
        cid += [captions.index(caption_of[path.name])] * k
        names += [path.name] * k
    return Prepared(np.concatenate(lat), np.concatenate(crv), np.concatenate(sec), np.asarray(cid, np.int64),
                    captions, np.stack(embs), np.stack(masks), names, skipped)
