"""The model stage of prompts from the video: a local causal LM writes the music prompt.

The paper writes its prompts with models (a speech transcript, frame captions, an LLM that
summarizes them into a music prompt). This module is the pluggable LM summary stage: it takes
what the weight-free describer measured (`describe.VideoTraits`, as a sentence) and asks a
causal language model from a *local directory* (Hugging Face `save_pretrained` layout; nothing
is downloaded: `local_files_only`) for a one-line music prompt, greedy decoding. An empty
answer falls back to the describer's own prompt. transformers and torch are imported only here,
only when the stage runs.

```python
from v2m.runtime.describe import describe_video
from v2m.runtime.describe_models import summarize
prompt = summarize("models/qwen2.5-0.5b-instruct", describe_video("clip.mp4"))
```

The speech-transcript and frame-caption stages are not built yet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from v2m.core.errors import InputError, require

from .describe import VideoTraits, prompt_from_traits

__all__ = ["SUMMARY_PROMPT", "traits_sentence", "summarize"]

log = logging.getLogger("v2m.describe")

# Modelled on the paper's summary step (its wording is not reproduced): facts in, one line out.
SUMMARY_PROMPT = (
    "You write prompts for a music generator. Describe, in one line, background music for this video: "
    "genre, tempo in bpm, mood, instruments. Video: {facts}\nMusic prompt:"
)


def traits_sentence(t: VideoTraits) -> str:
    """The measured traits as a plain sentence for the LM."""
    light = "dark" if t.brightness < 0.3 else "bright" if t.brightness > 0.6 else "medium-bright"
    colour = "warm" if t.warmth > 0.03 else "cool" if t.warmth < -0.03 else "neutral"
    motion = "still" if t.motion < 0.01 else "slow-moving" if t.motion < 0.04 else "fast-moving"
    return (f"{t.duration_s:.0f} seconds long, {t.cuts} scene cuts ({t.cuts_per_min:.0f} per minute), {motion}, "
            f"{light}, {colour} colours, saturation {t.saturation:.2f}.")


def summarize(model_dir, traits: VideoTraits, max_new_tokens: int = 48) -> str:
    """A music prompt from a local causal LM (greedy), or the describer's prompt when it says nothing.

    Args:
        model_dir: a directory with the model and its tokenizer (`save_pretrained` layout).
        traits: what `describe.describe_video` measured.
        max_new_tokens: the longest answer.
    """
    d = Path(model_dir)
    if not d.is_dir() or not (d / "config.json").is_file():
        raise InputError(f"{model_dir}: not a local model directory (config.json missing); give a folder "
                         "written by save_pretrained (nothing is downloaded)")
    require("transformers", what="the LM prompt stage")
    require("torch", what="the LM prompt stage")
    import torch
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{model_dir}: cannot load a causal LM and its tokenizer ({str(e).splitlines()[0]})") from None
    model.eval()
    ids = tok(SUMMARY_PROMPT.format(facts=traits_sentence(traits)), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        log.info("the LM gave an empty prompt; using the describer's")
        return prompt_from_traits(traits)
    return line
