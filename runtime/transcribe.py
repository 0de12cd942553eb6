"""The speech-transcript stage of prompts from the video: Whisper on the video's audio track.

The paper's prompt writer starts from what is said in the video. This stage decodes the
video's first audio track with PyAV to 16 kHz mono float32 (the rate Whisper was trained at),
cuts it into 30 s windows (Whisper's input length; a word cut at a window edge may be lost)
and transcribes each window with a Whisper model from a *local directory*:

- a Hugging Face `save_pretrained` folder (`WhisperForConditionalGeneration` with its
  `WhisperProcessor`: config.json, model.safetensors, preprocessor_config.json, tokenizer
  files): greedy `generate`, 4 windows per batch; a multilingual model detects the language;
- a CTranslate2 folder (`model.bin` beside config.json, the faster-whisper layout), when the
  `faster_whisper` package is importable (v2m does not depend on it): greedy (beam 1).

The windows' texts are joined with spaces. A video without an audio track gives an empty
transcript (logged). transformers, torch and faster_whisper are imported only when the stage
runs; nothing is downloaded (`local_files_only`).

```python
from v2m.runtime.transcribe import transcribe_video
text = transcribe_video("clip.mp4", "models/whisper-small")
```
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

from v2m.core.errors import InputError, require

from .demux import error_text

__all__ = ["SAMPLE_RATE", "WINDOW_S", "audio_windows", "transcribe", "transcribe_video", "is_ctranslate2_dir"]

log = logging.getLogger("v2m.describe")

SAMPLE_RATE = 16000  # Whisper's input rate
WINDOW_S = 30.0  # Whisper's input length: longer audio is cut into windows of this many seconds
BATCH = 4  # windows per generate call (a 30 s window's features are 80 x 3000 floats)


def audio_windows(path, seconds: float = WINDOW_S, rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The first audio track of `path` as float32 mono at `rate`, in windows of `seconds`
    (the last one shorter). Yields nothing when the file has no audio track; a decode error
    ends the track there (logged), keeping what decoded."""
    n = int(round(seconds * rate))
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pending, have = [], 0
        try:
            for frame in itertools.chain(container.decode(stream), [None]):
                for rf in resampler.resample(frame):
                    x = rf.to_ndarray().reshape(-1)  # (samples,) packed mono
                    pending.append(x)
                    have += x.size
                    while have >= n:
                        buf = np.concatenate(pending)
                        yield buf[:n]
                        pending, have = [buf[n:]], buf.size - n
        except av.FFmpegError as e:
            log.warning("%s: the audio stopped decoding (%s); transcribing what decoded", Path(path).name, error_text(e))
        if have:
            yield np.concatenate(pending)


def is_ctranslate2_dir(model_dir) -> bool:
    """A faster-whisper (CTranslate2) folder: `model.bin` and config.json, no transformers `model_type`."""
    return (Path(model_dir) / "model.bin").is_file()


def _batches(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _transcribe_hf(model_dir: Path, windows: Iterable[np.ndarray]) -> list[str]:
    import torch
    import transformers

    try:
        processor = transformers.WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        model = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{model_dir}: cannot load a Whisper model and its processor ({str(e).splitlines()[0]}); "
                         "give a folder written by WhisperForConditionalGeneration.save_pretrained and "
                         "WhisperProcessor.save_pretrained") from None
    model.eval()
    # Room for the decoder's start and forced tokens within the model's positions (448 for Whisper).
    max_new = min(224, model.config.max_target_positions // 2)
    texts = []
    for batch in _batches(windows, BATCH):
        feats = processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(feats["input_features"], max_new_tokens=max_new, do_sample=False)
        texts += processor.tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


def _transcribe_ct2(model_dir: Path, windows: Iterable[np.ndarray]) -> list[str]:
    import faster_whisper

    model = faster_whisper.WhisperModel(str(model_dir), device="cpu", compute_type="default")
    texts = []
    for w in windows:
        segments, _ = model.transcribe(w, beam_size=1)
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts


def transcribe(model_dir, windows: Iterable[np.ndarray]) -> str:
    """The transcript of 16 kHz mono float32 windows (at most 30 s each), empty windows' texts dropped.

    Args:
        model_dir: a local Whisper folder (transformers `save_pretrained`, or CTranslate2 with
            faster-whisper installed).
        windows: audio windows, e.g. `audio_windows(video)`.
    """
    d = Path(model_dir)
    if is_ctranslate2_dir(d):
        require("faster_whisper", what=f"{d} (a CTranslate2 Whisper folder)")
        texts = _transcribe_ct2(d, windows)
        log.info("transcribed with faster-whisper (CTranslate2) from %s", d)
    else:
        require("transformers", "torch", what="the speech-transcript stage")
        texts = _transcribe_hf(d, windows)
        log.info("transcribed with transformers Whisper from %s", d)
    return " ".join(t.strip() for t in texts if t.strip())


def transcribe_video(path, model_dir, has_audio: bool | None = None) -> str:
    """The transcript of a video's first audio track; "" (logged) when it has none.

    Args:
        path: the video.
        model_dir: a local Whisper folder (see `transcribe`).
        has_audio: what `video.probe` said, when the caller has it (the file is opened anyway).
    """
    windows = audio_windows(path)
    first = next(windows, None) if has_audio is not False else None
    if first is None:
        log.info("%s has no audio track (or an empty one): the transcript is empty", Path(path).name)
        return ""
    return transcribe(model_dir, itertools.chain([first], windows))
