"""Reading a container's json-file log for ``logs``: filters, tail, follow across rotation.

The shim writes the log (``services.shim.jsonlog``); this side only reads it, so a
restarted execution service, or one that was down while the container wrote, shows
everything. ``Follower`` keeps the open file across a rotation (the renamed file is
read to its end before switching to the new one).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from typing import BinaryIO

from services.shim.jsonlog import Entry, decode_line, log_files


def select(
    entries: Iterable[Entry],
    *,
    streams: set[int],
    since_ns: int | None = None,
    until_ns: int | None = None,
    tail: int | None = None,
) -> list[Entry]:
    """Filter entries by stream and time window, keep the last ``tail`` (None = all)."""
    out: Iterable[Entry] = (
        e
        for e in entries
        if e.stream in streams
        and (since_ns is None or e.time_ns >= since_ns)
        and (until_ns is None or e.time_ns <= until_ns)
    )
    if tail is not None:
        if tail <= 0:
            return []
        return list(deque(out, maxlen=tail))
    return list(out)


class Follower:
    """Reads one log's entries from the beginning, then what is appended (see module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._files = log_files(path)
        self._f: BinaryIO | None = None
        self._ino = 0
        self._buf = b""

    def _open_next(self) -> bool:
        while self._files:
            name = self._files.pop(0)
            try:
                f = open(name, "rb")  # noqa: SIM115 - kept open while following
            except FileNotFoundError:
                continue
            if self._f is not None:
                self._f.close()
            self._f = f
            self._ino = os.fstat(f.fileno()).st_ino
            self._buf = b""
            return True
        return False

    def read(self) -> list[Entry]:
        """Entries appended since the last call (complete lines only)."""
        out: list[Entry] = []
        if self._f is None and not self._open_next():
            if os.path.exists(self.path):
                self._files = [self.path]
                if not self._open_next():
                    return out
            else:
                return out
        while True:
            assert self._f is not None
            data = self._f.read(1024 * 1024)
            if data:
                self._buf += data
                lines = self._buf.split(b"\n")
                self._buf = lines.pop()
                for line in lines:
                    entry = decode_line(line)
                    if entry is not None:
                        out.append(entry)
                continue
            if self._files:  # older rotated files still to read
                self._open_next()
                continue
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return out
            if st.st_ino != self._ino:  # rotated: what we hold is finished; switch
                self._files = [self.path]
                self._open_next()
                continue
            return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
