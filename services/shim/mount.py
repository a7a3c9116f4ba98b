"""Mounting a container's rootfs from snapshot mounts, and taking it down again.

The snapshot service describes a rootfs as a list of mounts (``common.api.snapshot.Mount``:
``type``, ``source``, ``target``, ``options``), like containerd's ``mount.Mount``. The
shim applies them on ``<bundle>/rootfs`` before ``runc create`` and unmounts on delete;
the execution service unmounts too when it cleans up after a dead shim. ``mount(2)``
and ``umount2(2)`` are called directly (no ``mount`` binary): the shim's children are
reaped by its own reaper and a fork per mount would cost milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

_FLAGS = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "noatime": (MS_NOATIME, True),
    "nodiratime": (MS_NODIRATIME, True),
    "relatime": (MS_RELATIME, True),
    "strictatime": (MS_STRICTATIME, True),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
}

_libc: Any = None
_CWD_LOCK = threading.Lock()


def libc() -> Any:
    """This process's C library (one ctypes handle for the shim: each ``CDLL()`` builds a class
    and calls dlopen), with ``errno`` kept for ``ctypes.get_errno``."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def parse_options(options: Iterable[str]) -> tuple[int, str]:
    """Split mount options into ``(flags, data)`` the way ``mount(8)`` does."""
    flags = 0
    data: list[str] = []
    for opt in options:
        known = _FLAGS.get(opt)
        if known is None:
            data.append(opt)
        elif known[1]:
            flags |= known[0]
        else:
            flags &= ~known[0]
    return flags, ",".join(data)


def mount(source: str, target: str, fstype: str, options: Iterable[str] = ()) -> None:
    """``mount -t fstype -o options source target``; raises ``OSError`` naming the target."""
    flags, data = parse_options(options)
    if fstype == "bind":
        flags |= MS_BIND
    lib = libc()
    ro_bind = flags & MS_BIND and flags & MS_RDONLY
    first = flags & ~MS_RDONLY if ro_bind else flags
    if lib.mount(source.encode(), target.encode(), fstype.encode(), first, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} {source} on {target} ({','.join(options)}): {os.strerror(err)}")
    # a bind mount only becomes read-only on a remount
    remount = MS_REMOUNT | MS_BIND | MS_RDONLY | (flags & ~MS_REC)
    if ro_bind and lib.mount(None, target.encode(), None, remount, None) != 0:
        err = ctypes.get_errno()
        unmount(target)
        raise OSError(err, f"remount {target} read-only: {os.strerror(err)}")


def unmount(target: str, *, detach: bool = False) -> bool:
    """Unmount ``target`` (every mount stacked on it); False if nothing was mounted.

    Raises ``OSError`` when it stays busy (``detach=True`` falls back to a lazy unmount).
    """
    lib = libc()
    unmounted = False
    for _ in range(64):
        if lib.umount2(target.encode(), 0) == 0:
            unmounted = True
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return unmounted
        if err == errno.EBUSY and detach:
            if lib.umount2(target.encode(), MNT_DETACH) == 0:
                unmounted = True
                continue
            err = ctypes.get_errno()
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")
    return unmounted


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256  # struct statx (linux/stat.h): u64 stx_attributes at 8, u64 stx_attributes_mask at 56


def _statx_mount_root(path: str) -> bool | None:
    """``STATX_ATTR_MOUNT_ROOT`` of ``path`` (statx(2), Linux 5.8): True if it is the root of a
    mount; None where the kernel or the C library cannot tell (then read mountinfo)."""
    lib = libc()
    statx = getattr(lib, "statx", None)
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if statx(_AT_FDCWD, path.encode(), _AT_SYMLINK_NOFOLLOW, 0, buf) != 0:
        return False if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR) else None
    attributes = int.from_bytes(buf.raw[8:16], sys.byteorder)
    supported = int.from_bytes(buf.raw[56:64], sys.byteorder)
    if not supported & _STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(attributes & _STATX_ATTR_MOUNT_ROOT)


def is_mountpoint(path: str) -> bool:
    """True if something is mounted exactly at ``path``.

    Asks ``statx`` first (one syscall); reads ``/proc/self/mountinfo`` where it cannot tell
    (a kernel before 5.8). The kernel writes mountinfo out in full at each read, ~1 ms here
    with a few dozen mounts and more with every running container, and this runs on the
    start path (the shim, before it mounts) and on the removal's."""
    real = os.path.realpath(path)
    known = _statx_mount_root(real)
    return known if known is not None else in_mountinfo(real)


def in_mountinfo(real: str) -> bool:
    """True if ``/proc/self/mountinfo`` lists a mount at ``real`` (a resolved path)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                point = line.split(" ", 5)[4]
                if point == real or _unescape(point) == real:
                    return True
    except OSError:
        return False
    return False


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def mount_all(mounts: Iterable[Mapping[str, Any]], rootfs: str) -> None:
    """Apply snapshot ``mounts`` (dicts of ``common.api.snapshot.Mount``) under ``rootfs``.

    All or nothing: on failure every mount made so far is taken down again. An overlay
    whose options exceed a page is mounted from the layers' common parent with relative
    paths (``common.mount.compact_options``, containerd's ``compactLowerdirOption``). A
    ``volatile`` overlay's mark from an earlier mount is removed first
    (``common.mount.clear_volatile_marker``).
    """
    from common.mount import clear_volatile_marker, compact_options

    done: list[str] = []
    try:
        for m in mounts:
            target = os.path.join(rootfs, str(m.get("target") or "").lstrip("/"))
            clear_volatile_marker(list(m.get("options") or ()))
            cwd, options = compact_options(list(m.get("options") or ()))
            if cwd is None:
                mount(str(m["source"]), target, str(m["type"]), options)
            else:
                with _CWD_LOCK:
                    old = os.getcwd()
                    os.chdir(cwd)
                    try:
                        mount(str(m["source"]), target, str(m["type"]), options)
                    finally:
                        os.chdir(old)
            done.append(target)
    except BaseException:
        for target in reversed(done):
            try:
                unmount(target, detach=True)
            except OSError as exc:
                log.warning("rollback: %s", exc)
        raise
