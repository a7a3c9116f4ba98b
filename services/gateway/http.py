"""A small HTTP/1.1 server on asyncio + h11 that can hand over the raw socket.

Why not an ASGI server: Docker's attach and exec endpoints answer ``101 UPGRADED``
and then use the connection as a raw two-way pipe (shared/reference/docker-api.md,
section 5); h11 pauses after a request that asks for an upgrade and gives back the
bytes already received, which is exactly what a hijack needs.

Handlers receive a ``Request`` and return a ``Response`` (a body, a streaming body
sent chunked and flushed per item, or a hijack callback that takes the raw
reader/writer after the 101 is written). When the callback returns, the hijacked
connection is ended as dockerd ends it (``httputils.CloseStreams``: a half-close):
see ``end_hijacked``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import http
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
"""Largest request body read into memory; bigger uploads must use ``stream_body``."""
MAX_JSON_BODY = 4 * 1024 * 1024
"""Largest JSON request body (container configs, exec configs): past it, 413."""
MAX_DRAIN = 64 * 1024 * 1024
"""An unread request body longer than this is not drained after the response: the connection closes."""
HIJACK_LINGER_S = 5.0
"""After a hijacked stream's output ended: how long the client's remaining input is read and
dropped while waiting for it to close its side."""


async def end_hijacked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, linger_s: float = HIJACK_LINGER_S
) -> None:
    """End a hijacked connection whose output is complete, without resetting it.

    Closing a socket whose receive buffer holds unread bytes (stdin the client still sends,
    e.g. ``yes | docker run -i ... head -n 3``) makes the kernel reset the connection, and
    the client then reads ECONNRESET instead of the last output and EOF (``docker`` exits 1
    with "connection reset by peer"). So, as dockerd: flush, shut down our write side (the
    client reads EOF after the last byte and goes on to the exit code), then read and drop
    what the client sends until it closes its side, for ``linger_s`` at most. The caller
    closes the socket afterwards.
    """
    with contextlib.suppress(Exception):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(linger_s):
            while await reader.read(65536):
                pass


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class HTTPError(Exception):
    """An error answered as ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    _body_iter: AsyncIterator[bytes] | None = None
    _body: bytes | None = None
    upgrade: bool = False
    api_version: tuple[int, int] | None = None
    """The ``/vX.Y`` prefix of the path (None when unprefixed)."""

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter (``1``, ``true``, ``True``)."""
        value = self.arg(name)
        if value is None:
            return default
        return value.lower() in ("1", "true", "yes")

    async def body(self, limit: int = MAX_BODY) -> bytes:
        """The whole request body (HTTPError 413 past ``limit`` bytes)."""
        if self._body is None:
            chunks = []
            size = 0
            async for chunk in self.stream_body():
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"request body larger than {limit} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self, limit: int = MAX_JSON_BODY) -> Any:
        """The body parsed as JSON ({} when empty); HTTPError 400 when it is not JSON, 413 past ``limit``."""
        raw = await self.body(limit)
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON in request body: {exc}") from None

    async def stream_body(self) -> AsyncIterator[bytes]:
        """Iterate the request body as it arrives."""
        if self._body_iter is not None:
            async for chunk in self._body_iter:
                yield chunk
            self._body_iter = None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, (bytes, bytearray)):
        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_bytes(obj: Any) -> bytes:
    """``obj`` as one line of JSON (datetimes as RFC 3339, bytes as base64), newline-terminated."""
    return (json.dumps(obj, default=_json_default) + "\n").encode()


Hijack = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    hijack: Hijack | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, {"Content-Type": "application/json"}, json_bytes(obj))

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes ``(METHOD, /path/{param})`` to handlers, first match wins.

    ``{name}`` matches one path segment, ``{name:path}`` one or more (image names
    such as ``127.0.0.1:5000/library/busybox``). Parameters are percent-decoded.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex) + "$"
        self._routes.append((method, re.compile(regex), handler))

    def routes(self) -> list[tuple[str, str]]:
        """``(method, regex)`` of every route, in matching order."""
        return [(m, r.pattern) for m, r, _h in self._routes]

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """Return the handler and path params; HTTPError 404/405 otherwise."""
        allowed = False
        for m, regex, handler in self._routes:
            match = regex.match(path)
            if match:
                if m == method or (m == "GET" and method == "HEAD"):
                    return handler, {k: unquote(v) for k, v in match.groupdict().items()}
                allowed = True
        if allowed:
            raise HTTPError(405, f"method {method} not allowed on {path}")
        raise HTTPError(404, "page not found")


class Server:
    """Serves ``app(request) -> Response`` on a unix socket (and optionally TCP).

    ``prepare(request)`` may rewrite the request (version prefixes) before routing;
    ``common_headers`` are added to every response.
    """

    def __init__(self, app: Callable[[Request], Awaitable[Response]], common_headers: dict[str, str]) -> None:
        self.app = app
        self.common_headers = common_headers
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_files: list[tuple[str, int]] = []
        """Unix socket files bound by ``listen_unix`` and their inodes (removed by ``close``)."""
        self._conns: set[asyncio.Task[Any]] = set()

    async def listen_unix(self, path: str, mode: int = 0o660, group: int | None = None) -> None:
        """Listen on the unix socket ``path`` (replacing a stale one), chmod/chown it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=path, limit=1 << 20)
        os.chmod(path, mode)
        if group is not None:
            os.chown(path, 0, group)
        self._servers.append(server)
        self._unix_files.append((path, os.stat(path).st_ino))

    async def listen_tcp(self, host: str, port: int, ssl: Any = None) -> None:
        server = await asyncio.start_server(self._serve, host=host, port=port, ssl=ssl, limit=1 << 20)
        self._servers.append(server)

    async def close(self) -> None:
        """Stop listening, end every connection, and remove the unix socket files we bound.

        A file is removed only if it is still ours (same inode as at bind): a successor that
        bound its own socket at the same path since keeps it.
        """
        for server in self._servers:
            server.close()
        for path, inode in self._unix_files:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
        self._unix_files.clear()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            return event

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            try:
                event = await self._next_event(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._send_simple(conn, writer, Response.json({"message": f"bad request: {exc}"}, 400))
                return
            if isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            request = self._make_request(event, conn, reader)
            target = request.path
            try:
                response = await self.app(request)
            except HTTPError as exc:
                response = Response.json({"message": exc.message}, exc.status)
            status = 101 if response.hijack is not None and request.upgrade else response.status
            log.log(
                logging.DEBUG if target.endswith("/_ping") else logging.INFO,
                "%s %s -> %d",
                request.method,
                target,
                status,
            )
            if response.hijack is not None:
                async for _ in request.stream_body():  # the body ends before the raw stream starts
                    pass
                await self._hijack(conn, reader, writer, request, response)
                return
            await self._send_response(conn, reader, writer, request, response)
            # drain an unread body (a handler may answer before reading it) so the connection
            # can be reused; a huge one is not worth it: close instead
            drained = 0
            async for chunk in request.stream_body():
                drained += len(chunk)
                if drained > MAX_DRAIN:
                    return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    def _make_request(self, event: h11.Request, conn: h11.Connection, reader: asyncio.StreamReader) -> Request:
        target = event.target.decode("latin-1")
        parts = urlsplit(target)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        upgrade = "upgrade" in headers.get("connection", "").lower() and bool(headers.get("upgrade"))

        async def body_iter() -> AsyncIterator[bytes]:
            while True:
                ev = await self._next_event(conn, reader)
                if isinstance(ev, h11.Data):
                    yield bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
                    return
                else:
                    return

        body: AsyncIterator[bytes] | None = body_iter()
        if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
            # no body: take the end of the message now, so the request counts as complete
            if conn.next_event() is h11.NEED_DATA:  # pragma: no cover - h11 ends an empty body at once
                raise h11.RemoteProtocolError("incomplete empty body")
            body = None
        return Request(
            method=event.method.decode("ascii"),
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            _body_iter=body,
            upgrade=upgrade,
        )

    def _headers(self, response: Response, extra: dict[str, str]) -> list[tuple[str, str]]:
        merged = {**self.common_headers, **response.headers, **extra}
        return list(merged.items())

    async def _send_simple(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            data = conn.send(
                h11.Response(
                    status_code=response.status,
                    reason=_reason(response.status),
                    headers=self._headers(response, {"Content-Length": str(len(response.body)), "Connection": "close"}),
                )
            )
            data += conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()

    async def _send_response(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        response: Response,
    ) -> None:
        if response.stream is not None and request.method == "HEAD":
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                await aclose()
            response.stream = None  # HEAD of a streaming GET: its headers, no body
        if response.stream is None:
            no_body = response.status in (204, 304) or request.method == "HEAD"
            extra = {} if response.status in (204, 304) else {"Content-Length": str(len(response.body))}
            writer.write(
                conn.send(
                    h11.Response(
                        status_code=response.status,
                        reason=_reason(response.status),
                        headers=self._headers(response, extra),
                    )
                )
            )
            if response.body and not no_body:
                writer.write(conn.send(h11.Data(data=response.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        writer.write(
            conn.send(
                h11.Response(
                    status_code=response.status, headers=self._headers(response, {"Transfer-Encoding": "chunked"})
                )
            )
        )
        await writer.drain()
        stream = response.stream

        async def pump() -> None:
            async for chunk in stream:
                if chunk:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()

        pumping = asyncio.ensure_future(pump())
        # a client that goes away mid-stream (ctrl-C on `docker logs -f`) ends the stream; only
        # watched once the request body is in (a load or import reads it while streaming)
        watcher = asyncio.ensure_future(self._watch_disconnect(conn, reader))
        try:
            done, _ = await asyncio.wait({pumping, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if pumping not in done:
                pumping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pumping
                raise ConnectionResetError("client went away during a streaming response")
            pumping.result()
        finally:
            for task in (watcher, pumping):
                task.cancel()
            # a cancelled read must be over before the connection reads the next request
            await asyncio.gather(watcher, pumping, return_exceptions=True)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _watch_disconnect(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        """Return when the client closes its side while a response streams (not before the body is in)."""
        while conn.their_state is not h11.DONE:
            await asyncio.sleep(0.2)
        received = 0
        while received < (1 << 20):
            data = await reader.read(65536)
            if not data:
                return
            received += len(data)
            conn.receive_data(data)  # a pipelined request: kept for the next cycle
        await asyncio.Event().wait()

    async def _hijack(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        response: Response,
    ) -> None:
        assert response.hijack is not None
        trailing, _closed = conn.trailing_data
        if request.upgrade:
            head = "HTTP/1.1 101 UPGRADED\r\n"
            headers = {**response.headers, "Connection": "Upgrade", "Upgrade": "tcp"}
        else:
            head = "HTTP/1.1 200 OK\r\n"
            headers = {**response.headers}
        headers.setdefault("Content-Type", "application/vnd.docker.raw-stream")
        for k, v in {**self.common_headers, **headers}.items():
            head += f"{k}: {v}\r\n"
        writer.write((head + "\r\n").encode("latin-1"))
        await writer.drain()
        await response.hijack(reader, writer, bytes(trailing))
        await end_hijacked(reader, writer)
