"""The start-up and shutdown sequence every service process follows.

``run(name, setup)`` is what a service's ``__main__`` calls:

1. read ``Settings``, configure logging, create ``<state>`` and ``<root>/<name>``;
2. take an exclusive ``flock`` on ``<state>/<name>.lock`` (a second copy of the same
   service exits with a one-line error instead of sharing its stores);
3. ``await setup(host)``: the service opens its stores and clients and returns the
   objects whose ``@rpc`` methods it serves; it may start background tasks with
   ``host.spawn`` and register cleanups with ``host.on_close``;
4. bind the ROUTER, write ``<state>/<name>.pid``, serve;
5. on SIGTERM or SIGINT: stop taking requests, let running calls finish (cancel
   streams), run cleanups in reverse order, exit 0.

Every service also answers ``<name>.health`` with ``{service, pid, started_at}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from common import codec, logsetup, statefs, trace
from common.rpc.server import RpcServer
from common.settings import Settings

log = logging.getLogger(__name__)


class ServiceHost:
    """What ``setup`` gets: the settings and hooks for tasks and cleanups."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.data_dir = settings.service_dir(name)
        self._tasks: list[asyncio.Task[Any]] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self.stopping = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background for the life of the service.

        A background task that dies with an exception is logged and stops the service
        (the supervisor restarts it) rather than leaving it half-working.
        """
        task = asyncio.create_task(coro, name=name)

        def _done(t: asyncio.Task[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None and not self.stopping.is_set():
                log.error("background task %s died: %r; stopping the service", name, exc, exc_info=exc)
                self.stopping.set()

        task.add_done_callback(_done)
        self._tasks.append(task)
        return task

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Register an async cleanup, run in reverse registration order at shutdown."""
        self._cleanups.append(fn)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for fn in reversed(self._cleanups):
            try:
                await fn()
            except Exception:
                log.exception("cleanup failed")


class _Health:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started_at = codec.utcnow()

    async def health(self, _req: Any, _ctx: Any) -> dict[str, Any]:
        """``<service>.health`` -> ``{service, pid, started_at}``."""
        return {"service": self.name, "pid": os.getpid(), "started_at": self.started_at}


def _lock(settings: Settings, name: str) -> int:
    path = settings.state / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        sys.stderr.write(f"error: another {name} service already runs for state {settings.state}\n")
        raise SystemExit(1) from None
    return fd


async def _main(name: str, setup: Callable[[ServiceHost], Awaitable[list[object]]], settings: Settings) -> None:
    host = ServiceHost(name, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, host.stopping.set)
    try:
        services = await setup(host)
        server = RpcServer(settings.control_endpoint(name), *services, name=name, heartbeat_s=settings.heartbeat_s)
        server.register(f"{name}.health", _Health(name).health, quiet=True)
        await server.start()
    except BaseException:
        await host.close()
        raise
    pid_path = settings.state / f"{name}.pid"
    pid_path.write_text(f"{os.getpid()}\n")
    log.info("%s service ready at %s (pid %d)", name, server.endpoint, os.getpid())
    await host.stopping.wait()
    log.info("%s service stopping", name)
    await server.close()
    await host.close()
    with contextlib.suppress(FileNotFoundError):
        if pid_path.read_text().strip() == str(os.getpid()):
            pid_path.unlink()
    log.info("%s service stopped", name)


def run(name: str, setup: Callable[[ServiceHost], Awaitable[list[object]]]) -> None:
    """Run service ``name`` until SIGTERM/SIGINT, then exit 0 (see the module docstring)."""
    trace.set_process(name)
    settings = Settings()
    logsetup.configure(name, settings.log_level)
    if name == "supervisor":  # started by systemd (deploy/systemd), not by `dockyard up`
        statefs.ensure_tmpfs(str(settings.state), on=settings.state_tmpfs)
    settings.state.mkdir(parents=True, exist_ok=True)
    settings.service_dir(name).mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(settings, name)
    try:
        trace.profiled(asyncio.run, _main(name, setup, settings))
    except SystemExit:
        raise
    except Exception as exc:
        log.exception("%s service failed", name)
        sys.stderr.write(f"error: {name} service failed: {exc}\n")
        raise SystemExit(1) from None
    finally:
        os.close(lock_fd)
