"""Starting the kernel's grace period for a cgroup move before the runtime needs it.

Every OCI runtime puts a task's first process, and each exec'd one, into its cgroups by
writing the pid to ``cgroup.procs``. The kernel takes ``cgroup_threadgroup_rwsem`` for
writing there. In its default per-CPU mode the first writer after a quiet spell waits out
an RCU grace period in ``rcu_sync_enter`` (8-16 ms on the 250 Hz VM of the README's
figures, most of a lone ``crun run``); a writer that comes while that wait is on shares it,
and one that comes within about a grace period after the last writer left
(``GP_PASSED``/``GP_EXIT``) does not wait at all. A hierarchy mounted with
``favordynmods`` has no such wait (README, The kernel's part).

``MovePrimer`` makes that first write earlier and off the start path: as soon as the
execution service has a request that will end in a runtime's move (``run``, ``start``,
``exec``), a thread of its own writes the service's own pid to the ``cgroup.procs`` of the
cgroup the service is already in. The kernel takes the lock and waits out the grace period
while the service resolves the image, prepares the snapshot, writes the bundle and hands the
launch over; the migration itself is empty (the process is there already). The runtime's
write then finds the grace period behind it, or shares the one still running. Nothing is
moved anywhere, no cgroup is created, and the write costs ~0.1 ms of the service's CPU when
the kernel needs no grace period (a busy host, ``favordynmods``).
"""

from __future__ import annotations

import _thread
import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)


class ThreadsApart(OSError):
    """The process's threads are not all in the cgroup its ``cgroup.procs`` write would use."""


class CgroupMount(NamedTuple):
    """A mounted cgroup file system (``/proc/self/mountinfo``)."""

    point: str
    fstype: str
    """``cgroup`` (v1) or ``cgroup2``."""
    root: str
    """The cgroup the mount shows at its point (``/`` unless mounted for a namespace)."""
    supers: frozenset[str]
    """Super options without ``rw``/``ro``: a v1 mount's controllers (``cpu``, ``name=systemd``),
    ``favordynmods``, ``nsdelegate``."""


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[CgroupMount]:
    """Every cgroup file system mounted (proc(5) mountinfo fields: root 4, mount point 5, fs
    type and super options after ``-``). Raises OSError when ``mountinfo`` cannot be read."""
    out = []
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype = fields[sep + 1]
            if fstype in ("cgroup", "cgroup2"):
                supers = frozenset(fields[sep + 3].split(",")) if len(fields) > sep + 3 else frozenset()
                out.append(CgroupMount(fields[4].replace("\\040", " "), fstype, fields[3], supers - {"rw", "ro"}))
    return out


def own_procs_file(
    mountinfo: str = "/proc/self/mountinfo",
    cgroup: str = "/proc/self/cgroup",
    tasks: str | None = None,
    mounts: list[CgroupMount] | None = None,
) -> str | None:
    """The ``cgroup.procs`` file of this process's own cgroup: in the unified (v2) hierarchy
    where one is mounted (a v2 or hybrid host), else in a mounted v1 hierarchy; None when no
    hierarchy of this process is mounted with its root visible here (the cgroup file system
    mounted for another namespace, or none). ``mounts``: ``cgroup_mounts()`` read earlier
    (``mountinfo`` is not read then).

    With ``tasks`` (``/proc/self/task``), raises ThreadsApart when a thread of the process is
    in another cgroup of that hierarchy than the one found (``/proc/self/cgroup`` is the main
    thread's): an administrator placed threads apart (v2 threaded cgroups, v1's ``tasks``
    file), and a pid written to ``cgroup.procs`` moves every thread of the process there.

    ``/proc/self/cgroup`` lines are ``ID:CONTROLLERS:PATH`` (cgroups(7)).
    """
    try:
        if mounts is None:
            mounts = cgroup_mounts(mountinfo)
        with open(cgroup, encoding="utf-8") as f:
            lines = [ln.rstrip("\n").split(":", 2) for ln in f if ln.count(":") >= 2]
    except (OSError, ValueError):
        return None
    found = _hierarchy([m for m in mounts if m.root == "/"], lines)
    if found is None:
        return None
    hid, path, procs = found
    if tasks is not None:
        _check_threads(tasks, hid, path)
    return procs


def _hierarchy(mounts: list[CgroupMount], lines: list[list[str]]) -> tuple[str, str, str] | None:
    """``(hierarchy ID, cgroup path, its cgroup.procs file)`` for ``own_procs_file``."""
    for hid, controllers, path in lines:
        if hid == "0" and not controllers:
            for m in mounts:
                if m.fstype == "cgroup2":
                    return hid, path, os.path.join(m.point, path.lstrip("/"), "cgroup.procs")
    for hid, controllers, path in lines:
        wanted = set(controllers.split(",")) if controllers else set()
        for m in mounts:
            if m.fstype == "cgroup" and wanted and wanted <= m.supers:
                return hid, path, os.path.join(m.point, path.lstrip("/"), "cgroup.procs")
    return None


def _check_threads(tasks: str, hid: str, path: str) -> None:
    """Raise ThreadsApart when a thread under ``tasks`` is in hierarchy ``hid`` elsewhere than
    ``path``; a thread that ended meanwhile is skipped."""
    for tid in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, tid, "cgroup"), encoding="utf-8") as f:
                for line in f:
                    parts = line.rstrip("\n").split(":", 2)
                    if len(parts) == 3 and parts[0] == hid and parts[2] != path:
                        raise ThreadsApart(
                            errno.EBUSY, f"thread {tid} is in {parts[2]}, not {path}: the write would move it"
                        )
        except (FileNotFoundError, ProcessLookupError):
            continue


class MovePrimer:
    """Writes this process's pid to its own ``cgroup.procs`` in a thread, on demand.

    ``prime()`` returns at once; the write happens in a thread started at the first call.
    ``locate`` gives the file at each write (``own_procs_file``: a service that an
    administrator or systemd moved meanwhile is written where it is now, not moved back).
    Calls made while a write is under way are folded into one more write right after it,
    which keeps the kernel's state past the grace period a little longer. The first write
    that fails, or finds no file (no permission, a read-only or unmounted cgroup file
    system), or finds threads of the process in other cgroups than the main thread's (the
    write would gather them: ``ThreadsApart``), turns the primer off for good, with one log
    line. A move of the process by someone else between ``locate`` and the write (a few
    microseconds, or a GIL switch) is still undone: the write names the cgroup looked at.
    """

    def __init__(self, locate: Callable[[], str | None] | None) -> None:
        self._locate = locate
        self.writes = 0
        """Writes made so far (for tests)."""
        self._wanted = threading.Event()
        self._started = False

    @classmethod
    def for_this_process(cls, enabled: bool = True) -> MovePrimer:
        """A primer on this process's own cgroup (``own_procs_file``: the process's cgroup and
        threads looked at again at each write, the cgroup mounts read once here, not the whole
        mountinfo, which holds a line per container rootfs, at each start), or one that does
        nothing when ``enabled`` is false."""
        if not enabled:
            return cls(None)
        try:
            mounts: list[CgroupMount] | None = cgroup_mounts()
        except (OSError, ValueError):
            mounts = None  # looked for at the first write, which says why it turns the primer off
        return cls(functools.partial(own_procs_file, tasks="/proc/self/task", mounts=mounts))

    @property
    def enabled(self) -> bool:
        """False once off: disabled, a failed write, or closed."""
        return self._locate is not None

    def prime(self) -> None:
        """Ask for a write of this process's pid to its own ``cgroup.procs``; never blocks,
        never raises."""
        if self._locate is None:
            return
        self._wanted.set()
        if not self._started:
            self._started = True
            _thread.start_new_thread(self._run, ())

    def close(self) -> None:
        """Stop the thread after any write under way; later ``prime()`` calls do nothing."""
        self._locate = None
        self._wanted.set()

    def _run(self) -> None:
        pid = str(os.getpid()).encode()
        while True:
            self._wanted.wait()
            self._wanted.clear()
            locate = self._locate
            if locate is None:
                return
            path: str | None = None
            try:
                path = locate()
                if path is None:
                    raise FileNotFoundError("no cgroup hierarchy of this process is mounted here")
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
                self.writes += 1
            except OSError as exc:
                log.info("cgroup move priming off: writing %s: %s", path or "cgroup.procs", exc.strerror or exc)
                self._locate = None
                return
