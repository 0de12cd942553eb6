"""Fixtures of the runtime tests: a simulated full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest


class FullDisk:
    """A binary file that takes `room` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, path: Path, room: int):
        self.f, self.room = open(path, "wb"), room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):  # seek, tell, flush, close: the real file's
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make the audio writer's file fail after `room` bytes: `full_disk(room=4096)`.

    Simulated in-process (the file object libsndfile writes into raises ENOSPC), so it
    runs anywhere; test_hostile_media also writes into a real 64 kB tmpfs where it can."""
    from v2m.runtime import media

    def set_room(room: int = 0) -> None:
        monkeypatch.setattr(media, "_open_for_write", lambda p: FullDisk(p, room))

    return set_room
