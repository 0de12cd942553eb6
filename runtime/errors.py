"""User-facing errors.

Every failure a user can cause (a broken video, a wrong checkpoint, a missing
engine, a bad output path) is raised as a `V2MError` subclass whose message is
one line that says what went wrong and what to do. The CLI prints that line to
stderr and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "V2MError",
    "InputError",
    "BundleError",
    "BackendUnavailable",
    "OutputError",
    "NumericalError",
]


class V2MError(Exception):
    """Base class of errors caused by input, configuration or environment."""

    exit_code = 2


class InputError(V2MError):
    """The input video (or manifest, or prompt file) cannot be used."""


class BundleError(V2MError):
    """A model bundle or checkpoint is missing, partial or mismatched."""


class BackendUnavailable(V2MError):
    """The requested backend (or its engine) cannot run on this machine."""


class OutputError(V2MError):
    """The output path cannot be written."""


class NumericalError(V2MError):
    """NaN or Inf appeared in latents or audio; nothing was written."""
