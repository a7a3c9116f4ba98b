"""File-system primitives the snapshotters, the applier and the differ share.

Everything here works relative to directory file descriptors and never follows a
symbolic link (``O_NOFOLLOW``, ``AT_SYMLINK_NOFOLLOW``, or xattr calls through
``/proc/self/fd/<dirfd>/<name>`` with ``follow_symlinks=False``), so a tree full of
hostile links can be copied, measured or removed without touching anything outside it.

- ``remove_at``/``remove_tree``: remove a tree without following links or crossing mounts;
- ``copy_node``: copy one non-directory (file data sparse-aware, owner, mode, xattrs, times);
- ``copy_tree``: copy a whole tree keeping hard links (the native snapshotter's prepare);
- ``disk_usage``: bytes (allocated blocks), inodes and content bytes of a tree, each inode
  counted once; ``content_size``: the content bytes alone (moby's ``directory.Size``);
- ``syncfs``: flush the file system holding a directory (before committing metadata).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

OVERLAY_XATTR_PREFIX = "trusted.overlay."
OPAQUE_XATTR = "trusted.overlay.opaque"

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str | bytes) -> None:
    """Flush the whole file system holding ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def proc_path(dirfd: int, name: bytes | str = b"") -> bytes:
    """A path naming ``name`` inside the directory ``dirfd`` without re-resolving its parents."""
    base = b"/proc/self/fd/%d" % dirfd
    if isinstance(name, str):
        name = os.fsencode(name)
    return base + b"/" + name if name else base


def list_xattrs(dirfd: int, name: bytes) -> dict[str, bytes]:
    """Return every xattr of ``name`` in ``dirfd`` (not following a symlink)."""
    path = proc_path(dirfd, name)
    found: dict[str, bytes] = {}
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return found
        raise
    for key in keys:
        with contextlib.suppress(OSError):
            found[key] = os.getxattr(path, key, follow_symlinks=False)
    return found


def set_xattrs(dirfd: int, name: bytes, xattrs: dict[str, bytes], *, skip_overlay: bool = True) -> None:
    """Set ``xattrs`` on ``name`` in ``dirfd`` (no-follow); overlay's own are skipped."""
    if not xattrs:
        return
    path = proc_path(dirfd, name)
    for key, value in xattrs.items():
        if skip_overlay and key.startswith(OVERLAY_XATTR_PREFIX):
            continue
        try:
            os.setxattr(path, key, value, follow_symlinks=False)
        except OSError as exc:
            log.warning("cannot set xattr %s on %s: %s", key, os.fsdecode(name), exc.strerror)


def is_whiteout(st: os.stat_result) -> bool:
    """True for an overlayfs whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dirfd: int) -> bool:
    """True if the directory open as ``dirfd`` carries ``trusted.overlay.opaque=y``."""
    try:
        return os.getxattr(proc_path(dirfd), OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def lstat_at(dirfd: int, name: bytes) -> os.stat_result | None:
    """``fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)``, None if it does not exist."""
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


class CrossDeviceError(OSError):
    """Refused to descend into another file system (a mount inside a tree being removed)."""


def remove_at(dirfd: int, name: bytes, *, dev: int | None = None) -> None:
    """Remove ``name`` in ``dirfd`` (a whole tree if it is a directory); missing is fine.

    Never follows symbolic links; refuses (CrossDeviceError) to descend into a directory
    on another device than ``dev`` (default: the device of ``dirfd``).
    """
    st = lstat_at(dirfd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dirfd)
        return
    if dev is None:
        dev = os.fstat(dirfd).st_dev
    if st.st_dev != dev:
        raise CrossDeviceError(errno.EXDEV, f"refusing to remove {os.fsdecode(name)}: a mount point")
    fd = os.open(name, O_DIR, dir_fd=dirfd)
    try:
        with os.scandir(fd) as it:
            children = [os.fsencode(e.name) for e in it]
        for child in children:
            remove_at(fd, child, dev=dev)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dirfd)


def remove_tree(path: str) -> None:
    """Remove the tree at ``path`` (see ``remove_at``); missing is fine."""
    parent, name = os.path.split(path.rstrip("/"))
    try:
        fd = os.open(parent or "/", O_PATH_DIR)
    except FileNotFoundError:
        return
    try:
        remove_at(fd, os.fsencode(name))
    finally:
        os.close(fd)


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes, keeping holes (SEEK_DATA/SEEK_HOLE) and using copy_file_range."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole left
                break
            raise
        hole = os.lseek(src, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            try:
                n = os.copy_file_range(src, dst, hole - pos, pos, pos)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                chunk = os.pread(src, min(hole - pos, 1 << 20), pos)
                n = os.pwrite(dst, chunk, pos)
            if n == 0:
                break
            pos += n
        offset = hole
    os.ftruncate(dst, size)


def copy_node(src_dirfd: int, src_name: bytes, dst_dirfd: int, dst_name: bytes, st: os.stat_result) -> None:
    """Copy one non-directory node with owner, mode, xattrs (not overlay's) and times.

    ``st`` is the source's lstat. The destination must not exist. Regular files keep
    their holes; devices need CAP_MKNOD (EPERM propagates).
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dirfd)
        try:
            dst = os.open(
                dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dirfd
            )
            try:
                _copy_data(src, dst, st.st_size)
                os.fchown(dst, st.st_uid, st.st_gid)
                os.fchmod(dst, stat.S_IMODE(mode))
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src_name, dir_fd=src_dirfd), dst_name, dir_fd=dst_dirfd)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst_name, stat.S_IMODE(mode), dir_fd=dst_dirfd)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dst_name, mode, st.st_rdev, dir_fd=dst_dirfd)
    elif stat.S_ISSOCK(mode):
        return  # sockets are not copied (as tar does)
    else:
        raise OSError(errno.EINVAL, f"cannot copy {os.fsdecode(src_name)}: unknown file type")
    if not stat.S_ISREG(mode):
        os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dirfd, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(dst_name, stat.S_IMODE(mode), dir_fd=dst_dirfd)
    set_xattrs(dst_dirfd, dst_name, list_xattrs(src_dirfd, src_name))
    os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dirfd, follow_symlinks=False)


def copy_dir_meta(dst_dirfd: int, dst_name: bytes, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
    """Give directory ``dst_name`` the owner, mode and xattrs of a source directory (not times)."""
    os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dirfd, follow_symlinks=False)
    os.chmod(dst_name, stat.S_IMODE(st.st_mode), dir_fd=dst_dirfd)
    set_xattrs(dst_dirfd, dst_name, xattrs)


def copy_tree(src: str, dst: str) -> None:
    """Copy the contents of directory ``src`` into the existing empty directory ``dst``.

    Keeps every file type, owner, mode, xattr (except overlay's), time, sparse file and
    hard link (by inode within ``src``); sockets are skipped; never follows a symlink nor
    enters another file system. Used by the native snapshotter, which has no union fs.
    """
    src_fd = os.open(src, O_DIR)
    dst_fd = os.open(dst, O_DIR)
    try:
        root_st = os.fstat(src_fd)
        links: dict[tuple[int, int], bytes] = {}
        _copy_children(src_fd, dst_fd, dst_fd, b"", links, root_st.st_dev)
        copy_dir_meta_fd(dst_fd, root_st, list_xattrs(src_fd, b""))
        os.utime(dst_fd, ns=(root_st.st_atime_ns, root_st.st_mtime_ns))
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def copy_dir_meta_fd(fd: int, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
    """Owner, mode and xattrs of a source directory onto the open directory ``fd``."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    for key, value in xattrs.items():
        if key.startswith(OVERLAY_XATTR_PREFIX):
            continue
        try:
            os.setxattr(fd, key, value)
        except OSError as exc:
            log.warning("cannot set xattr %s on a directory: %s", key, exc.strerror)


def _copy_children(
    src_fd: int, dst_fd: int, dst_root: int, rel: bytes, links: dict[tuple[int, int], bytes], dev: int
) -> None:
    with os.scandir(src_fd) as it:
        names = sorted(os.fsencode(e.name) for e in it)
    for name in names:
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        child_rel = rel + b"/" + name if rel else name
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:
                raise CrossDeviceError(errno.EXDEV, f"refusing to copy {os.fsdecode(name)}: a mount point")
            os.mkdir(name, 0o700, dir_fd=dst_fd)
            sub_src = os.open(name, O_DIR, dir_fd=src_fd)
            sub_dst = os.open(name, O_DIR, dir_fd=dst_fd)
            try:
                _copy_children(sub_src, sub_dst, dst_root, child_rel, links, dev)
                copy_dir_meta_fd(sub_dst, st, list_xattrs(src_fd, name))
                os.utime(sub_dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(sub_src)
                os.close(sub_dst)
            continue
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            os.link(links[key], name, src_dir_fd=dst_root, dst_dir_fd=dst_fd, follow_symlinks=False)
            continue
        copy_node(src_fd, name, dst_fd, name, st)
        if st.st_nlink > 1:
            links[key] = child_rel


@dataclass
class Usage:
    """A tree's ``size`` (bytes allocated), ``inodes`` and ``content`` (what ``content_size``
    counts: the ``st_size`` of its non-directories, each inode once)."""

    size: int
    inodes: int
    content: int = 0


def content_size(path: str) -> int:
    """Bytes of the entries under ``path`` that are not directories (their ``st_size``), each
    inode once (hard links); 0 if ``path`` is gone. moby's ``pkg/directory.Size``, which Docker
    uses for a container's SizeRw (the rw layer's changes), a volume's size in ``system df``
    and, with overlay2, an image layer's DiffSize (the size of its ``diff`` directory once the
    layer is applied): directories (e.g. those made for mount points) and empty files weigh
    nothing, a symlink weighs the length of its target, a whiteout (a 0/0 device) nothing,
    unlike ``disk_usage``'s allocated blocks. Symlinks are not followed; other file systems
    mounted inside are not entered."""
    try:
        root = os.lstat(path)
    except FileNotFoundError:
        return 0
    seen: set[int] = set()
    size = 0
    for st in _tree(path, root.st_dev):
        if not stat.S_ISDIR(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            size += st.st_size
    return size


def disk_usage(path: str) -> Usage:
    """Bytes allocated (``st_blocks * 512``) and inodes used by the tree at ``path``, and in
    the same walk its ``content`` bytes (``content_size``'s count).

    Each inode is counted once (hard links), the top directory included; symlinks are not
    followed and other file systems mounted inside are not entered. containerd's
    ``fs.DiskUsage`` counts the same way.
    """
    try:
        root = os.lstat(path)
    except FileNotFoundError:
        return Usage(0, 0)
    seen = {root.st_ino}
    size = root.st_blocks * 512
    content = 0
    for st in _tree(path, root.st_dev):
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            size += st.st_blocks * 512
            if not stat.S_ISDIR(st.st_mode):
                content += st.st_size
    return Usage(size=size, inodes=len(seen), content=content)


def _tree(path: str, dev: int) -> Iterator[os.stat_result]:
    """The ``lstat`` of every entry below ``path`` on device ``dev`` (other file systems mounted
    inside are not entered; an entry removed during the walk is skipped)."""
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_dev != dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                yield st
