"""Resuming a log stream exactly (``services.execution.logs``: ``cursor``, ``after``/``skip``,
``tail_as_of``), what ``logs -f`` and the gateway use after a restart of the execution service.

What broke: a follower that lost the service had no position to come back to; a time alone is
none, since the shim gives every entry of one read the same time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from services.execution import logs
from services.shim.jsonlog import encode_entry, rfc3339_nano

T0 = 1_700_000_000 * 10**9


def _log(path: Path, entries: list[tuple[int, bytes, int]]) -> None:
    """Append ``(stream, data, ns)`` entries."""
    with open(path, "ab") as f:
        for stream, data, ns in entries:
            f.write(encode_entry(stream, data, ns))


def _all(reader: logs.LogReader, budget: int = logs.CHUNK) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        batch, done = reader.next_frames(budget)
        out += batch
        if done:
            reader.close()
            return out


def _data(frames: list[dict[str, Any]]) -> bytes:
    return b"".join(f["d"] for f in frames)


def _same_time_log(path: Path) -> list[tuple[int, bytes, int]]:
    """Three reads of three lines each (one time per read), stdout and stderr mixed."""
    entries = []
    for i in range(3):
        for j in range(3):
            entries.append((1 + (i % 2), b"r%d-l%d\n" % (i, j), T0 + i * 1000))
    _log(path, entries)
    return entries


def test_every_cut_resumes_exactly_after_the_last_entry_received(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    entries = _same_time_log(p)
    whole = b"".join(d for _, d, _ in entries)
    for timestamps, inline in ((False, False), (True, False), (True, True)):
        frames = _all(logs.LogReader(str(p), cursor=True, timestamps=timestamps, stamp_inline=inline), budget=40)
        assert all("c" in f for f in frames)
        for cut in range(len(frames) + 1):
            got = frames[:cut]
            cursor = frames[cut - 1]["c"] if cut else None
            if cursor is None:
                rest = _all(logs.LogReader(str(p), cursor=True, timestamps=timestamps, stamp_inline=inline))
            else:
                rest = _all(
                    logs.LogReader(str(p), after=(cursor[0], cursor[1]), timestamps=timestamps, stamp_inline=inline)
                )
            assert not any(f.get("gap") for f in rest)
            joined = _data(got + rest)
            if inline:  # every entry once, each with its time in front
                assert len(re.findall(rb"(?m)^\S+Z ", joined)) == len(entries)
                joined = re.sub(rb"(?m)^\S+Z ", b"", joined)
            assert joined == whole, (cut, timestamps, inline)


def test_a_cut_inside_one_read_counts_the_entries_at_its_time(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _same_time_log(p)
    stamp = rfc3339_nano(T0 + 1000)
    rest = _all(logs.LogReader(str(p), after=(stamp, 2), cursor=True))
    assert _data(rest) == b"r1-l2\nr2-l0\nr2-l1\nr2-l2\n"
    assert rest[-1]["c"] == [rfc3339_nano(T0 + 2000), 3]


def test_the_stream_filter_counts_only_accepted_entries(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _log(p, [(1, b"o1\n", T0), (2, b"e1\n", T0), (1, b"o2\n", T0), (1, b"o3\n", T0 + 5)])
    flt = logs.LogFilter(streams=frozenset({1}))
    frames = _all(logs.LogReader(str(p), flt, cursor=True, timestamps=True))
    assert [f["c"] for f in frames] == [[rfc3339_nano(T0), 1], [rfc3339_nano(T0), 2], [rfc3339_nano(T0 + 5), 1]]
    rest = _all(logs.LogReader(str(p), flt, after=(rfc3339_nano(T0), 1)))
    assert _data(rest) == b"o2\no3\n"


def test_a_cursor_rotated_out_gives_a_gap_frame_then_the_oldest_left(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _log(p, [(1, b"new-%d\n" % i, T0 + 10 + i) for i in range(3)])  # what is left after a rotation
    rest = _all(logs.LogReader(str(p), after=(rfc3339_nano(T0 + 5), 1), cursor=True))
    assert rest[0]["gap"] is True and rest[0]["d"] == b""
    assert _data(rest) == b"new-0\nnew-1\nnew-2\n"
    assert not any(f.get("gap") for f in rest[1:])
    # the cursor entry still there: no gap, even when it is the oldest entry left
    rest = _all(logs.LogReader(str(p), after=(rfc3339_nano(T0 + 10), 1)))
    assert _data(rest) == b"new-1\nnew-2\n" and not any(f.get("gap") for f in rest)


def test_resume_reads_across_rotated_files_and_follows(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _log(Path(f"{p}.1"), [(1, b"a%d\n" % i, T0 + i) for i in range(5)])
    _log(p, [(1, b"b%d\n" % i, T0 + 10 + i) for i in range(5)])
    reader = logs.LogReader(str(p), after=(rfc3339_nano(T0 + 3), 1), follow=True, cursor=True)
    batch, done = reader.next_frames()
    assert _data(batch) == b"a4\nb0\nb1\nb2\nb3\nb4\n" and done
    _log(p, [(2, b"late\n", T0 + 20)])
    batch, _ = reader.next_frames()
    assert batch == [{"s": 2, "d": b"late\n", "t": rfc3339_nano(T0 + 20), "c": [rfc3339_nano(T0 + 20), 1]}]
    reader.close()


def test_tail_as_of_takes_the_tail_then_gives_everything_later(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _log(p, [(1, b"old-%d\n" % i, T0 + i) for i in range(5)] + [(1, b"new-%d\n" % i, T0 + 100 + i) for i in range(3)])
    as_of = T0 + 50
    assert _data(_all(logs.LogReader(str(p), tail=2, tail_as_of_ns=as_of))) == b"old-3\nold-4\nnew-0\nnew-1\nnew-2\n"
    assert _data(_all(logs.LogReader(str(p), tail=0, tail_as_of_ns=as_of))) == b"new-0\nnew-1\nnew-2\n"
    assert _data(_all(logs.LogReader(str(p), tail=0, tail_as_of_ns=T0 - 1))) == _data(_all(logs.LogReader(str(p))))
    assert _data(_all(logs.LogReader(str(p), tail=0))) == b""


def test_an_after_that_is_no_time_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _log(p, [(1, b"x\n", T0)])
    try:
        logs.LogReader(str(p), after=("yesterday", 0))
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_a_tail_starting_among_entries_of_one_time_counts_those_before_it(tmp_path: Path) -> None:
    """Regression: ``seq 1 5`` is one read (five entries, one time); ``--tail 2`` sent 4 and 5
    with the cursor ``[time, 2]``, and the resume showed 3, 4 and 5 again."""
    p = tmp_path / "c-json.log"
    _log(p, [(1, b"%d\n" % i, T0) for i in range(1, 6)] + [(2, b"e\n", T0 + 1)])
    frames = _all(logs.LogReader(str(p), tail=3, cursor=True, timestamps=True))
    assert [f["c"] for f in frames] == [[rfc3339_nano(T0), 4], [rfc3339_nano(T0), 5], [rfc3339_nano(T0 + 1), 1]]
    rest = _all(logs.LogReader(str(p), after=(rfc3339_nano(T0), 4)))
    assert _data(rest) == b"5\ne\n"
    # a stream filter: only accepted entries count, and the tail may start at the end
    flt = logs.LogFilter(streams=frozenset({1}))
    reader = logs.LogReader(str(p), flt, tail=0, follow=True, cursor=True)
    assert reader.next_frames() == ([], True)
    _log(p, [(1, b"6\n", T0 + 1)])
    batch, _ = reader.next_frames()
    assert batch[0]["d"] == b"6\n" and batch[0]["c"] == [rfc3339_nano(T0 + 1), 1]
    reader.close()
