"""The state directory (``DOCKYARD_STATE``) on a tmpfs of its own when the host's is on disk.

Everything under the state directory is volatile by design: sockets, pid files, OCI
bundles, the runtime's ``--root``, the shims' state and outboxes. None of it means
anything after a reboot (the containers are gone), which is why it lives under ``/run``,
a tmpfs on a systemd host. On a host whose ``/run`` is an ordinary disk file system (this
project's CI machines: ext4), each file a start creates there (~40 metadata operations
per ``run --rm``: bundle, spec rewrite, state files, runc's state) goes through the
journal: ~0.3 ms of system CPU a file, ~10 ms of CPU per container in all (measured:
20 concurrent ``run -d``, 47-52 ms of Dockyard CPU per container on ext4, 37-39 on a
tmpfs), and stale state survives a reboot.

``ensure_tmpfs`` mounts a tmpfs there (``nosuid,nodev,mode=0755,size=20%``: what systemd
gives ``/run``) when the directory is missing or empty and not on a tmpfs already.
A directory with anything in it is left alone: it may be a running instance's state (its
shims' sockets and bundles), which a mount would hide. ``dockyard up`` (before the
supervisor's log is created) and the supervisor call it. ``DOCKYARD_STATE_TMPFS=0``
turns it off. The mount stays after ``dockyard down``, like the state it holds (the
containers and their shims keep running); a reboot removes it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os

log = logging.getLogger(__name__)

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
MS_NOSUID = 0x2
MS_NODEV = 0x4
OPTIONS = "mode=0755,size=20%"


def _libc() -> ctypes.CDLL:
    """This process's C library (``find_library`` would run ``ldconfig`` in a subprocess)."""
    return ctypes.CDLL(None, use_errno=True)


def fs_type(path: str) -> int:
    """``statfs(2)``'s ``f_type`` of the file system holding ``path``; raises ``OSError``."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc().statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    # f_type is the first field, a C long (__fsword_t)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_volatile(path: str) -> bool:
    """True when ``path`` is on a tmpfs or ramfs (its contents end with the boot)."""
    return fs_type(path) in (TMPFS_MAGIC, RAMFS_MAGIC)


def enabled(env: dict[str, str] | None = None) -> bool:
    """``DOCKYARD_STATE_TMPFS`` is not ``0``/``false``/``no``/``off`` (default on)."""
    value = (os.environ if env is None else env).get("DOCKYARD_STATE_TMPFS", "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def ensure_tmpfs(state: str, on: bool | None = None) -> str:
    """Put the state directory ``state`` on a tmpfs of its own if it may (module docstring).

    Returns what it found or did: ``"mounted"``, ``"volatile"`` (on a tmpfs already),
    ``"in use"`` (not empty: left on its file system), ``"off"`` (``DOCKYARD_STATE_TMPFS=0``)
    or ``"failed: <why>"`` (the mount was refused, e.g. not root; the directory is used as
    it is). ``on``: the ``state_tmpfs`` setting (None: read ``DOCKYARD_STATE_TMPFS``). Never
    raises for the mount itself; ``OSError`` if ``state`` cannot be created.
    """
    if not (enabled() if on is None else on):
        return "off"
    os.makedirs(state, exist_ok=True)
    # one look-and-mount at a time: two `dockyard up` at once both found the directory empty on
    # its disk and both mounted, the second tmpfs over the first (and over whatever the first
    # `up` had put there meanwhile). The lock is the directory's own: whoever opened it before a
    # mount waits here and then finds the tmpfs by its path; whoever opens it after holds the
    # tmpfs's root, and finds the same.
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if is_volatile(state):
            return "volatile"
        if os.listdir(state):
            return "in use"
        try:
            mount_tmpfs(state)
        except OSError as exc:
            log.warning("state directory %s stays on its file system: %s", state, exc.strerror)
            return f"failed: {exc.strerror}"
    finally:
        os.close(fd)
    log.info("state directory %s is on a tmpfs of its own (its file system was not one)", state)
    return "mounted"


def mount_tmpfs(path: str) -> None:
    """Mount a tmpfs with ``OPTIONS`` (nosuid, nodev) on the directory ``path``, whatever it
    holds; raises ``OSError`` (EPERM without CAP_SYS_ADMIN). ``ensure_tmpfs`` decides when."""
    if _libc().mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, OPTIONS.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")
