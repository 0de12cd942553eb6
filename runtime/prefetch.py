"""Run an iterator in a background thread, a few items ahead (PyAV decodes without the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

__all__ = ["prefetch"]


def prefetch(it: Iterator, depth: int = 2, stop: threading.Event | None = None) -> Iterator:
    """Run iterator `it` in a background thread (PyAV decodes without the GIL), `depth` items ahead.
    `stop` is set when the consumer leaves; an `it` that consults it (a `VideoReader` made with
    it as `cancel`) ends at once, and the thread is joined before this returns: none is left
    inside FFmpeg (a thread still there at interpreter exit aborts the process)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = stop or threading.Event()

    def work():
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    th = threading.Thread(target=work, name="v2m-decode", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():  # drain so the worker is not stuck on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(timeout=0.05)
