"""Temporary files of atomic writes, and cleaning them up: on errors, on signals, after SIGKILL.

Every output (audio, muxed video, batch sidecars and summaries) is written to a
hidden temporary file next to it, flushed to disk, and renamed over the output
only once complete, so a failure never leaves a half-written output.

- An exception (a full disk, Ctrl-C) removes the temporary file on the way out.
- SIGTERM and SIGHUP (`kill`, `timeout`, `docker stop`, systemd, a closed
  terminal) are turned into `Terminated`, a `KeyboardInterrupt`, inside
  `signals_as_interrupts()`: the same unwinding as Ctrl-C, then exit 128 + signal.
  Later signals are ignored while it unwinds.
- SIGKILL (or a power cut) cannot be caught. The temporary file's name says who
  made it: `.{stem}.{host}.{pid}.{token}.v2m-tmp{suffix}`. The next v2m run that
  writes into that directory removes it when it is stale: made on this host by a
  process that is no longer running, or not modified for `STALE_AFTER_S` (a live
  writer keeps its file's mtime fresh), whoever made it. The stem is cut to
  `_STEM_BYTES` bytes, so any output name that the file system allows has a temp name.
- Scratch folders (`owned_dir`, e.g. the server's `v2m-serve-HOST.PID.XXXX`) carry their
  maker the same way; `clean_dead_dirs` removes those of processes on this host that are
  no longer running (a folder has no age rule: a live server's may sit idle for days).
- The renamed file gets the mode a plain open() would give (0o666 less the umask),
  whatever its writer made the temporary file with (safetensors and mkstemp use 0o600).
- An existing output that is not a regular file (a character device such as
  /dev/null or /dev/full, a FIFO) is never replaced: the temporary file is made in
  the system's temp folder and its bytes are copied into the output in place.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, Terminated

__all__ = [
    "STALE_AFTER_S",
    "atomic_output",
    "clean_dead_dirs",
    "clean_stale",
    "check_name_length",
    "is_special",
    "owned_dir",
    "is_temp_name",
    "remove_live",
    "signals_as_interrupts",
    "temp_path",
    "write_error",
]

log = logging.getLogger("v2m.tempfiles")

STALE_AFTER_S = 3 * 3600  # a temp file untouched this long is dead, whoever made it
_TEMP_RE = re.compile(
    r"^\.(?P<stem>.*)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.v2m-tmp(?P<suffix>\.[^.]*)?$"
)
_STEM_BYTES = 40  # of the output's stem in a temp name: with host (40), pid, token and suffix, < NAME_MAX
_live: set[Path] = set()  # temp files of this process, removed by `remove_live`
_cleaned: set[str] = set()  # directories already swept by this process
_lock = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"


def is_temp_name(name: str) -> bool:
    """Whether `name` is a v2m temporary file's name."""
    return _TEMP_RE.match(name) is not None


def _advice(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or write elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the permissions or write elsewhere"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return "the output folder is gone; create it again or write elsewhere"
    return "check free space and permissions"


def write_error(path: str | os.PathLike, e: BaseException) -> OutputError:
    """The one-line `OutputError` for a failed write of `path`."""
    msg = " ".join(str(getattr(e, "strerror", None) or e or type(e).__name__).split())
    advice = _advice(e) if isinstance(e, OSError) else "check free space and permissions"
    return OutputError(f"cannot write {path} ({msg}); {advice}")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder (yet), or not POSIX
        return 255


def check_name_length(path: str | os.PathLike) -> None:
    """Raise a one-line `OutputError` if `path`'s file name is longer than its folder allows."""
    path = Path(path)
    limit = _name_max(path.parent)
    size = len(os.fsencode(path.name))
    if size > limit:
        raise OutputError(f"output name {path.name[:40]}... is {size} bytes long, over the file system's "
                          f"limit of {limit}; choose a shorter name")


def _short_stem(stem: str) -> str:
    """`stem` cut to `_STEM_BYTES` bytes (never inside a UTF-8 character)."""
    return os.fsencode(stem)[:_STEM_BYTES].decode("utf-8", "ignore")


def is_special(path: Path) -> bool:
    """Whether `path` exists and is neither a regular file nor a folder (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def temp_path(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> Path:
    """Create a fresh, empty hidden temporary file next to `path` and return its name.

    It keeps `path`'s suffix (muxers pick the format by it). Stale temporary files
    of earlier runs in that directory are removed first (once per directory).

    Args:
        directory: where to make it instead of `path`'s folder.

    Raises:
        OutputError: the directory cannot be written (missing, read-only, full).
    """
    path = Path(path)
    folder = path.parent if directory is None else Path(directory)
    clean_stale(folder)
    while True:
        tmp = folder / f".{_short_stem(path.stem)}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.v2m-tmp{path.suffix}"
        try:
            # Created with 0o666 so the umask applies, like a plain open().
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        except OSError as e:
            raise write_error(path, e) from None
        with _lock:
            _live.add(tmp)
        return tmp


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove the temporary file %s (%s)", tmp, e.strerror)
    with _lock:
        _live.discard(tmp)


def _umask() -> int:
    """This process's umask (read from /proc where it can be, so nothing changes it even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _copy_into(tmp: Path, path: Path) -> None:
    """Copy `tmp`'s bytes into the existing non-regular file `path` (opened without O_CREAT or
    O_TRUNC: a device or FIFO is written, never replaced or created)."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
    try:
        with open(tmp, "rb") as src:
            while chunk := src.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike, errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary file next to `path`; when the block ends normally, flush it to
    disk and rename it over `path` (mode 0o666 less the umask). On any exception the
    temporary file is removed. An existing device or FIFO `path` is written in place
    (the temporary file is then in the system's temp folder).

    Args:
        path: the output.
        errors: exception types (besides OSError) that mean the write failed: they
            become a one-line `OutputError`.

    Raises:
        OutputError: the name is too long for its folder, or the write or the rename
            failed (no file is left).
    """
    path = Path(path)
    special = is_special(path)
    if not special:
        check_name_length(path)
    tmp = temp_path(path, tempfile.gettempdir()) if special else temp_path(path)
    try:
        try:
            yield tmp
            if special:  # a device or FIFO: written in place, never replaced
                _copy_into(tmp, path)
            else:
                _fsync(tmp)
                os.chmod(tmp, 0o666 & ~_umask())  # what open() would give, not the writer's 0o600
                os.replace(tmp, path)
        except (OSError, *errors) as e:
            raise write_error(path, e) from e
    finally:
        _discard(tmp)


def remove_live() -> list[Path]:
    """Remove every temporary file this process is still writing (after a signal)."""
    with _lock:
        live = list(_live)
    for tmp in live:
        _discard(tmp)
    return live


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would send a signal there; rely on the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _dead_owner(host: str, pid: int) -> bool:
    """Made on this host by another process that is no longer running."""
    return host == _host() and pid != os.getpid() and not _alive(pid)


def owned_dir(parent: str | os.PathLike | None, prefix: str) -> Path:
    """A new folder `{prefix}{host}.{pid}.{random}` in `parent` (None: the system's temp dir)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_host()}.{os.getpid()}.", dir=parent))


def clean_dead_dirs(parent: str | os.PathLike | None, prefix: str) -> list[Path]:
    """Remove the `owned_dir(parent, prefix)` folders whose process is gone (killed with SIGKILL,
    say). Returns what was removed."""
    import tempfile

    parent = Path(parent if parent is not None else tempfile.gettempdir())
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    for name in names:
        host, _, rest = name[len(prefix):].partition(".")
        pid = rest.partition(".")[0]
        path = parent / name
        if not pid.isdigit() or not _dead_owner(host, int(pid)) or path.is_symlink() or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by process %s, which is no longer running", path, pid)
        removed.append(path)
    return removed


def _stale_reason(name: str, path: Path, now: float) -> str | None:
    m = _TEMP_RE.match(name)
    if m is None:
        return None
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return None
    pid, host = int(m["pid"]), m["host"]
    if _dead_owner(host, pid):
        return f"left by process {pid}, which is no longer running"
    if age > STALE_AFTER_S and not (host == _host() and pid == os.getpid()):
        return f"left by process {pid} on {host}, untouched for {age / 3600:.1f} h"
    return None


def clean_stale(directory: str | os.PathLike, force: bool = False) -> list[Path]:
    """Remove the stale v2m temporary files in `directory` (see the module docstring).

    Each directory is swept once per process unless `force`. Returns what was removed.
    """
    directory = Path(directory)
    key = os.path.realpath(directory)
    with _lock:
        if key in _cleaned and not force:
            return []
        _cleaned.add(key)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed, now = [], time.time()
    for name in names:
        path = directory / name
        reason = _stale_reason(name, path, now)
        if reason is None or path in _live:
            continue
        try:
            path.unlink()
        except OSError as e:
            log.warning("could not remove the stale temporary file %s (%s)", path, e.strerror)
            continue
        log.info("removed the stale temporary file %s (%s)", path, reason)
        removed.append(path)
    return removed


@contextmanager
def signals_as_interrupts(signums: tuple[str, ...] = ("SIGINT", "SIGTERM", "SIGHUP")) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` in the main thread (a
    `KeyboardInterrupt`: everything unwinds as for Ctrl-C), and SIGINT raises
    `KeyboardInterrupt`. After the first, all of them are ignored, so a second signal
    (a second Ctrl-C, `kill` twice, a closing terminal) cannot break the cleanup or
    end the process by signal: it still exits 128 + the first signal. They stay
    ignored after the block once one arrived (the process is on its way out);
    otherwise the previous handlers come back. A signal ignored on entry (`nohup`, a
    background job's SIGINT) stays ignored. Outside the main thread this does nothing
    (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}
    arrived: list[int] = []

    def handler(signum, frame):
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        arrived.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    for name in signums:
        s = getattr(signal, name, None)
        if s is not None and signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        if not arrived:
            for s, h in previous.items():
                signal.signal(s, h)
