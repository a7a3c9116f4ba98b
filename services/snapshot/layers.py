"""Layer identities and layer streams: chain IDs, layer media types, decompression.

Pure logic, no service state:

- ``chain_ids(diff_ids)``: OCI image-spec config.md "Layer ChainID":
  ``chain[0] = diff[0]``, ``chain[n] = sha256(chain[n-1] + " " + diff[n])``.
- ``compression_of(media_type)``: which decompressor an OCI or Docker layer media type
  asks for (C10); ``sniff(head)``: what the blob's first bytes say (gzip ``1f 8b``,
  zstd ``28 b5 2f fd``, tar ``ustar`` at offset 257).
- ``open_layer(path, media_type, digest)``: a ``LayerReader`` that yields the
  *uncompressed* tar stream and hashes it as it is read, so the applier verifies the
  diff ID in the same single pass that unpacks the layer.
"""

from __future__ import annotations

import enum
import hashlib
import io
import queue
import re
import threading
import zlib
from typing import BinaryIO

import zstandard

from common.errors import InvalidArgument

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

READ_SIZE = 1 << 20
"""Bytes read from the compressed blob at a time."""


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


# OCI image-spec media-types.md and layer.md, plus Docker's schema2 names.
_MEDIA_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
    # not in Docker's spec, but BuildKit once emitted it (containerd PR #9859)
    "application/vnd.docker.image.rootfs.diff.tar.zstd": Compression.ZSTD,
}

MEDIA_TYPE_FOR: dict[Compression, str] = {
    Compression.NONE: "application/vnd.oci.image.layer.v1.tar",
    Compression.GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    Compression.ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}
"""The OCI media type of a layer we write with each compression."""


def validate_digest(value: str, what: str = "digest") -> str:
    """Return ``value`` if it is ``sha256:<64 hex>``, else raise InvalidArgument."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise InvalidArgument(f"invalid {what} {value!r}: expected sha256:<64 lowercase hex>")
    return value


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Return the chain ID of each layer given the diff IDs, lowest layer first.

    OCI image-spec config.md: ``ChainID(L0) = DiffID(L0)``;
    ``ChainID(L0|...|Ln) = Digest(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))``.
    Raises InvalidArgument for a malformed diff ID.
    """
    chain: list[str] = []
    for diff_id in diff_ids:
        validate_digest(diff_id, "diff ID")
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def compression_of(media_type: str) -> Compression:
    """Return the compression a layer media type declares; InvalidArgument if unknown."""
    try:
        return _MEDIA_TYPES[media_type]
    except KeyError:
        raise InvalidArgument(f"unsupported layer media type {media_type!r}") from None


def sniff(head: bytes) -> Compression | None:
    """Return what the first bytes (>= 262 for tar) of a blob look like, None if unknown.

    gzip: ``1f 8b``; zstd: ``28 b5 2f fd``; tar: ``ustar`` at offset 257 (POSIX and GNU),
    or an all-zero first block (an empty archive).
    """
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    if head[257:262] == b"ustar":
        return Compression.NONE
    if len(head) >= 512 and head[:512] == bytes(512):
        return Compression.NONE
    if len(head) == 0:
        return Compression.NONE
    return None


def check_media_type(media_type: str, head: bytes, digest: str = "") -> Compression:
    """Return the layer's compression after checking the media type against the content.

    Raises InvalidArgument naming the layer and the media type when the type is unknown
    or the blob's magic bytes say something else (C10: never garbage extraction).
    """
    declared = compression_of(media_type)
    seen = sniff(head)
    what = f"layer {digest}" if digest else "layer"
    if seen is None:
        if declared is Compression.NONE:
            # a pre-POSIX (v7) tar has no magic; the tar reader will judge it
            return declared
        raise InvalidArgument(f"{what}: content is not {declared.value}-compressed as media type {media_type!r} says")
    if seen is not declared:
        content = "an uncompressed tar" if seen is Compression.NONE else f"{seen.value}-compressed"
        raise InvalidArgument(f"{what}: media type {media_type!r} does not match its content, which is {content}")
    return declared


class LayerReader(io.RawIOBase):
    """A read-only stream of a layer's uncompressed tar, hashed as it is read.

    ``diff_id()`` is the sha256 of every uncompressed byte read so far; call ``drain()``
    first to hash what the tar reader left unread (padding after the end-of-archive
    blocks). Concatenated gzip members and zstd frames are read as one stream; bytes
    after the last gzip member must be zeros, else InvalidArgument.
    """

    def __init__(self, raw: BinaryIO, compression: Compression, what: str = "layer") -> None:
        super().__init__()
        self._raw = raw
        self._what = what
        self._hash = hashlib.sha256()
        self.uncompressed_size = 0
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._compression = compression
        self._queue: queue.Queue[bytes | BaseException] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._gz: zlib._Decompress | None = None
        self._zst: zstandard.ZstdDecompressionReader | None = None
        if compression is Compression.GZIP:
            self._gz = zlib.decompressobj(wbits=31)
        elif compression is Compression.ZSTD:
            self._zst = zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_SIZE, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def _more(self, want: int) -> bytes:
        """Return up to about ``want`` new uncompressed bytes; b"" at the end."""
        try:
            if self._compression is Compression.NONE:
                return self._raw.read(want)
            if self._zst is not None:
                return self._zst.read(want)
            return self._more_gzip(want)
        except zstandard.ZstdError as exc:
            raise InvalidArgument(f"{self._what}: corrupt zstd stream: {exc}") from None
        except zlib.error as exc:
            raise InvalidArgument(f"{self._what}: corrupt gzip stream: {exc}") from None

    _gz_done = False

    def _more_gzip(self, want: int) -> bytes:
        assert self._gz is not None
        if self._gz_done:
            return b""
        while True:
            if self._gz.unconsumed_tail:
                out = self._gz.decompress(self._gz.unconsumed_tail, want)
            else:
                if self._gz.eof:
                    rest = self._gz.unused_data
                    if not rest:
                        rest = self._raw.read(READ_SIZE)
                        if not rest:
                            return b""
                    if rest[:2] == b"\x1f\x8b":
                        self._gz = zlib.decompressobj(wbits=31)
                        out = self._gz.decompress(rest, want)
                    elif rest.strip(b"\0"):
                        raise InvalidArgument(f"{self._what}: garbage after the last gzip member")
                    else:
                        # swallow zero padding until the end of the blob
                        while chunk := self._raw.read(READ_SIZE):
                            if chunk.strip(b"\0"):
                                raise InvalidArgument(f"{self._what}: garbage after the last gzip member")
                        self._gz = zlib.decompressobj(wbits=31)
                        self._gz.decompress(bytes(0))
                        self._gz_done = True
                        return b""
                else:
                    chunk = self._raw.read(READ_SIZE)
                    if not chunk:
                        raise InvalidArgument(f"{self._what}: truncated gzip stream")
                    out = self._gz.decompress(chunk, want)
            if out:
                return out

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self._take(READ_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        return self._take(size)

    def _produce(self, want: int) -> bytes:
        data = self._more(want)
        if data:
            self._hash.update(data)
            self.uncompressed_size += len(data)
        return data

    def start_thread(self) -> None:
        """Decompress and hash in a background thread, ahead of the reader (zlib, zstd
        and sha256 release the GIL, so this overlaps them with applying the entries)."""
        if self._queue is not None:
            return
        self._queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._producer, name="layer-decompress", daemon=True)
        self._thread.start()

    def _producer(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                item: bytes | BaseException = self._produce(READ_SIZE)
            except BaseException as exc:  # handed to the reading thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        super().close()

    def _next_chunk(self, size: int) -> bytes:
        if self._queue is None:
            return self._produce(max(size, 1 << 16))
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later read fails the same way
            raise item
        return item

    def _take(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            if self._eof:
                return b""
            data = self._next_chunk(size)
            if not data:
                self._eof = True
                return b""
            self._buf, self._pos = data, 0
        if self._pos == 0 and len(self._buf) <= size:
            self._pos = len(self._buf)
            return self._buf
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._take(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read (and hash) the rest of the stream."""
        while self._take(READ_SIZE):
            pass

    def diff_id(self) -> str:
        """Return ``sha256:<hex>`` of the uncompressed bytes read so far (after ``drain``)."""
        return "sha256:" + self._hash.hexdigest()


def open_layer(raw: BinaryIO, media_type: str, digest: str = "") -> LayerReader:
    """Return a hashing reader of the uncompressed tar in ``raw`` (a seekable blob file).

    Checks ``media_type`` against the blob's magic bytes (``check_media_type``).
    """
    head = raw.read(512)
    raw.seek(0)
    compression = check_media_type(media_type, head, digest)
    return LayerReader(raw, compression, f"layer {digest}" if digest else "layer")
