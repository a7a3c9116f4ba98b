"""A process's stdio as the shim holds it: pipes (or a pty), the log, attached clients.

Without a terminal the runtime hands its own fds 0/1/2 to the container process
(containerd-model.md section 10, pass-through), so the shim creates one pipe per
stream, gives the runtime the container's ends, closes them in itself once the
runtime has started the process, and reads its ends here. Every chunk goes to the
json-file log (``jsonlog.LogWriter``) and to each attached client. With a terminal
the pty master (received over the console socket) is both output and stdin.

Flow control: a client that falls more than ``SUBSCRIBER_CAP`` bytes behind pauses
reading from the container (Docker's attach behaves alike); the RPC server cancels a
client that stops answering, which resumes reading. Stdin the other way: a write
returns only once the pipe (or the terminal) took the data, bar ``STDIN_BUFFER``
bytes, so the caller stops taking the client's stream (``ctx.recv()``) and the RPC
credit slows the client down to the pace the process reads at. A process that exits
or closes its stdin (EPIPE) ends the writes (``write_stdin`` returns False).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from services.shim.jsonlog import LogWriter
from services.shim.threads import in_new_thread

log = logging.getLogger(__name__)

SUBSCRIBER_CAP = 4 * 1024 * 1024
STDIN_BUFFER = 64 * 1024
"""Bytes of stdin held in the shim past a full pipe before a write waits for it to drain."""
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


class _StdinPipe(asyncio.Protocol):
    """The write end of a process's stdin pipe: asyncio's write flow control, as a drain."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=STDIN_BUFFER)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        # the reader closed its end (the process exited or closed stdin: EPIPE), or we closed ours
        self.lost.set()
        self._writable.set()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.lost.is_set()

    async def write(self, data: bytes) -> bool:
        """Write ``data``; wait until the pipe has taken all but ``STDIN_BUFFER`` bytes.

        False when the pipe is closed (before or during the wait).
        """
        if not self.open:
            return False
        assert self.transport is not None
        self.transport.write(data)
        await self._writable.wait()
        return not self.lost.is_set()

    async def close(self) -> None:
        """Close once what is buffered was written (or the reader went away)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes the buffer first
        await self.lost.wait()


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
        self._stdin_pipe: _StdinPipe | None = None
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
            _transport, self._stdin_pipe = await loop.connect_write_pipe(_StdinPipe, os.fdopen(fd, "wb", buffering=0))
        self._stdin_ready.set()

    def set_pty(self, master: int) -> None:
        """Use ``master`` (from the console socket) for output and stdin."""
        self._pty_master = master

    @property
    def pty_master(self) -> int:
        return self._pty_master

    # -- handing the fds over to the idle monitor (``services.shim.hibernate``) ----------------
    def idle(self) -> bool:
        """Nothing in flight: the output is read (not held), no client attached, no stdin
        queued in the shim."""
        if not self.pumping.is_set() or self.subscribers:
            return False
        pipe = self._stdin_pipe
        return not (pipe is not None and pipe.transport is not None and pipe.transport.get_write_buffer_size())

    def handover(self) -> dict[str, int]:
        """Stop reading and return the fds that must outlive an ``execve``, made inheritable:
        ``{"1", "2"}`` the output pipes still open, ``"0"`` stdin's write end while open,
        ``"pty"`` the terminal's master (``"pty_ended"`` once nothing holds the terminal's other
        side: nothing to watch there). The process's output waits in them meanwhile."""
        fds: dict[str, int] = {}
        reading = False
        for r in self._readers:
            transport = r.transport
            if transport is None or transport.is_closing() or r.closed.done():
                continue
            transport.pause_reading()
            reading = True
            if self._pty_master < 0:
                fds[str(r.stream)] = transport.get_extra_info("pipe").fileno()
        pipe = self._stdin_pipe
        if pipe is not None and pipe.open and pipe.transport is not None:
            fds["0"] = pipe.transport.get_extra_info("pipe").fileno()
        if self._pty_master >= 0:
            fds["pty" if reading else "pty_ended"] = self._pty_master
        for fd in fds.values():
            os.set_inheritable(fd, True)
        return fds

    @classmethod
    def adopt(
        cls, log_writer: LogWriter | None, fds: dict[str, int], *, open_stdin: bool, stdin_once: bool, tty: bool
    ) -> ProcessIO:
        """A ``ProcessIO`` on fds a previous image of this process handed over (``handover``);
        ``start_pumps`` reads them. A stream missing from ``fds`` had ended already."""
        io = cls(log_writer, open_stdin=open_stdin, stdin_once=stdin_once, tty=tty)
        for key, fd in fds.items():
            os.set_inheritable(fd, False)
            if key in ("pty", "pty_ended"):
                io._pty_master = fd
            elif key == "0":
                io._stdin_w = fd
            else:
                io._our_fds[int(key)] = fd
        return io

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
        """Write to the process's stdin (waiting until it started and until the pipe or the
        terminal took the data, see module docstring); False once stdin is closed (the
        process exited or closed it), so the caller stops relaying."""
        await self._stdin_ready.wait()
        async with self._stdin_lock:
            if self._pty_master >= 0:
                return await _write_fd(self._pty_master, data)
            pipe = self._stdin_pipe
            if pipe is None:
                return False
            return await pipe.write(data)

    async def close_stdin(self) -> None:
        """Close the write side of stdin once everything queued was written (EOF reaches the process)."""
        await self._stdin_ready.wait()
        if self._pty_master >= 0:
            # a pty has no half-close: send the terminal's EOF character
            async with self._stdin_lock:
                await _write_fd(self._pty_master, b"\x04")
            return
        pipe, self._stdin_pipe = self._stdin_pipe, None
        if pipe is not None:
            await pipe.close()

    def close(self) -> None:
        """Release everything (the process is gone and deleted)."""
        self._stdin_ready.set()
        self.close_child_ends()
        for fd in self._our_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._our_fds.clear()
        pipe = self._stdin_pipe
        if pipe is not None and pipe.open:
            pipe.transport.abort()  # type: ignore[union-attr]  # open: it has one; the process is gone
        self._stdin_pipe = None
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


async def _write_fd(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to the non-blocking ``fd`` (a pty master), waiting for room with
    the loop's writer callback; False when the fd fails (EIO: the terminal's other side is
    gone, or it was closed)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        except OSError:
            return False
        room = loop.create_future()
        loop.add_writer(fd, _wake, room)
        try:
            await room
        finally:
            loop.remove_writer(fd)
    return True


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ConsoleSocket:
    """The ``--console-socket`` a runtime sends a new pty master to (SCM_RIGHTS)."""

    def __init__(self, path: str) -> None:
        import socket

        self.path = path
        # next to the shim's endpoint, whose directory the RPC server makes only as it binds,
        # after the first create started: the first TTY container of a fresh state dir needs it
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
            _msg, fds, _flags, _addr = await in_new_thread(socket.recv_fds, conn, 4096, 4)
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
