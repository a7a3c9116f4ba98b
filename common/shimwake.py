"""Waking a shim that sleeps as its idle monitor (``services.shim.hibernate``).

A shim with nothing to do for ``Settings.shim_idle_s`` becomes a small native monitor
(``services/shim/idle.c``) until its task exits, prints, or somebody needs it. Its wake
socket is the unix socket ``<endpoint path>.w`` (``wake_path``), which exists only while it
sleeps or is about to:

- ``wake``: connect, send one byte, wait for the end of the connection (the monitor
  closes it when it execs the shim back, ~0.4 s for the interpreter and its imports).
- ``wait_awake``: connect and send nothing: the connection ends at the next wake,
  whatever its cause (the task's exit, its output, another client's ``wake``).

``ShimClient`` is the RPC client of a shim that wakes it before each call, so a caller
never needs to know whether the shim sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from common import errors
from common.rpc.aio import AsyncClient

WAKE_TIMEOUT_S = 30.0
"""How long ``wake`` waits for a sleeping shim to exec back (an interpreter's start, under load)."""


def wake_path(endpoint: str) -> str:
    """The wake socket's path of the shim at ``endpoint`` (``ipc://<path>``)."""
    return endpoint.removeprefix("ipc://") + ".w"


async def _connect(endpoint: str) -> socket.socket | None:
    path = wake_path(endpoint)
    if not os.path.exists(path):  # the usual case, before every call to an awake shim: one stat
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except OSError:  # no such file, or nobody listens there: the shim is awake (or gone)
        sock.close()
        return None
    return sock


async def _until_closed(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while await loop.sock_recv(sock, 64):
            pass


async def wake(endpoint: str, timeout_s: float = WAKE_TIMEOUT_S) -> bool:
    """Wake the shim at ``endpoint`` if it sleeps; True if it slept (it is awake on return),
    False if it was awake or is gone. Raises ``errors.Unavailable`` if it did not come back
    within ``timeout_s``."""
    sock = await _connect(endpoint)
    if sock is None:
        return False
    try:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(sock, b"w")
        try:
            await asyncio.wait_for(_until_closed(sock), timeout_s)
        except TimeoutError:
            raise errors.Unavailable(f"shim at {endpoint} did not wake within {timeout_s:g} s") from None
        return True
    finally:
        sock.close()


async def wait_awake(endpoint: str) -> bool:
    """Wait until the shim at ``endpoint`` wakes, without waking it; False at once if it is
    awake (or gone), True once it woke."""
    sock = await _connect(endpoint)
    if sock is None:
        return False
    try:
        await _until_closed(sock)
        return True
    finally:
        sock.close()


class ShimClient(AsyncClient):
    """An ``AsyncClient`` of a shim that wakes it (``wake``) before each call.

    While the shim sleeps or wakes (its wake socket's file is there: from before it goes to
    sleep until its new interpreter serves), a call waits up to ``WAKE_TIMEOUT_S`` for the
    connection instead of ``connect_timeout_s``: many shims woken at once on a small host
    take seconds to import. The client watches its connection (``watch_peer``): a request
    that reached a shim in the moment it went to sleep is lost unread, and is sent again
    once (after a wake) when nothing of its answer came. ``wake_shim=False`` (the exit watch's
    ``shim.wait``) neither wakes the shim nor sends again.
    """

    def __init__(self, endpoint: str, **kw: Any) -> None:
        kw.setdefault("watch_peer", True)
        super().__init__("shim", endpoint, **kw)

    def asleep_or_waking(self) -> bool:
        """The shim's wake socket file is there: it sleeps, is going to, or is waking (its new
        interpreter removes the file once it imported the shim and is about to serve)."""
        return os.path.exists(wake_path(self.endpoint))

    async def start(self, method: str, body: Any = None, *, wake_shim: bool = True, **kw: Any) -> Any:
        """``AsyncClient.start`` after a ``wake`` (unless ``wake_shim`` is False); raises what
        ``wake`` and ``AsyncClient.start`` raise (``errors.Unavailable``)."""
        if wake_shim:
            await wake(self.endpoint)
        if "connect_timeout_s" not in kw and self.asleep_or_waking():
            kw["connect_timeout_s"] = WAKE_TIMEOUT_S
        return await super().start(method, body, **kw)

    async def call(self, method: str, body: Any = None, *, wake_shim: bool = True, **kw: Any) -> Any:
        """``AsyncClient.call``, waking the shim first and sending again once a request lost
        unread as the shim went to sleep (see the class docstring)."""
        retried = not wake_shim
        while True:
            call = await self.start(method, body, wake_shim=wake_shim, **kw)
            try:
                return await call.result()
            except errors.Unavailable:
                if retried or call.heard or not self.asleep_or_waking():
                    raise
                retried = True
            except asyncio.CancelledError:
                await call.cancel()
                raise


async def sleeping(endpoint: str) -> bool:
    """The shim's wake socket takes connections: it sleeps, or is going to sleep (then it
    sleeps before anything it has not answered yet is answered: ``wait_awake`` on it)."""
    sock = await _connect(endpoint)
    if sock is None:
        return False
    sock.close()
    return True
