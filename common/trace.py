"""Start-path tracing: timestamped marks from every process into one file.

Off unless ``DOCKYARD_TRACE=<path>`` is in the environment (it is inherited by the
services, the shim template and the shims of an instance started with it). Then
``mark(step)`` appends one line ``<CLOCK_MONOTONIC ns> <pid> <process> <step>`` to
that file with a single ``O_APPEND`` write, so marks of concurrent processes never
interleave inside a line, and ``CLOCK_MONOTONIC`` is one clock for every process on
the host, so marks of the CLI, the execution service, a shim and runc can be put on
one time line. ``bench/profile.py`` does that for ``dockyard run --rm busybox true``.

``DOCKYARD_PROFILE=<dir>`` is the other switch: ``profiled(fn, ...)`` then runs ``fn``
under ``cProfile`` and writes ``<dir>/<process>-<pid>.prof`` when it returns (the
services and the shims run their main function through it). Its times are wall times,
so a call that wakes another process (a pipe write, a zmq send) is charged for the CPU
that process takes first; ``DOCKYARD_PROFILE_CPU=1`` times by the calling thread's CPU
time instead (``time.thread_time``: slower to profile, but what a CPU-bound host pays).

Cost when off: one global lookup per mark. Deliberately dependency-free (the CLI's
hot path imports it).
"""

from __future__ import annotations

import posix
import time

from common import posixos

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

_path = posixos.environ().get("DOCKYARD_TRACE") or ""
_process = "?"
_fd = -1
_fd_pid = 0


def enabled() -> bool:
    """True when marks are being written."""
    return bool(_path)


def set_process(name: str) -> None:
    """Name this process in its marks (``cli``, ``execution``, ``shim`` ...)."""
    global _process
    _process = name


def mark(step: str) -> None:
    """Record that ``step`` happens now (no-op unless tracing is on)."""
    if not _path:
        return
    global _fd
    if _fd < 0 or _fd_pid != posix.getpid():
        _open()
    try:
        posix.write(_fd, f"{time.monotonic_ns()} {posix.getpid()} {_process} {step}\n".encode())
    except OSError:
        pass


def profiled(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, under cProfile when ``DOCKYARD_PROFILE`` names a directory."""
    out_dir = posixos.environ().get("DOCKYARD_PROFILE")
    if not out_dir:
        return fn(*args)
    import cProfile

    prof = cProfile.Profile(time.thread_time) if posixos.environ().get("DOCKYARD_PROFILE_CPU") else cProfile.Profile()
    prof.enable()
    try:
        return fn(*args)
    finally:
        prof.disable()
        prof.dump_stats(posixos.join(out_dir, f"{_process}-{posix.getpid()}.prof"))


def mark_cpu(step: str) -> None:
    """``mark`` with this process's CPU time so far, and its system part (ms):
    ``<step> cpu=<ms> children=<ms> sys=<ms> children_sys=<ms>``."""
    if not _path:
        return
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    mark(
        f"{step} cpu={(me.ru_utime + me.ru_stime) * 1000:.1f} children={(kids.ru_utime + kids.ru_stime) * 1000:.1f}"
        f" sys={me.ru_stime * 1000:.1f} children_sys={kids.ru_stime * 1000:.1f}"
    )


def _open() -> None:
    global _fd, _fd_pid
    try:
        _fd = posix.open(_path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o644)
        _fd_pid = posix.getpid()
    except OSError:
        _fd = -1
