"""The shim's single reaper: every child exit goes through one SIGCHLD-driven ``waitpid(-1)``.

A shim is a subreaper (``PR_SET_CHILD_SUBREAPER``), so besides the runtime
processes it spawns it also inherits the container's init (double-forked by
``runc create``) and orphans of ``runc exec``. One loop must own
``waitpid(-1)``: if anything else waited (``subprocess.run``, asyncio's child
watchers), it would steal an exit status from the other (containerd-model.md
section 8). Children are started with ``posix_spawn`` and their exit statuses
are handed out by pid; a status that arrives before anyone asked for it is kept.

Exit statuses are given as Docker reports them: the exit code, or 128 + the
signal number when a signal killed the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_KEEP_EARLY = 1024


def exit_status(wait_status: int) -> int:
    """Turn a ``waitpid`` status into Docker's exit status (code, or 128 + signal)."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Reaper:
    """Owns ``waitpid(-1)`` for the process; use it for every child."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._watchers: dict[int, Callable[[int], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reaping on SIGCHLD in ``loop`` (call once, before the first spawn)."""
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def reap(self) -> None:
        """Collect every exited child now (also called by the SIGCHLD handler)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = exit_status(status)
            watcher = self._watchers.pop(pid, None)
            fut = self._waiters.pop(pid, None)
            if watcher is not None:
                watcher(code)
            if fut is not None and not fut.done():
                fut.set_result(code)
            elif watcher is None:
                if len(self._early) >= _KEEP_EARLY:
                    self._early.pop(next(iter(self._early)))
                self._early[pid] = code

    def wait(self, pid: int) -> asyncio.Future[int]:
        """Return a future resolved with ``pid``'s exit status (see module docstring)."""
        assert self._loop is not None, "Reaper.install() first"
        fut: asyncio.Future[int] = self._loop.create_future()
        if pid in self._early:
            fut.set_result(self._early.pop(pid))
        else:
            self._waiters[pid] = fut
        return fut

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(exit_status)`` when ``pid`` (a child of ours) exits."""
        if pid in self._early:
            callback(self._early.pop(pid))
        else:
            self._watchers[pid] = callback

    def forget(self, pid: int) -> None:
        """Drop a kept early status (a process nobody will ask about)."""
        self._early.pop(pid, None)

    @staticmethod
    def spawn(
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start ``argv`` (searched in PATH) with the given fds as 0/1/2; return its pid.

        Fds not given are ``/dev/null``. No other fd is inherited (every fd Python opens
        is close-on-exec). ``env`` defaults to ``PATH`` alone (``child_env``). Raises
        ``OSError`` when the program cannot be started.
        """
        devnull = -1
        actions: list[tuple[int, ...]] = []
        try:
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                if fd is None:
                    if devnull < 0:
                        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    fd = devnull
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
            return os.posix_spawnp(argv[0], list(argv), env if env is not None else child_env(), file_actions=actions)
        finally:
            if devnull >= 0:
                os.close(devnull)

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        capture: bool = False,
        input_data: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Run ``argv`` to completion; return ``(exit status, captured stdout)``.

        ``capture=True`` collects stdout through a pipe (stderr too unless given).
        ``input_data`` is written to stdin through a pipe. ``env`` as for ``spawn``.
        """
        assert self._loop is not None
        out_r = out_w = in_r = in_w = -1
        chunks: list[bytes] = []
        try:
            if capture:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                stdout = out_w
                if stderr is None:
                    stderr = out_w
            if input_data is not None:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                stdin = in_r
            pid = self.spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env)
            done = self.wait(pid)
            if out_w >= 0:
                os.close(out_w)
                out_w = -1
            if in_r >= 0:
                os.close(in_r)
                in_r = -1
            if in_w >= 0:
                await asyncio.to_thread(_write_all, in_w, input_data or b"")
                os.close(in_w)
                in_w = -1
            if out_r >= 0:
                reader = _PipeReader(self._loop, out_r)
                chunks = await reader.read_all()
                out_r = -1
            code = await done
        finally:
            for fd in (out_r, out_w, in_r, in_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        return code, b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]


class _PipeReader:
    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        os.set_blocking(fd, False)

    async def read_all(self) -> list[bytes]:
        chunks: list[bytes] = []
        done = self.loop.create_future()

        def readable() -> None:
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    return
                if not data:
                    self.loop.remove_reader(self.fd)
                    os.close(self.fd)
                    if not done.done():
                        done.set_result(None)
                    return
                chunks.append(data)

        self.loop.add_reader(self.fd, readable)
        await done
        return chunks


def child_env() -> dict[str, str]:
    """The environment of a child: ``PATH`` alone."""
    return {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
