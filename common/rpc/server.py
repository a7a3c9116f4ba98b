"""The RPC server every Dockyard service (and every shim) runs: a ROUTER socket on asyncio.

A service exposes plain ``async`` methods marked with ``@rpc("<service>.<verb>")``;
the first parameter's type annotation (a pydantic model) validates the request
body, the return value (a model, a dict or None) is the reply body. A method
marked ``stream=True`` is an async generator: each yielded item is one frame of
a streaming reply, sent under the client's credit window. Handlers read the
client's own stream (stdin) with ``ctx.recv()``; taking items grants the client
credit to send more (``common.rpc.protocol``, flow control), so what waits here
unread is at most ``protocol.SEND_WINDOW`` frames per call.

The server owns the edge translation of errors (see ``common.errors``): a
``DockyardError`` goes out as is, pydantic validation errors become
``InvalidArgument``, a passed deadline ``DeadlineExceeded``, anything else is
logged with its traceback here and sent as a one-line ``Internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import zmq

from common import codec, errors, ids, trace
from common.rpc import protocol, zasync

log = logging.getLogger(__name__)

_EOF = object()


@dataclass(frozen=True)
class RpcSpec:
    """How one method is exposed: its wire name and whether it streams."""

    method: str
    stream: bool
    quiet: bool


def rpc(method: str, *, stream: bool = False, quiet: bool = False) -> Callable[[Any], Any]:
    """Mark a service method as the handler of ``method`` (``"<service>.<verb>"``).

    ``stream=True`` marks an async generator whose items are sent as stream frames.
    ``quiet=True`` logs the call at debug level only (health checks, polls).
    """

    def mark(fn: Any) -> Any:
        fn.__rpc_spec__ = RpcSpec(method, stream, quiet)
        return fn

    return mark


class Context:
    """What a handler knows about its call besides the body."""

    def __init__(self, request_id: str, method: str, namespace: str, meta: dict[str, Any], deadline: float | None):
        self.request_id = request_id
        self.method = method
        self.namespace = namespace
        self.meta = meta
        self.deadline = deadline  # time.monotonic() value, or None
        self._incoming: asyncio.Queue[Any] = asyncio.Queue()
        self._eof = False
        self._taken = 0
        """``data`` items taken by ``recv`` and not yet granted back to the client as credit."""
        self._grant: Callable[[int], Awaitable[None]] | None = None

    def time_left(self) -> float | None:
        """Seconds until the call's deadline, None when it has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    async def recv(self) -> Any:
        """Return the next item of the client's stream, or None once it ended (EOF).

        Each item taken is credit the client gets back (in batches of half the window):
        a handler that calls ``recv`` slowly is sent the stream slowly.
        """
        if self._eof:
            return None
        item = await self._incoming.get()
        if item is _EOF:
            self._eof = True
            return None
        self._taken += 1
        if self._grant is not None and self._taken >= max(1, protocol.SEND_WINDOW // 2):
            n, self._taken = self._taken, 0
            await self._grant(n)
        return item


@dataclass
class _Handler:
    fn: Callable[..., Any]
    spec: RpcSpec
    model: type[pydantic.BaseModel] | None


@dataclass
class _Call:
    identity: bytes
    request_id: str
    ctx: Context
    streaming: bool
    window: int
    credit: int
    credit_event: asyncio.Event = field(default_factory=asyncio.Event)
    send_credit: int | None = protocol.SEND_WINDOW
    """``data`` frames the client may still send; None for a version 1 client (not counted)."""
    overrun: bool = False
    started: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


_MODELS: dict[Any, type[pydantic.BaseModel] | None] = {}
_RPC_NAMES: dict[type, list[str]] = {}
# Both caches are filled once per function / class: a process forked from a template that
# warmed them (``warm_handlers``) pays neither ``get_type_hints`` nor ``getmembers`` again.


def _request_model(fn: Callable[..., Any], *, method: bool = False) -> type[pydantic.BaseModel] | None:
    """The pydantic type of ``fn``'s first parameter (after ``self`` for a method), or None."""
    key = getattr(fn, "__func__", fn)
    if key in _MODELS:
        return _MODELS[key]
    model: type[pydantic.BaseModel] | None = None
    params = list(inspect.signature(key).parameters.values())
    if method or key is not fn:
        params = params[1:]
    if params:
        hint = typing.get_type_hints(fn).get(params[0].name)
        if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
            model = hint
    _MODELS[key] = model
    return model


def _rpc_names(cls: type) -> list[str]:
    names = _RPC_NAMES.get(cls)
    if names is None:
        names = [n for n, fn in inspect.getmembers(cls, predicate=callable) if hasattr(fn, "__rpc_spec__")]
        _RPC_NAMES[cls] = names
    return names


def warm_handlers(*classes: type) -> None:
    """Work out the ``@rpc`` methods and request models of ``classes`` now (before forking)."""
    for cls in classes:
        for name in _rpc_names(cls):
            _request_model(getattr(cls, name), method=True)


def collect_handlers(*services: object) -> dict[str, _Handler]:
    """Return ``{method: handler}`` for every ``@rpc`` method of ``services``.

    Raises ``ValueError`` when two methods claim the same wire name.
    """
    table: dict[str, _Handler] = {}
    for service in services:
        for name in _rpc_names(type(service)):
            fn = getattr(service, name)
            spec = fn.__rpc_spec__
            if spec.method in table:
                raise ValueError(f"two handlers for {spec.method}")
            table[spec.method] = _Handler(fn, spec, _request_model(fn))
    return table


def _validation_message(method: str, exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return f"{method}: invalid request: " + "; ".join(parts)


class RpcServer:
    """A ROUTER serving the ``@rpc`` methods of one or more service objects.

    ``endpoint`` is a ZeroMQ address (``ipc://...``); ``name`` names the service in logs.
    ``heartbeat_s``: interval of heartbeats on in-flight calls. ``client_timeout_s``: a
    streaming call whose client sent nothing (ping, credit, data) for this long is cancelled.
    """

    def __init__(
        self,
        endpoint: str,
        *services: object,
        name: str,
        heartbeat_s: float = 1.0,
        client_timeout_s: float = 30.0,
        zmq_context: zasync.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.client_timeout_s = client_timeout_s
        self._handlers = collect_handlers(*services)
        self._zctx = zmq_context or zasync.Context.instance()
        self._sock: zasync.Socket | None = None
        self._ipc_file: tuple[str, int] | None = None
        """The ipc socket file this server bound, and its inode (removed again by ``close``)."""
        self._calls: dict[tuple[bytes, str], _Call] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.last_activity = time.monotonic()
        """``time.monotonic()`` when a call last came in or ended (an idle shim is one with none for a while)."""
        self.listen_fd = -1
        """A listening unix socket already bound at the endpoint's path to serve on (``ZMQ_USE_FD``),
        with its pending connections; set before ``start`` (a shim waking from its idle monitor)."""

    def register(self, method: str, fn: Callable[..., Any], *, stream: bool = False, quiet: bool = False) -> None:
        """Serve ``fn`` as ``method`` without the ``@rpc`` marker (for generated methods)."""
        if method in self._handlers:
            raise ValueError(f"two handlers for {method}")
        self._handlers[method] = _Handler(fn, RpcSpec(method, stream, quiet), _request_model(fn))

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def bind(self) -> None:
        """Bind the ROUTER socket (removing a stale ipc socket file first; ``close`` removes ours).

        Raises ``zmq.ZMQError`` (address in use, a path over the unix limit) or ``OSError``
        (the socket's directory); the socket is closed then."""
        sock = self._zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        path = self.endpoint[len("ipc://") :] if self.endpoint.startswith("ipc://") else ""
        try:
            if self.listen_fd >= 0:
                sock.setsockopt(zmq.USE_FD, self.listen_fd)  # zmq owns (and closes) the fd from now on
                self.listen_fd = -1
            elif path and not path.startswith("@"):  # a file, not an abstract socket
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            sock.bind(self.endpoint)
        except BaseException:
            sock.close(linger=0)  # an open socket would keep the context's term waiting for it
            raise
        self._sock = sock
        if path and not path.startswith("@"):
            with contextlib.suppress(OSError):
                self._ipc_file = (path, os.stat(path).st_ino)

    async def start(self) -> None:
        """Bind (if needed) and start serving in background tasks."""
        if self._sock is None:
            self.bind()
        self._tasks = [
            asyncio.create_task(self._recv_loop(), name=f"{self.name}-rpc-recv"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-rpc-heartbeat"),
        ]

    async def close(self, grace_s: float = 5.0, linger_ms: int = 0) -> None:
        """Stop taking requests, let unary calls finish within ``grace_s``, cancel the rest.

        With ``linger_ms`` 0, a reply sent just before may be lost (ZeroMQ drops what a
        closing ROUTER has not written yet): end with a call whose reply nobody needs
        (``shim.shutdown``). A positive ``linger_ms`` leaves what is queued to ZeroMQ's I/O
        thread for that long instead (this process must then not terminate the context
        before it is out, or wait for it: ``zmq_ctx_term`` blocks up to the linger).
        """
        self._closing = True
        for task in self._tasks[:1]:
            task.cancel()
        # streams (follows, attaches) end now: the client sees the stream end
        for call in list(self._calls.values()):
            if call.streaming and call.task:
                call.task.cancel()
        pending = [c.task for c in self._calls.values() if c.task]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
            self._sock = None
        self._remove_ipc_file()

    def busy(self, ignore: frozenset[str] = frozenset()) -> bool:
        """Whether a call is in flight (other than calls of the methods in ``ignore``) or a
        request waits unread in the socket."""
        if any(c.ctx.method not in ignore for c in self._calls.values()):
            return True
        return self._sock is not None and bool(int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)

    def pending_replies(self) -> list[asyncio.Task[None]]:
        """The tasks of the calls in flight (to wait until they sent their replies)."""
        return [c.task for c in self._calls.values() if c.task is not None]

    def abandon(self) -> None:
        """Stop reading requests at once (no await: nothing more is taken after this returns)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()

    def close_for_handover(self, linger_ms: int = 1000) -> None:
        """Close the socket, flushing replies sent already (up to ``linger_ms``), and leave the
        socket file in place: whoever serves next is bound there already (see ``abandon``)."""
        self.abandon()
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
            self._sock = None
        self._ipc_file = None

    def _remove_ipc_file(self) -> None:
        """Remove the socket file we bound, unless a successor has bound its own there since."""
        if self._ipc_file is None:
            return
        path, inode = self._ipc_file
        self._ipc_file = None
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)

    # -- receiving -----------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                continue
            identity, payload = frames
            try:
                msg = codec.decode(payload)
                if not isinstance(msg, dict) or "id" not in msg:
                    raise ValueError("not an envelope")
            except ValueError:
                log.warning("%s: dropped a malformed frame", self.name)
                continue
            kind = msg.get("k", protocol.REQ)
            key = (identity, str(msg["id"]))
            if kind == protocol.REQ:
                self._accept(identity, msg)
                continue
            call = self._calls.get(key)
            if call is None:
                continue
            call.last_heard = time.monotonic()
            if kind == protocol.DATA:
                if call.send_credit is not None:
                    call.send_credit -= 1
                    if call.send_credit < 0:
                        self._overrun(call)
                        continue
                call.ctx._incoming.put_nowait(msg.get("body"))
            elif kind == protocol.EOF:
                call.ctx._incoming.put_nowait(_EOF)
            elif kind == protocol.CREDIT:
                call.credit += int(msg.get("n", 0))
                call.credit_event.set()
            elif kind == protocol.CANCEL and call.task:
                # after the task's first step (see _overrun): the request may be in this same batch
                asyncio.get_running_loop().call_soon(call.task.cancel)

    def _accept(self, identity: bytes, msg: dict[str, Any]) -> None:
        request_id = str(msg["id"])
        method = str(msg.get("method", ""))
        deadline_ms = int(msg.get("deadline_ms") or 0)
        deadline = None
        if deadline_ms:
            deadline = time.monotonic() + (deadline_ms / 1000.0 - time.time())
        handler = self._handlers.get(method)
        ctx = Context(request_id, method, str(msg.get("namespace") or "default"), dict(msg.get("meta") or {}), deadline)
        window = max(1, int(msg.get("window") or protocol.DEFAULT_WINDOW))
        call = _Call(identity, request_id, ctx, bool(handler and handler.spec.stream), window, window)
        if int(msg.get("v") or 1) < protocol.SEND_CREDIT_VERSION:
            call.send_credit = None  # an older client: it does not wait for send credit
        ctx._grant = lambda n: self._grant(call, n)
        self._calls[(identity, request_id)] = call
        self.last_activity = time.monotonic()
        trace.mark(f"recv {method}")
        call.task = asyncio.create_task(self._run(call, handler, msg.get("body")), name=f"{self.name}:{method}")
        # _run forgets the call in its finally; a task cancelled before its first step never gets there
        call.task.add_done_callback(lambda _t: self._calls.pop((identity, request_id), None))

    def _overrun(self, call: _Call) -> None:
        """The client sent ``data`` past its credit: fail the call (nothing more is queued)."""
        if call.overrun:
            return
        call.overrun = True
        log.warning("%s: the client sent its stream past its credit, failing the call", call.ctx.method)
        if call.task is not None:
            # after the task's first step: a task cancelled before it started never runs its
            # handler's clean-up (nor sends the error), and the req may have come in this same batch
            asyncio.get_running_loop().call_soon(call.task.cancel)

    async def _grant(self, call: _Call, n: int) -> None:
        """Give the client ``n`` more frames of send credit (the handler took them)."""
        if call.send_credit is None or call.overrun or (call.identity, call.request_id) not in self._calls:
            return
        call.send_credit += n
        if self._sock is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            await self._sock.send_multipart([call.identity, protocol.credit(call.request_id, n)])

    # -- running ---------------------------------------------------------------------------
    async def _send(self, call: _Call, payload: bytes) -> None:
        assert self._sock is not None
        try:
            await self._sock.send_multipart([call.identity, payload])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH and call.task and call.task is not asyncio.current_task():
                call.task.cancel()
            raise

    async def _run(self, call: _Call, handler: _Handler | None, body: Any) -> None:
        ctx = call.ctx
        started = time.monotonic()
        outcome = "ok"
        try:
            try:
                if self._closing:
                    raise errors.Unavailable(f"{self.name} service is shutting down")
                if handler is None:
                    raise errors.Unimplemented(f"{self.name} service has no method {ctx.method!r}")
                ids.validate_namespace(ctx.namespace)
                left = ctx.time_left()
                if left is not None and left <= 0:
                    raise errors.DeadlineExceeded(f"{ctx.method}: deadline passed before the call started")
                if handler.model is not None:
                    try:
                        req: Any = handler.model.model_validate(body if body is not None else {})
                    except pydantic.ValidationError as exc:
                        raise errors.InvalidArgument(_validation_message(ctx.method, exc)) from None
                else:
                    req = body
                async with asyncio.timeout(left):
                    if handler.spec.stream:
                        await self._run_stream(call, handler, req)
                    else:
                        result = await handler.fn(req, ctx)
                        await self._send(call, protocol.reply(call.request_id, result))
            except TimeoutError:
                raise errors.DeadlineExceeded(f"{ctx.method}: deadline exceeded") from None
        except errors.DockyardError as exc:
            outcome = exc.code
            await self._send_error(call, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if call.overrun:
                outcome = "ResourceExhausted"
                window = protocol.SEND_WINDOW
                message = f"{ctx.method}: the client sent more than {window} stream frames past its credit"
                await self._send_error(call, errors.ResourceExhausted(message))
            elif self._closing:
                await self._send_error(call, errors.Unavailable(f"{self.name} service is shutting down"))
        except zmq.ZMQError:
            outcome = "client gone"
        except Exception as exc:  # the edge: log the traceback here, send one line
            outcome = "Internal"
            log.exception("%s failed", ctx.method, extra={"request_id": call.request_id, "namespace": ctx.namespace})
            await self._send_error(call, errors.wrap_unexpected(exc, ctx.method))
        finally:
            trace.mark(f"done {ctx.method} {outcome}")
            self._calls.pop((call.identity, call.request_id), None)
            self.last_activity = time.monotonic()
            level = logging.DEBUG if (handler and handler.spec.quiet and outcome == "ok") else logging.INFO
            log.log(
                level,
                "%s %s in %.1f ms",
                ctx.method,
                outcome,
                (time.monotonic() - started) * 1000,
                extra={"request_id": call.request_id, "namespace": ctx.namespace},
            )

    async def _run_stream(self, call: _Call, handler: _Handler, req: Any) -> None:
        agen: AsyncIterator[Any] = handler.fn(req, call.ctx)
        try:
            async for item in agen:
                while call.credit <= 0:
                    call.credit_event.clear()
                    await call.credit_event.wait()
                call.credit -= 1
                await self._send(call, protocol.reply(call.request_id, item, more=True))
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._send(call, protocol.reply(call.request_id, None, more=False))

    async def _send_error(self, call: _Call, exc: errors.DockyardError) -> None:
        with contextlib.suppress(zmq.ZMQError, asyncio.CancelledError):
            await self._send(call, protocol.error(call.request_id, exc))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = time.monotonic()
            for call in list(self._calls.values()):
                if now - call.started < self.heartbeat_s:
                    continue
                if call.streaming and now - call.last_heard > self.client_timeout_s and call.task:
                    log.info("%s: client silent for %.0f s, cancelling", call.ctx.method, now - call.last_heard)
                    call.task.cancel()
                    continue
                with contextlib.suppress(zmq.ZMQError):
                    await self._send(call, protocol.heartbeat(call.request_id))
