"""Service settings and request parameters, validated at the edge (no web framework here).

`ServeConfig` is what `v2m serve` is started with; `parse_generate_fields` turns the form
fields of one `POST /v1/generate` into a `GenerateForm`: the engine core's `Request`
(validated by its constructor, as the CLI's are), the output format, the candidates and
whether the prompt is written from the video, raising `InputError` (HTTP 422).
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from v2m.core.errors import InputError
from v2m.eval.candidates import MAX_CANDIDATES
from v2m.runtime import curve_edit
from v2m.runtime.request import Request, max_duration_problem

__all__ = ["ServeConfig", "FORMATS", "AUDIO_FORMATS", "GENERATE_FIELDS", "GenerateForm", "parse_generate_fields",
           "suffix_of", "media_type_of", "header_safe", "API_KEY_ENV", "AUTO_PROMPT", "ZIP_MEDIA_TYPE"]

API_KEY_ENV = "V2M_API_KEY"
DEFAULT_MAX_BATCH = 8  # when the backend does not say how many items one sampler call takes
AUTO_PROMPT = "auto"  # prompt=auto: the prompt is written from the video (`engine.video_prompt`)
ZIP_MEDIA_TYPE = "application/zip"  # keep_candidates: every candidate's file in one zip

# output format -> (file suffix, media type)
FORMATS = {
    "mp4": (".mp4", "video/mp4"),
    "mkv": (".mkv", "video/x-matroska"),
    "wav": (".wav", "audio/wav"),
    "flac": (".flac", "audio/flac"),
}
AUDIO_FORMATS = ("wav", "flac")  # what music without a video (`duration`) is written as

# form field -> description (the OpenAPI schema is made from this too)
GENERATE_FIELDS = {
    "video": "the video file (multipart file part; any container/codec FFmpeg reads); leave it out with `duration`",
    "video_path": "instead of an upload: a file under the server's --allow-dir (disabled by default)",
    "prompt": "text prompt (style, instruments, mood); 'auto': written from the video (returned in X-V2M-Prompt)",
    "negative_prompt": "what to steer away from",
    "seed": "noise seed in [0, 2^63); drawn when absent (returned in X-V2M-Seed)",
    "steps": "sampler steps (default: the bundle's)",
    "cfg_scale": "classifier-free guidance weight, in [0, 100] (default: the bundle's)",
    "solver": "euler or heun",
    "shift": "timestep shift S in [0.01, 100] (1 = none; default: the bundle's)",
    "use_curve": "false: the text-only baseline (no event curve)",
    "curve_guidance": "extra guidance weight on the event curve, in [0, 100] (0 = off; default: the bundle's)",
    "format": "output: mp4 or mkv (the uploaded video with the music), wav or flac (audio only)",
    "keep_audio": "mp4/mkv: mix the original audio under the music at this level, dB",
    "hits": "hit points, comma-separated TIME[:WEIGHT] in seconds (e.g. '2.5, 8:2'): accents on the curve",
    "curve": "a curve as JSON: [[time, value], ...] or {\"times\": [...], \"values\": [...]}",
    "curve_mix": "the given curve's share in [0, 1] (default 1: it replaces the video's)",
    "suppress": "ranges of the curve flattened, comma-separated START-END in seconds (e.g. '3-5, 9-10')",
    "loop": "true: music whose end flows into its start",
    "candidates": "sample N seeds (seed .. seed+N-1) together, return the one whose music follows the curve best "
                  "(1 to the server's --max-candidates; scores in X-V2M-Candidates)",
    "keep_candidates": "true: return every candidate's file in a zip (application/zip), with candidates.json",
    "duration": "music without a video: this many seconds (no video part; format wav or flac; up to --max-duration)",
}


@dataclass
class ServeConfig:
    """How `v2m serve` runs. Every limit is enforced with its own HTTP status.

    Args:
        host, port: where to listen (127.0.0.1 unless told otherwise).
        api_key: when set, /v1/* and /metrics need `Authorization: Bearer <key>`.
        max_batch: most requests sampled in one call; None: the backend's `max_batch`, else 8.
        batch_wait_ms: longest a ready request waits for compatible ones while others are
            still being uploaded or prepared (a lone request never waits).
        max_queue: requests whose body has arrived, at once (queued or running); more get 503.
        max_uploads: requests whose body is still arriving, at once; more get 503. Separate from
            `max_queue` so slow uploads cannot take every slot.
        upload_timeout_s: the longest a request body may take to arrive (408 past it).
        timeout_s: per request, from the end of its upload to its result (504 past it).
        max_upload_mb: the largest request body (413 past it).
        max_duration_s: the longest video, from its header before decoding and from its frames'
            times while decoding (413 past it); 0: no limit.
        max_prompt_chars: the longest prompt or negative prompt (422 past it).
        max_candidates: the most candidates one request may ask for (422 past it).
        allow_dir: a folder whose files `video_path` may name; None: no server-side paths.
        tmp_dir: where per-request temporary directories are made (default: the system's).
        shutdown_grace_s: on SIGTERM, how long in-flight requests may take to finish.
        warmup: run one short generation after loading, before /readyz says ready.
        prompt_models: the model stages of prompt=auto (`runtime.describe_models.PromptModels`:
            a Whisper transcript, frame captions, an LM summary); None: the weight-free describer.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int | None = None
    batch_wait_ms: float = 250.0
    max_queue: int = 32
    max_uploads: int = 64
    upload_timeout_s: float = 60.0
    timeout_s: float = 600.0
    max_upload_mb: float = 200.0
    max_duration_s: float = 600.0
    max_prompt_chars: int = 2000
    max_candidates: int = 8
    allow_dir: str | None = None
    tmp_dir: str | None = None
    shutdown_grace_s: float = 30.0
    warmup: bool = True
    prompt_models: Any = None

    def __post_init__(self):
        checks = [
            (self.max_batch is None or (isinstance(self.max_batch, int) and self.max_batch >= 1), "--max-batch must be >= 1"),
            (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0, "--batch-wait-ms must be >= 0"),
            (isinstance(self.max_queue, int) and self.max_queue >= 1, "--max-queue must be >= 1"),
            (isinstance(self.max_uploads, int) and self.max_uploads >= 1, "--max-uploads must be >= 1"),
            (math.isfinite(self.upload_timeout_s) and self.upload_timeout_s > 0, "--upload-timeout must be > 0 seconds"),
            (max_duration_problem(self.max_duration_s) is None, f"--max-duration: {max_duration_problem(self.max_duration_s)}"),
            (math.isfinite(self.timeout_s) and self.timeout_s > 0, "--timeout must be > 0 seconds"),
            (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0, "--max-upload-mb must be > 0"),
            (isinstance(self.max_prompt_chars, int) and self.max_prompt_chars >= 1, "--max-prompt-chars must be >= 1"),
            (isinstance(self.max_candidates, int) and not isinstance(self.max_candidates, bool)
             and 1 <= self.max_candidates <= MAX_CANDIDATES, f"--max-candidates must be in [1, {MAX_CANDIDATES}]"),
            (math.isfinite(self.shutdown_grace_s) and self.shutdown_grace_s >= 0, "--shutdown-grace must be >= 0"),
            (isinstance(self.port, int) and 0 <= self.port < 65536, "--port must be in [0, 65535]"),
            (self.api_key is None or len(self.api_key) >= 8, "the API key must be at least 8 characters"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        if self.allow_dir is not None:
            if not Path(self.allow_dir).is_dir():
                raise InputError(f"--allow-dir {self.allow_dir}: no such folder")
            self.allow_dir = os.path.realpath(self.allow_dir)
        if self.tmp_dir is not None and not Path(self.tmp_dir).is_dir():
            raise InputError(f"--tmp-dir {self.tmp_dir}: no such folder; create it first")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def suffix_of(fmt: str) -> str:
    return FORMATS[fmt][0]


def media_type_of(fmt: str) -> str:
    return FORMATS[fmt][1]


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")  # printable ASCII but '%'


def header_safe(text: str) -> str:
    """`text` as an HTTP header value: printable ASCII as is, everything else (newlines, control
    characters, non-ASCII, '%') as percent-encoded UTF-8, and so are spaces at either end (HTTP
    trims them): `urllib.parse.unquote` gives `text` back."""
    v = urllib.parse.quote(text, safe=_HEADER_SAFE)
    body = v.strip(" ")
    if not body:
        return "%20" * len(v)
    lead = len(v) - len(v.lstrip(" "))
    trail = len(v) - len(v.rstrip(" "))
    return "%20" * lead + body + "%20" * trail


def _int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{name} must be an integer, got {text[:40]!r}") from None


def _float(name: str, text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise InputError(f"{name} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {text[:40]!r}")
    return v


def _bool(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name} must be true or false, got {text[:40]!r}")


@dataclass(frozen=True)
class GenerateForm:
    """One `POST /v1/generate`, checked: the request, the output format, how many candidates
    (and whether all are returned), and whether the prompt is to be written from the video."""

    request: Request
    fmt: str
    candidates: int = 1
    keep_candidates: bool = False
    auto_prompt: bool = False


def parse_generate_fields(fields: dict[str, str], max_prompt_chars: int, *, has_video: bool = True,
                          max_candidates: int = ServeConfig.max_candidates,
                          max_duration_s: float = ServeConfig.max_duration_s) -> GenerateForm:
    """Form fields (text) -> a checked `GenerateForm`; InputError (one line, HTTP 422) for any bad
    value. The sampler values left out are the bundle's to decide.

    Args:
        fields: the request's text fields (not the file part).
        max_prompt_chars: the longest prompt / negative prompt accepted.
        has_video: the request carries a video (an upload or `video_path`); without one it must
            give `duration`, and may not ask for prompt=auto.
        max_candidates: the server's --max-candidates.
        max_duration_s: the server's --max-duration (0: no limit), which `duration` may not pass.
    """
    unknown = sorted(set(fields) - set(GENERATE_FIELDS))
    if unknown:
        raise InputError(f"unknown fields {unknown}; expected some of {sorted(GENERATE_FIELDS)}")
    for name in ("prompt", "negative_prompt"):
        if name in fields and len(fields[name]) > max_prompt_chars:
            raise InputError(f"{name} is {len(fields[name])} characters; the limit is {max_prompt_chars}")
    f = fields.get
    duration = _duration(fields, has_video, max_duration_s)
    fmt = f("format", "mp4" if has_video else AUDIO_FORMATS[0]).strip().lower()
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt[:20]!r}")
    if duration is not None and fmt not in AUDIO_FORMATS:
        raise InputError(f"music without a video is audio; ask for format {' or '.join(AUDIO_FORMATS)}, not {fmt}")
    keep = _float("keep_audio", f("keep_audio")) if "keep_audio" in fields else None
    if keep is not None and FORMATS[fmt][0] not in (".mp4", ".mkv"):
        raise InputError("keep_audio mixes the original audio into a video output; ask for format mp4 or mkv")
    auto = f("prompt", "").strip() == AUTO_PROMPT
    if auto and not has_video:
        raise InputError("prompt=auto writes the prompt from the video; send a video, or write the prompt")
    neg = f("negative_prompt")
    req = Request(
        prompt="" if auto else f("prompt", ""), negative_prompt=neg if neg else None,
        seed=_int("seed", f("seed")) if "seed" in fields else None,
        steps=_int("steps", f("steps")) if "steps" in fields else None,
        cfg_scale=_float("cfg_scale", f("cfg_scale")) if "cfg_scale" in fields else None,
        solver=f("solver").strip() if "solver" in fields else None,
        shift=_float("shift", f("shift")) if "shift" in fields else None,
        use_curve=_bool("use_curve", f("use_curve")) if "use_curve" in fields else True,
        curve_guidance=_float("curve_guidance", f("curve_guidance")) if "curve_guidance" in fields else None,
        keep_audio_db=keep, duration=duration, **_creator_fields(fields),
    )
    n, keep_all = _candidates(fields, req.seed, max_candidates)
    return GenerateForm(req, fmt, n, keep_all, auto)


def _duration(fields: dict[str, str], has_video: bool, max_duration_s: float) -> float | None:
    """`duration` (music without a video): None when absent; refused with a video or past the limit."""
    if "duration" not in fields:
        return None
    if has_video:
        raise InputError("duration makes music without a video; send no video (the video sets the length)")
    d = _float("duration", fields["duration"])
    if max_duration_s and d > max_duration_s:
        raise InputError(f"duration is {d:g} s; this server's limit is {max_duration_s:g} s (--max-duration)")
    return d


def _candidates(fields: dict[str, str], seed: int | None, max_candidates: int) -> tuple[int, bool]:
    """(`candidates`, `keep_candidates`), checked against the server's cap and the seed range."""
    n = _int("candidates", fields["candidates"]) if "candidates" in fields else 1
    if not 1 <= n <= max_candidates:
        raise InputError(f"candidates must be in [1, {max_candidates}] on this server (--max-candidates), got {n}")
    if seed is not None and seed + n > 2**63:
        raise InputError(f"the candidates' seeds {seed} .. {seed} + {n - 1} must stay below 2^63; pick a smaller seed")
    keep = _bool("keep_candidates", fields["keep_candidates"]) if "keep_candidates" in fields else False
    if keep and n < 2:
        raise InputError("keep_candidates needs candidates of 2 or more")
    return n, keep


def _creator_fields(fields: dict[str, str]) -> dict:
    """The curve edits and loop of a form (`v2m.runtime.curve_edit`'s parsers, checked by `Request`)."""
    out: dict = {}
    if fields.get("hits", "").strip():
        out["hits"] = curve_edit.parse_hits(fields["hits"])
    if fields.get("suppress", "").strip():
        out["suppress"] = curve_edit.parse_ranges(fields["suppress"])
    if fields.get("curve", "").strip():
        try:
            data = json.loads(fields["curve"])
        except json.JSONDecodeError as e:
            raise InputError(f"curve must be JSON ({e})") from None
        out["curve_points"] = curve_edit.parse_curve_json(data)
    if "curve_mix" in fields:
        out["curve_mix"] = _float("curve_mix", fields["curve_mix"])
    if "loop" in fields:
        out["loop"] = _bool("loop", fields["loop"])
    return out
