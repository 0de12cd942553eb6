"""`v2m prompt`: a music prompt written from a video (the weight-free describer, or local models)."""

from __future__ import annotations

from .creator import add_prompt_parser as register
from .creator import cmd_prompt

__all__ = ["register", "cmd_prompt"]
