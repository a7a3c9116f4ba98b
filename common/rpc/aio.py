"""Asyncio RPC client (DEALER) for services, shims and the gateway.

Same contract as ``common.rpc.client`` (deadlines, liveness, credit, the error
set), but many calls share one socket: a reader task routes frames to calls by
request id and answers heartbeats at once, so a call's liveness does not depend
on how fast its consumer reads. The reader also applies the service's send credit
(``common.rpc.protocol``, flow control): ``AsyncCall.send`` waits while the call has
none, so a relay (stdin from a client to a shim) moves at the pace of the far end.
A caller that sends must consume the call's frames concurrently (another task):
frames are credited to the service only as ``next_frame`` takes them.

With ``watch_peer``, a client also watches its connection (a ZeroMQ socket monitor): when
the service's process goes away (SIGKILL closes its socket), every call in flight fails
at once with ``Unavailable`` (not ``ended``) instead of after ``liveness_s`` of silence.
The socket sets ``IMMEDIATE``, so nothing sent before the disconnect waits to be delivered
to the next process: each of those calls is lost for sure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq

from common import codec, endpoints, errors
from common.rpc import protocol, zasync

_GRACE_S = 0.5
_UNSET: Any = object()
_LOST: dict[str, Any] = {"lost": True}
"""Queued to the calls in flight when the connection to the service dropped (``watch_peer``)."""


class AsyncCall:
    """One in-flight call of an ``AsyncClient``; ``async for`` it for stream frames."""

    def __init__(self, client: AsyncClient, method: str, request_id: str, deadline: float | None, window: int):
        self.client = client
        self.method = method
        self.request_id = request_id
        self.deadline = deadline
        self.window = window
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_frame = time.monotonic()
        self.heard = False
        self.done = False
        self._consumed = 0
        self.send_credit: int | None = protocol.SEND_WINDOW
        """``data`` frames the service still takes; None once it turned out to grant no credit (v1)."""
        self._credit_changed = asyncio.Event()
        self._ended = False
        """The final frame (reply or error) arrived, or the call was given up."""
        self._answered = False
        """The final frame (reply or error) arrived (``ended``)."""

    @property
    def ended(self) -> bool:
        """The service's final frame (its reply or its error) arrived. An ``Unavailable``
        raised by a call that has not ``ended`` means the service went silent or away mid-call
        (its work may go on, or resume after its restart), not that it refused."""
        return self._answered

    @property
    def can_send(self) -> bool:
        """True when ``send`` would not wait for credit."""
        return self.send_credit is None or self.send_credit > 0

    async def send(self, body: Any) -> None:
        """Send one item of the client's own stream (e.g. stdin bytes, at most
        ``protocol.MAX_DATA_SIZE``).

        Waits while the call has no send credit (the service has not taken what it was
        sent), and (up to the liveness window) while the socket's send queue is full, so a
        fast producer is slowed down instead of failing or filling memory. Once the call
        has ended the item is dropped: nobody reads it. Raises ``Unavailable`` when the
        service goes silent while we wait.
        """
        while not self.can_send and not self._ended:
            self._credit_changed.clear()
            wait = self.client.liveness_s - (time.monotonic() - self.last_frame)
            try:
                await asyncio.wait_for(self._credit_changed.wait(), timeout=max(0.05, wait))
            except TimeoutError:
                if time.monotonic() - self.last_frame >= self.client.liveness_s:
                    raise errors.Unavailable(
                        f"{self.client.service} service not answering at {self.client.endpoint}"
                    ) from None
        if self._ended:
            return
        if self.send_credit is not None:
            self.send_credit -= 1
        await self.client._send(protocol.control(protocol.DATA, self.request_id, body=body), wait_s=self._stream_wait_s)

    def _credit(self, msg: dict[str, Any]) -> None:
        """Apply a frame's bearing on send credit (the reader task calls this for each frame)."""
        if int(msg.get("v") or 1) < protocol.SEND_CREDIT_VERSION:
            self.send_credit = None  # a version 1 service grants none: do not count
        elif "credit" in msg and self.send_credit is not None:
            self.send_credit += int(msg.get("credit") or 0)
        if not msg.get("hb") and "credit" not in msg and (not msg.get("ok") or not msg.get("more")):
            self._ended = self._answered = True
        self._credit_changed.set()

    async def send_eof(self) -> None:
        """Tell the service the client's stream ended."""
        await self.client._send(protocol.control(protocol.EOF, self.request_id), wait_s=self._stream_wait_s)

    @property
    def _stream_wait_s(self) -> float:
        return max(self.client.liveness_s * 10, 30.0)

    async def cancel(self) -> None:
        """Give up on the call; the service cancels its handler."""
        if not self.done:
            self.done = True
            self._ended = True
            self._credit_changed.set()
            self.client._calls.pop(self.request_id, None)
            with contextlib.suppress(errors.Unavailable, zmq.ZMQError):
                await self.client._send(protocol.control(protocol.CANCEL, self.request_id))

    def _fail_silent(self) -> errors.DockyardError:
        if self.deadline is not None and time.monotonic() >= self.deadline and self.heard:
            return errors.DeadlineExceeded(f"{self.method}: deadline exceeded")
        return errors.Unavailable(f"{self.client.service} service not answering at {self.client.endpoint}")

    async def next_frame(self) -> tuple[bool, Any]:
        """Wait for the next frame; return ``(more, body)``; raise the service's error."""
        while True:
            now = time.monotonic()
            wait = self.client.liveness_s - (now - self.last_frame)
            if self.deadline is not None:
                wait = min(wait, self.deadline + _GRACE_S - now)
            try:
                msg = await asyncio.wait_for(self.queue.get(), timeout=max(0.0, wait))
            except TimeoutError:
                if time.monotonic() - self.last_frame < self.client.liveness_s and (
                    self.deadline is None or time.monotonic() < self.deadline + _GRACE_S
                ):
                    continue  # a heartbeat refreshed last_frame meanwhile
                self._finish()
                raise self._fail_silent() from None
            if msg is _LOST:
                self._finish()
                raise errors.Unavailable(f"{self.client.service} service not answering at {self.client.endpoint}")
            if not msg.get("ok"):
                self._finish()
                raise errors.from_wire(msg.get("error") or {})
            more = bool(msg.get("more"))
            if more:
                self._consumed += 1
                if self._consumed >= max(1, self.window // 2):
                    n, self._consumed = self._consumed, 0
                    await self.client._send(protocol.control(protocol.CREDIT, self.request_id, n=n))
            else:
                self._finish()
            return more, msg.get("body")

    def _finish(self) -> None:
        self.done = True
        self._ended = True
        self._credit_changed.set()
        self.client._calls.pop(self.request_id, None)

    async def result(self) -> Any:
        """Wait for the final frame of a unary call and return its body."""
        while True:
            more, body = await self.next_frame()
            if not more:
                return body

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            while True:
                more, body = await self.next_frame()
                if not more:
                    return
                yield body
        finally:
            if not self.done:
                await self.cancel()


class AsyncClient:
    """An asyncio client of one service; safe to share between tasks of one loop.

    ``service`` names the service in errors; ``endpoint`` defaults to its control endpoint.
    """

    def __init__(
        self,
        service: str,
        endpoint: str | None = None,
        *,
        namespace: str = "default",
        timeout_s: float | None = 30.0,
        liveness_s: float = 3.0,
        connect_timeout_s: float = 2.0,
        context: zasync.Context | None = None,
        watch_peer: bool = False,
    ) -> None:
        self.service = service
        self.endpoint = endpoint or endpoints.control_endpoint(service)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.liveness_s = liveness_s
        self.connect_timeout_s = connect_timeout_s
        self._zctx = context or zasync.Context.instance()
        self._sock: zasync.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._calls: dict[str, AsyncCall] = {}
        self._send_lock = asyncio.Lock()
        self.watch_peer = watch_peer
        """Fail the calls in flight as soon as the connection drops (module docstring)."""
        self._monitor: asyncio.Task[None] | None = None
        self._monitor_sock: zasync.Socket | None = None

    def _socket(self) -> zasync.Socket:
        if self._sock is None:
            sock = self._zctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.endpoint)
            self._sock = sock
            self._reader = asyncio.create_task(self._read_loop(sock), name=f"rpc-client-{self.service}")
            if self.watch_peer:
                monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                self._monitor_sock = monitor
                self._monitor = asyncio.create_task(self._watch(monitor), name=f"rpc-monitor-{self.service}")
        return self._sock

    def connect(self) -> None:
        """Open the connection now; it completes in the background (the service need not be
        listening yet: ZeroMQ retries), so the first call need not wait for the handshake."""
        self._socket()

    async def _watch(self, monitor: zasync.Socket) -> None:
        """Fail every call in flight when the connection to the service drops (``watch_peer``)."""
        try:
            while True:
                frames = await monitor.recv_multipart()
                event = int.from_bytes(frames[0][:2], "little") if frames and len(frames[0]) >= 2 else 0
                if event != zmq.EVENT_DISCONNECTED:
                    continue
                # what the service sent before it went away is read first (the reader task takes it)
                for _ in range(100):
                    sock = self._sock
                    if sock is None or not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        break
                    await asyncio.sleep(0.001)
                for call in list(self._calls.values()):
                    if call._answered:
                        continue  # its last frame is in: nothing was lost
                    call.queue.put_nowait(_LOST)
                    call._credit_changed.set()
        except (zmq.ZMQError, asyncio.CancelledError):
            return
        finally:
            self._stop_monitor()

    def _stop_monitor(self) -> None:
        """Stop the socket's monitor, then close our end of its PAIR, in that order: libzmq
        writes each event there with a blocking send from the context's I/O thread, and an
        event with nobody at this end (a disconnect at that moment) blocked the thread for
        good, and every socket of the process with it."""
        monitor, self._monitor_sock = self._monitor_sock, None
        if monitor is None:
            return
        sock = self._sock
        if sock is not None and not sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        monitor.close(linger=0)

    async def _read_loop(self, sock: zasync.Socket) -> None:
        while True:
            try:
                payload = await sock.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            try:
                msg = codec.decode(payload)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            call = self._calls.get(str(msg.get("id")))
            if call is None:
                continue
            call.last_frame = time.monotonic()
            call.heard = True
            call._credit(msg)
            if "credit" in msg:
                continue
            if msg.get("hb"):
                with contextlib.suppress(errors.Unavailable, zmq.ZMQError):
                    await self._send(protocol.control(protocol.PING, call.request_id))
                continue
            call.queue.put_nowait(msg)

    async def _send(self, payload: bytes, wait_s: float = 0.0) -> None:
        sock = self._socket()
        async with self._send_lock:
            try:
                if wait_s and not await sock.poll(int(wait_s * 1000), zmq.POLLOUT):
                    raise errors.Unavailable(f"{self.service} service not answering at {self.endpoint}")
                try:
                    await sock.send(payload, zmq.NOBLOCK)
                except zmq.Again:
                    raise errors.Unavailable(f"{self.service} service not answering at {self.endpoint}") from None
            except asyncio.CancelledError:
                # ``close`` (e.g. the clean-up after a dead shim) cancels what waits on the socket: that
                # is no cancellation of the caller, whose call failed as any call to a gone peer does
                task = asyncio.current_task()
                if sock.closed and (task is None or not task.cancelling()):
                    raise errors.Unavailable(
                        f"{self.service} service not answering at {self.endpoint} (connection closed)"
                    ) from None
                raise

    async def start(
        self,
        method: str,
        body: Any = None,
        *,
        timeout_s: float | None = _UNSET,
        namespace: str | None = None,
        meta: dict[str, Any] | None = None,
        window: int = protocol.DEFAULT_WINDOW,
        connect_timeout_s: float | None = None,
    ) -> AsyncCall:
        """Send a request and return its ``AsyncCall`` (``timeout_s=None``: no deadline).

        ``connect_timeout_s``: how long to wait for a connection to the service (default the
        client's; bounded by ``timeout_s``)."""
        timeout = self.timeout_s if timeout_s is _UNSET else timeout_s
        request_id = protocol.new_request_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        call = AsyncCall(self, method, request_id, deadline, window)
        self._calls[request_id] = call
        payload = protocol.request(
            request_id,
            method,
            body,
            namespace=namespace or self.namespace,
            deadline=protocol.deadline_ms(timeout),
            window=window,
            meta=meta,
        )
        connect_s = self.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        connect_wait = connect_s if timeout is None else min(connect_s, max(0.05, timeout))
        try:
            await self._send(payload, wait_s=connect_wait)
        except BaseException:
            self._calls.pop(request_id, None)
            raise
        call.last_frame = time.monotonic()
        return call

    async def call(self, method: str, body: Any = None, **kw: Any) -> Any:
        """Make a unary call and return the reply body."""
        call = await self.start(method, body, **kw)
        try:
            return await call.result()
        except asyncio.CancelledError:
            await call.cancel()
            raise

    async def stream(self, method: str, body: Any = None, **kw: Any) -> AsyncIterator[Any]:
        """Make a streaming call (no deadline unless given) and iterate its frames."""
        kw.setdefault("timeout_s", None)
        call = await self.start(method, body, **kw)
        async for item in call:
            yield item

    async def settle(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every call in flight has its final frame: a
        service that answers them and goes away (a shim whose create failed ends its held
        calls with why) is heard before ``close``, which would leave them to time out after
        ``liveness_s``. True if none is left unanswered."""
        deadline = time.monotonic() + timeout_s
        while True:
            # no await between the look and the clear: a frame read meanwhile sets the event again
            unanswered = [c for c in self._calls.values() if not c._answered]
            if not unanswered:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for call in unanswered:
                call._credit_changed.clear()  # set by the reader at each frame of the call
            waits = [asyncio.ensure_future(call._credit_changed.wait()) for call in unanswered]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def close(self) -> None:
        """Close the socket and fail nothing: pending calls time out as Unavailable."""
        if self._monitor is not None:
            self._monitor.cancel()  # its task stops the monitor (a task never started: here)
            with contextlib.suppress(BaseException):
                await self._monitor
            self._monitor = None
        self._stop_monitor()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
