"""A command run with a pseudo-terminal as its controlling terminal, for interactive tests
(``run -it``, ``attach``, the detach keys), driven the way a user at a keyboard would."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from collections.abc import Mapping, Sequence


class PtyProcess:
    """``argv`` (``argv[0]`` a path) on a new pty; ``out`` holds everything it printed so far."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> None:
        self.out = b""
        self._mark = 0
        self.status: int | None = None
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command with the pty as its terminal
            try:
                if cwd:
                    os.chdir(cwd)
                os.execve(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)

    def _read(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if ready:
            try:
                self.out += os.read(self.fd, 4096)
            except OSError:  # EIO: the command exited and the pty has no writer left
                time.sleep(timeout_s)

    def read_until(self, marker: bytes, timeout_s: float = 20.0) -> None:
        """Read until ``marker`` appeared in the output after the last ``write``; AssertionError otherwise."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.out[self._mark :] and time.monotonic() < deadline:
            self._read(0.1)
        assert marker in self.out[self._mark :], self.out

    def write(self, data: bytes) -> None:
        """Type ``data``; later ``read_until`` calls look only at the output from now on."""
        self._mark = len(self.out)
        os.write(self.fd, data)

    def wait(self, timeout_s: float = 20.0) -> int:
        """The command's exit code once it exited (reading its output meanwhile); AssertionError
        if it still runs after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.status is None and time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                break
            self._read(0.1)
        assert self.status is not None, f"still running after {timeout_s}s: {self.out!r}"
        return self.status

    def close(self) -> None:
        """Kill the command if it still runs, and release the pty."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
