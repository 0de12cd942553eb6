"""The `v2m` command line: `main`, the top-level parser, and one module per command.

Every user-caused failure ends with one line on stderr (`v2m: error: ...`) and exit
code 2, before any heavy work wherever it can be known then: option values (see
`support.CHECKS`), the input video, the output path and what its container can
hold. `--debug` shows tracebacks. Results go to stdout (one JSON object with
`--json`), logs and the progress bar to stderr.

Exit codes: 0 ok; 1 internal error (a bug: rerun with --debug); 2 bad input, option
or usage, a full disk (batch mode: some video failed on its input, see summary.json);
128 + N when ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), temporary files
removed; 141 when stdout's reader went away (`| head`: 128 + SIGPIPE, no message).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from v2m.core import tempfiles
from v2m.core.errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    EXTRAS,
    V2MError,
    install_hint,
    signal_exit_code,
)
from v2m.runtime import __version__

from .support import ArgumentParser, UsageError, check_options

log = logging.getLogger("v2m.cli")

EXIT_PIPE = 141  # 128 + SIGPIPE: stdout closed by its reader (`| head`), as a shell reports coreutils

EXIT_CODES_HELP = """exit codes:
  0        success
  1        internal error: a bug (rerun with --debug for the traceback)
  2        bad input, option value or usage; unwritable output; a missing extra
           (batch mode: some videos failed on their input; see summary.json)
  128+N    ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); temporary files removed;
           141 (SIGPIPE): stdout was closed by its reader (`v2m ... --json | head`)"""




def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="v2m: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)



COMMANDS = ("demo", "init_model", "generate", "curve", "eval", "info", "export", "serve", "bench", "convert", "train",
            "prompt")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="v2m", description="Zero-pair video-to-music generation (V2M-Zero) runtime.",
        examples=["v2m demo -o demo.mp4",
                  "v2m generate clip.mp4 -o clip_music.mp4 --model tiny-bundle --prompt 'warm synth pop'",
                  "v2m generate clip.mp4 --help"],
    )
    p.epilog += "\n\n" + EXIT_CODES_HELP
    p.add_argument("--version", action="version", version=f"v2m {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging: -v info, -vv debug (default: warnings and errors only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:  # each command's module adds its own parser (`register`)
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def _missing_module(e: ImportError) -> str | None:
    """The optional package an ImportError is about (torch, onnx...), else None."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    return name if name in EXTRAS else None

def _silence_stdout() -> bool:
    """If stdout cannot take its buffered output (a closed pipe, a full disk), point it at
    os.devnull so that the flush at exit cannot fail again (Python's documented recipe for
    SIGPIPE); whether it was broken."""
    try:
        sys.stdout.flush()
        return False
    except OSError:
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file descriptor (captured in tests)
        pass
    return True

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"v2m: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    # SIGTERM / SIGHUP unwind like Ctrl-C (every `finally` runs, temporary files go).
    with tempfiles.signals_as_interrupts():
        try:
            check_options(args)  # every option value, before any work
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe or a full disk on stdout fails here, not at exit
            return code
        except BrokenPipeError:  # `v2m ... | head`: the reader is gone; exit quietly, like coreutils
            _silence_stdout()
            return EXIT_PIPE
        except V2MError as e:
            if args.debug:
                raise
            print(f"v2m: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt as e:
            tempfiles.remove_live()
            print(f"v2m: interrupted ({e.args[0] if e.args else 'SIGINT'})", file=sys.stderr)
            return signal_exit_code(e)
        except MemoryError:
            print("v2m: error: out of memory; try a smaller preset, a shorter clip or a GPU", file=sys.stderr)
            return EXIT_USAGE
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if args.debug:
                raise
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # anywhere, stdout too
                _silence_stdout()  # v2m's own files fail as OutputError, named: one without a name is stdout
                where = "standard output" if e.filename is None else e.filename
                print(f"v2m: error: {tempfiles.write_error(where, e)}", file=sys.stderr)
                return EXIT_USAGE
            module = _missing_module(e) if isinstance(e, ImportError) else None
            if module is not None:  # an optional package this command needs
                print(f"v2m: error: `v2m {args.command}` needs {module}, not installed here: "
                      f"{install_hint(module)}", file=sys.stderr)
                return EXIT_USAGE
            msg = str(e).splitlines()[0] if str(e) else ""
            print(f"v2m: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return EXIT_INTERNAL



if __name__ == "__main__":
    sys.exit(main())
