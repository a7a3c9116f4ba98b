"""The diff direction: a snapshot's changes as a layer tar, and a flattened export.

- ``write_changes(source, out)``: the change set of a snapshot against its parents,
  as an OCI layer tar (image-spec layer.md "Change Types"): added and modified entries
  with their metadata and xattrs, ``.wh.<name>`` for a deleted path and
  ``<dir>/.wh..wh..opq`` for a directory whose lower content is hidden. For an overlay
  snapshot the upper directory *is* the change set (a 0/0 character device is a
  whiteout, ``trusted.overlay.opaque=y`` an opaque directory), as containerd's overlay
  differ reads it; for a native snapshot the tree is compared with its parent's copy
  (containerd's double walk: type, mode, owner, size, mtime, rdev, link target, xattrs,
  and content when only the mtime differs).
- ``write_flat(source, out)``: every entry the merged tree shows (``docker export``).
- ``diff_size(source)``: the bytes of a snapshot's change set, as Docker's graph drivers
  report a layer's DiffSize (an image's size is the sum over its layers).

Both write through ``tarstream.TarWriter`` in a fixed order (parents before children,
names sorted), keep hard links inside the written set, and read nothing outside the
snapshot's directories (no symlink is followed). ``write_layer_blob`` wraps either in
compression and hashing and writes the blob to a file atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import zstandard

from common.errors import FailedPrecondition, InvalidArgument
from services.snapshot import fsutil, tarstream
from services.snapshot.layers import MEDIA_TYPE_FOR, Compression, compression_of
from services.snapshot.rootfs import Path, Tree
from services.snapshot.snapshotters import ApplyTarget

_CHUNK = 1 << 20
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"


@dataclass
class BlobInfo:
    """A written layer blob: ``digest`` (compressed), ``diff_id`` (uncompressed tar),
    ``size`` (blob bytes), ``uncompressed_size``, ``media_type``."""

    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    media_type: str


def _typeflag(mode: int) -> bytes | None:
    if stat.S_ISREG(mode):
        return tarstream.REGULAR
    if stat.S_ISDIR(mode):
        return tarstream.DIRECTORY
    if stat.S_ISLNK(mode):
        return tarstream.SYMLINK
    if stat.S_ISCHR(mode):
        return tarstream.CHAR
    if stat.S_ISBLK(mode):
        return tarstream.BLOCKDEV
    if stat.S_ISFIFO(mode):
        return tarstream.FIFO
    return None  # sockets and anything else are not archived (as tar does)


class _Changes(Protocol):
    """What the walks report a change to: an added or modified entry, a deleted path."""

    def entry(self, dirfd: int, name: bytes, path: Path, st: os.stat_result) -> None: ...

    def whiteout(self, path: Path, st: os.stat_result | None = None) -> None: ...


class _Emitter:
    """Writes entries read from directory descriptors into a ``TarWriter``."""

    def __init__(self, writer: tarstream.TarWriter) -> None:
        self.writer = writer
        self.links: dict[tuple[int, int], bytes] = {}

    def entry(self, dirfd: int, name: bytes, path: Path, st: os.stat_result) -> None:
        flag = _typeflag(st.st_mode)
        if flag is None:
            return
        arcname = b"/".join(path) + (b"/" if flag == tarstream.DIRECTORY else b"")
        xattrs = {k: v for k, v in fsutil.list_xattrs(dirfd, name).items() if not k.startswith("trusted.")}
        common = {
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": int(st.st_mtime),
            "xattrs": xattrs,
        }
        if flag == tarstream.REGULAR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                self.writer.add(arcname, tarstream.HARDLINK, linkname=first, **common)  # type: ignore[arg-type]
                return
            self.links[key] = arcname
        if flag == tarstream.REGULAR:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                size = os.fstat(fd).st_size
                self.writer.add(arcname, flag, size=size, **common)  # type: ignore[arg-type]
                left = size
                while left > 0:
                    chunk = os.read(fd, min(left, _CHUNK))
                    if not chunk:  # shrank while being read: pad (tar needs the announced size)
                        chunk = bytes(min(left, _CHUNK))
                    self.writer.write_data(chunk[:left])
                    left -= len(chunk[:left])
                self.writer.end_data(size)
            finally:
                os.close(fd)
        elif flag == tarstream.SYMLINK:
            target = os.readlink(name, dir_fd=dirfd)
            self.writer.add(arcname, flag, linkname=target, **common)  # type: ignore[arg-type]
        elif flag in (tarstream.CHAR, tarstream.BLOCKDEV):
            self.writer.add(arcname, flag, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev), **common)  # type: ignore[arg-type]
        else:
            self.writer.add(arcname, flag, **common)  # type: ignore[arg-type]

    def whiteout(self, path: Path, st: os.stat_result | None = None) -> None:
        name = (*path[:-1], WHITEOUT_PREFIX + path[-1])
        uid, gid, mtime = (st.st_uid, st.st_gid, int(st.st_mtime)) if st is not None else (0, 0, 0)
        self.writer.add(b"/".join(name), tarstream.REGULAR, mode=0, uid=uid, gid=gid, mtime=mtime)

    def opaque(self, path: Path, st: os.stat_result) -> None:
        self.writer.add(
            b"/".join((*path, OPAQUE_MARKER)),
            tarstream.REGULAR,
            mode=0,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime=int(st.st_mtime),
        )


def _names(dirfd: int) -> list[bytes]:
    with os.scandir(fsutil.proc_path(dirfd)) as it:
        return sorted(os.fsencode(e.name) for e in it)


_UNSUPPORTED_OVERLAY_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")


def _walk_upper(emit: _Emitter, tree: Tree, path: Path) -> None:
    """Overlay upper directory -> changes (whiteout devices, opaque xattrs).

    Raises FailedPrecondition for an upper directory written with overlayfs'
    ``redirect_dir`` or ``metacopy`` features, which it cannot read as a change set.
    """
    fd = tree.upper_fd(path)
    for name in _names(fd):
        child = (*path, name)
        st = fsutil.lstat_at(fd, name)
        if st is None:
            continue
        if fsutil.is_whiteout(st):
            emit.whiteout(child, st)
            continue
        if not stat.S_ISLNK(st.st_mode):
            unsupported = [k for k in fsutil.list_xattrs(fd, name) if k in _UNSUPPORTED_OVERLAY_XATTRS]
            if unsupported:
                raise FailedPrecondition(
                    f"{'/'.join(p.decode(errors='replace') for p in child)} carries {unsupported[0]}: the host's "
                    "overlayfs redirect_dir/metacopy features are on, the change set cannot be read from the upper dir"
                )
        emit.entry(fd, name, child, st)
        if stat.S_ISDIR(st.st_mode):
            if fsutil.is_opaque(tree.upper_fd(child)):
                emit.opaque(child, st)
            _walk_upper(emit, tree, child)


def _same(a_fd: int, b_fd: int, name: bytes, a: os.stat_result, b: os.stat_result) -> bool:
    """containerd's sameFile: metadata, then content when only the mtime differs."""
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid, a.st_rdev) != (b.st_uid, b.st_gid, b.st_rdev):
        return False
    if fsutil.list_xattrs(a_fd, name) != fsutil.list_xattrs(b_fd, name):
        return False
    if stat.S_ISDIR(a.st_mode):
        return a.st_mtime_ns == b.st_mtime_ns
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(name, dir_fd=a_fd) == os.readlink(name, dir_fd=b_fd) and a.st_mtime_ns == b.st_mtime_ns
    if a.st_size != b.st_size:
        return False
    if a.st_mtime_ns == b.st_mtime_ns:
        return True
    if not stat.S_ISREG(a.st_mode):
        return False
    fa = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=a_fd)
    fb = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=b_fd)
    try:
        while True:
            ca, cb = os.read(fa, _CHUNK), os.read(fb, _CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True
    finally:
        os.close(fa)
        os.close(fb)


def _emit_all(emit: _Changes, tree: Tree, layer: int, path: Path) -> None:
    fd = tree.dirfd(layer, path)
    for name in _names(fd):
        st = fsutil.lstat_at(fd, name)
        if st is None:
            continue
        emit.entry(fd, name, (*path, name), st)
        if stat.S_ISDIR(st.st_mode):
            _emit_all(emit, tree, layer, (*path, name))


def _double_walk(emit: _Changes, tree: Tree, path: Path) -> None:
    """Native snapshot: compare the tree (layer 0) with its parent's copy (layer 1)."""
    new_fd = tree.dirfd(0, path)
    old_fd = tree.dirfd(1, path)
    new_names = _names(new_fd)
    for name in sorted(set(_names(old_fd)) - set(new_names)):
        emit.whiteout((*path, name))
    for name in new_names:
        child = (*path, name)
        st = fsutil.lstat_at(new_fd, name)
        if st is None:
            continue
        old = fsutil.lstat_at(old_fd, name)
        if old is None or stat.S_IFMT(old.st_mode) != stat.S_IFMT(st.st_mode):
            emit.entry(new_fd, name, child, st)
            if stat.S_ISDIR(st.st_mode):
                _emit_all(emit, tree, 0, child)
            continue
        if not _same(new_fd, old_fd, name, st, old):
            emit.entry(new_fd, name, child, st)
        if stat.S_ISDIR(st.st_mode):
            _double_walk(emit, tree, child)


def write_changes(source: ApplyTarget, out: BinaryIO) -> None:
    """Write the snapshot's change set as a layer tar to ``out`` (see module docstring)."""
    writer = tarstream.TarWriter(out)
    emit = _Emitter(writer)
    if source.overlay:
        tree = Tree(source.upper, [], overlay=False)
        try:
            _walk_upper(emit, tree, ())
        finally:
            tree.close()
    elif source.lowers:
        tree = Tree(source.upper, source.lowers[:1], overlay=False)
        try:
            _double_walk(emit, tree, ())
        finally:
            tree.close()
    else:
        tree = Tree(source.upper, [], overlay=False)
        try:
            _emit_all(emit, tree, 0, ())
        finally:
            tree.close()
    writer.close()


class _ChangeSizer:
    """Adds up the ``st_size`` of the added and modified non-directories, each inode once:
    moby's ``archive.ChangesSize`` (what its naive diff driver's DiffSize returns)."""

    def __init__(self) -> None:
        self.size = 0
        self.seen: set[tuple[int, int]] = set()

    def entry(self, dirfd: int, name: bytes, path: Path, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        self.size += st.st_size

    def whiteout(self, path: Path, st: os.stat_result | None = None) -> None:
        pass  # a deletion weighs nothing


def diff_size(source: ApplyTarget, *, walked: int | None = None) -> int:
    """Bytes of the change set of the snapshot ``source`` describes, as Docker reports a
    layer's DiffSize (``docker history``; an image's Size is the sum over its layers).

    A directory that holds the changes alone (an overlay snapshot's upper directory, a
    first layer) is measured as moby's overlay2 does, ``pkg/directory.Size`` of the layer's
    ``diff`` directory (``fsutil.content_size``: regular files and symlinks by ``st_size``,
    hard links once, directories and whiteouts nothing); ``walked`` is that figure when the
    caller has it already. A native snapshot with a parent holds its parent's files too:
    its change set against the parent's copy (the double walk of ``write_changes``) is
    measured as moby's naive diff driver does (``archive.ChangesSize``: the added and
    modified non-directories, hard links once). OSError if the directories go away.
    """
    if source.overlay or not source.lowers:
        return walked if walked is not None else fsutil.content_size(source.upper)
    sizer = _ChangeSizer()
    tree = Tree(source.upper, source.lowers[:1], overlay=False)
    try:
        _double_walk(sizer, tree, ())
    finally:
        tree.close()
    return sizer.size


def _walk_merged(emit: _Emitter, tree: Tree, path: Path) -> None:
    names: set[bytes] = set()
    for layer in tree.dir_layers(path):
        names.update(_names(tree.dirfd(layer, path)))
    for name in sorted(names):
        child = (*path, name)
        found = tree.lookup(child)
        if found is None:
            continue
        layer, st = found
        if tree.overlay and fsutil.is_whiteout(st):
            continue
        emit.entry(tree.dirfd(layer, path), name, child, st)
        if stat.S_ISDIR(st.st_mode):
            _walk_merged(emit, tree, child)


def write_flat(source: ApplyTarget, out: BinaryIO) -> None:
    """Write every entry of the merged tree (upper over lowers) as one tar to ``out``."""
    writer = tarstream.TarWriter(out)
    overlay = source.overlay and bool(source.lowers)
    tree = Tree(source.upper, source.lowers if overlay else [], overlay=overlay)
    try:
        _walk_merged(_Emitter(writer), tree, ())
    finally:
        tree.close()
    writer.close()


class _Sink:
    """Hashes what the tar writer produces, compresses it and writes it to a file."""

    def __init__(self, f: BinaryIO, compression: Compression) -> None:
        self.f = f
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.size = 0
        self.uncompressed = 0
        self._compress: Callable[[bytes], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        if compression is Compression.GZIP:
            gz = zlib.compressobj(6, zlib.DEFLATED, 31)
            self._compress, self._flush = gz.compress, gz.flush
        elif compression is Compression.ZSTD:
            zs = zstandard.ZstdCompressor().compressobj()
            self._compress, self._flush = zs.compress, zs.flush

    def _out(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.size += len(data)
            self.f.write(data)

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self.uncompressed += len(data)
        self._out(self._compress(data) if self._compress else data)
        return len(data)

    def close(self) -> None:
        if self._flush is not None:
            self._out(self._flush())


def write_layer_blob(
    writer: Callable[[ApplyTarget, BinaryIO], None], source: ApplyTarget, path: str, media_type: str
) -> BlobInfo:
    """Run ``writer`` (``write_changes`` or ``write_flat``) into a blob at ``path``.

    Compression from ``media_type`` (OCI/Docker layer types, see ``layers``). Written to
    ``<path>.tmp-<pid>``, fsynced and renamed, so ``path`` never holds half a blob.
    Raises InvalidArgument for an unknown media type or a relative/unwritable path.
    """
    compression = compression_of(media_type)
    if not os.path.isabs(path):
        raise InvalidArgument(f"blob path {path!r} must be absolute")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise InvalidArgument(f"blob path {path!r}: directory {directory!r} does not exist")
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f, compression)
            writer(source, sink)  # type: ignore[arg-type]
            sink.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return BlobInfo(
        digest="sha256:" + sink.blob.hexdigest(),
        diff_id="sha256:" + sink.diff.hexdigest(),
        size=sink.size,
        uncompressed_size=sink.uncompressed,
        media_type=media_type if media_type else MEDIA_TYPE_FOR[compression],
    )
