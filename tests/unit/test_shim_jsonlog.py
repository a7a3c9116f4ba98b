"""Docker's json-file format: line splitting, 16 KiB entries, partial lines, binary, rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.shim.jsonlog import LogWriter, log_files, parse_time, read_entries, rfc3339_nano


def _stream(path: Path, stream: int = 1) -> bytes:
    return b"".join(e.data for e in read_entries(str(path)) if e.stream == stream)


def test_lines_are_entries_in_dockers_shape(tmp_path: Path) -> None:
    p = tmp_path / "c-json.log"
    w = LogWriter(str(p))
    w.write(1, b"hello\nwor")
    w.write(1, b"ld\n")
    w.write(2, b"err\n")
    w.close()
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    assert [(x["log"], x["stream"]) for x in lines] == [
        ("hello\n", "stdout"),
        ("world\n", "stdout"),
        ("err\n", "stderr"),
    ]
    assert lines[0]["time"].endswith("Z") and len(lines[0]["time"].split(".")[1]) == 10


def test_one_mib_line_survives_byte_for_byte(tmp_path: Path) -> None:
    p = tmp_path / "l.log"
    data = (b"x" * (1 << 20)) + b"\n"
    w = LogWriter(str(p))
    for i in range(0, len(data), 65536):
        w.write(1, data[i : i + 65536])
    w.close()
    assert _stream(p) == data
    assert max(len(json.loads(x)["log"]) for x in p.read_text().splitlines()) <= 16 * 1024


def test_output_without_final_newline_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "l.log"
    w = LogWriter(str(p))
    w.write(1, b"no newline")
    w.flush_partial()
    w.close()
    assert _stream(p) == b"no newline"


def test_binary_output_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "l.log"
    data = bytes(range(256)) * 64 + "é€😀".encode() + b"\xff\xfe\n\x00tail"
    w = LogWriter(str(p))
    w.write(2, data)
    w.close()
    assert _stream(p, 2) == data
    for line in p.read_bytes().splitlines():
        json.loads(line)  # every line stays valid JSON (non-UTF-8 bytes as \\udcXX escapes)


def test_rotation_keeps_max_files(tmp_path: Path) -> None:
    p = tmp_path / "r.log"
    w = LogWriter(str(p), max_size=1000, max_files=3)
    for i in range(200):
        w.write(1, f"line {i:04d} ".encode() + b"y" * 40 + b"\n")
    w.close()
    files = log_files(str(p))
    assert [os.path.basename(f) for f in files] == ["r.log.2", "r.log.1", "r.log"]
    assert all(os.path.getsize(f) < 1100 for f in files)
    text = _stream(p).decode()
    assert "line 0199" in text and "line 0000" not in text


def test_time_round_trip() -> None:
    ns = 1_700_000_000_123_456_789
    assert parse_time(rfc3339_nano(ns)) == ns
    assert parse_time("2024-01-01T00:00:00Z") == 1704067200 * 10**9


def _docker_entries(data: bytes) -> list[bytes]:
    """The entries Docker's json-file driver makes of one stream: a line each, 16 KiB at the most."""
    out, start = [], 0
    while start < len(data):
        nl = data.find(b"\n", start, start + 16 * 1024)
        stop = nl + 1 if nl >= 0 else min(len(data), start + 16 * 1024)
        out.append(data[start:stop])
        start = stop
    return out


def test_entries_split_as_dockers_whatever_the_chunks(tmp_path: Path) -> None:
    """Short lines, lines of 16 KiB and more (exactly at the boundary too), binary bytes and
    partial lines, cut into chunks at random: the entries are Docker's, byte for byte."""
    import random

    rng = random.Random(7)
    sizes = [0, 1, 5, 16 * 1024 - 2, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 40000]
    for round_ in range(20):
        data = b"".join(
            bytes(rng.randrange(256) for _ in range(3)) + b"y" * rng.choice(sizes) + b"\n" for _ in range(30)
        )
        data += b"tail without newline"
        p = tmp_path / f"r{round_}.log"
        w = LogWriter(str(p))
        i = 0
        while i < len(data):
            n = rng.choice([1, 7, 100, 4096, 65536, 200000])
            w.write(1, data[i : i + n])
            i += n
        w.close()
        entries = [e.data for e in read_entries(str(p))]
        assert entries == _docker_entries(data)
