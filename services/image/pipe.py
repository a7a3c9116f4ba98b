"""A byte pipe from the event loop to a worker thread (client streams -> tarfile readers).

The RPC handler receives the client's stream in chunks (``ctx.recv()``) and ``feed``s them;
a thread reads the pipe like a file (``tarfile.open(fileobj=pipe, mode="r|")``). The queue is
bounded, so a slow reader slows the feeder down; ``abort`` makes the reader fail at once.
"""

from __future__ import annotations

import asyncio
import io
import queue

_EOF = b""


class PipeAbortedError(Exception):
    """The feeding side gave up (client cancelled or failed)."""


class ChunkPipe(io.RawIOBase):
    """Readable from a thread, fed from the event loop."""

    def __init__(self, max_chunks: int = 64) -> None:
        super().__init__()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=max_chunks)
        self._buf = memoryview(b"")
        self._eof = False
        self._aborted = False
        self.bytes_read = 0

    # -- feeding (event loop) -------------------------------------------------------------------
    async def feed(self, chunk: bytes) -> None:
        """Queue ``chunk`` (empty chunks are skipped); waits while the reader is behind."""
        if not chunk:
            return
        await self._put(bytes(chunk))

    async def close_feed(self) -> None:
        """Signal EOF to the reader."""
        await self._put(_EOF)

    def abort(self) -> None:
        """Make the reader raise ``PipeAbortedError`` on its next read."""
        self._aborted = True
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass

    async def _put(self, item: bytes) -> None:
        while True:
            if self._aborted:
                return
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.005)

    # -- reading (worker thread) ----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            if self._eof:
                return 0
            item = self._q.get()
            if item is None or self._aborted:
                raise PipeAbortedError("the client stream was aborted")
            if item == _EOF:
                self._eof = True
                return 0
            self._buf = memoryview(item)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.bytes_read += n
        return n
