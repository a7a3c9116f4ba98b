"""The execution service's json-file log reader (``services.execution.logs``): the backwards
line reader under ``--tail``, tail across rotated files, filters, torn lines, bounded slices,
and following across a rotation. Regression for ``logs`` of a big log reading the whole file
at once (and ``--tail 5`` parsing all of it)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from services.execution import logs
from services.shim.jsonlog import Entry, LogWriter, encode_entry, log_files

T0 = 1_700_000_000 * 10**9


def _rev(data: bytes, block: int, max_line: int = logs.MAX_LINE) -> list[tuple[int, bytes]]:
    return list(logs.reverse_lines(io.BytesIO(data), len(data), block=block, max_line=max_line))


def _expected(data: bytes) -> list[tuple[int, bytes]]:
    """Complete lines of ``data`` with their offsets, last first (the slow, obvious way)."""
    out = []
    off = 0
    for line in data.split(b"\n")[:-1]:
        out.append((off, line))
        off += len(line) + 1
    return out[::-1]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 16, 64, 4096])
def test_reverse_lines_match_forward_split_at_every_block_size(block: int) -> None:
    data = b"".join(b"line-%d-" % i + b"y" * (i % 23) + b"\n" for i in range(200)) + b"\n\nlast\n"
    assert _rev(data, block) == _expected(data)


@pytest.mark.parametrize("block", [1, 5, 8, 9, 64])
def test_reverse_lines_on_block_boundaries_and_lines_longer_than_a_block(block: int) -> None:
    data = b"1234567\n" * 4 + b"z" * 100 + b"\n" + b"a\n"  # lines end exactly on 8-byte blocks
    assert _rev(data, block) == _expected(data)
    assert _rev(data, block)[1] == (32, b"z" * 100)


def test_reverse_lines_skip_the_unterminated_end_and_handle_empty_input() -> None:
    assert _rev(b"", 4) == []
    assert _rev(b"no newline at all", 4) == []
    assert _rev(b"a\nb\npartial", 3) == [(2, b"b"), (0, b"a")]
    assert _rev(b"\n", 4) == [(0, b"")]


def test_reverse_lines_drop_an_oversized_line_without_holding_it() -> None:
    data = b"first\n" + b"x" * 1000 + b"\nlast\n"
    assert _rev(data, 16, max_line=100) == [(1007, b"last"), (6, b""), (0, b"first")]


def _write(path: Path, lines: list[tuple[int, bytes]], *, start_ns: int = T0) -> None:
    with open(path, "ab") as f:
        for i, (stream, data) in enumerate(lines):
            f.write(encode_entry(stream, data, start_ns + i * 1000))


def _data(entries: list[Entry]) -> list[bytes]:
    return [e.data for e in entries]


def _read_all(
    path: Path, *, tail: int | None = None, flt: logs.LogFilter | None = None, budget: int = 1 << 20
) -> list[bytes]:
    fo = logs.Follower(str(path))
    try:
        if tail is not None:
            fo.seek_tail(tail, flt or logs.LogFilter())
        out: list[Entry] = []
        while True:
            entries, done = fo.read(budget)
            out += [e for e in entries if (flt or logs.LogFilter()).accepts(e)]
            if done:
                return _data(out)
    finally:
        fo.close()


def test_tail_gives_the_last_n_and_n_larger_than_the_log_gives_all(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _write(p, [(1, b"%d\n" % i) for i in range(1000)])
    assert _read_all(p, tail=3) == [b"997\n", b"998\n", b"999\n"]
    assert _read_all(p, tail=1) == [b"999\n"]
    assert _read_all(p, tail=0) == []
    assert len(_read_all(p, tail=5000)) == 1000
    assert _read_all(p, tail=1000)[0] == b"0\n"


def test_tail_of_an_empty_or_missing_log(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    assert _read_all(p, tail=3) == []
    p.write_bytes(b"")
    assert _read_all(p, tail=3) == []
    assert _read_all(p) == []


def test_tail_reads_a_few_blocks_not_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c-json.log"
    line = encode_entry(1, b"%07d\n", T0)  # a template: "log":"%07d\\n"
    p.write_bytes(b"".join(line % i for i in range(200_000)))  # ~16 MB
    parsed = 0
    real = logs.decode

    def counting(line: bytes, *, times: bool = True) -> Entry | None:
        nonlocal parsed
        parsed += 1
        return real(line, times=times)

    monkeypatch.setattr(logs, "decode", counting)
    assert _read_all(p, tail=5) == [b"%07d\n" % i for i in range(199_995, 200_000)]
    assert parsed <= 10  # the 5 counted backwards, then the same 5 read forward


def test_tail_counts_only_entries_the_filters_accept(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _write(p, [(1, b"o%d\n" % i) if i % 3 else (2, b"e%d\n" % i) for i in range(30)])
    stderr = logs.LogFilter(frozenset({2}))
    assert _read_all(p, tail=2, flt=stderr) == [b"e24\n", b"e27\n"]
    since = logs.LogFilter(since_ns=T0 + 25 * 1000)
    assert _read_all(p, tail=100, flt=since) == [b"o25\n", b"o26\n", b"e27\n", b"o28\n", b"o29\n"]
    until = logs.LogFilter(until_ns=T0 + 10 * 1000)
    assert _read_all(p, tail=2, flt=until) == [b"e9\n", b"o10\n"]


def test_tail_across_rotated_files(tmp_path: Path) -> None:
    p = tmp_path / "r-json.log"
    w = LogWriter(str(p), max_size=1000, max_files=3)
    for i in range(200):
        w.write(1, f"line {i:04d}\n".encode())
    w.close()
    assert len(log_files(str(p))) == 3
    everything = _read_all(p)
    assert everything[-1] == b"line 0199\n"
    assert _read_all(p, tail=len(everything) - 2) == everything[2:]  # starts in the oldest file
    live_lines = len(p.read_bytes().splitlines())
    assert _read_all(p, tail=live_lines + 1) == everything[-(live_lines + 1) :]  # one from .1
    assert _read_all(p, tail=10_000) == everything
    assert _read_all(p, tail=live_lines) == everything[-live_lines:]


def test_torn_and_malformed_lines_are_skipped(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    good = encode_entry(1, b"a\n", T0)
    torn = encode_entry(1, b"lost\n", T0)[:20]  # a shim SIGKILLed mid-write, a new one appends
    p.write_bytes(
        good
        + b"garbage\n"
        + b'{"log": 5}\n'
        + b"[1,2]\n"
        + torn
        + encode_entry(1, b"b\n", T0 + 1)
        + b"\xff\xfe\n"
        + encode_entry(2, b"c\n", T0 + 2)
        + torn  # the end of the file: still being written (or torn for good)
    )
    assert _read_all(p) == [b"a\n", b"b\n", b"c\n"]
    assert _read_all(p, tail=2) == [b"b\n", b"c\n"]


def test_a_huge_line_without_newline_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    with open(p, "wb") as f:
        f.write(encode_entry(1, b"before\n", T0))
        f.write(b"x" * (3 * logs.MAX_LINE) + b"\n")
        f.write(encode_entry(1, b"after\n", T0))
    fo = logs.Follower(str(p))
    got: list[bytes] = []
    while True:
        entries, done = fo.read(64 * 1024)
        got += _data(entries)
        assert len(fo._buf) <= logs.MAX_LINE + 64 * 1024
        if done:
            break
    fo.close()
    assert got == [b"before\n", b"after\n"]
    assert _read_all(p, tail=5) == [b"before\n", b"after\n"]


def test_reads_come_in_bounded_slices(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _write(p, [(1, b"%05d\n" % i) for i in range(20_000)])
    fo = logs.Follower(str(p))
    slices = 0
    got: list[bytes] = []
    while True:
        entries, done = fo.read(64 * 1024)
        slices += 1
        got += _data(entries)
        assert len(entries) * 60 < 64 * 1024 + 100
        if done:
            break
    fo.close()
    assert got == [b"%05d\n" % i for i in range(20_000)] and slices > 10


def test_reader_without_follow_stops_at_what_was_there(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _write(p, [(1, b"a\n")])
    reader = logs.LogReader(str(p))
    frames, done = reader.next_frames(budget=10)  # the reader opened the log here
    _write(p, [(1, b"later\n")])
    while not done:
        more, done = reader.next_frames(budget=10)
        frames += more
    reader.close()
    assert b"".join(f["d"] for f in frames) == b"a\n"


def test_frames_join_runs_of_a_stream_up_to_frame_max() -> None:
    entries = [Entry(1, b"x" * 1000, T0, "t") for _ in range(200)] + [Entry(2, b"e\n", T0, "t2")]
    out = logs.frames(entries, timestamps=False)
    assert b"".join(f["d"] for f in out if f["s"] == 1) == b"x" * 200_000
    assert all(len(f["d"]) <= logs.FRAME_MAX + 1000 for f in out) and out[-1] == {"s": 2, "d": b"e\n", "t": "t2"}
    assert len(logs.frames(entries, timestamps=True)) == 201
    inline = logs.frames(entries[-3:], timestamps=True, inline=True)
    assert inline == [
        {"s": 1, "d": b"t " + b"x" * 1000 + b"t " + b"x" * 1000, "t": "t"},
        {"s": 2, "d": b"t2 e\n", "t": "t2"},
    ]


def test_follow_reads_appended_entries_and_across_a_rotation(tmp_path: Path) -> None:
    p = tmp_path / "f-json.log"
    w = LogWriter(str(p), max_size=300, max_files=2)
    w.write(1, b"0\n")
    fo = logs.Follower(str(p), follow=True)
    fo.seek_tail(1, logs.LogFilter())
    got: list[bytes] = []
    entries, done = fo.read()
    got += _data(entries)
    assert got == [b"0\n"] and done
    half = encode_entry(1, b"x\n", T0)
    with open(p, "ab") as f:  # an entry half written: not read until its newline arrives
        f.write(half[:10])
        f.flush()
        assert fo.read() == ([], True)
        f.write(half[10:])
    got += _data(fo.read()[0])
    for i in range(1, 20):  # several rotations (the old file is read to its end first)
        w.write(1, b"%d\n" % i)
        got += _data(fo.read()[0])
    w.close()
    got += _data(fo.read()[0])
    fo.close()
    assert got == [b"0\n", b"x\n"] + [b"%d\n" % i for i in range(1, 20)]
    assert os.path.exists(f"{p}.1")


def test_tail_then_follow_starts_after_the_tail(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    _write(p, [(1, b"%d\n" % i) for i in range(10)])
    reader = logs.LogReader(str(p), tail=2, follow=True)
    frames, done = reader.next_frames()
    assert b"".join(f["d"] for f in frames) == b"8\n9\n" and done
    _write(p, [(1, b"10\n")])
    frames, done = reader.next_frames()
    assert b"".join(f["d"] for f in frames) == b"10\n"
    reader.close()
    assert reader.next_frames() == ([], True)
    json.loads(p.read_bytes().splitlines()[-1])
