"""The model stages of prompts from the video: transcript + captions -> an LM's music prompt.

The paper writes its music prompts with models: a speech transcript of the video, captions of
its frames, and a language model that summarizes both into a music prompt. v2m runs the same
three stages, each optional and pluggable, each from a *local directory* (a Hugging Face
`save_pretrained` folder; nothing is downloaded: `local_files_only`):

1. the speech transcript (`transcribe`: Whisper on the audio track; none -> empty);
2. frame captions (`captions`: an image-to-text model on K evenly spaced frames, de-duplicated);
3. the summary: a causal LM reads the describer's measurements as a sentence (`traits_sentence`),
   the transcript and the captions (`summary_input`) and answers one line (greedy; the
   tokenizer's chat template when it has one). With no LM, or an empty answer, the prompt is
   the weight-free describer's (`describe.prompt_from_traits`) followed by the captions' most
   frequent words outside a short list of function words (`caption_words`: word counts, not
   a part-of-speech tagger); the transcript then shows only in the details.

`write_prompt` runs them; the CLI (`v2m prompt`, `v2m generate --prompt auto`), the Python API
and the server call it. Each stage's result is cached by content in
`$XDG_CACHE_HOME/v2m/prompts/stages/`: the video's sha256, the model folder's fingerprint
(sha256 of every file's bytes; remembered per file size and mtime in `.../prompts/models/`),
the stage's options and version. transformers and torch are imported only when a stage runs.

```python
from v2m.runtime.describe_models import PromptModels, write_prompt
prompt, details = write_prompt("clip.mp4", PromptModels(whisper="models/whisper-small",
                                                         captioner="models/blip-base", lm="models/qwen-0.5b"))
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from v2m.core.errors import InputError, require

from . import video
from .describe import VideoTraits, auto_prompt, cache_dir, file_sha256, prompt_from_traits

__all__ = ["PromptModels", "SUMMARY_PROMPT", "STAGE_VERSIONS", "check_model_dir", "model_fingerprint",
           "traits_sentence", "summary_input", "lm_answer", "summarize", "caption_words", "write_prompt"]

log = logging.getLogger("v2m.describe")

STAGE_VERSIONS = {"transcript": 1, "captions": 1, "summary": 1}  # part of each stage's cache key
MAX_FRAMES = 64
TRANSCRIPT_CHARS = 2000  # the LM sees at most this much of the transcript (a small LM's context is short)
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.bin")  # transformers; CTranslate2 (faster-whisper)

# Modelled on the paper's summary step (its wording is not reproduced): what is known in, one line out.
SUMMARY_PROMPT = (
    "You write prompts for a music generator. From what is known about a video, describe in one line the "
    "background music that fits it: genre, tempo in bpm, mood, instruments. Describe the music, not the video.\n"
    "Measured: {facts}\nSpeech: {speech}\nFrames: {frames}\nMusic prompt:"
)
_FUNCTION_WORDS = frozenset(
    "a an the of on in at to for from by with and or is are was be being there this that these those it its "
    "his her their some one two three four many front near next top side up down image picture photo view "
    "close background blurry shot".split())


def check_model_dir(model_dir, what: str = "model") -> Path:
    """The folder, or one line (InputError) when it is not a local `save_pretrained` folder.

    Args:
        model_dir: the folder.
        what: the option that named it, for the message (e.g. "--whisper").
    """
    d = Path(model_dir)
    hint = "give a folder written by save_pretrained (nothing is downloaded)"
    if not d.is_dir() or not (d / "config.json").is_file():
        raise InputError(f"{what} {model_dir}: not a local model directory (config.json missing); {hint}")
    if not any(any(d.glob(g)) for g in _WEIGHTS):
        raise InputError(f"{what} {model_dir}: not a local model directory (no weights: model.safetensors, "
                         f"pytorch_model.bin or a CTranslate2 model.bin); {hint}")
    return d


@dataclass(frozen=True)
class PromptModels:
    """The model stages to run (None: skipped) and the number of frames to caption; the
    folders are checked in the constructor (one line, before any work)."""

    whisper: str | None = None
    captioner: str | None = None
    lm: str | None = None
    frames: int = 8

    def __post_init__(self):
        if not isinstance(self.frames, int) or not 1 <= self.frames <= MAX_FRAMES:
            raise InputError(f"--frames {self.frames}: give a whole number of frames to caption in [1, {MAX_FRAMES}]")
        from .transcribe import is_ctranslate2_dir

        for flag, d in (("--whisper", self.whisper), ("--captioner", self.captioner), ("--lm", self.lm)):
            if d is not None:
                object.__setattr__(self, flag[2:], str(check_model_dir(d, flag)))
        if self.whisper is not None and is_ctranslate2_dir(self.whisper):
            require("faster_whisper", what=f"--whisper {self.whisper} (a CTranslate2 folder)")
        if (self.whisper is not None and not is_ctranslate2_dir(self.whisper)) or self.captioner or self.lm:
            require("transformers", "torch", what="the model stages of prompts from the video")

    def __bool__(self) -> bool:
        return any((self.whisper, self.captioner, self.lm))

    def to_json(self) -> dict:
        return asdict(self)


def model_fingerprint(model_dir) -> str:
    """sha256 over a folder's files (names and bytes), remembered per (size, mtime) of each file."""
    d = Path(model_dir).resolve()
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = cache_dir() / "models" / f"{hashlib.sha256(str(d).encode()).hexdigest()[:24]}.json"
    try:
        data = json.loads(memo.read_text())
        if data["stamp"] == stamp:
            return data["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    _write_json(memo, {"dir": str(d), "stamp": stamp, "sha256": h.hexdigest()})
    return h.hexdigest()


def _write_json(path: Path, data) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as e:
        log.info("prompt cache %s not written (%s)", path, e)


def _cached(key_of: Callable[[], dict], run: Callable[[], object], use_cache: bool):
    """`run()`, or its earlier result under the key `key_of()` (JSON) in the stage cache; with
    `use_cache` False neither the key (model fingerprints) nor the result is computed or written."""
    if not use_cache:
        return run()
    key = key_of()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    entry = cache_dir() / "stages" / f"{key['stage']}-{digest}.json"
    try:
        return json.loads(entry.read_text())["value"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as e:
        log.info("prompt cache entry %s unreadable (%s); running the stage again", entry, e)
    value = run()
    _write_json(entry, {"key": key, "value": value})
    return value


def traits_sentence(t: VideoTraits) -> str:
    """The measured traits as a plain sentence for the LM."""
    light = "dark" if t.brightness < 0.3 else "bright" if t.brightness > 0.6 else "medium-bright"
    colour = "warm" if t.warmth > 0.03 else "cool" if t.warmth < -0.03 else "neutral"
    motion = "still" if t.motion < 0.01 else "slow-moving" if t.motion < 0.04 else "fast-moving"
    return (f"{t.duration_s:.0f} seconds long, {t.cuts} scene cuts ({t.cuts_per_min:.0f} per minute), {motion}, "
            f"{light}, {colour} colours, saturation {t.saturation:.2f}.")


def summary_input(traits: VideoTraits, transcript: str = "", captions: Sequence[str] = ()) -> str:
    """What the LM reads: the traits sentence, the transcript (cut at TRANSCRIPT_CHARS, on a
    word) and the captions, in `SUMMARY_PROMPT`."""
    speech = " ".join(transcript.split())
    if len(speech) > TRANSCRIPT_CHARS:
        speech = speech[:TRANSCRIPT_CHARS].rsplit(" ", 1)[0] + " ..."
    return SUMMARY_PROMPT.format(facts=traits_sentence(traits), speech=speech or "none",
                                 frames="; ".join(captions) if captions else "none")


def lm_answer(model_dir, text: str, max_new_tokens: int = 48) -> str:
    """The first line of a local causal LM's greedy answer to `text` ("" when it says nothing).

    Args:
        model_dir: a folder with the model and its tokenizer (`save_pretrained` layout).
        text: the request; wrapped in the tokenizer's chat template when it has one.
        max_new_tokens: the longest answer.
    """
    d = check_model_dir(model_dir, "--lm")
    require("transformers", "torch", what="the LM prompt stage")
    import torch
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{model_dir}: cannot load a causal LM and its tokenizer ({str(e).splitlines()[0]})") from None
    model.eval()
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return answer.splitlines()[0].strip() if answer else ""


def summarize(model_dir, traits: VideoTraits, transcript: str = "", captions: Sequence[str] = (),
              max_new_tokens: int = 48) -> str:
    """A music prompt from a local causal LM (greedy), or the describer's prompt when it says nothing.

    Args:
        model_dir: a directory with the model and its tokenizer (`save_pretrained` layout).
        traits: what `describe.describe_video` measured.
        transcript: what is said in the video ("" for nothing).
        captions: captions of its frames.
        max_new_tokens: the longest answer.
    """
    line = lm_answer(model_dir, summary_input(traits, transcript, captions), max_new_tokens)
    if not line:
        log.info("the LM gave an empty prompt; using the describer's")
        return prompt_from_traits(traits)
    return line


def caption_words(captions: Sequence[str], n: int = 3) -> list[str]:
    """The `n` most frequent words of the captions (lower case, 3+ letters, not function words;
    ties in order of first appearance)."""
    words = [w for c in captions for w in re.findall(r"[a-z]+", c.lower())
             if len(w) >= 3 and w not in _FUNCTION_WORDS]
    return [w for w, _ in Counter(words).most_common(n)]  # most_common keeps first-seen order on ties


def write_prompt(video_path, models: PromptModels | None = None, video_stream: int | None = None,
                 use_cache: bool = True) -> tuple[str, dict]:
    """(music prompt, details) of a video: the describer, then the model stages that `models` names.

    Args:
        video_path: the video.
        models: the stages' local folders and the frame count (default: none, the describer alone).
        video_stream: the container's video stream (default: the default stream).
        use_cache: read and write the prompt caches (False: run every stage again, write nothing).
    details: traits, describer_prompt, transcript (None: not run), captions (None: not run),
    summary_input (what the LM read; None: no LM), written_by ("lm", "describer",
    "describer+captions"), models.
    """
    models = models or PromptModels()
    info = video.probe(video_path, video_stream)  # a missing or broken video: one line, before any work
    digest = file_sha256(video_path)
    describer, traits = auto_prompt(video_path, video_stream, use_cache, content_hash=digest)
    details = {"traits": traits.to_json(), "describer_prompt": describer, "transcript": None, "captions": None,
               "summary_input": None, "written_by": "describer", "models": models.to_json()}

    def key(stage: str, model_dir, **extra) -> Callable[[], dict]:  # computed only when the cache is used
        return lambda: {"video": digest, "stream": video_stream, "stage": stage, "v": STAGE_VERSIONS[stage],
                        "model": model_fingerprint(model_dir), **extra}

    if models.whisper:
        from .transcribe import transcribe_video

        details["transcript"] = _cached(key("transcript", models.whisper),
                                        lambda: transcribe_video(video_path, models.whisper, info.has_audio), use_cache)
    if models.captioner:
        from .captions import caption_video

        details["captions"] = _cached(key("captions", models.captioner, frames=models.frames),
                                      lambda: caption_video(video_path, models.captioner, models.frames, video_stream),
                                      use_cache)
    if models.lm:
        text = details["summary_input"] = summary_input(traits, details["transcript"] or "", details["captions"] or ())
        answer = _cached(key("summary", models.lm, input=hashlib.sha256(text.encode()).hexdigest()),
                         lambda: lm_answer(models.lm, text), use_cache)
        if answer:
            return answer, {**details, "written_by": "lm"}
        log.info("the LM gave an empty prompt; using the describer's")
    words = caption_words(details["captions"] or ())
    if words:
        return f"{describer}, {', '.join(words)}", {**details, "written_by": "describer+captions"}
    return describer, details
