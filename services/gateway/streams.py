"""Output streams and hijacked connections of attach, exec start and logs.

``FrameSource`` wraps a streaming RPC call (``execution.attach``, ``execution.exec_start``)
so the gateway can wait for the moment output is subscribed (or for an early error,
which must still become an ordinary JSON error before the 101), then relay the rest.
``pipe_hijacked`` runs the two halves of a hijacked connection: frames to the client
(multiplexed with an 8-byte header, or raw for a TTY: shared/reference/docker-api.md,
case C23), and the client's bytes to the container's stdin with EOF passed on at the
client's half-close (case C22). The detach keys are the execution service's to spot
(it ends the stream with ``{"detached": true}``); the gateway only checks their syntax.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from common import dockerfmt, errors
from common.rpc.aio import AsyncCall

log = logging.getLogger(__name__)

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q


def content_type(tty: bool, version: tuple[int, int]) -> str:
    """Raw for TTY streams; multiplexed (named so from API 1.42 on) otherwise."""
    if tty or version < (1, 42):
        return RAW_STREAM
    return MULTIPLEXED_STREAM


def encode(tty: bool, stream: int, data: bytes) -> bytes:
    """Output bytes as sent to the client: raw for a TTY, else one multiplexed frame."""
    return data if tty else dockerfmt.mux_frame(stream, data)


def parse_detach_keys(text: str) -> bytes:
    """Docker's ``detachKeys``: comma-separated ``ctrl-<c>`` or single characters.

    ``ctrl-p,ctrl-q`` -> ``b"\\x10\\x11"``. Raises InvalidArgument naming a bad key.
    """
    if not text:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in text.split(","):
        key = key.strip()
        if key.lower().startswith("ctrl-") and len(key) == 6:
            c = key[5].upper()
            code = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}.get(c)
            if code is None and "A" <= c <= "Z":
                code = ord(c) - 64
            if code is None:
                raise errors.InvalidArgument(f"invalid detach key {key!r}")
            out.append(code)
        elif len(key) == 1:
            out += key.encode()
        else:
            raise errors.InvalidArgument(f"invalid detach key {key!r}: expected ctrl-<value> or a single character")
    return bytes(out)


class FrameSource:
    """The frames of a streaming call, primed before the hijack (see module docstring)."""

    def __init__(self, call: AsyncCall) -> None:
        self.call = call
        self.buffered: list[dict[str, Any]] = []
        self.ended = False
        self.tty: bool | None = None
        self._pending: asyncio.Task[tuple[bool, Any]] | None = None

    async def prime(self, until_attached: bool, timeout_s: float | None = None) -> None:
        """Read frames until ``{"attached": ...}`` (or, without it, the first frame or ``timeout_s``).

        Errors of the call are raised here, before anything is written to the client.
        """
        while True:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self.call.next_frame())
            done, _ = await asyncio.wait({self._pending}, timeout=None if until_attached else timeout_s)
            if not done:
                return  # no frame yet: it is a live stream; go on
            task, self._pending = self._pending, None
            more, body = task.result()
            if isinstance(body, dict) and "attached" in body:
                self.tty = bool(body.get("tty")) if "tty" in body else None
                return
            if body is not None:
                self.buffered.append(body)
            if not more:
                self.ended = True
                return
            if not until_attached:
                return

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        for body in self.buffered:
            yield body
        self.buffered = []
        if self.ended:
            return
        while True:
            if self._pending is not None:
                task, self._pending = self._pending, None
                more, body = await task
            else:
                more, body = await self.call.next_frame()
            if isinstance(body, dict) and "d" in body:
                yield body
            if not more:
                return

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending
        if not self.call.done:
            await self.call.cancel()


async def pipe_hijacked(
    source: FrameSource,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    trailing: bytes,
    *,
    tty: bool,
    stdin: bool,
    resume: Callable[[dict[int, int], errors.DockyardError], AsyncIterator[dict[str, Any]]] | None = None,
) -> None:
    """Relay a hijacked connection until the output ends or the client goes away.

    Output frames ``{s, d}`` go out raw (``tty``) or multiplexed. With ``stdin``, the client's
    bytes go to the call's own stream and the client's EOF (its half-close) becomes the
    call's EOF, once; without it, what the client sends is read and dropped (the docker CLI
    half-closes at once when it has no stdin to send: that must not end the attach).
    Stdin is flow-controlled: the socket is read only as fast as the call takes it
    (``AsyncCall.send`` waits for send credit), so a container that reads slowly slows the
    client down through TCP/unix socket backpressure. The caller ends the connection
    (``http.end_hijacked``) once this returns.

    ``resume``: when the call's stream is lost with its service (``Unavailable`` before it
    ended), ``resume(printed, lost)`` gives the rest of the output instead (``printed``: bytes
    sent per stream; ``services.gateway.resume.attach_output``); the connection stays open
    meanwhile. Stdin is no longer forwarded then (what was in flight is lost).
    """
    printed: dict[int, int] = {}

    async def output() -> None:
        try:
            async for body in source.frames():
                data = body.get("d") or b""
                if data:
                    stream = int(body.get("s") or 1)
                    writer.write(encode(tty, stream, bytes(data)))
                    await writer.drain()
                    printed[stream] = printed.get(stream, 0) + len(data)
            return
        except errors.Unavailable as exc:
            if resume is None or source.call.ended:
                raise
            lost = exc
        log.warning("attached stream lost (%s): resuming it from the container's log", lost)
        async for body in resume(printed, lost):
            writer.write(encode(tty, int(body["s"]), bytes(body["d"])))
            await writer.drain()

    async def input_() -> None:
        data = trailing
        while True:
            if data and stdin:
                await source.call.send(data)
            data = await reader.read(65536)
            if not data:
                if stdin:
                    await source.call.send_eof()
                return

    out_task = asyncio.ensure_future(output())
    in_task = asyncio.ensure_future(input_())
    try:
        await asyncio.wait({out_task}, return_when=asyncio.FIRST_COMPLETED)
        exc = out_task.exception()
        if exc is not None:
            if isinstance(exc, errors.DockyardError | ConnectionError):
                log.info("attached stream ended: %s", exc)
            else:
                raise exc
    finally:
        for t in (out_task, in_task):
            t.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)
        await source.close()
        with contextlib.suppress(Exception):
            await writer.drain()


UPLOAD_FRAME = 256 * 1024
"""Bytes per frame of a request body handed to a call's own stream."""


async def feed_body(request: Any, target: AsyncCall) -> None:
    """A request body (``http.Request.stream_body``) to ``target``'s own stream, in
    ``UPLOAD_FRAME`` frames under its credit, then EOF; a call that ended meanwhile is logged."""
    try:
        async for chunk in request.stream_body():
            for i in range(0, len(chunk), UPLOAD_FRAME):
                await target.send(chunk[i : i + UPLOAD_FRAME])
        await target.send_eof()
    except errors.DockyardError as exc:
        log.info("upload ended: %s", exc)
