"""The applier: a layer tar streamed into a snapshot directory (OCI image-spec layer.md).

``apply_layer(blob, media_type, digest, upper, lowers, overlay=...)`` decompresses the
blob (gzip/zstd/plain, checked against its media type), hashes the uncompressed
stream (the diff ID) and applies it entry by entry, without mounting anything:

- *overlay* mode (an overlay snapshot with parents): writes straight into the upper
  directory as containerd does; ``.wh.<name>`` becomes a 0/0 character device (owner
  from the entry), ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr; a hard
  link to a file of a lower layer first copies that file up.
- *naive* mode (first layer, native snapshotter): the directory holds the whole tree;
  ``.wh.<name>`` deletes, ``.wh..wh..opq`` deletes what lower layers put in the
  directory. In both modes whiteouts hide lower content only, never entries of the
  same layer, whatever their order in the tar (C04).

Every entry name is cleaned (a ``..`` escaping the root refuses the layer) and its
parent resolved inside the snapshot by ``rootfs.Tree`` (symlinks followed in the
root only). An existing path is replaced (unlinked, never written through), except
that a directory entry over a directory only changes its metadata (C05). Regular
files are written sparse when the tar says so; owners, modes (setuid/setgid/sticky
kept), mtimes and xattrs (``user.*``, ``security.*``, POSIX ACLs; never ``trusted.*``,
C09) are applied; FIFOs are made, devices when permitted (else a warning, C08),
unknown types (sockets have none in tar) skipped with a warning. A refused entry
fails the whole layer with InvalidArgument naming it; the caller throws the
snapshot away, so nothing half-applied is ever committed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from common.errors import DockyardError, Internal, InvalidArgument
from services.snapshot import fsutil, layers, tarstream
from services.snapshot.rootfs import Path, PathError, Tree, clean, show
from services.snapshot.tarstream import Entry, TarReader

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
WHITEOUT_META_PREFIX = b".wh..wh."
_CHUNK = 1 << 20
_ALLOWED_XATTR_PREFIXES = ("user.", "security.", "system.posix_acl_access", "system.posix_acl_default")


class CancelledError(Exception):
    """The apply was cancelled between two entries."""


@dataclass
class Applied:
    """What applying a tar stream did: ``entries`` (tar members read), the ``warnings``
    logged and ``content_size``: the sum of the members' sizes (their data bytes: regular
    files; links, directories, devices and whiteouts weigh nothing), the size moby's
    ``archive.UnpackLayer`` returns ("the size in bytes of the contents of the layer"),
    which its naive diff driver (``vfs``) records as the layer's DiffSize."""

    entries: int
    warnings: list[str]
    content_size: int


@dataclass
class ApplyResult:
    """What an apply did: ``diff_id`` (sha256 of the uncompressed tar), ``size`` (its
    bytes), ``entries`` (tar members applied), the ``warnings`` logged and ``content_size``
    (``Applied.content_size``)."""

    diff_id: str
    size: int
    entries: int
    warnings: list[str] = field(default_factory=list)
    content_size: int = 0


class Applier:
    """Applies ``Entry`` objects of one layer to a ``Tree`` (see module docstring)."""

    def __init__(self, tree: Tree, *, what: str = "layer", can_mknod: bool = True) -> None:
        self.tree = tree
        self.overlay = tree.overlay and tree.lower_count > 0
        self.what = what
        self.can_mknod = can_mknod
        self.written: set[Path] = set()
        self.ancestors: set[Path] = set()
        self.copied_up: set[Path] = set()
        self.whited_out: set[Path] = set()
        self.dir_times: dict[Path, tuple[int, int]] = {}
        self.warnings: list[str] = []
        self.entries = 0
        self.content_size = 0

    # -- helpers -----------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s: %s", self.what, message)

    def _refuse(self, entry: Entry, reason: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: entry {entry.display_name!r} refused: {reason}")

    def _mark_written(self, path: Path) -> None:
        self.written.add(path)
        for i in range(len(path) - 1, 0, -1):
            prefix = path[:i]
            if prefix in self.ancestors:
                break
            self.ancestors.add(prefix)

    def _mark_ours(self, path: Path) -> None:
        """Count directory ``path`` (and its parents) as holding this layer's content."""
        for i in range(len(path), 0, -1):
            if path[:i] in self.ancestors:
                break
            self.ancestors.add(path[:i])

    def _times(self, entry: Entry) -> tuple[int, int]:
        mtime = entry.mtime_ns
        return (entry.atime_ns if entry.atime_ns is not None else mtime, mtime)

    def _xattrs(self, entry: Entry) -> dict[str, bytes]:
        if not entry.xattrs:
            return {}
        keep = {}
        for key, value in entry.xattrs.items():
            if key.startswith("trusted."):
                self._warn(f"entry {entry.display_name!r}: xattr {key} ignored (trusted.* is never applied)")
            elif key.startswith(_ALLOWED_XATTR_PREFIXES):
                keep[key] = value
            else:
                self._warn(f"entry {entry.display_name!r}: xattr {key} ignored (namespace not supported)")
        return keep

    def _set_xattrs_fd(self, fd: int, entry: Entry) -> None:
        for key, value in self._xattrs(entry).items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self._warn(f"entry {entry.display_name!r}: cannot set xattr {key}: {exc.strerror}")

    def _set_xattrs_at(self, dirfd: int, name: bytes, entry: Entry) -> None:
        path = fsutil.proc_path(dirfd, name)
        for key, value in self._xattrs(entry).items():
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as exc:
                self._warn(f"entry {entry.display_name!r}: cannot set xattr {key}: {exc.strerror}")

    def _chown(self, entry: Entry, target: int | bytes, dirfd: int | None = None) -> None:
        """Give the new node the entry's owner (an open fd, or a name in ``dirfd``)."""
        try:
            if isinstance(target, int):
                os.fchown(target, entry.uid, entry.gid)
            else:
                os.chown(target, entry.uid, entry.gid, dir_fd=dirfd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # an id outside this user namespace's map
                raise self._refuse(
                    entry, f"owner {entry.uid}:{entry.gid} is not mapped in this user namespace"
                ) from None
            raise

    def _prepare(self, path: Path, new_is_dir: bool) -> bool:
        """Make room for a new entry at ``path`` in the upper layer.

        Returns True when an upper directory is there and the new entry is a directory
        too (only metadata changes). Otherwise removes whatever is in the upper layer
        and returns False.
        """
        parent = self.tree.upper_fd(path[:-1])
        st = fsutil.lstat_at(parent, path[-1])
        if st is None:
            if not new_is_dir and self.tree.is_cached_dir(path):
                self.tree.invalidate(path)  # the new entry hides a lower directory
            return False
        if new_is_dir and stat.S_ISDIR(st.st_mode):
            return True
        fsutil.remove_at(parent, path[-1], dev=self.tree.dev)
        self.tree.invalidate(path)
        if new_is_dir and self.overlay:
            # a non-directory of this layer (or a whiteout) stood here: what was below is gone
            self.whited_out.add(path)
        return False

    # -- entries -----------------------------------------------------------------------------
    def apply(self, entry: Entry, tar: TarReader) -> None:
        """Apply one tar member (reading its data from ``tar``)."""
        self.entries += 1
        self.content_size += entry.size  # every member, skipped ones included, as UnpackLayer counts
        try:
            comps = clean(entry.name)
        except PathError as exc:
            raise self._refuse(entry, str(exc)) from None
        if not comps:
            return  # the root itself: skipped, as containerd does
        base = comps[-1]
        if any(c.startswith(WHITEOUT_META_PREFIX) for c in comps) and base != OPAQUE_MARKER:
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): skipped, as Docker and containerd do
        try:
            if base.startswith(WHITEOUT_PREFIX):
                if base == OPAQUE_MARKER:
                    self._opaque(comps[:-1], entry)
                else:
                    name = base[len(WHITEOUT_PREFIX) :]
                    if name in (b"", b".", b".."):
                        raise self._refuse(entry, "invalid whiteout name")
                    self._whiteout((*comps[:-1], name), entry)
                return
            parent = self.tree.resolve(comps[:-1], create=True, what="parent directory")
            self.tree.ensure_upper_dir(parent)
            path = (*parent, base)
            kind = entry.type
            if kind == tarstream.REGULAR:
                self._regular(path, entry, tar)
            elif kind == tarstream.DIRECTORY:
                self._directory(path, entry)
            elif kind == tarstream.SYMLINK:
                self._symlink(path, entry)
            elif kind == tarstream.HARDLINK:
                self._hardlink(path, entry)
            elif kind in (tarstream.CHAR, tarstream.BLOCKDEV, tarstream.FIFO):
                self._special(path, entry)
            else:
                self._warn(f"entry {entry.display_name!r}: type {kind!r} not supported, skipped")
                return
            self._mark_written(path)
        except PathError as exc:
            raise self._refuse(entry, str(exc)) from None
        except DockyardError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise self._refuse(entry, exc.strerror or str(exc)) from None

    def _regular(self, path: Path, entry: Entry, tar: TarReader) -> None:
        parent = self.tree.upper_fd(path[:-1])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path[-1], flags, 0o600, dir_fd=parent)
            if self.tree.is_cached_dir(path):
                self.tree.invalidate(path)  # the new file hides a lower directory
            else:
                self.tree.forget(path)
        except FileExistsError:
            self._prepare(path, new_is_dir=False)
            fd = os.open(path[-1], flags, 0o600, dir_fd=parent)
            self.tree.forget(path)
        try:
            if entry.sparse is not None:
                for offset, length in entry.sparse:
                    if offset < 0 or length < 0 or offset + length > entry.size:
                        raise self._refuse(entry, "sparse map out of range")
                    os.lseek(fd, offset, os.SEEK_SET)
                    self._copy(fd, tar, length)
                os.ftruncate(fd, entry.size)
            else:
                self._copy(fd, tar, entry.size)
            self._chown(entry, fd)
            os.fchmod(fd, entry.mode)
            self._set_xattrs_fd(fd, entry)
            os.utime(fd, ns=self._times(entry))
        finally:
            os.close(fd)

    @staticmethod
    def _copy(fd: int, tar: TarReader, length: int) -> None:
        left = length
        while left > 0:
            chunk = tar.read(min(left, _CHUNK))
            if not chunk:
                raise InvalidArgument(f"truncated tar archive at offset {tar.pos}")
            left -= len(chunk)
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]

    def _directory(self, path: Path, entry: Entry) -> None:
        parent = self.tree.upper_fd(path[:-1])
        existing = self._prepare(path, new_is_dir=True)
        if not existing:
            os.mkdir(path[-1], 0o700, dir_fd=parent)
            self.tree.forget(path)
        self.tree.upper_dirs_created.pop(path, None)
        fd = os.open(path[-1], fsutil.O_DIR, dir_fd=parent)
        try:
            self._chown(entry, fd)
            os.fchmod(fd, entry.mode)
            self._set_xattrs_fd(fd, entry)
        finally:
            os.close(fd)
        if self.overlay and path in self.whited_out:
            self.tree.set_opaque(path)
        self.dir_times[path] = self._times(entry)

    def _symlink(self, path: Path, entry: Entry) -> None:
        parent = self.tree.upper_fd(path[:-1])
        self._prepare(path, new_is_dir=False)
        os.symlink(entry.linkname, path[-1], dir_fd=parent)
        self.tree.forget(path)
        self._chown(entry, path[-1], parent)
        self._set_xattrs_at(parent, path[-1], entry)
        os.utime(path[-1], ns=self._times(entry), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, path: Path, entry: Entry) -> None:
        try:
            target = clean(entry.linkname, what="hard link target")
        except PathError as exc:
            raise self._refuse(entry, str(exc)) from None
        if not target:
            raise self._refuse(entry, "hard link to the root directory")
        tparent = self.tree.resolve(target[:-1], what="hard link target")
        tpath = (*tparent, target[-1])
        found = self.tree.lookup(tpath)
        if found is None:
            raise self._refuse(entry, f"hard link target {show(tpath)} does not exist")
        layer, st = found
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse(entry, f"hard link target {show(tpath)} is a directory")
        if tpath == path:
            return
        if layer != 0:
            self._copy_up(tpath, layer, st)
        parent = self.tree.upper_fd(path[:-1])
        self._prepare(path, new_is_dir=False)
        if self.tree.lookup(tpath) is None:
            raise self._refuse(entry, f"hard link target {show(tpath)} was replaced by this entry")
        os.link(target[-1], path[-1], src_dir_fd=self.tree.upper_fd(tparent), dst_dir_fd=parent, follow_symlinks=False)
        self.tree.forget(path)

    def _copy_up(self, tpath: Path, layer: int, st: os.stat_result) -> None:
        """Copy a lower layer's non-directory into the upper layer (for a hard link)."""
        upper = self.tree.ensure_upper_dir(tpath[:-1])
        if fsutil.lstat_at(upper, tpath[-1]) is not None:
            fsutil.remove_at(upper, tpath[-1], dev=self.tree.dev)  # e.g. a whiteout from this layer
        fsutil.copy_node(self.tree.dirfd(layer, tpath[:-1]), tpath[-1], upper, tpath[-1], st)
        self.tree.invalidate(tpath)
        self.copied_up.add(tpath)

    def _special(self, path: Path, entry: Entry) -> None:
        parent = self.tree.upper_fd(path[:-1])
        if entry.type == tarstream.FIFO:
            self._prepare(path, new_is_dir=False)
            os.mkfifo(path[-1], 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if entry.type == tarstream.CHAR else stat.S_IFBLK
            if not self.can_mknod:
                self._warn(f"entry {entry.display_name!r}: device node skipped (no permission to create it)")
                return
            self._prepare(path, new_is_dir=False)
            try:
                os.mknod(path[-1], kind | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=parent)
            except PermissionError:
                self._warn(f"entry {entry.display_name!r}: device node skipped (no permission to create it)")
                return
        self.tree.forget(path)
        self._chown(entry, path[-1], parent)
        os.chmod(path[-1], entry.mode, dir_fd=parent)
        self._set_xattrs_at(parent, path[-1], entry)
        os.utime(path[-1], ns=self._times(entry), dir_fd=parent, follow_symlinks=False)

    # -- whiteouts ---------------------------------------------------------------------------
    def _resolve_existing(self, comps: Path, entry: Entry) -> Path | None:
        try:
            return self.tree.resolve(comps, what="parent directory")
        except PathError:
            return None  # nothing there: nothing to hide

    def _whiteout(self, comps: Path, entry: Entry) -> None:
        parent = self._resolve_existing(comps[:-1], entry)
        if parent is None:
            return
        path = (*parent, comps[-1])
        if self.overlay:
            self._whiteout_overlay(path, entry)
        else:
            self._whiteout_naive(path)

    def _whiteout_overlay(self, path: Path, entry: Entry) -> None:
        found = self.tree.lookup(path)
        if found is None:
            return  # a whiteout for a name that is not below: a no-op
        layer, st = found
        if layer == 0:
            ours = path in self.written or path in self.ancestors
            if stat.S_ISDIR(st.st_mode):
                if ours:
                    self.tree.set_opaque(path)  # keep this layer's entries, hide the lower ones
                    return
            elif ours:
                return  # this layer's own file already hides the lower one
            self.tree.remove_upper(path)
            self.copied_up.discard(path)
            if self.tree.lookup(path) is None:
                return
        upper = self.tree.ensure_upper_dir(path[:-1])
        os.mknod(path[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=upper)
        self._chown(entry, path[-1], upper)
        self.tree.invalidate(path)
        self.whited_out.add(path)

    def _whiteout_naive(self, path: Path) -> None:
        st = self.tree.lstat(0, path)
        if st is None:
            return
        if path in self.written or path in self.ancestors:
            if stat.S_ISDIR(st.st_mode):
                self._purge(path)
            return
        self.tree.remove_upper(path)

    def _opaque(self, comps: Path, entry: Entry) -> None:
        if self.overlay:
            path = self.tree.resolve(comps, create=True, what="directory")
            self.tree.ensure_upper_dir(path)
            self.tree.set_opaque(path)
            for copied in [p for p in self.copied_up if p[:-1] == path and p not in self.written]:
                self.tree.remove_upper(copied)
                self.copied_up.discard(copied)
            self._mark_ours(path)
        else:
            path_or_none = self._resolve_existing(comps, entry)
            if path_or_none is not None:
                self._purge(path_or_none)

    def _purge(self, path: Path) -> None:
        """Naive opaque: delete what lower layers put under directory ``path``."""
        fd = self.tree.upper_fd(path)
        with os.scandir(fsutil.proc_path(fd)) as it:
            names = [os.fsencode(e.name) for e in it]
        for name in names:
            child = (*path, name)
            if child in self.written or child in self.ancestors:
                st = fsutil.lstat_at(fd, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self._purge(child)
                continue
            self.tree.remove_upper(child)

    # -- end ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """Set directory times last (creating children changed them), deepest first."""
        times = dict(self.dir_times)
        for path, st in self.tree.upper_dirs_created.items():
            if st is not None and path not in times:
                times[path] = (st.st_atime_ns, st.st_mtime_ns)
        for path in sorted(times, key=len, reverse=True):
            try:
                parent = self.tree.upper_fd(path[:-1])
                fd = os.open(path[-1], fsutil.O_DIR, dir_fd=parent)
            except (OSError, PathError):
                continue  # replaced later in the layer
            try:
                os.utime(fd, ns=times[path])
            finally:
                os.close(fd)


def _can_mknod() -> bool:
    """Whether this process may create device nodes (CAP_MKNOD, not in a user namespace)."""
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
        if fields[:3] != ["0", "0", "4294967295"]:
            return False
    except OSError:
        pass
    return os.geteuid() == 0


def apply_stream(
    stream: BinaryIO | layers.LayerReader,
    upper: str,
    lowers: list[str] | None = None,
    *,
    overlay: bool = False,
    what: str = "layer",
    cancel: threading.Event | None = None,
    sync: bool = True,
) -> Applied:
    """Apply the uncompressed tar ``stream`` to ``upper`` (over ``lowers``, nearest first).

    Returns what it did (``Applied``). Raises InvalidArgument for a malformed archive or a
    refused entry (naming it), ``CancelledError`` if ``cancel`` was set, OSError for I/O
    failures of the host (e.g. ENOSPC). ``sync``: syncfs the upper directory at the end.
    """
    tree = Tree(upper, lowers or [], overlay=overlay)
    try:
        applier = Applier(tree, what=what, can_mknod=_can_mknod())
        tar = TarReader(stream)
        for i, entry in enumerate(tar):
            if cancel is not None and i % 64 == 0 and cancel.is_set():
                raise CancelledError(what)
            applier.apply(entry, tar)
        if tar.drain():
            # Go's archive/tar (Docker, containerd) stops reading there too; the diff ID covers it
            applier._warn("data after the end of the tar archive ignored")
        applier.finish()
        if sync:
            fsutil.syncfs(fsutil.proc_path(tree.upper_fd(())))
        return Applied(applier.entries, applier.warnings, applier.content_size)
    finally:
        tree.close()


def apply_layer(
    blob: str,
    media_type: str,
    digest: str,
    upper: str,
    lowers: list[str] | None = None,
    *,
    overlay: bool = False,
    cancel: threading.Event | None = None,
) -> ApplyResult:
    """Apply the layer blob at ``blob`` (see module docstring); returns the ``ApplyResult``.

    The diff ID is computed over every uncompressed byte (trailing padding included);
    comparing it with the expected one is the caller's job (it must throw the snapshot
    away on a mismatch). Raises InvalidArgument (unknown/mismatched media type, corrupt
    stream, refused entry), NotFound-free: a missing blob is an Internal error.
    """
    what = f"layer {digest}"
    try:
        raw = open(blob, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise Internal(f"{what}: cannot open blob {blob}: {exc.strerror}") from None
    with contextlib.closing(raw):
        reader = layers.open_layer(raw, media_type, digest)
        with contextlib.closing(reader):
            reader.start_thread()
            applied = apply_stream(reader, upper, lowers, overlay=overlay, what=what, cancel=cancel)
            reader.drain()
            return ApplyResult(
                reader.diff_id(), reader.uncompressed_size, applied.entries, applied.warnings, applied.content_size
            )
