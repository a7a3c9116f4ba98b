"""ZeroMQ sockets whose send, receive and poll are awaitable on the running asyncio loop.

What ``zmq.asyncio`` does, for the few calls Dockyard's RPC layer and events service make
(``recv``, ``recv_multipart``, ``send``, ``send_multipart``, ``poll``), for less CPU:
``zmq.asyncio`` keeps one future per operation, timers and IntFlag arithmetic on every
event; here an operation first tries the non-blocking call and only waits when that says
``EAGAIN``. An in-process RPC round trip (client and server) costs ~25-40% less CPU.

How the wait works (libzmq's ``ZMQ_FD`` contract, zmq_getsockopt(3)): the socket's file
descriptor becomes readable when libzmq has queued commands for the socket, which may
or may not mean a message can be received or sent; ``ZMQ_EVENTS`` processes them and
says what can be done now. The descriptor is edge-triggered: any operation on the
socket, including reading ``ZMQ_EVENTS``, may consume the edge that would have told a
waiter it can go on. So after every operation made while someone waits, the socket's
events are looked at again (once per loop iteration), and waiters of the direction that
is ready are woken to try again.

Closing a socket cancels every operation that waits on it (``asyncio.CancelledError`` in
the waiting task), as ``zmq.asyncio`` does. A socket is used from one event loop at a time;
used from another (a test's second ``asyncio.run``), it moves there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import zmq

_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)

T = TypeVar("T")


class _Waiting:
    """The per-socket state, kept in one object: ``zmq.Socket`` checks every attribute set
    against its option names."""

    __slots__ = ("check_scheduled", "closed", "loop", "readers", "shadow", "writers")

    def __init__(self, shadow: zmq.Socket[bytes]) -> None:
        self.shadow = shadow
        """A plain ``zmq.Socket`` on the same libzmq socket: the calls that do the work (its
        ``recv_multipart`` calls ``self.recv``, which must not be the awaitable one)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.readers: deque[asyncio.Future[None]] = deque()
        self.writers: deque[asyncio.Future[None]] = deque()
        self.check_scheduled = False
        self.closed = False
        """Set by ``Socket.close``: the shadow must not be used once libzmq's socket is gone."""

    def shadow_of_open(self) -> zmq.Socket[bytes]:
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        return self.shadow


class Socket(zmq.Socket[bytes]):
    """A ``zmq.Socket`` with awaitable ``recv``/``recv_multipart``/``send``/``send_multipart``
    and ``poll``; every other method is the synchronous one. Made by ``Context.socket``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_waiting"] = _Waiting(zmq.Socket.shadow(self.underlying))

    # -- the loop side --------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        w: _Waiting = self.__dict__["_waiting"]
        if w.loop is not loop:
            if w.loop is not None and not w.loop.is_closed():
                w.loop.remove_reader(self.FD)
            w.loop = loop
            w.check_scheduled = False
            loop.add_reader(self.FD, self._check)
        return loop

    def _check(self) -> None:
        """The descriptor fired, or an operation ran while someone waits: wake the waiters of
        each direction the socket is ready for."""
        w: _Waiting = self.__dict__["_waiting"]
        w.check_scheduled = False
        if w.closed:
            return
        try:
            events = int(w.shadow.getsockopt(_EVENTS))
        except zmq.ZMQError:
            return
        if events & _POLLIN:
            _wake(w.readers)
        if events & _POLLOUT:
            _wake(w.writers)

    def _after_op(self, w: _Waiting) -> None:
        if (w.readers or w.writers) and not w.check_scheduled and w.loop is not None:
            w.check_scheduled = True
            w.loop.call_soon(self._check)

    def get(self, option: int) -> Any:
        """``zmq.Socket.get``. Reading ``zmq.EVENTS`` (``RpcServer.busy``, ``AsyncClient``'s
        watch) processes the socket's commands, and so may consume the descriptor's edge a
        waiter needs: the waiters are looked at again, as after an operation. (pyzmq's
        ``zmq.asyncio`` does this in ``get`` only, and its ``getsockopt`` is the base class's:
        a request that came in as ``busy`` looked was never read, nor any later one.)"""
        value = super().get(option)
        if option == _EVENTS:
            w: _Waiting | None = self.__dict__.get("_waiting")
            if w is not None:
                self._after_op(w)
        return value

    getsockopt = get

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        loop = self._loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiters.append(fut)
        w: _Waiting = self.__dict__["_waiting"]
        # the call that just said EAGAIN may have consumed the descriptor's edge for the
        # other direction's waiters, or the state changed since: look once more
        self._after_op(w)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():
                try:
                    waiters.remove(fut)
                except ValueError:
                    pass

    # -- operations -----------------------------------------------------------------------

    async def _until_done(self, waiters: deque[asyncio.Future[None]], flags: int, call: Callable[[], T]) -> T:
        """``call()`` (a non-blocking operation on the shadow) until it does not say EAGAIN,
        waiting on ``waiters`` in between; with NOBLOCK in ``flags`` the EAGAIN is raised."""
        w: _Waiting = self.__dict__["_waiting"]
        while True:
            try:
                result = call()
            except zmq.Again:
                if flags & _NOBLOCK:
                    raise
                await self._wait(waiters)
                continue
            self._after_op(w)
            return result

    async def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:  # type: ignore[override]
        """Receive one frame (bytes); waits while there is none. ``flags`` with NOBLOCK: raise
        ``zmq.Again`` instead of waiting. Raises ``zmq.ZMQError`` as ``zmq.Socket.recv``."""
        w: _Waiting = self.__dict__["_waiting"]
        return await self._until_done(
            w.readers, flags, lambda: w.shadow_of_open().recv(flags | _NOBLOCK, copy=copy, track=track)
        )

    async def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> list[Any]:  # type: ignore[override]
        """Receive one message as its list of frames (bytes); waits while there is none."""
        w: _Waiting = self.__dict__["_waiting"]
        return await self._until_done(
            w.readers, flags, lambda: w.shadow_of_open().recv_multipart(flags | _NOBLOCK, copy=copy, track=track)
        )

    async def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        """Send one frame; waits while the socket cannot take it (``NOBLOCK``: raise
        ``zmq.Again``). Raises ``zmq.ZMQError`` as ``zmq.Socket.send`` (e.g. EHOSTUNREACH
        from a ROUTER with ``ROUTER_MANDATORY``)."""
        w: _Waiting = self.__dict__["_waiting"]
        await self._until_done(
            w.writers, flags, lambda: w.shadow_of_open().send(data, flags | _NOBLOCK, copy=copy, track=track, **kwargs)
        )

    async def send_multipart(  # type: ignore[override]
        self, msg_parts: Sequence[Any], flags: int = 0, copy: bool = True, track: bool = False, **kwargs: Any
    ) -> None:
        """Send one message of several frames, all or none; waits as ``send``."""
        w: _Waiting = self.__dict__["_waiting"]
        await self._until_done(
            w.writers,
            flags,
            lambda: w.shadow_of_open().send_multipart(msg_parts, flags | _NOBLOCK, copy=copy, track=track, **kwargs),
        )

    def send_multipart_nowait(self, msg_parts: Sequence[Any]) -> None:
        """Send one message of several frames now, without a loop (a callback's fan-out);
        raises ``zmq.Again`` when the socket cannot take it."""
        w: _Waiting = self.__dict__["_waiting"]
        w.shadow_of_open().send_multipart(msg_parts, _NOBLOCK)
        self._after_op(w)

    async def poll(self, timeout: int | None = None, flags: int = _POLLIN) -> int:  # type: ignore[override]
        """Wait up to ``timeout`` ms (None: for ever) until the socket is ready for ``flags``
        (``zmq.POLLIN`` and/or ``zmq.POLLOUT``); return the ready events of ``flags`` (0 on
        timeout)."""
        w: _Waiting = self.__dict__["_waiting"]
        flags = int(flags)
        ready = int(w.shadow_of_open().getsockopt(_EVENTS)) & flags
        if ready or timeout == 0:
            self._after_op(w)
            return ready
        loop = self._loop()
        deadline = None if timeout is None or timeout < 0 else loop.time() + timeout / 1000
        waiters = w.writers if flags & _POLLOUT else w.readers
        while True:
            wait = None if deadline is None else deadline - loop.time()
            if wait is not None and wait <= 0:
                return 0
            try:
                if wait is None:
                    await self._wait(waiters)
                else:
                    await asyncio.wait_for(self._wait(waiters), wait)
            except TimeoutError:
                return 0
            ready = int(w.shadow_of_open().getsockopt(_EVENTS)) & flags
            self._after_op(w)
            if ready:
                return ready

    def close(self, linger: int | None = None) -> None:
        """Close the socket; operations waiting on it are cancelled."""
        w: _Waiting = self.__dict__["_waiting"]
        if not self.closed:
            w.closed = True
            if w.loop is not None and not w.loop.is_closed():
                w.loop.remove_reader(self.FD)
            w.loop = None
            for fut in (*w.readers, *w.writers):
                if not fut.done():
                    try:
                        fut.cancel()
                    except RuntimeError:  # its loop is closed already
                        pass
            w.readers.clear()
            w.writers.clear()
        super().close(linger=linger)


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)


class Context(zmq.Context[Socket]):
    """A ``zmq.Context`` whose sockets are ``Socket``s (``Context.instance()``: one per process,
    a new one after a fork)."""

    _socket_class = Socket
    # a singleton slot of its own: ``instance()`` reads ``cls._instance``, which would otherwise
    # be ``zmq.Context``'s plain context once anything in the process (the synchronous RPC
    # client) made that one, and its blocking sockets would hang the loop
    _instance: Context | None = None
    _instance_pid: int | None = None
