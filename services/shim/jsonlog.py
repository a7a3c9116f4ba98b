"""Docker's json-file log format: writing (with rotation) and reading.

One JSON object per line, ``{"log": "<text>", "stream": "stdout"|"stderr", "time":
"<RFC 3339 with nanoseconds>Z"}``, as Docker's json-file driver writes it. A line of
output is one entry ending in ``\\n``; a line longer than 16 KiB is split into 16 KiB
entries without ``\\n`` (Docker does the same), and output that ends without a newline
becomes a last entry without one, so concatenating the ``log`` strings of a stream gives
back the exact bytes written.

Binary output: bytes that are not UTF-8 are kept as lone surrogates (Python's
``surrogateescape``), which JSON writes as ``\\udcXX`` escapes. Docker-compatible readers
see U+FFFD there (what Docker itself would have stored); ``read_entries`` gives back the
exact bytes.

Rotation (``max-size``/``max-file``): when the live file passes ``max_size`` bytes it is
renamed ``<file>.1`` (older ones shift to ``.2`` ...), keeping ``max_files`` files in all.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ENTRY = 16 * 1024
STREAMS = {1: "stdout", 2: "stderr"}
STREAM_IDS = {"stdout": 1, "stderr": 2}


def rfc3339_nano(ns: int) -> str:
    """Format a unix time in nanoseconds as Docker does: ``2024-01-01T00:00:00.123456789Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_time(value: str) -> int:
    """Parse an RFC 3339 time (up to nanoseconds) into unix nanoseconds."""
    value = value.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    frac_ns = 0
    if "." in value:
        head, rest = value.split(".", 1)
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        tz = rest[i:]
        frac_ns = int((digits + "000000000")[:9])
        value = head + tz
    base = dt.datetime.fromisoformat(value)
    if base.tzinfo is None:
        base = base.replace(tzinfo=dt.UTC)
    return int(base.timestamp()) * 1_000_000_000 + frac_ns


_encode_string = json.encoder.encode_basestring  # json.dumps(str, ensure_ascii=False), in C


def _entry_tail(stream: int, ns: int) -> bytes:
    """What follows the ``log`` value in every entry of one chunk: the stream and the time."""
    return f',"stream":"{STREAMS[stream]}","time":"{rfc3339_nano(ns)}"}}\n'.encode()


def _encode(data: bytes, tail: bytes) -> bytes:
    # lone surrogates (bytes that are not UTF-8) come out as \udcXX escapes, as json.dumps writes them
    text = _encode_string(data.decode("utf-8", errors="surrogateescape"))
    return b'{"log":' + text.encode("utf-8", errors="backslashreplace") + tail


def encode_entry(stream: int, data: bytes, ns: int) -> bytes:
    """One json-file line (with its trailing newline) for ``data`` of ``stream``."""
    return _encode(data, _entry_tail(stream, ns))


class LogWriter:
    """Appends output to a json-file log, splitting lines and rotating (see module docstring)."""

    def __init__(self, path: str, *, max_size: int = 0, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, max_files)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._partial: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def write(self, stream: int, data: bytes) -> None:
        """Log a chunk of ``stream`` output (complete lines now, the rest when it ends).

        Every entry of a chunk has the chunk's time (the time it was read, as Docker's).
        """
        buf = self._partial[stream]
        buf += data
        end = buf.rfind(b"\n") + 1
        if not end and len(buf) < MAX_ENTRY:
            return  # no complete line yet
        tail = _entry_tail(stream, time.time_ns())
        lines = bytes(buf[:end]).split(b"\n")[:-1] if end else []
        if all(len(line) < MAX_ENTRY for line in lines):
            out = [_encode(line + b"\n", tail) for line in lines]
            start = end
        else:
            out, start = [], 0
        while True:  # lines of 16 KiB or more (split as Docker does), and what follows the last newline
            nl = buf.find(b"\n", start, start + MAX_ENTRY)
            if nl >= 0:
                stop = nl + 1
            elif len(buf) - start >= MAX_ENTRY:
                stop = start + MAX_ENTRY
            else:
                break
            out.append(_encode(bytes(buf[start:stop]), tail))
            start = stop
        del buf[:start]
        if out:
            self._append_entries(out)

    def partial(self) -> dict[int, bytes]:
        """What waits for its line's end, per stream (1, 2) that has some."""
        return {s: bytes(b) for s, b in self._partial.items() if b}

    def restore_partial(self, held: dict[int, bytes]) -> None:
        """Take back what ``partial`` returned (a shim back from its idle monitor)."""
        for s, data in held.items():
            self._partial[s] = bytearray(data)

    def flush_partial(self, stream: int | None = None) -> None:
        """Write what is left of a line without newline (the stream ended)."""
        ns = time.time_ns()
        for s in (stream,) if stream else (1, 2):
            buf = self._partial[s]
            if buf:
                self._append_entries([encode_entry(s, bytes(buf), ns)])
                buf.clear()

    def _append_entries(self, entries: list[bytes]) -> None:
        """Write entries, rotating before one that would take the file past ``max_size`` (as Docker)."""
        if not self.max_size:
            self._write(b"".join(entries))
            return
        batch: list[bytes] = []
        size = self._size
        for entry in entries:
            if size and size + len(entry) > self.max_size:
                if batch:
                    self._write(b"".join(batch))
                    batch = []
                self._rotate()
                size = 0
            batch.append(entry)
            size += len(entry)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.max_files <= 1:
            os.truncate(self.path, 0)
        else:
            oldest = f"{self.path}.{self.max_files - 1}"
            if os.path.exists(oldest):
                os.unlink(oldest)
            for i in range(self.max_files - 2, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        """Flush partial lines and close the file."""
        if self._fd >= 0:
            self.flush_partial()
            os.close(self._fd)
            self._fd = -1


@dataclass
class Entry:
    stream: int
    data: bytes
    time_ns: int
    time: str


def decode_line(line: bytes) -> Entry | None:
    """Parse one json-file line; None for a torn or malformed line."""
    try:
        obj = json.loads(line)
        text = obj["log"]
        stream = STREAM_IDS.get(obj.get("stream", "stdout"), 1)
        stamp = obj.get("time") or ""
    except (ValueError, KeyError, TypeError):
        return None
    data = text.encode("utf-8", errors="surrogateescape")
    try:
        ns = parse_time(stamp) if stamp else 0
    except ValueError:
        ns = 0
    return Entry(stream, data, ns, stamp)


def log_files(path: str) -> list[str]:
    """The files of one log, oldest first (rotated ``.N`` ... ``.1``, then the live one)."""
    rotated = []
    base = os.path.basename(path)
    try:
        for name in os.listdir(os.path.dirname(path)):
            if name.startswith(base + ".") and name[len(base) + 1 :].isdigit():
                rotated.append((int(name[len(base) + 1 :]), os.path.join(os.path.dirname(path), name)))
    except FileNotFoundError:
        return []
    files = [p for _, p in sorted(rotated, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


def read_entries(path: str) -> Iterator[Entry]:
    """Every entry of a log (rotated files first), skipping torn lines."""
    for name in log_files(path):
        try:
            with open(name, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    entry = decode_line(line)
                    if entry is not None:
                        yield entry
        except FileNotFoundError:
            continue
