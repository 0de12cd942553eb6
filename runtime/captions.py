"""The frame-caption stage of prompts from the video: an image-to-text model on K frames.

The paper's prompt writer also looks at the video. This stage picks K frames evenly: the
frame on screen at the middle of each of K equal parts of the clip, t_k = (k + 1/2) D / K
(so neither the first frame, often a fade-in, nor the last), upright, at the video's size
with the longer side capped at 384 pixels (the captioner's processor resizes them anyway).
An image-to-text model from a *local directory* (a Hugging Face `save_pretrained` folder that
`AutoModelForImageTextToText` loads and whose `generate(pixel_values=...)` writes a caption
with no text prompt: BLIP, GIT, a VisionEncoderDecoder such as ViT + GPT-2), with its image
processor and tokenizer, captions them (greedy, 8 frames per batch). Identical captions
(after trimming, case-blind) are kept once, in order of first appearance.

transformers and torch are imported only when the stage runs; nothing is downloaded.

```python
from v2m.runtime.captions import caption_video
captions = caption_video("clip.mp4", "models/blip-image-captioning-base", k=8)
```
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError, require

from . import video

__all__ = ["MAX_SIDE", "frame_times", "sample_frames", "caption_frames", "dedupe", "caption_video"]

log = logging.getLogger("v2m.describe")

MAX_SIDE = 384  # captioners take 224-384 pixel inputs; a 4K frame need not be converted at full size
BATCH = 8
MAX_NEW_TOKENS = 30  # a caption is one short sentence


def frame_times(duration_s: float, k: int) -> list[float]:
    """The middles of K equal parts of the clip: (k + 1/2) D / K."""
    return [(i + 0.5) * duration_s / k for i in range(k)]


def _size(info: video.VideoInfo) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(info.width, info.height))
    return max(1, round(info.width * scale)), max(1, round(info.height * scale))


def sample_frames(path, k: int, video_stream: int | None = None) -> np.ndarray:
    """K upright RGB uint8 frames [K', H, W, 3] at `frame_times` (K' < K only for a clip with
    fewer samples than asked, e.g. a still image).

    The reader samples at 2K / D frames per second, t_j = j D / (2K); the odd j are the
    middles of the K parts."""
    reader = video.VideoReader(path, video_stream)
    fps = 2 * k / max(reader.info.duration_s, 1e-3)
    rows = [b for b in reader.sample(fps, _size(reader.info), batch_size=2 * k)]
    frames = np.concatenate(rows) if rows else np.zeros((0, 1, 1, 3), np.uint8)
    return frames[1 : 2 * k : 2] if len(frames) > 1 else frames[:1]


def _load(model_dir: Path):
    import transformers

    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
        images = transformers.AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{model_dir}: cannot load an image-to-text model with its image processor and tokenizer "
                         f"({str(e).splitlines()[0]}); give a save_pretrained folder of a captioner such as BLIP, "
                         "GIT or a VisionEncoderDecoder") from None
    return model.eval(), images, tok


def caption_frames(model_dir, frames: np.ndarray) -> list[str]:
    """One caption per frame (greedy), from a local image-to-text model.

    Args:
        model_dir: a `save_pretrained` folder (model, image processor, tokenizer).
        frames: uint8 RGB [N, H, W, 3].
    """
    require("transformers", "torch", what="the frame-caption stage")
    import torch

    model, images, tok = _load(Path(model_dir))
    out = []
    for i in range(0, len(frames), BATCH):
        pixels = images(images=list(frames[i : i + BATCH]), return_tensors="pt")["pixel_values"]
        try:
            with torch.no_grad():
                ids = model.generate(pixel_values=pixels, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"{model_dir}: this model does not caption an image without a text prompt "
                             f"({str(e).splitlines()[0]}); use an image-to-text captioner (BLIP, GIT, "
                             "VisionEncoderDecoder)") from None
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    log.info("captioned %d frames with %s", len(frames), model_dir)
    return out


def dedupe(captions) -> list[str]:
    """Non-empty captions, each once (case-blind, trimmed), in order of first appearance."""
    seen, out = set(), []
    for c in captions:
        c = " ".join(str(c).split())
        if c and c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return out


def caption_video(path, model_dir, k: int = 8, video_stream: int | None = None) -> list[str]:
    """De-duplicated captions of K evenly spaced frames of a video (see the module docstring)."""
    return dedupe(caption_frames(model_dir, sample_frames(path, k, video_stream)))
