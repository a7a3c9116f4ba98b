"""Reading a container's json-file log for ``logs`` and ``attach --logs``: streaming, tail, follow.

The shim writes the log (``services.shim.jsonlog``); this side only reads it, so a
restarted execution service, or one that was down while the container wrote, shows
everything. Every read is bounded, whatever the size of the log:

- ``Follower`` reads forward in slices of at most ``CHUNK`` bytes and hands back the
  complete entries of each slice; the caller sends them before asking for more, so the
  memory held is one slice plus what the RPC layer's credit window lets through. It opens
  every file of the log (rotated ``.N`` ... ``.1``, then the live one) when it is made, so a
  rotation while it reads neither skips nor repeats a file; when following, a renamed live
  file is read to its end before switching to the new one.
- ``--tail N`` reads the files backwards from the end in ``BLOCK``-byte blocks
  (``reverse_lines``) and parses only the lines it walks over until it has counted N
  matching entries; the forward read then starts at that line. The cost is proportional
  to N (and to the lines the filters reject on the way), not to the size of the log.
- A line that is not a json-file entry (torn by a shim SIGKILLed mid-write, or garbage) is
  skipped; when a new writer appended a whole entry to a torn one, that entry is kept. A
  "line" longer than ``MAX_LINE`` bytes cannot be an entry (entries carry at most 16 KiB
  of output) and is skipped without being held in memory. Text after the last newline of
  a file is an entry still being written: it is not read until its newline arrives.

The filters follow Docker's ``logs`` options: ``streams`` (stdout/stderr), ``since`` and
``until`` (unix nanoseconds, inclusive), and ``tail`` keeps the last N entries among those
the other filters accept (a line longer than 16 KiB is several entries, as in Docker's
json-file log). Methods here block on file I/O: call them from a worker thread
(``asyncio.to_thread``), never on the event loop.

Resuming a stream (a client that lost the execution service mid-``logs -f``, ``common.resume``):
with ``cursor`` every frame says where the stream stands after it, as ``[time, n]``: the time
of the last entry sent and how many entries with exactly that time were sent (the shim
gives every entry of one read the same time, so a time alone is no position). A request
with ``after=time, skip=n`` starts right after that entry: the reader walks back from the
end to the last entry older than ``time`` (as ``tail`` does: the cost is what follows the
cursor), drops the first ``n`` accepted entries at ``time``, and sends the rest. The log is
in time order and rotation drops its oldest part, so everything after the cursor entry is
still there if that entry is; when fewer than ``n`` entries at ``time`` come before a later
one, the cursor entry was rotated out and a ``{"gap": true}`` frame says output in between
may be missing.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from services.shim.jsonlog import STREAM_IDS, Entry, log_files, parse_time

BLOCK = 64 * 1024
"""Bytes read per step when reading a file backwards (``reverse_lines``)."""
CHUNK = 1024 * 1024
"""Bytes read per ``Follower.read`` call at most."""
MAX_LINE = 1024 * 1024
"""A line longer than this is not a json-file entry (16 KiB of output, JSON-escaped, is far less)."""
FRAME_MAX = 64 * 1024
"""Output bytes joined into one frame at most (frames of one stream, without timestamps)."""

_ENTRY_START = b'{"log":'


@dataclass(frozen=True)
class LogFilter:
    """Which entries ``logs`` shows: ``streams`` (1 stdout, 2 stderr) and an inclusive time
    window in unix nanoseconds (None = unbounded)."""

    streams: frozenset[int] = field(default_factory=lambda: frozenset({1, 2}))
    since_ns: int | None = None
    until_ns: int | None = None

    def accepts(self, e: Entry) -> bool:
        return (
            e.stream in self.streams
            and (self.since_ns is None or e.time_ns >= self.since_ns)
            and (self.until_ns is None or e.time_ns <= self.until_ns)
        )


_base_seconds: dict[str, int] = {}


def _time_ns(stamp: str) -> int:
    """``parse_time`` with a fast path for the shim's own ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``
    (the seconds part is parsed once per second of log, not once per entry)."""
    if len(stamp) == 30 and stamp[19] == "." and stamp[29] == "Z" and stamp[20:29].isdigit():
        head = stamp[:19]
        base = _base_seconds.get(head)
        if base is None:
            base = parse_time(head + "Z")
            if len(_base_seconds) >= 4096:
                _base_seconds.clear()
            _base_seconds[head] = base
        return base + int(stamp[20:29])
    return parse_time(stamp)


_raw_decode = json.JSONDecoder().raw_decode


def _decode(line: bytes, times: bool) -> Entry | None:
    try:
        doc = line.decode("utf-8")
        obj, end = _raw_decode(doc)
        if end != len(doc) and doc[end:].strip():
            return None
        text = obj["log"]
        stream = STREAM_IDS.get(obj.get("stream", "stdout"), 1)
        stamp = obj.get("time") or ""
        data = text.encode("utf-8", errors="surrogateescape")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(stamp, str):
        stamp = ""
    ns = 0
    if times and stamp:
        try:
            ns = _time_ns(stamp)
        except ValueError:
            pass
    return Entry(stream, data, ns, stamp)


def decode(line: bytes, *, times: bool = True) -> Entry | None:
    """One json-file line (without its newline) as an Entry; None if it is not one.

    A torn entry followed by a whole one on the same line (a writer killed mid-write, then
    a new one appending) gives the whole one. ``times=False`` leaves ``time_ns`` 0 (not
    parsed; ``time``, the text, is always there) for readers that filter on no time.
    """
    entry = _decode(line, times)
    if entry is None:
        i = line.rfind(_ENTRY_START)
        if i > 0:
            entry = _decode(line[i:], times)
    return entry


def reverse_lines(
    f: BinaryIO, end: int, *, block: int = BLOCK, max_line: int = MAX_LINE
) -> Iterator[tuple[int, bytes]]:
    """The complete lines of ``f[0:end]``, last to first, as ``(offset, line)`` without the
    newline; ``offset`` is where the line starts. Text after the last newline is not a complete
    line and is not yielded. Reads ``block`` bytes per step; a line longer than ``max_line``
    comes as ``(offset, b"")`` without being held in memory. Stops early if the file shrank.
    """
    pos = end
    carry = b""  # start of the current line, read so far (its beginning is in an earlier block)
    oversize = False
    seen_newline = False
    while pos > 0:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        data = f.read(size)
        if len(data) != size:
            return  # truncated under us (rotation with max-file=1)
        parts = data.split(b"\n")
        if len(parts) == 1:
            if seen_newline and not oversize:
                carry = data + carry
                if len(carry) > max_line:
                    carry, oversize = b"", True
            continue
        last = parts[-1]
        start = pos + size - len(last)
        if seen_newline:
            yield start, (b"" if oversize else last + carry)
        seen_newline = True
        oversize = False
        newline_at = start - 1
        for part in reversed(parts[1:-1]):
            start = newline_at - len(part)
            yield start, part
            newline_at = start - 1
        carry = parts[0]
        if len(carry) > max_line:
            carry, oversize = b"", True
    if seen_newline:
        yield 0, (b"" if oversize else carry)


@dataclass
class _File:
    f: BinaryIO
    ino: int
    limit: int | None  # read no further than this offset (None: to EOF, following)


class Cursor:
    """Where a stream stands in the log: ``time`` (text) and ``ns`` of the last entry sent and
    ``n``, how many entries with that time were sent (see module docstring)."""

    def __init__(self, time: str = "", ns: int = -1, n: int = 0) -> None:
        self.time = time
        self.ns = ns
        self.n = n

    def advance(self, e: Entry) -> None:
        if e.time_ns == self.ns:
            self.n += 1
        else:
            self.time, self.ns, self.n = e.time, e.time_ns, 1

    def wire(self) -> list[Any]:
        return [self.time, self.n]


class Follower:
    """Reads one log's entries from the beginning (or a tail), then, when ``follow``, what is
    appended, across rotations (see module docstring). Without ``follow`` it reads what the
    files held when it was made and no more."""

    def __init__(self, path: str, *, follow: bool = False, times: bool = True) -> None:
        self.path = path
        self.follow = follow
        self.times = times  # parse entries' times (False: time_ns stays 0; see ``decode``)
        self._queue: list[_File] = []  # files still to read, oldest first
        self._cur: _File | None = None
        self._live_ino = 0
        self._buf = b""
        self._skipping = False  # inside a line longer than MAX_LINE
        self._open_all()

    def _open_all(self) -> None:
        opened: list[_File] = []
        seen: set[int] = set()
        # newest first: a rotation between two opens then repeats a file (dropped by inode)
        # instead of skipping one
        for name in reversed(log_files(self.path)):
            try:
                f = open(name, "rb")  # noqa: SIM115 - kept open while reading
            except FileNotFoundError:
                continue
            st = os.fstat(f.fileno())
            if st.st_ino in seen:
                f.close()
                continue
            seen.add(st.st_ino)
            if name == self.path:
                self._live_ino = st.st_ino
            opened.append(_File(f, st.st_ino, None if self.follow else st.st_size))
        opened.reverse()
        self._queue = opened

    def _files(self) -> list[_File]:
        return ([self._cur] if self._cur else []) + self._queue

    def seek_tail(self, n: int, flt: LogFilter, as_of_ns: int | None = None, *, cursor: bool = False) -> Cursor | None:
        """Position the reader so that it gives the last ``n`` entries ``flt`` accepts (then,
        when following, what comes after). Reads backwards from the end; an entry older than
        ``flt.since_ns`` ends the walk (the log is in time order). ``n <= 0``: start at the end.
        ``as_of_ns``: count only entries logged at or before it (later ones are all given).
        ``cursor``: return the cursor of the last entry before the start (``Cursor``: its time
        and how many entries ``flt`` accepts have that time up to it), None if there is none."""
        files = self._files()
        if not files:
            return None
        start_idx, start_off = 0, 0
        count = 0
        found = False
        for idx in range(len(files) - 1, -1, -1):
            fl = files[idx]
            end = fl.limit if fl.limit is not None else os.fstat(fl.f.fileno()).st_size
            if n <= 0 and as_of_ns is None:
                start_idx, start_off, found = idx, self._complete_end(fl.f, end), True
                break
            for off, line in reverse_lines(fl.f, end):
                e = decode(line)
                if e is None:
                    continue
                if flt.since_ns is not None and e.time_ns < flt.since_ns:
                    start_idx, start_off, found = idx, off + len(line) + 1, True
                    break
                if as_of_ns is not None and e.time_ns > as_of_ns:
                    continue  # logged after the tail's moment: given whatever n is
                if n <= 0:  # the first entry of the tail's moment ends it
                    start_idx, start_off, found = idx, off + len(line) + 1, True
                    break
                if flt.accepts(e):
                    count += 1
                    if count >= n:
                        start_idx, start_off, found = idx, off, True
                        break
            if found:
                break
        before = self._cursor_before(files[: start_idx + 1], start_off, flt) if cursor else None
        for fl in files[:start_idx]:
            fl.f.close()
        for fl in files[start_idx + 1 :]:
            fl.f.seek(0)
        files[start_idx].f.seek(start_off)
        self._cur = None
        self._queue = files[start_idx:]
        self._buf = b""
        self._skipping = False
        return before

    @staticmethod
    def _cursor_before(files: list[_File], end: int, flt: LogFilter) -> Cursor | None:
        """The cursor of the last entry before offset ``end`` of ``files[-1]`` (see ``seek_tail``):
        entries of one time are counted back to the first of them, accepted ones only."""
        cur: Cursor | None = None
        for idx in range(len(files) - 1, -1, -1):
            f = files[idx].f
            stop = end if idx == len(files) - 1 else os.fstat(f.fileno()).st_size
            for _off, line in reverse_lines(f, stop):
                e = decode(line)
                if e is None:
                    continue
                if cur is None:
                    cur = Cursor(e.time, e.time_ns, 0)
                elif e.time_ns != cur.ns:
                    return cur
                if flt.accepts(e):
                    cur.n += 1
        return cur

    @staticmethod
    def _complete_end(f: BinaryIO, end: int) -> int:
        """The offset just past the last newline of ``f[0:end]`` (0 if none)."""
        pos = end
        while pos > 0:
            size = min(BLOCK, pos)
            pos -= size
            f.seek(pos)
            i = f.read(size).rfind(b"\n")
            if i >= 0:
                return pos + i + 1
        return 0

    def read(self, budget: int = CHUNK) -> tuple[list[Entry], bool]:
        """The complete entries in the next ``budget`` bytes (at most) of the log, and whether
        the reader caught up with the end (False: call again at once for more)."""
        out: list[Entry] = []
        while budget > 0:
            cur = self._cur
            if cur is None:
                if self._queue:
                    self._switch()
                    continue
                if self.follow and self._open_live():
                    continue
                return out, True
            want = budget if cur.limit is None else min(budget, cur.limit - cur.f.tell())
            data = cur.f.read(want) if want > 0 else b""
            if data:
                budget -= len(data)
                self._feed(data, out)
                continue
            if self._queue:  # older files still to read, or a rotated live file drained
                self._switch()
                continue
            if not self.follow:
                return out, True
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return out, True
            if st.st_ino != cur.ino:
                # rotated: read what was written to the old file before the rename, then switch
                if self._open_live():
                    continue
                return out, True
            if st.st_size < cur.f.tell():  # truncated in place (max-file=1)
                cur.f.seek(0)
                self._buf, self._skipping = b"", False
                continue
            return out, True
        return out, False

    def _open_live(self) -> bool:
        """Queue the live file if it is one we have not opened yet."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open while reading
        except FileNotFoundError:
            return False
        ino = os.fstat(f.fileno()).st_ino
        if ino == self._live_ino and self._cur is not None:
            f.close()
            return False
        self._live_ino = ino
        self._queue.append(_File(f, ino, None))
        return True

    def _switch(self) -> None:
        if self._cur is not None:
            self._cur.f.close()
        self._cur = self._queue.pop(0)
        self._buf, self._skipping = b"", False  # a torn end of the previous file is dropped

    def _feed(self, data: bytes, out: list[Entry]) -> None:
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._skipping = False
        buf = self._buf + data if self._buf else data
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_LINE:
            self._buf, self._skipping = b"", True
        times = self.times
        for line in lines:
            e = decode(line, times=times)
            if e is not None:
                out.append(e)

    def close(self) -> None:
        for fl in self._files():
            fl.f.close()
        self._cur = None
        self._queue = []


def frames(
    entries: Iterable[Entry], timestamps: bool, *, inline: bool = False, cursor: Cursor | None = None
) -> list[dict[str, Any]]:
    """Entries as ``{s, d, t}`` frames (``LogFrame``). With ``timestamps`` and not ``inline``:
    one frame per entry, its time in ``t``. Otherwise runs of one stream are joined up to
    ``FRAME_MAX`` bytes (``t`` is the first entry's time); ``timestamps`` with ``inline``
    writes each entry's time and a space into ``d`` before its output (Docker's ``logs -t``).
    ``cursor``: advanced over the entries; every frame gets ``c``, the cursor after it."""
    if timestamps and not inline:
        if cursor is None:
            return [{"s": e.stream, "d": e.data, "t": e.time} for e in entries]
        out1 = []
        for e in entries:
            cursor.advance(e)
            out1.append({"s": e.stream, "d": e.data, "t": e.time, "c": cursor.wire()})
        return out1
    stamp = timestamps and inline
    out: list[dict[str, Any]] = []
    parts: list[bytes] = []
    size = 0
    first: Entry | None = None
    for e in entries:
        if first is not None and (e.stream != first.stream or size >= FRAME_MAX):
            out.append({"s": first.stream, "d": b"".join(parts), "t": first.time})
            if cursor is not None:
                out[-1]["c"] = cursor.wire()
            parts, size, first = [], 0, None
        if first is None:
            first = e
        if stamp:
            parts.append(e.time.encode() + b" ")
            size += len(parts[-1])
        parts.append(e.data)
        size += len(e.data)
        if cursor is not None:
            cursor.advance(e)
    if first is not None:
        out.append({"s": first.stream, "d": b"".join(parts), "t": first.time})
        if cursor is not None:
            out[-1]["c"] = cursor.wire()
    return out


class LogReader:
    """One ``logs`` request's reading: filter, tail, frames, slice by slice.

    ``next_frames()`` blocks on file I/O (call it from a worker thread); ``close()`` may be
    called from another thread at any time and waits for a slice being read.
    """

    def __init__(
        self,
        path: str,
        flt: LogFilter | None = None,
        *,
        tail: int | None = None,
        follow: bool = False,
        timestamps: bool = False,
        stamp_inline: bool = False,
        cursor: bool = False,
        after: tuple[str, int] | None = None,
        tail_as_of_ns: int | None = None,
    ) -> None:
        """``cursor``: frames carry ``c``; ``after``: ``(time, skip)`` to resume from (raises
        ValueError for a time that is not RFC 3339); see the module docstring."""
        self.path = path
        self.flt = flt or LogFilter()
        self.tail = tail
        self.follow = follow
        self.timestamps = timestamps
        self.stamp_inline = stamp_inline
        self.tail_as_of_ns = tail_as_of_ns
        self.cursor: Cursor | None = None
        self._after_ns: int | None = None  # entries up to the cursor are dropped while set
        self._skip = 0
        if after is not None:
            self._after_ns = parse_time(after[0])
            self._skip = after[1]
            self.cursor = Cursor(after[0], self._after_ns, after[1])
        elif cursor:
            self.cursor = Cursor()
        self._lock = threading.Lock()
        self._follower: Follower | None = None
        self._closed = False
        self._past_until = False

    def next_frames(self, budget: int = CHUNK) -> tuple[list[dict[str, Any]], bool]:
        """Frames of the entries in the next ``budget`` bytes of the log (at most), and whether
        the end was reached (without ``follow``: the log is done; with it: wait for more)."""
        with self._lock:
            if self._closed or self._past_until:
                return [], True
            if self._follower is None:
                times = self.flt.since_ns is not None or self.flt.until_ns is not None or self.cursor is not None
                self._follower = Follower(self.path, follow=self.follow, times=times)
                if self._after_ns is not None:  # back to the last entry older than the cursor
                    self._follower.seek_tail(1 << 62, LogFilter(since_ns=self._after_ns))
                elif self.tail is not None and self.tail >= 0:
                    # a tail may start among entries of one time: the cursor counts those before it
                    before = self._follower.seek_tail(
                        self.tail, self.flt, self.tail_as_of_ns, cursor=self.cursor is not None
                    )
                    if before is not None:
                        self.cursor = before
            entries, caught_up = self._follower.read(budget)
            until = self.flt.until_ns
            if not self.follow and until is not None and entries and entries[-1].time_ns > until:
                self._past_until = True  # the log is in time order: nothing later can match
                caught_up = True
            accepted: Iterable[Entry] = (e for e in entries if self.flt.accepts(e))
            gap = False
            if self._after_ns is not None:
                accepted, gap = self._past_cursor(accepted)
                wire = self.cursor.wire() if self.cursor is not None else None
            out = frames(accepted, self.timestamps, inline=self.stamp_inline, cursor=self.cursor)
            if gap:
                out.insert(0, {"s": 1, "d": b"", "t": "", "c": wire, "gap": True})
            return out, caught_up

    def _past_cursor(self, entries: Iterable[Entry]) -> tuple[list[Entry], bool]:
        """``entries`` without those up to the resume cursor, and whether the cursor entry
        turned out to be gone (rotated out: a gap)."""
        out: list[Entry] = []
        gap = False
        after = self._after_ns
        for e in entries:
            if after is None:
                out.append(e)
            elif e.time_ns < after:
                continue  # sent before the cursor entry
            elif e.time_ns == after:
                if self._skip > 0:
                    self._skip -= 1
                else:
                    out.append(e)
            else:
                gap = self._skip > 0
                after = self._after_ns = None
                out.append(e)
        return out, gap

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._follower is not None:
                self._follower.close()
                self._follower = None
