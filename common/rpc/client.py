"""Blocking RPC client (DEALER) for the CLI, tests and short-lived tools.

Every call has a deadline and a liveness check: a service that sends no frame
(reply or heartbeat) for ``liveness_s`` seconds, or that cannot be connected to
within ``connect_timeout_s``, raises ``Unavailable("<service> service not
answering at <endpoint>")``; the call never hangs. Errors sent by the service
are raised again as the same ``common.errors`` class.

Streaming replies are iterated; the client grants credit as it consumes frames so
a slow reader slows the server down instead of filling memory. ``start()`` gives a
two-way stream (stdin to the service, output back); the client's own stream is
flow-controlled the other way (``common.rpc.protocol``): ``Call.send`` spends send
credit and, out of it, waits for the service to grant more, so a producer is slowed
to the pace of the handler reading it. ``Call.can_send`` lets a caller that
multiplexes (the CLI's stdin pump) stop reading its input instead of blocking.

Transport: on ``ipc://`` endpoints the client speaks ZMTP itself
(``common.rpc.zmtp``) so short-lived commands do not pay for importing pyzmq;
other endpoints (``tcp://``) go through pyzmq. Both are DEALER sockets to the
service's ROUTER and carry the same envelope.
"""

from __future__ import annotations

import time

from common import codec, endpoints, errors
from common.rpc import protocol

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    class Transport(Protocol):
        """A DEALER connection: ``send`` one frame, ``recv`` one frame or None on timeout.

        Both raise ``ConnectionError`` when the service cannot be reached or went away.
        """

        def send(self, payload: bytes, connect_wait_s: float) -> None: ...

        def recv(self, timeout_ms: int) -> bytes | None: ...

        def fileno(self) -> int: ...

        def close(self) -> None: ...


_GRACE_S = 0.5


class _Unset:
    """Marker for "use the client's default timeout"."""


UNSET = _Unset()


class ZmtpTransport:
    """Pure-Python ZMTP over a unix socket (``ipc://`` endpoints)."""

    def __init__(self, endpoint: str) -> None:
        from common.rpc.zmtp import ZmtpDealer

        self._dealer = ZmtpDealer(endpoint[len("ipc://") :])
        self._connected = False

    def send(self, payload: bytes, connect_wait_s: float) -> None:
        if not self._connected:
            self._dealer.connect(connect_wait_s)
            self._connected = True
        self._dealer.send(payload)

    def recv(self, timeout_ms: int) -> bytes | None:
        if not self._connected:
            raise ConnectionError("not connected")
        return self._dealer.recv(timeout_ms)

    def fileno(self) -> int:
        return self._dealer.fileno()

    def close(self) -> None:
        self._dealer.close()
        self._connected = False


class PyzmqTransport:
    """libzmq DEALER (any endpoint libzmq supports, e.g. ``tcp://``)."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self._zmq = zmq
        self._sock: Any = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.connect(endpoint)

    def send(self, payload: bytes, connect_wait_s: float) -> None:
        zmq = self._zmq
        if connect_wait_s and not self._sock.poll(int(connect_wait_s * 1000), zmq.POLLOUT):
            raise ConnectionError("no connection")
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            raise ConnectionError("no connection") from None

    def recv(self, timeout_ms: int) -> bytes | None:
        if not self._sock.poll(timeout_ms, self._zmq.POLLIN):
            return None
        data: bytes = self._sock.recv()
        return data

    def fileno(self) -> int:
        fd: int = self._sock.getsockopt(self._zmq.FD)
        return fd

    def close(self) -> None:
        self._sock.close(linger=0)


class Call:
    """One in-flight call on a ``Client``; iterate it for stream frames."""

    def __init__(self, client: Client, method: str, request_id: str, deadline: float | None, window: int):
        self.client = client
        self.method = method
        self.request_id = request_id
        self.deadline = deadline  # monotonic, or None
        self.window = window
        self._consumed = 0
        self._last_frame = time.monotonic()
        self._heard = False
        self.done = False
        self.send_credit: int | None = protocol.SEND_WINDOW
        """``data`` frames the service still takes; None once it turned out to grant no credit (v1)."""
        self._backlog: list[dict[str, Any]] = []
        """Frames read while ``send`` waited for credit, returned by ``next_frame`` first."""
        self._ended = False
        """The final frame (reply or error) has been read, maybe not returned yet."""

    @property
    def ended(self) -> bool:
        """The service's final frame (its reply or its error) was read. An ``Unavailable``
        raised by a call that has not ``ended`` means the service went silent or away
        mid-call (its work may go on, or resume after its restart), not that it refused."""
        return self._ended

    # -- client -> server ---------------------------------------------------------------
    @property
    def can_send(self) -> bool:
        """True when ``send`` would not wait: credit is left (or the service counts none)."""
        return self.send_credit is None or self.send_credit > 0

    def send(self, body: Any) -> None:
        """Send one item of the client's own stream (e.g. stdin bytes, at most
        ``protocol.MAX_DATA_SIZE``).

        Out of credit, waits for the service to grant more, reading the call's frames
        meanwhile (kept, and credited, for ``next_frame``: a caller that sends without
        reading has its replies buffered here). Once the call has ended (its final frame
        was read) the item is dropped: nobody reads it. Raises ``Unavailable`` when the
        service goes silent while we wait.
        """
        while not self.can_send and not self._ended:
            self._pull()
        if self._ended or self.done:
            return
        if self.send_credit is not None:
            self.send_credit -= 1
        self.client._send(protocol.control(protocol.DATA, self.request_id, body=body))

    def send_eof(self) -> None:
        """Tell the service the client's stream ended (stdin EOF)."""
        self.client._send(protocol.control(protocol.EOF, self.request_id))

    def cancel(self) -> None:
        """Give up on the call; the service cancels its handler (a service that cannot be
        reached is not told: it has nothing to cancel, or learns it from the liveness rule)."""
        if not self.done:
            self.done = True
            try:  # not contextlib.suppress: contextlib (collections, functools...) is ~5 ms of a CLI's start
                self.client._send(protocol.control(protocol.CANCEL, self.request_id))
            except errors.Unavailable:
                pass

    # -- server -> client ---------------------------------------------------------------
    def _timeout_ms(self) -> int:
        now = time.monotonic()
        wait = self.client.liveness_s - (now - self._last_frame)
        if self.deadline is not None:
            wait = min(wait, self.deadline + _GRACE_S - now)
        return max(0, int(wait * 1000))

    def _fail_silent(self) -> errors.DockyardError:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline and self._heard:
            return errors.DeadlineExceeded(f"{self.method}: deadline exceeded")
        return errors.Unavailable(f"{self.client.service} service not answering at {self.client.endpoint}")

    def _read(self, timeout_ms: int) -> dict[str, Any] | None:
        """Read the next frame of this call (None on timeout), answering heartbeats and
        applying send credit on the way (both returned too: not reply frames)."""
        while True:
            payload = self.client._recv(timeout_ms)
            if payload is None:
                return None
            try:
                msg = codec.decode(payload)
            except ValueError:
                continue
            if not isinstance(msg, dict) or msg.get("id") != self.request_id:
                continue  # a late frame of an earlier call
            self._last_frame = time.monotonic()
            self._heard = True
            if int(msg.get("v") or 1) < protocol.SEND_CREDIT_VERSION:
                self.send_credit = None  # a version 1 service never grants send credit
            if msg.get("hb"):
                self.client._send(protocol.control(protocol.PING, self.request_id))
                return msg
            if "credit" in msg:
                if self.send_credit is not None:
                    self.send_credit += int(msg.get("credit") or 0)
                return msg
            if not msg.get("ok") or not msg.get("more"):
                self._ended = True
            return msg

    def _pull(self) -> None:
        """Wait (within liveness and the deadline) for one frame while out of send credit."""
        msg = self._read(self._timeout_ms())
        if msg is None:
            self.done = self._ended = True
            raise self._fail_silent()
        if "credit" not in msg and not msg.get("hb"):
            self._backlog.append(msg)
            if msg.get("more"):
                self._grant_one()  # taken off the wire into our buffer: the service may go on

    def _grant_one(self) -> None:
        self._consumed += 1
        if self._consumed >= max(1, self.window // 2):
            self.client._send(protocol.control(protocol.CREDIT, self.request_id, n=self._consumed))
            self._consumed = 0

    def next_frame(self, timeout_ms: int | None = None) -> tuple[bool, Any]:
        """Wait for the next reply frame; return ``(more, body)``.

        ``timeout_ms`` (optional) returns ``(True, None)`` early when no reply frame
        arrived in that time (send credit may have: see ``can_send``), so a caller can
        multiplex other work (stdin) with the stream. Raises the service's error,
        ``Unavailable`` or ``DeadlineExceeded``.
        """
        while True:
            if self._backlog:
                msg = self._backlog.pop(0)
                credited = True
            else:
                wait = self._timeout_ms()
                early = timeout_ms is not None and timeout_ms < wait
                got = self._read(timeout_ms if early else wait)  # type: ignore[arg-type]
                if got is None:
                    if early:
                        return True, None
                    self.done = True
                    raise self._fail_silent()
                if "credit" in got or got.get("hb"):
                    continue  # not a reply frame (after credit the caller may send again)
                msg, credited = got, False
            if not msg.get("ok"):
                self.done = True
                raise errors.from_wire(msg.get("error") or {})
            more = bool(msg.get("more"))
            if more:
                if not credited:
                    self._grant_one()
            else:
                self.done = True
            return more, msg.get("body")

    def result(self) -> Any:
        """Wait for the final reply of a unary call and return its body."""
        while True:
            more, body = self.next_frame()
            if not more:
                return body

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                more, body = self.next_frame()
                if not more:
                    return
                yield body
        finally:
            if not self.done:
                self.cancel()


class Client:
    """A blocking client of one service.

    ``service`` is the service's name (``"image"``, ``"execution"``, or ``"shim"``);
    ``endpoint`` defaults to ``common.endpoints.control_endpoint(service)``. The client
    is not thread-safe; use one per thread.
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
    ) -> None:
        self.service = service
        self.endpoint = endpoint or endpoints.control_endpoint(service)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.liveness_s = liveness_s
        self.connect_timeout_s = connect_timeout_s
        self._transport: Transport | None = None

    def _connection(self) -> Transport:
        if self._transport is None:
            if self.endpoint.startswith("ipc://") and not self.endpoint.startswith("ipc://@"):
                self._transport = ZmtpTransport(self.endpoint)
            else:
                self._transport = PyzmqTransport(self.endpoint)
        return self._transport

    def _unavailable(self) -> errors.Unavailable:
        self.close()
        return errors.Unavailable(f"{self.service} service not answering at {self.endpoint}")

    def _send(self, payload: bytes, wait_s: float = 0.0) -> None:
        try:
            self._connection().send(payload, wait_s)
        except ConnectionError:
            raise self._unavailable() from None

    def _recv(self, timeout_ms: int) -> bytes | None:
        try:
            return self._connection().recv(timeout_ms)
        except ConnectionError:
            raise self._unavailable() from None

    def fileno(self) -> int:
        """The file descriptor to poll for incoming frames (after the first call)."""
        return self._connection().fileno()

    def start(
        self,
        method: str,
        body: Any = None,
        *,
        timeout_s: float | _Unset | None = UNSET,
        namespace: str | None = None,
        meta: dict[str, Any] | None = None,
        window: int = protocol.DEFAULT_WINDOW,
    ) -> Call:
        """Send a request and return its ``Call`` without waiting for the reply.

        ``timeout_s`` overrides the client's default deadline (None = no deadline,
        liveness still applies). Raises ``Unavailable`` when the service cannot be reached.
        """
        timeout = self.timeout_s if isinstance(timeout_s, _Unset) else timeout_s
        request_id = protocol.new_request_id()
        payload = protocol.request(
            request_id,
            method,
            body,
            namespace=namespace or self.namespace,
            deadline=protocol.deadline_ms(timeout),
            window=window,
            meta=meta,
        )
        connect_wait = self.connect_timeout_s
        if timeout is not None:
            connect_wait = min(connect_wait, max(0.05, timeout))
        self._send(payload, wait_s=connect_wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        return Call(self, method, request_id, deadline, window)

    def call(self, method: str, body: Any = None, **kw: Any) -> Any:
        """Make a unary call and return the reply body (see ``start`` for options)."""
        return self.start(method, body, **kw).result()

    def stream(self, method: str, body: Any = None, **kw: Any) -> Iterator[Any]:
        """Make a streaming call and iterate its frames (no deadline unless given)."""
        kw.setdefault("timeout_s", None)
        return iter(self.start(method, body, **kw))

    def close(self) -> None:
        """Close the connection; the client reconnects on its next call."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
