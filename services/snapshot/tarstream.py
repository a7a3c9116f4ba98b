"""A streaming tar reader and writer for layer tars (POSIX ustar/pax, GNU extensions).

Our own instead of ``tarfile`` because a layer needs exact bytes and exact errors:
names, link targets and xattr values stay raw ``bytes`` (a ``security.capability``
value is binary), every malformed header is an error naming its offset (``tarfile``
stops silently at a bad header after the first), data is read straight from the
hashing layer stream with no second buffer, and the writer emits binary PAX xattrs.

Reader (``TarReader(stream)``; iterate for ``Entry``; ``read(n)`` reads the current
entry's archive data) understands: ustar and v7 headers, octal and base-256 numbers,
PAX local (``x``) and global (``g``) headers (``path``, ``linkpath``, ``size``,
``uid``, ``gid``, ``uname``, ``gname``, ``mtime``, ``atime``, ``SCHILY.xattr.*``,
``LIBARCHIVE.xattr.*``, GNU sparse 0.0/0.1/1.0 records), GNU long names (``L``/``K``)
and old GNU sparse files (``S``). Spec: POSIX.1-2001 pax, GNU tar manual "Formats".

Writer (``TarWriter(out)``): ustar headers, with a PAX header when a field does not
fit (long or non-ASCII names, big ids/sizes) or the entry has xattrs; ``close()`` writes
the two end-of-archive blocks.
"""

from __future__ import annotations

import base64
import io
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from common.errors import InvalidArgument

BLOCK = 512

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"

_REGULAR_ALIASES = (b"0", b"\0", b"7")


@dataclass(slots=True)
class Entry:
    """One archive member, fields already merged from PAX/GNU extension headers.

    ``name``/``linkname`` are raw bytes as in the archive (not cleaned); ``size`` is the
    logical file size; ``sparse`` (``[(offset, length), ...]``) is set for sparse files,
    whose archive data is the listed extents back to back; ``offset`` is the header's
    byte offset in the uncompressed stream (for error messages).
    """

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    uname: bytes = b""
    gname: bytes = b""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sparse: list[tuple[int, int]] | None = None
    offset: int = 0

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


def _num(raw: bytes, what: str, offset: int) -> int:
    """Parse a numeric header field: NUL/space-terminated octal, or GNU base-256."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0xFF:  # negative base-256
            value -= 1 << (8 * (len(raw) - 1))
        return value
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArgument(f"invalid tar header at offset {offset}: bad {what} field {text!r}") from None


def _time_ns(value: bytes, what: str, offset: int) -> int:
    try:
        return int(Decimal(value.decode("ascii")) * 1_000_000_000)
    except (InvalidOperation, UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"invalid tar header at offset {offset}: bad pax {what} {value!r}") from None


def _pax_records(data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """Parse ``"<len> <key>=<value>\\n"`` records (values are raw bytes)."""
    records = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidArgument(f"invalid pax header at offset {offset}: bad record length") from None
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise InvalidArgument(f"invalid pax header at offset {offset}: malformed record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise InvalidArgument(f"invalid pax header at offset {offset}: record without '='")
        records.append((key, value))
        pos = end
    return records


class TarReader:
    """Iterate over the entries of a tar stream (see module docstring).

    ``stream`` needs only ``read(n)`` (it may return fewer bytes). Iteration raises
    InvalidArgument for a malformed archive, naming the byte offset. Unread data of an
    entry is skipped when the next entry is requested.
    """

    def __init__(self, stream: BinaryIO | io.RawIOBase) -> None:
        self._stream = stream
        self.pos = 0  # bytes consumed from the stream
        self._left = 0  # data bytes of the current entry not yet read
        self._pad = 0  # padding after the current entry's data
        self._global: list[tuple[bytes, bytes]] = []
        self.ended_cleanly = False

    # -- raw reads ---------------------------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        parts = []
        want = n
        while want:
            chunk = self._stream.read(want)
            if not chunk:
                raise InvalidArgument(f"truncated tar archive: unexpected end of data at offset {self.pos}")
            parts.append(chunk)
            want -= len(chunk)
            self.pos += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes of the current entry's archive data (b"" at its end)."""
        if self._left <= 0:
            return b""
        chunk = self._stream.read(min(n, self._left))
        if not chunk:
            raise InvalidArgument(f"truncated tar archive: unexpected end of data at offset {self.pos}")
        self._left -= len(chunk)
        self.pos += len(chunk)
        return chunk

    def read_exact(self, n: int) -> bytes:
        """Read exactly ``n`` bytes of the current entry's data."""
        if n > self._left:
            raise InvalidArgument(f"tar entry data shorter than its sparse map at offset {self.pos}")
        data = self._read_exact(n) if n else b""
        self._left -= n
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self._stream.read(min(n, 1 << 20))
            if not chunk:
                raise InvalidArgument(f"truncated tar archive: unexpected end of data at offset {self.pos}")
            n -= len(chunk)
            self.pos += len(chunk)

    def _finish_entry(self) -> None:
        self._skip(self._left + self._pad)
        self._left = self._pad = 0

    def _data(self, size: int) -> bytes:
        data = self._read_exact(size)
        self._skip(-size % BLOCK)
        return data

    # -- headers -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Entry]:
        while True:
            entry = self._next()
            if entry is None:
                return
            yield entry

    def _next(self) -> Entry | None:
        self._finish_entry()
        pax: list[tuple[bytes, bytes]] = []
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            offset = self.pos
            try:
                header = self._read_exact(BLOCK)
            except InvalidArgument:
                if offset == 0 and self.pos == 0:
                    self.ended_cleanly = True  # a zero-length layer: an empty archive
                    return None
                raise
            if header == bytes(BLOCK):
                second = self._stream.read(BLOCK)
                while second and len(second) < BLOCK:
                    more = self._stream.read(BLOCK - len(second))
                    if not more:
                        break
                    second += more
                self.pos += len(second)
                if second and second != bytes(len(second)):
                    raise InvalidArgument(
                        f"invalid tar header at offset {offset + BLOCK}: data after an end-of-archive block"
                    )
                self.ended_cleanly = True
                return None
            self._check_sum(header, offset)
            typeflag = header[156:157]
            size = _num(header[124:136], "size", offset)
            if size < 0:
                raise InvalidArgument(f"invalid tar header at offset {offset}: negative size")
            if typeflag == b"x":
                pax.extend(_pax_records(self._data(size), offset))
                continue
            if typeflag == b"g":
                self._global.extend(_pax_records(self._data(size), offset))
                continue
            if typeflag == b"L":
                long_name = self._data(size).split(b"\0", 1)[0]
                continue
            if typeflag == b"K":
                long_link = self._data(size).split(b"\0", 1)[0]
                continue
            entry = self._parse(header, offset, size)
            if long_name is not None:
                entry.name = long_name
            if long_link is not None:
                entry.linkname = long_link
            archive_size = self._apply_pax(entry, self._global + pax, size)
            if typeflag == b"\0" and entry.name.endswith(b"/"):
                entry.type = DIRECTORY  # pre-POSIX archives mark directories by a trailing slash
            if typeflag == b"S":
                archive_size = self._gnu_sparse(entry, header, archive_size)
            if typeflag in (HARDLINK, SYMLINK, CHAR, BLOCKDEV, FIFO):
                entry.size = 0  # any data they carry is skipped
            self._left = archive_size
            self._pad = -archive_size % BLOCK
            if entry.sparse is not None and self._sparse_v1:
                self._read_sparse_v1_map(entry)
            return entry

    def _check_sum(self, header: bytes, offset: int) -> None:
        stored = _num(header[148:156], "checksum", offset)
        unsigned = sum(header) - sum(header[148:156]) + 8 * 32
        if stored == unsigned:
            return
        signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
        if stored != signed:
            raise InvalidArgument(f"invalid tar header at offset {offset}: checksum mismatch (not a tar archive?)")

    def _parse(self, header: bytes, offset: int, size: int) -> Entry:
        name = header[0:100].split(b"\0", 1)[0]
        typeflag = header[156:157]
        magic = header[257:265]
        if magic == b"ustar\x0000" or (magic[:6] == b"ustar\0"):
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if typeflag in _REGULAR_ALIASES:
            typeflag = REGULAR
        entry = Entry(
            name=name,
            type=typeflag,
            mode=_num(header[100:108], "mode", offset) & 0o7777,
            uid=_num(header[108:116], "uid", offset),
            gid=_num(header[116:124], "gid", offset),
            size=size,
            mtime_ns=_num(header[136:148], "mtime", offset) * 1_000_000_000,
            linkname=header[157:257].split(b"\0", 1)[0],
            uname=header[265:297].split(b"\0", 1)[0],
            gname=header[297:329].split(b"\0", 1)[0],
            offset=offset,
        )
        if typeflag in (CHAR, BLOCKDEV):
            entry.devmajor = _num(header[329:337], "devmajor", offset)
            entry.devminor = _num(header[337:345], "devminor", offset)
        if typeflag == b"D":  # GNU dumpdir: a directory with a listing as data
            entry.type = DIRECTORY
        return entry

    _sparse_v1 = False

    def _apply_pax(self, entry: Entry, records: list[tuple[bytes, bytes]], size: int) -> int:
        """Apply PAX records to ``entry``; return the entry's data size in the archive."""
        self._sparse_v1 = False
        if not records:
            return size
        offset = entry.offset
        sparse_offsets: list[int] = []
        sparse_lengths: list[int] = []
        sparse_map: list[tuple[int, int]] | None = None
        real_size: int | None = None
        sparse_name: bytes | None = None
        major = minor = None
        for key, value in records:
            if key.startswith(b"SCHILY.xattr."):
                xattr = key[len(b"SCHILY.xattr.") :].decode("utf-8", "surrogateescape")
                if value:
                    entry.xattrs[xattr] = value
                else:  # POSIX: a zero-length value deletes the record (as umoci reads it)
                    entry.xattrs.pop(xattr, None)
                continue
            if key.startswith(b"LIBARCHIVE.xattr."):
                name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr.") :])
                try:
                    entry.xattrs[name.decode("utf-8", "surrogateescape")] = base64.b64decode(value + b"==")
                except ValueError:
                    raise InvalidArgument(f"invalid pax header at offset {offset}: bad {key!r}") from None
                continue
            if not value and key in (b"path", b"linkpath", b"uid", b"gid", b"size", b"mtime", b"atime"):
                continue  # an empty value removes an earlier global value: keep the header's
            if key == b"path":
                entry.name = value
            elif key == b"linkpath":
                entry.linkname = value
            elif key in (b"uid", b"gid", b"size"):
                try:
                    number = int(value)
                except ValueError:
                    raise InvalidArgument(f"invalid pax header at offset {offset}: bad {key.decode()}") from None
                if number < 0:
                    raise InvalidArgument(f"invalid pax header at offset {offset}: negative {key.decode()}")
                if key == b"size":
                    size = number
                else:
                    setattr(entry, key.decode(), number)
            elif key == b"mtime":
                entry.mtime_ns = _time_ns(value, "mtime", offset)
            elif key == b"atime":
                entry.atime_ns = _time_ns(value, "atime", offset)
            elif key == b"uname":
                entry.uname = value
            elif key == b"gname":
                entry.gname = value
            elif key == b"GNU.sparse.offset":
                sparse_offsets.append(int(value))
            elif key == b"GNU.sparse.numbytes":
                sparse_lengths.append(int(value))
            elif key == b"GNU.sparse.map":
                numbers = [int(x) for x in value.split(b",") if x]
                sparse_map = list(zip(numbers[::2], numbers[1::2], strict=False))
            elif key in (b"GNU.sparse.size", b"GNU.sparse.realsize"):
                real_size = int(value)
            elif key == b"GNU.sparse.name":
                sparse_name = value
            elif key == b"GNU.sparse.major":
                major = value
            elif key == b"GNU.sparse.minor":
                minor = value
        if sparse_name is not None:
            entry.name = sparse_name
        if major == b"1" and minor == b"0":
            self._sparse_v1 = True
            entry.sparse = []
        elif sparse_map is not None:
            entry.sparse = sparse_map
        elif sparse_offsets:
            entry.sparse = list(zip(sparse_offsets, sparse_lengths, strict=False))
        entry.size = real_size if (entry.sparse is not None and real_size is not None) else size
        return size

    def _read_sparse_v1_map(self, entry: Entry) -> None:
        """GNU sparse 1.0: the map is at the start of the data, in decimal lines, padded."""
        buf = b""
        numbers: list[int] = []
        count: int | None = None
        consumed = 0
        while count is None or len(numbers) < 2 * count:
            while b"\n" not in buf:
                block = self.read_exact(BLOCK)
                consumed += BLOCK
                buf += block
            line, buf = buf.split(b"\n", 1)
            try:
                value = int(line)
            except ValueError:
                raise InvalidArgument(f"invalid sparse map at offset {entry.offset}") from None
            if count is None:
                count = value
            else:
                numbers.append(value)
        entry.sparse = list(zip(numbers[::2], numbers[1::2], strict=False))

    def _gnu_sparse(self, entry: Entry, header: bytes, size: int) -> int:
        """Old GNU sparse (type ``S``): extents in the header and extension blocks."""
        extents = []
        for i in range(4):
            base = 386 + i * 24
            off = _num(header[base : base + 12], "sparse offset", entry.offset)
            length = _num(header[base + 12 : base + 24], "sparse length", entry.offset)
            if off or length:
                extents.append((off, length))
        extended = header[482] != 0
        while extended:
            block = self._read_exact(BLOCK)
            for i in range(21):
                base = i * 24
                off = _num(block[base : base + 12], "sparse offset", entry.offset)
                length = _num(block[base + 12 : base + 24], "sparse length", entry.offset)
                if off or length:
                    extents.append((off, length))
            extended = block[504] != 0
        entry.sparse = extents
        entry.size = _num(header[483:495], "sparse size", entry.offset)
        entry.type = REGULAR
        return size

    def drain(self) -> bytes:
        """After the last entry: consume the rest of the stream; return the first non-zero
        bytes found there (b"" when the archive ends in zeros only, as it should)."""
        self._finish_entry()
        junk = b""
        while chunk := self._stream.read(1 << 20):
            self.pos += len(chunk)
            if not junk and chunk.strip(b"\0"):
                junk = chunk.strip(b"\0")[:16]
        return junk


# -- writing ----------------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Split ``name`` into (prefix, name) fitting ustar's 155/100 bytes, or None."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.find(b"/", len(name) - 101)
    while cut != -1:
        if cut <= 155 and len(name) - cut - 1 <= 100 and cut > 0:
            return name[:cut], name[cut + 1 :]
        cut = name.find(b"/", cut + 1)
    return None


class TarWriter:
    """Write a POSIX tar stream to ``out`` (anything with ``write(bytes)``)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.size += len(data)

    def _header(
        self,
        name: bytes,
        prefix: bytes,
        typeflag: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: int,
        linkname: bytes,
        uname: bytes,
        gname: bytes,
        devmajor: int,
        devminor: int,
    ) -> bytes:
        parts = [
            name.ljust(100, b"\0"),
            _octal(mode & 0o7777, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(max(mtime, 0), 12),
            b" " * 8,
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            uname[:32].ljust(32, b"\0"),
            gname[:32].ljust(32, b"\0"),
            _octal(devmajor, 8),
            _octal(devminor, 8),
            prefix.ljust(155, b"\0"),
            bytes(12),
        ]
        header = bytearray(b"".join(parts))
        header[148:156] = b"%06o\0 " % sum(header)
        return bytes(header)

    def add(
        self,
        name: bytes,
        typeflag: bytes,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime: int = 0,
        linkname: bytes = b"",
        uname: bytes = b"",
        gname: bytes = b"",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        """Write one header (plus a PAX header when needed); then write ``size`` bytes of
        data with ``write_data`` and finish with ``end_data``. ``mtime`` in seconds."""
        pax: list[bytes] = []
        split = _split_ustar(name) if name.isascii() else None
        if split is None:
            pax.append(_pax_record(b"path", name))
            split = (b"", name[-100:].lstrip(b"/") or b"x")
        if len(linkname) > 100 or not linkname.isascii():
            pax.append(_pax_record(b"linkpath", linkname))
            linkname = linkname[:100]
        if uid >= 0o7777777:
            pax.append(_pax_record(b"uid", str(uid).encode()))
            uid = 0
        if gid >= 0o7777777:
            pax.append(_pax_record(b"gid", str(gid).encode()))
            gid = 0
        if size >= 0o77777777777:
            pax.append(_pax_record(b"size", str(size).encode()))
        for key in sorted(xattrs or {}):
            pax.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), (xattrs or {})[key]))
        if pax:
            data = b"".join(pax)
            pax_name = (b"PaxHeaders/" + split[1])[:100]
            self._write(
                self._header(
                    pax_name,
                    b"",
                    b"x",
                    mode=0o644,
                    uid=0,
                    gid=0,
                    size=len(data),
                    mtime=mtime,
                    linkname=b"",
                    uname=b"",
                    gname=b"",
                    devmajor=0,
                    devminor=0,
                )
            )
            self._write(data + bytes(-len(data) % BLOCK))
        self._write(
            self._header(
                split[1],
                split[0],
                typeflag,
                mode=mode,
                uid=uid,
                gid=gid,
                size=min(size, 0o77777777777),
                mtime=mtime,
                linkname=linkname,
                uname=uname,
                gname=gname,
                devmajor=devmajor,
                devminor=devminor,
            )
        )
        self._pending = size

    _pending = 0

    def write_data(self, data: bytes) -> None:
        """Write part of the current entry's data."""
        self._pending -= len(data)
        if self._pending < 0:
            raise ValueError("more data than the entry's size")
        self._write(data)

    def end_data(self, size: int) -> None:
        """Pad the current entry's ``size`` bytes of data to a block boundary."""
        if self._pending:
            raise ValueError(f"entry data is {self._pending} bytes short")
        self._write(bytes(-size % BLOCK))

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks)."""
        self._write(bytes(2 * BLOCK))
