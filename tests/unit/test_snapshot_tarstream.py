"""The streaming tar reader against tarfile and GNU tar output, and the writer round trip."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from common.errors import InvalidArgument
from services.snapshot import tarstream
from services.snapshot.tarstream import TarReader, TarWriter


def _entries(data: bytes) -> list[tuple[tarstream.Entry, bytes]]:
    reader = TarReader(io.BytesIO(data))
    out = []
    for entry in reader:
        content = b""
        while chunk := reader.read(7):
            content += chunk
        out.append((entry, content))
    assert reader.drain() == b""
    return out


def _tar(fmt: int, build: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti in build:
            payload = (data or {}).get(ti.name)
            if payload is not None:
                ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_link_targets_in_pax_and_gnu(fmt: int) -> None:
    long_dir = "d" * 120 + "/" + "e" * 150
    long_name = long_dir + "/" + "f" * 60  # > 255 bytes
    target = "/" + "t" * 200
    raw = _tar(
        fmt,
        [
            _info(long_name, mode=0o640, uid=1000, gid=1001, mtime=1234567890),
            _info("s", tarfile.SYMTYPE, linkname=target),
        ],
        {long_name: b"content"},
    )
    (e1, c1), (e2, _) = _entries(raw)
    assert e1.name == long_name.encode() and c1 == b"content"
    assert (e1.mode, e1.uid, e1.gid, e1.mtime_ns) == (0o640, 1000, 1001, 1234567890 * 10**9)
    assert e2.type == tarstream.SYMLINK and e2.linkname == target.encode()


def test_pax_xattrs_are_raw_bytes_and_mtime_keeps_nanoseconds() -> None:
    ti = _info("f", mode=0o755)
    ti.pax_headers = {"SCHILY.xattr.user.foo": "bar", "mtime": "1704067200.123456789"}
    ((e, _),) = _entries(_tar(tarfile.PAX_FORMAT, [ti], {"f": b""}))
    assert e.xattrs == {"user.foo": b"bar"}
    assert e.mtime_ns == 1704067200123456789


def test_binary_xattr_from_gnu_tar(tmp_path: Path) -> None:
    (tmp_path / "ping").write_bytes(b"ELF")
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    try:
        os.setxattr(tmp_path / "ping", "security.capability", cap)
    except OSError:
        pytest.skip("cannot set security.capability here")
    raw = subprocess.run(
        ["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "-C", str(tmp_path), "-cf", "-", "ping"],
        capture_output=True,
        check=True,
    ).stdout
    ((e, content),) = _entries(raw)
    assert e.xattrs["security.capability"] == cap and content == b"ELF"


def test_devices_fifos_dirs_and_hardlinks() -> None:
    raw = _tar(
        tarfile.USTAR_FORMAT,
        [
            _info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            _info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
            _info("run/fifo", tarfile.FIFOTYPE, mode=0o644),
            _info("dir", tarfile.DIRTYPE, mode=0o1777),
            _info("usr/bin/su", mode=0o4755),
            _info("usr/bin/su2", tarfile.LNKTYPE, linkname="usr/bin/su"),
        ],
        {"usr/bin/su": b"su"},
    )
    got = {e.display_name.rstrip("/"): e for e, _ in _entries(raw)}
    assert (got["dev/null"].type, got["dev/null"].devmajor, got["dev/null"].devminor) == (tarstream.CHAR, 1, 3)
    assert got["dev/sda"].type == tarstream.BLOCKDEV and got["run/fifo"].type == tarstream.FIFO
    assert got["dir"].type == tarstream.DIRECTORY and got["dir"].mode == 0o1777
    assert got["usr/bin/su"].mode == 0o4755
    assert got["usr/bin/su2"].type == tarstream.HARDLINK and got["usr/bin/su2"].linkname == b"usr/bin/su"


@pytest.mark.parametrize("sparse_format", ["0.0", "0.1", "1.0", "gnu"])
def test_sparse_files_from_gnu_tar(tmp_path: Path, sparse_format: str) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek(3 << 20)
        f.write(b"end")
    args = ["tar", "--sparse", "-C", str(tmp_path), "-cf", "-", "sparse"]
    if sparse_format == "gnu":
        args.insert(1, "--format=gnu")
    else:
        args[1:1] = ["--format=pax", f"--sparse-version={sparse_format}"]
    raw = subprocess.run(args, capture_output=True, check=True).stdout
    ((e, content),) = _entries(raw)
    assert e.name == b"sparse" and e.size == (3 << 20) + 3
    assert e.sparse is not None and len(e.sparse) >= 2
    rebuilt = bytearray(e.size)
    pos = 0
    for off, length in e.sparse:
        rebuilt[off : off + length] = content[pos : pos + length]
        pos += length
    assert bytes(rebuilt) == path.read_bytes()


def test_base256_numbers_and_old_v7_headers() -> None:
    raw = _tar(tarfile.GNU_FORMAT, [_info("big", uid=10_000_000, gid=2**21 + 5)], {"big": b"x"})
    ((e, _),) = _entries(raw)
    assert (e.uid, e.gid) == (10_000_000, 2**21 + 5)


def test_corrupt_header_fails_with_its_offset_not_a_silent_stop() -> None:
    raw = bytearray(_tar(tarfile.PAX_FORMAT, [_info("a"), _info("b")], {"a": b"1" * 600, "b": b"2"}))
    second = raw.index(b"b\0")
    raw[second + 10] ^= 0xFF
    with pytest.raises(InvalidArgument, match=f"offset {second}.*checksum"):
        _entries(bytes(raw))


def test_truncated_archive_and_trailing_garbage() -> None:
    raw = _tar(tarfile.PAX_FORMAT, [_info("a")], {"a": b"1" * 3000})
    with pytest.raises(InvalidArgument, match="truncated"):
        _entries(raw[:1500])
    reader = TarReader(io.BytesIO(raw + b"garbage"))
    list(reader)
    assert reader.drain() == b"garbage"
    one_block = raw[: 512 + 3072] + bytes(512) + b"x" * 512  # header, data, ONE zero block, data
    with pytest.raises(InvalidArgument, match="data after an end-of-archive block"):
        _entries(one_block)


def test_empty_stream_and_zero_blocks_are_empty_archives() -> None:
    assert _entries(b"") == []
    assert _entries(bytes(10240)) == []


def test_writer_round_trip_through_tarfile_and_our_reader() -> None:
    out = io.BytesIO()
    w = TarWriter(out)
    long = b"x/" * 100 + b"name"
    cap = bytes(range(256))[:20]
    w.add(
        long,
        tarstream.REGULAR,
        mode=0o4755,
        uid=5,
        gid=6,
        size=3,
        mtime=1704067200,
        xattrs={"security.capability": cap, "user.a": b"b"},
    )
    w.write_data(b"abc")
    w.end_data(3)
    w.add(b"l", tarstream.SYMLINK, linkname=b"/" + b"t" * 300)
    w.add(b".wh.gone", tarstream.REGULAR)
    w.close()
    raw = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
    assert names == [long.decode(), "l", ".wh.gone"]
    (e1, c1), (e2, _), _ = _entries(raw)
    assert (e1.name, c1, e1.mode, e1.uid, e1.gid) == (long, b"abc", 0o4755, 5, 6)
    assert e1.xattrs == {"security.capability": cap, "user.a": b"b"}
    assert e2.linkname == b"/" + b"t" * 300


def test_gnu_tar_long_file_name_is_a_file_not_a_directory(tmp_path: Path) -> None:
    """Regression: GNU tar's pax header for a 300-byte name leaves a truncated ustar name
    ending in '/', which was taken for a directory."""
    long_dir = "/".join(["d" * 99, "e" * 99, "f" * 60])
    (tmp_path / long_dir).mkdir(parents=True)
    (tmp_path / long_dir / ("g" * 40)).write_text("long")
    raw = subprocess.run(
        ["tar", "--format=pax", "-C", str(tmp_path), "-cf", "-", "d" * 99], capture_output=True, check=True
    ).stdout
    entries = {e.name.decode(): e for e, _ in _entries(raw)}
    assert entries[f"{long_dir}/{'g' * 40}"].type == tarstream.REGULAR
