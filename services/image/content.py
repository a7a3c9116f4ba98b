"""The content store: immutable blobs addressed by digest, written through ingests.

Layout (containerd's local store, containerd-model.md section 1)::

    <root>/blobs/sha256/<hex>      committed blobs, never modified, never partial
    <root>/ingest/<sha256(ref)>/   one in-progress write: ``data``, ``ref``, ``total``, ``startedat``

A write goes to ``ingest/<..>/data`` while its sha256 is computed on the way; ``commit``
checks the size and digest against what the caller expected, fsyncs the data, renames it
to ``blobs/sha256/<hex>`` and fsyncs the directory. A mismatch removes the ingest and
raises ``FailedPrecondition``; the blob path then simply does not exist. An ingest left by
a killed process stays for the next writer of the same ref, which re-hashes what is there
and continues from its offset (resumable downloads). An ingest directory without its
``data`` (a kill between a commit's rename and its clean-up, or before the first byte)
holds nothing to resume: the store drops those when it opens.

Everything here is blocking file I/O: callers in the event loop use ``asyncio.to_thread``
for anything but small appends.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.image.oci import check_digest

log = logging.getLogger(__name__)

_READ_CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class BlobInfo:
    """A committed blob: digest, size in bytes, commit time (unix seconds)."""

    digest: str
    size: int
    committed_at: float


@dataclass(frozen=True)
class IngestInfo:
    """An in-progress (or abandoned) write."""

    ref: str
    path: Path
    offset: int
    total: int
    updated_at: float


class Ingest:
    """One in-progress write. Not thread-safe; one writer per ref at a time.

    ``expected``/``total`` (optional) are checked at commit. ``offset`` is how many bytes
    are already in ``data`` (and hashed).
    """

    def __init__(self, store: ContentStore, ref: str, directory: Path, expected: str, total: int) -> None:
        self.store = store
        self.ref = ref
        self.directory = directory
        self.data_path = directory / "data"
        self.expected = expected
        self.total = total
        self._hasher = hashlib.sha256()
        self.offset = 0
        self.written = 0  # bytes written through this object (not counting what a resume found)
        self._file = open(self.data_path, "ab")  # noqa: SIM115 - closed in commit/abort/close
        store.active.add(ref)
        existing = self._file.tell()
        if existing:
            with open(self.data_path, "rb") as f:
                while True:
                    chunk = f.read(_READ_CHUNK)
                    if not chunk:
                        break
                    self._hasher.update(chunk)
                    self.offset += len(chunk)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; raises FailedPrecondition when it would exceed the expected total."""
        if self.total and self.offset + len(data) > self.total:
            raise FailedPrecondition(
                f"content {self.expected or self.ref}: got more than the expected {self.total} bytes"
            )
        self._file.write(data)
        self._hasher.update(data)
        self.offset += len(data)
        self.written += len(data)

    def restart(self) -> None:
        """Throw away what was written (the server ignored our Range request)."""
        self._file.seek(0)
        self._file.truncate(0)
        self._hasher = hashlib.sha256()
        self.offset = 0

    def digest(self) -> str:
        return "sha256:" + self._hasher.hexdigest()

    def commit(self) -> BlobInfo:
        """Verify size and digest, fsync, rename under the digest. Returns the blob.

        Raises FailedPrecondition on a size or digest mismatch (the ingest is removed).
        A blob that already exists is fine (the ingest is dropped).
        """
        self._file.flush()
        actual = self.digest()
        try:
            if self.total and self.offset != self.total:
                raise FailedPrecondition(
                    f"content {self.expected or actual}: size mismatch: got {self.offset} bytes, expected {self.total}"
                )
            if self.expected and actual != self.expected:
                raise FailedPrecondition(f"content {self.expected}: digest mismatch: the bytes hash to {actual}")
            os.fsync(self._file.fileno())
        except BaseException:
            self.abort()
            raise
        self._file.close()
        self.store.active.discard(self.ref)
        target = self.store.path(actual)
        if target.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            os.replace(self.data_path, target)
            _fsync_dir(target.parent)
            shutil.rmtree(self.directory, ignore_errors=True)
        return BlobInfo(actual, self.offset, time.time())

    def close(self) -> None:
        """Stop writing but keep the ingest for a later resume."""
        self.store.active.discard(self.ref)
        if self._file.closed:
            return
        with contextlib.suppress(OSError, ValueError):
            self._file.flush()
        with contextlib.suppress(OSError):
            self._file.close()

    def abort(self) -> None:
        """Remove the ingest."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class ContentStore:
    """Blobs by digest under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingests = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingests.mkdir(parents=True, exist_ok=True)
        self.active: set[str] = set()
        """Refs of the ingests open in this process (the garbage collector leaves them alone)."""
        self._drop_empty_ingests()

    def _drop_empty_ingests(self) -> None:
        """Remove ingest directories without ``data``: what a killed writer left with nothing to resume."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.ingests) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False) and not os.path.exists(os.path.join(entry.path, "data")):
                    shutil.rmtree(entry.path, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        """Path of the blob ``digest`` (which may not exist). InvalidArgument for a bad digest."""
        check_digest(digest, "content")
        return self.blobs / digest.split(":", 1)[1]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: str) -> BlobInfo:
        """Size and commit time of a blob; NotFound when absent."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    def read(self, digest: str, max_size: int | None = None) -> bytes:
        """Return a whole blob (manifests, configs). NotFound when absent,
        InvalidArgument when larger than ``max_size``."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if max_size is not None and size > max_size:
                    raise InvalidArgument(f"content {digest}: {size} bytes is over the {max_size} byte limit")
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None

    def walk(self) -> Iterator[BlobInfo]:
        """Every committed blob."""
        with os.scandir(self.blobs) as it:
            for entry in it:
                if len(entry.name) == 64 and entry.is_file():
                    st = entry.stat()
                    yield BlobInfo("sha256:" + entry.name, st.st_size, st.st_mtime)

    # -- writing -------------------------------------------------------------------------------
    def _ingest_dir(self, ref: str) -> Path:
        return self.ingests / hashlib.sha256(ref.encode()).hexdigest()

    def open_ingest(self, ref: str, *, expected: str = "", total: int = 0, resume: bool = True) -> Ingest:
        """Open (or resume) the ingest of ``ref``.

        ``expected`` digest and ``total`` size are checked at commit. With ``resume`` the
        bytes an earlier writer left are kept and re-hashed (``Ingest.offset`` says how many).
        """
        if expected:
            check_digest(expected, "content")
        directory = self._ingest_dir(ref)
        if not resume:
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        ref_path = directory / "ref"
        if not ref_path.exists():
            (directory / "startedat").write_text(f"{time.time():.3f}\n")
            (directory / "total").write_text(f"{total}\n")
            ref_path.write_text(ref)
        ingest = Ingest(self, ref, directory, expected, total)
        if total and ingest.offset > total:
            ingest.restart()
        return ingest

    def write_blob(self, data: bytes, expected: str = "") -> BlobInfo:
        """Store a small blob in one go (verified, fsynced, renamed)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected and expected != digest:
            raise FailedPrecondition(f"content {expected}: digest mismatch: the bytes hash to {digest}")
        target = self.path(digest)
        if target.exists():
            return BlobInfo(digest, len(data), target.stat().st_mtime)
        ingest = self.open_ingest(
            f"write-{digest}-{os.getpid()}-{time.monotonic_ns()}", expected=digest, total=len(data), resume=False
        )
        ingest.write(data)
        return ingest.commit()

    def ingest_statuses(self) -> list[IngestInfo]:
        """Every ingest directory (active or abandoned)."""
        out = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.ingests) as it:
            for entry in it:
                directory = Path(entry.path)
                try:
                    ref = (directory / "ref").read_text()
                    total = int((directory / "total").read_text().strip() or 0)
                except (OSError, ValueError):
                    ref, total = "", 0
                try:
                    st = (directory / "data").stat()
                    offset, updated = st.st_size, st.st_mtime
                except OSError:
                    offset, updated = 0, entry.stat().st_mtime
                out.append(IngestInfo(ref, directory, offset, total, updated))
        return out

    def remove_ingest(self, ref: str) -> None:
        shutil.rmtree(self._ingest_dir(ref), ignore_errors=True)

    def remove_ingest_dir(self, directory: Path) -> None:
        if directory.parent == self.ingests:
            shutil.rmtree(directory, ignore_errors=True)

    def delete(self, digest: str) -> bool:
        """Remove a blob; False when it was not there."""
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False
