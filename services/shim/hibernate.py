"""An idle shim sleeps as a small native monitor, and wakes as itself again.

A shim is a CPython process: once its task runs, ~6 MB of its pages are its own (a
containerd shim costs 3 MB). When the task has needed nothing of it for
``Settings.shim_idle_s`` — no call in flight but the execution service's ``shim.wait``,
no exec, no client attached, every event handed to the journal (output does not count) — the shim
``execve``s ``dockyard-shim-idle`` (``services/shim/idle.c``, built by ``deploy/setup.sh``):
the same process, so still the container's parent and subreaper, holding the same pipes,
terminal and OOM eventfd, at ~0.2 MB. Before that it

1. binds the wake socket (``common.shimwake``; it takes connections from now on),
2. answers ``shim.wait`` with ``hibernated`` (the execution service then waits on the
   wake socket, without waking it),
3. puts a plain listening socket in place of its ROUTER's socket file (``rename``, so
   a client finds something listening at every moment) and closes the ROUTER, flushing
   its replies,
4. writes what it holds to ``<bundle>/hibernation.json`` (``Shim.hand_over``).

The monitor sleeps in ``poll(2)``, writing what the container prints to its json-file log
as the shim would (the unterminated line of each stream handed over in ``<bundle>/partial.N``
both ways), until the task's init exits, an OOM event arrives, output comes that it must
leave to the shim (not UTF-8, a log due for rotation), or a client sends a byte on the wake
socket; it never reaps the init. Then it
execs ``python -m services.shim.resume <namespace> <id> <bundle>``: a new interpreter
(~0.4 s of imports, the price of a wake) reads the file back (``Shim.restore``), reaps
the init if it exited, and its ROUTER adopts the listening socket (``ZMQ_USE_FD``) with
the connections that wait on it. Requests that reach the shim between its last look and
the ROUTER's close are lost unread; ``common.shimwake.ShimClient`` sends them again.

Without the monitor binary (no C compiler at install) or with ``shim_idle_s = 0``, a shim
never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any, NoReturn

from common import shimwake
from common.rpc import zasync
from common.rpc.server import RpcServer
from services.shim import idle
from services.shim.service import Shim
from services.shim.task import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "hibernation.json"
MAX_BACKOFF = 8
"""A shim woken again and again waits at most this many times ``shim_idle_s`` before it sleeps."""
_WAITS = frozenset({"shim.wait"})


def _listen_aside(path: str, backlog: int) -> tuple[socket.socket, str]:
    """A unix socket listening beside ``path`` (at ``<path>.<pid>``, which is returned too), to
    be renamed over ``path`` when it is to take connections there."""
    aside = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(aside)
        sock.listen(backlog)
    except BaseException:
        _discard(sock, aside)
        raise
    return sock, aside


def _discard(sock: socket.socket, path: str) -> None:
    sock.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Sleeper:
    """Watches a serving shim and puts it to sleep once idle (module docstring)."""

    def __init__(self, shim: Shim, server: RpcServer, idle_s: float, argv: list[str], close: Any, monitor: str) -> None:
        self.shim = shim
        self.server = server
        self.idle_s = idle_s
        self.argv = argv
        """What the monitor execs to wake: ``python -m services.shim.resume ns id bundle``."""
        self.close = close
        """``async close()``: the shim's other zmq users (publisher, events client)."""
        self.monitor = monitor
        self.since = time.monotonic()

    async def run(self) -> None:
        """Sleep as soon as the shim is idle for ``idle_s``; returns only if the task ends first."""
        while True:
            now = time.monotonic()
            if not self.shim.can_sleep():
                await asyncio.sleep(self.idle_s / 2)
                continue
            last = max(self.server.last_activity, self.since)
            if now - last < self.idle_s:
                await asyncio.sleep(last + self.idle_s - now + 0.01)
                continue
            if self.server.busy(_WAITS):
                self.since = now
                continue
            with contextlib.suppress(_Busy):
                await self._sleep()
            self.since = time.monotonic()  # it did not: something came in meanwhile

    def _ready(self) -> bool:
        return self.shim.can_sleep() and not self.server.busy(_WAITS)

    async def _sleep(self) -> None:
        shim = self.shim
        endpoint = self.server.endpoint
        path = endpoint.removeprefix("ipc://")
        wake, wake_aside = _listen_aside(shimwake.wake_path(endpoint), 64)
        os.replace(wake_aside, shimwake.wake_path(endpoint))  # clients park and wake from now on
        try:
            listener, aside = _listen_aside(path, 128)
        except BaseException:
            _discard(wake, shimwake.wake_path(endpoint))
            raise
        try:
            await asyncio.sleep(0)  # a request already in the socket gets taken
            if not self._ready():
                raise _Busy
        except BaseException:  # busy, or the task ended meanwhile (this task is cancelled)
            _discard(wake, shimwake.wake_path(endpoint))
            _discard(listener, aside)
            raise
        # from here on nothing is taken: the last look and the stop are one step of the loop
        # (a request that comes later is lost unread; ShimClient sends it again)
        self.server.abandon()
        shim.hibernating.set()
        os.replace(aside, path)  # what connects from now on waits in the listener's backlog
        replies = self.server.pending_replies()
        if replies:
            await asyncio.wait(replies, timeout=1.0)
        self.server.close_for_handover(linger_ms=1000)
        await self.close()
        zasync.Context.instance().destroy(linger=0)  # waits for the ROUTER's replies
        saved = shim.hand_over()
        saved.update(listen_fd=listener.fileno(), idle_s=self.idle_s, slept_at=time.time())
        os.set_inheritable(listener.fileno(), True)
        os.set_inheritable(wake.fileno(), True)
        try:
            write_atomic(os.path.join(shim.bundle, STATE_FILE), json.dumps(saved).encode())
        except OSError as exc:
            log.critical("cannot save the shim's state to sleep (%s): exiting", exc)
            os._exit(1)
        self._exec(saved, wake.fileno())

    def _exec(self, saved: dict[str, Any], wake_fd: int) -> NoReturn:
        argv = [self.monitor, "--pid", str(saved["pid"]), "--park", str(wake_fd)]
        fds = saved["fds"]
        outs = [f"{fds[k]}:{1 if k == 'pty' else k}" for k in ("1", "2", "pty") if k in fds]
        if outs:
            launch = self.shim.launch
            for out in outs:
                argv += ["--out", out]
            argv += ["--log", launch.log_path, "--log-max-size", str(launch.log_max_size)]
            argv += ["--partial", os.path.join(self.shim.bundle, "partial")]
        if saved["oom_fd"] >= 0:
            argv += ["--watch", str(saved["oom_fd"])]
        argv += ["--", *self.argv]
        log.info("idle for %.0f s: sleeping as %s", self.idle_s, os.path.basename(self.monitor))
        logging.shutdown()
        sys.stderr.flush()
        try:
            os.execv(self.monitor, argv)
        except OSError as exc:  # then wake at once: the state file is written, the ROUTER closed
            sys.stderr.write(f"cannot exec {self.monitor}: {exc}; staying awake\n")
            sys.stderr.flush()
            os.execv(self.argv[0], self.argv)
        raise AssertionError("unreachable")


class _Busy(Exception):
    """Something came in while the shim got ready to sleep."""


def sleeper(
    shim: Shim,
    server: RpcServer,
    idle_s: float,
    namespace: str,
    container_id: str,
    close: Any,
    saved: dict[str, Any] | None = None,
) -> Sleeper | None:
    """A ``Sleeper`` for this shim, or None when it must stay awake (``idle_s`` 0, no monitor).

    ``saved``: what the shim saved when it last went to sleep (it just woke). A shim woken
    before it slept as long as it had waited to sleep waits twice as long the next time (up
    to ``MAX_BACKOFF`` times ``idle_s``): a container exec'd into every 40 s keeps an awake
    shim instead of paying a wake every time."""
    monitor = idle.monitor_path()
    if idle_s <= 0 or monitor is None:
        return None
    idle_s = next_idle_s(idle_s, saved, time.time())
    argv = [sys.executable, "-m", "services.shim.resume", namespace, container_id, shim.bundle]
    return Sleeper(shim, server, idle_s, argv, close, monitor)


def next_idle_s(idle_s: float, saved: dict[str, Any] | None, now: float) -> float:
    """How long (s) a shim waits idle before it sleeps: ``idle_s``, or twice what it waited
    last time when it was woken sooner than that after it slept (``sleeper``); ``now`` and
    ``saved["slept_at"]`` are ``time.time()`` values."""
    if saved is None:
        return idle_s
    waited = float(saved.get("idle_s") or idle_s)
    slept = now - float(saved.get("slept_at") or 0)
    return min(waited * 2, idle_s * MAX_BACKOFF) if slept < waited else idle_s


def load_state(bundle: str) -> dict[str, Any]:
    """What the shim saved before it slept (``Sleeper``); the file is removed. Raises
    ``OSError`` / ``ValueError`` when it is missing or unreadable."""
    path = os.path.join(bundle, STATE_FILE)
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    os.unlink(path)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a JSON object")
    return saved
