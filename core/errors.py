"""User-facing errors and the command line's exit codes.

Every failure a user can cause (a broken video, a wrong checkpoint, a missing
engine, a bad option value, a bad output path, a full disk) is raised as a
`V2MError` subclass whose message is one line that says what went wrong and
what to do. The CLI prints that line to stderr and exits 2; anything else is a
bug and exits 1 (the traceback with `--debug`).

Exit codes of `v2m`:

    0        success
    1        internal error: a bug (rerun with --debug for the traceback)
    2        bad input, bad option value or usage, unwritable output, missing extra
    128 + N  ended by signal N: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP;
             temporary files are removed first
"""

from __future__ import annotations

import importlib.util
import signal

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "EXTRAS",
    "V2MError",
    "InputError",
    "BundleError",
    "BackendUnavailable",
    "OutputError",
    "NumericalError",
    "VideoTooLong",
    "Cancelled",
    "Terminated",
    "install_hint",
    "require",
    "signal_exit_code",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2

# Optional module -> the extra of `v2m-runtime` that installs it.
EXTRAS = {
    "torch": "torch",
    "onnx": "export",
    "onnxruntime": "ort",
    "tensorrt": "trt",
    "triton": "kernels",
    "transformers": "hf",
    "librosa": "eval",
    "scenedetect": "eval",
    "matplotlib": "eval",
}


class V2MError(Exception):
    """Base class of errors caused by input, configuration or environment."""

    exit_code = EXIT_USAGE


class InputError(V2MError):
    """The input video (or manifest, or prompt file, or an option value) cannot be used."""


class BundleError(V2MError):
    """A model bundle or checkpoint is missing, partial or mismatched."""


class BackendUnavailable(V2MError):
    """The requested backend (or its engine, or an optional package) cannot run on this machine."""


class OutputError(V2MError):
    """The output path cannot be written."""


class NumericalError(V2MError):
    """NaN or Inf appeared in latents or audio; nothing was written."""


class VideoTooLong(InputError):
    """The video lasts longer than the caller's limit (`--max-duration`): refused before or
    while decoding (HTTP 413 on the server)."""


class Cancelled(V2MError):
    """The caller abandoned the work (a timed-out or disconnected request, a server shutting
    down): decoding and encoding stop at the next packet or batch."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised where the main thread was, so everything unwinds
    (and removes its temporary files) as it does for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal that interrupted the run (SIGINT for a plain KeyboardInterrupt)."""
    return 128 + getattr(e, "signum", int(signal.SIGINT))


def install_hint(module: str, extra: str | None = None) -> str:
    """How to install an optional module: `pip install 'v2m-runtime[EXTRA]'` (from a checkout: `'.[EXTRA]'`)."""
    extra = extra or EXTRAS.get(module)
    if extra is None:
        return f"pip install {module}"
    hint = f"pip install 'v2m-runtime[{extra}]' (from a checkout: pip install '.[{extra}]')"
    if module == "torch":
        hint += "; for CUDA install torch from the PyTorch index first"
    return hint


def require(*modules: str, what: str, extra: str | None = None) -> None:
    """Raise `BackendUnavailable` (one line, with the extra to install) unless every module imports.

    Args:
        modules: top-level module names, e.g. "torch".
        what: what needs them, e.g. "`v2m init-model`".
        extra: the extra that installs them all (default: the first missing module's).
    """
    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(m)
    if missing:
        raise BackendUnavailable(
            f"{what} needs {' and '.join(missing)}, not installed here: {install_hint(missing[0], extra)}"
        )
