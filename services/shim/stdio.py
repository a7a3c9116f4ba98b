"""A process's stdio as the shim holds it: pipes (or a pty), the log, attached clients.

Without a terminal the runtime hands its own fds 0/1/2 to the container process
(containerd-model.md section 10, pass-through), so the shim creates one pipe per
stream, gives the runtime the container's ends, closes them in itself once the
runtime has started the process, and reads its ends here. Every chunk goes to the
json-file log (``jsonlog.LogWriter``) and to each attached client. With a terminal
the pty master (received over the console socket) is both output and stdin.

Flow control: a client that falls more than ``SUBSCRIBER_CAP`` bytes behind pauses
reading from the container (Docker's attach behaves alike); the RPC server cancels a
client that stops answering, which resumes reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from services.shim.jsonlog import LogWriter

log = logging.getLogger(__name__)

SUBSCRIBER_CAP = 4 * 1024 * 1024
_READ_SIZE = 128 * 1024
_EOF: Any = None


class Subscriber:
    """One attached client: a queue of ``(stream, bytes)`` ending with None."""

    def __init__(self, streams: set[int], on_drain: Callable[[], None]) -> None:
        self.streams = streams
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.pending = 0
        self._on_drain = on_drain

    def put(self, stream: int, data: bytes) -> None:
        if stream in self.streams:
            self.queue.put_nowait((stream, data))
            self.pending += len(data)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def get(self) -> tuple[int, bytes] | None:
        item = await self.queue.get()
        if item is not None:
            self.pending -= len(item[1])
            if self.pending < SUBSCRIBER_CAP // 2:
                self._on_drain()
        return item

    @property
    def full(self) -> bool:
        return self.pending >= SUBSCRIBER_CAP


class _Reader(asyncio.Protocol):
    def __init__(self, io: ProcessIO, stream: int) -> None:
        self.io = io
        self.stream = stream
        self.transport: asyncio.ReadTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.io._output(self.stream, data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class ProcessIO:
    """Output pumps, stdin and subscribers of one process (the init or an exec).

    ``log`` is None for execs (their output goes only to attached clients).
    """

    def __init__(self, log_writer: LogWriter | None, *, open_stdin: bool, stdin_once: bool, tty: bool) -> None:
        self.log = log_writer
        self.open_stdin = open_stdin
        self.stdin_once = stdin_once
        self.tty = tty
        self.subscribers: list[Subscriber] = []
        self._readers: list[_Reader] = []
        self._stdin_w: int = -1
        self._stdin_transport: asyncio.WriteTransport | None = None
        self._stdin_lock = asyncio.Lock()
        self._stdin_ready = asyncio.Event()
        self._closed = asyncio.Event()
        self.pumping = asyncio.Event()
        """Set once ``start_pumps`` returned: the output is being read (see ``ShimLaunch.hold_output``)."""
        self._pumps_started = False
        self._pty_master: int = -1
        # the container's ends, handed to the runtime and closed once it has started the process
        self.child_fds: dict[int, int] = {}
        self._our_fds: dict[int, int] = {}

    # -- set-up ------------------------------------------------------------------------------
    def make_pipes(self) -> None:
        """Create the pipes (no terminal): ``child_fds`` holds the container's ends."""
        for stream in (1, 2):
            r, w = os.pipe2(os.O_CLOEXEC)
            self.child_fds[stream] = w
            self._our_fds[stream] = r
        if self.open_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            self.child_fds[0] = r
            self._stdin_w = w

    def discard_pending(self) -> None:
        """Drop what sits unread in the output pipes (before the pumps run): what a failed
        runtime call wrote on the container's stderr, before a retry, is not the container's."""
        for fd in self._our_fds.values():
            blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            try:
                while os.read(fd, 65536):
                    pass
            except BlockingIOError:
                pass
            finally:
                os.set_blocking(fd, blocking)

    def close_child_ends(self) -> None:
        """Close our copies of the container's ends (after the runtime started the process)."""
        for fd in self.child_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds.clear()

    async def start_pumps(self) -> None:
        """Start reading output (pipes, or the pty master); a second call does nothing."""
        if self._pumps_started:
            return
        self._pumps_started = True
        try:
            await self._start_pumps()
        finally:
            self.pumping.set()

    async def _start_pumps(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pty_master >= 0:
            reader = _Reader(self, 1)
            fd = os.dup(self._pty_master)
            await loop.connect_read_pipe(lambda: reader, os.fdopen(fd, "rb", buffering=0))
            self._readers.append(reader)
            self._stdin_ready.set()
            return
        for stream, fd in self._our_fds.items():
            reader = _Reader(self, stream)
            await loop.connect_read_pipe(lambda r=reader: r, os.fdopen(fd, "rb", buffering=0))  # type: ignore[misc]
            self._readers.append(reader)
        self._our_fds.clear()
        if self._stdin_w >= 0:
            fd, self._stdin_w = self._stdin_w, -1
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))
            self._stdin_transport = transport
        self._stdin_ready.set()

    def set_pty(self, master: int) -> None:
        """Use ``master`` (from the console socket) for output and stdin."""
        self._pty_master = master

    @property
    def pty_master(self) -> int:
        return self._pty_master

    # -- output --------------------------------------------------------------------------------
    def _output(self, stream: int, data: bytes) -> None:
        if self.log is not None:
            try:
                self.log.write(stream, data)
            except OSError as exc:
                log.error("cannot write the container log: %s", exc)
        for sub in self.subscribers:
            sub.put(stream, data)
            if sub.full:
                self._pause()

    def _pause(self) -> None:
        for r in self._readers:
            if r.transport is not None:
                with contextlib.suppress(Exception):
                    r.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if any(s.full for s in self.subscribers):
            return
        for r in self._readers:
            if r.transport is not None and not r.transport.is_closing():
                with contextlib.suppress(Exception):
                    r.transport.resume_reading()

    def subscribe(self, streams: set[int]) -> Subscriber:
        """Attach a client; it gets every chunk from now on, then None at the end."""
        sub = Subscriber(streams, self._maybe_resume)
        if self._closed.is_set():
            sub.close()
        else:
            self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(sub)
        self._maybe_resume()

    async def wait_output_closed(self, timeout_s: float | None = None) -> bool:
        """Wait until every output stream reached EOF; on timeout close them; True if clean."""
        waits = [r.closed for r in self._readers]
        clean = True
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=timeout_s)
            if pending:
                clean = False
                for r in self._readers:
                    if r.transport is not None:
                        r.transport.close()
                await asyncio.wait(pending, timeout=1.0)
        self._finish()
        return clean

    def _finish(self) -> None:
        if self._closed.is_set():
            return
        if self.log is not None:
            with contextlib.suppress(OSError):
                self.log.flush_partial()
        self._closed.set()
        for sub in self.subscribers:
            sub.close()
        self.subscribers.clear()

    # -- stdin -------------------------------------------------------------------------------------
    @property
    def has_stdin(self) -> bool:
        """The process was created with stdin open (a pipe, or its terminal)."""
        return self.open_stdin

    async def write_stdin(self, data: bytes) -> bool:
        """Write to the process's stdin (waiting until it started); False once it is closed."""
        await self._stdin_ready.wait()
        if self._pty_master >= 0:
            await asyncio.to_thread(_write_all_fd, self._pty_master, data)
            return True
        transport = self._stdin_transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        # crude drain: wait while the kernel pipe and our buffer are full
        while transport.get_write_buffer_size() > 1024 * 1024 and not transport.is_closing():
            await asyncio.sleep(0.005)
        return True

    async def close_stdin(self) -> None:
        """Close the write side of stdin once everything queued was written (EOF reaches the process)."""
        await self._stdin_ready.wait()
        if self._pty_master >= 0:
            # a pty has no half-close: send the terminal's EOF character
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_write_all_fd, self._pty_master, b"\x04")
            return
        transport, self._stdin_transport = self._stdin_transport, None
        if transport is not None:
            while transport.get_write_buffer_size() > 0 and not transport.is_closing():
                await asyncio.sleep(0.005)
            transport.close()

    def close(self) -> None:
        """Release everything (the process is gone and deleted)."""
        self._stdin_ready.set()
        self.close_child_ends()
        for fd in self._our_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._our_fds.clear()
        if self._stdin_transport is not None:
            self._stdin_transport.close()
            self._stdin_transport = None
        if self._stdin_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._stdin_w)
            self._stdin_w = -1
        for r in self._readers:
            if r.transport is not None:
                r.transport.close()
        if self._pty_master >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pty_master)
            self._pty_master = -1
        self._finish()


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class ConsoleSocket:
    """The ``--console-socket`` a runtime sends a new pty master to (SCM_RIGHTS)."""

    def __init__(self, path: str) -> None:
        import socket

        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.setblocking(False)

    async def receive(self, timeout_s: float = 60.0) -> int:
        """Wait for the runtime to connect and return the pty master fd (close-on-exec)."""
        import socket

        loop = asyncio.get_running_loop()
        conn, _ = await asyncio.wait_for(loop.sock_accept(self.sock), timeout_s)
        try:
            conn.setblocking(True)
            conn.settimeout(timeout_s)
            _msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, conn, 4096, 4)
        finally:
            conn.close()
        if not fds:
            raise OSError("the runtime sent no pty master on the console socket")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def set_winsize(fd: int, height: int, width: int) -> None:
    """``TIOCSWINSZ`` on a pty: the terminal's rows and columns."""
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
