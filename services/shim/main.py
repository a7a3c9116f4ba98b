"""A shim's life: become a subreaper, serve the ``shim.*`` RPCs, create the task, exit after delete.

``serve(namespace, container_id, bundle, settings, ready_fd)`` is a plain function so
it can run in a fresh interpreter (``python -m services.shim``, which daemonizes
first) or in a child forked from a pre-imported template process. It reports
readiness as JSON lines on ``ready_fd``: first ``{"serving": address}`` as soon as its
RPC server listens (while the runtime still creates the task: the caller can open its
connection meanwhile, and its first call need not wait for the handshake), then the
report, ``{"ok": true, "pid", "shim_pid", "address"}`` once the task is created (plus
``"started_at"``, ISO 8601, when ``ShimLaunch.start`` started it too), or ``{"ok": false,
"error", "exit_status"}``. Only the report is sure to come.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from common import shimwake, trace
from common.api.shim import ShimLaunch
from common.events import EventPublisher, shim_outbox
from common.rpc.aio import AsyncClient
from common.rpc.server import RpcServer
from common.settings import Settings
from services.shim import hibernate, mount
from services.shim.reaper import Reaper
from services.shim.service import SHUTDOWN_WAIT_S, CreateFailed, Shim
from services.shim.task import write_atomic

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36

TRIM_AFTER_S = 2.0
"""When the shim hands its free heap back (its task has started by then; it stays idle)."""

FAILED_REPLIES_S = 1.0
"""After a failed create: how long the calls held for the task get to send its error."""

FAILED_LINGER_MS = 1000
"""After a failed create: how long the closing socket keeps those replies (ZMQ_LINGER)."""


def _flush_replies(timeout_s: float) -> None:
    """Before the shim's ``os._exit``: let ZeroMQ's I/O thread write what the closed sockets
    still hold (a lingering server's last replies), at most ``timeout_s``. The context's term
    waits for exactly that once every socket is closed; it runs in a daemon thread so that a
    socket left open costs the timeout, not a hang."""
    from common.rpc import zasync

    term = threading.Thread(target=zasync.Context.instance().term, name="zmq-term", daemon=True)
    term.start()
    term.join(timeout_s)


def _trim_heap() -> None:
    """Once the task runs the shim mostly waits: drop garbage (the template's objects are frozen,
    so only the shim's own are visited) and ``malloc_trim(0)`` the freed C heap back to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        mount.libc().malloc_trim(0)


def set_subreaper() -> None:
    """``prctl(PR_SET_CHILD_SUBREAPER, 1)``: orphans of our children are re-parented to us."""
    if mount.libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _announce(ready_fd: int, payload: dict[str, Any]) -> None:
    if ready_fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(ready_fd, json.dumps(payload).encode() + b"\n")


def _report(ready_fd: int, payload: dict[str, Any]) -> None:
    _announce(ready_fd, payload)
    if ready_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(ready_fd)


def serve(
    namespace: str,
    container_id: str,
    bundle: str,
    settings: Settings,
    ready_fd: int = -1,
    loop: asyncio.AbstractEventLoop | None = None,
    saved: dict[str, Any] | None = None,
) -> int:
    """Run the shim of ``container_id`` on ``bundle`` until its task is deleted; return an exit code.

    ``loop``: an event loop made beforehand in this process (a spare's), else a new one.
    ``saved``: this process slept as its idle monitor and takes its task back
    (``services.shim.hibernate``) instead of creating one.
    """
    set_subreaper()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    if saved is None:
        write_atomic(os.path.join(bundle, "shim.pid"), f"{os.getpid()}\n".encode())
    try:
        if loop is not None:
            asyncio.set_event_loop(loop)
        with asyncio.Runner(loop_factory=None if loop is None else lambda: loop) as runner:
            return runner.run(_serve(namespace, container_id, bundle, settings, ready_fd, saved))
    except BaseException as exc:
        log.exception("shim failed")
        _report(ready_fd, {"ok": False, "error": f"shim failed: {exc}", "exit_status": 128})
        return 1


async def _serve(
    namespace: str, container_id: str, bundle: str, settings: Settings, ready_fd: int, saved: dict[str, Any] | None
) -> int:
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    launch = ShimLaunch.model_validate_json(Path(bundle, "shim.json").read_text())
    events = AsyncClient("events", launch.events_endpoint or settings.control_endpoint("events"), namespace=namespace)
    events.connect()  # the handshake while the runtime runs: the task's first events go out at once
    publisher = EventPublisher(events, shim_outbox(bundle, launch.incarnation))
    publisher.start()
    shim = Shim(launch, bundle, reaper, publisher)
    endpoint = settings.shim_endpoint(namespace, container_id)
    shim.console_base = endpoint[len("ipc://") :]
    server = RpcServer(endpoint, shim, name="shim", heartbeat_s=settings.heartbeat_s)
    if saved is not None:
        # back from the idle monitor: the ROUTER serves on the socket it kept, with the
        # connections waiting there; the wake socket is stale now
        server.listen_fd = int(saved["listen_fd"])
        os.set_inheritable(server.listen_fd, False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shimwake.wake_path(endpoint))
        creating = asyncio.ensure_future(shim.restore(saved))
    else:
        # the runtime's create (tens of ms, in other processes) starts first: the rootfs is mounted
        # and the runtime spawned before the task yields, and the RPC server binds meanwhile; the
        # only call served before the report is an attach, which waits for the create
        creating = asyncio.ensure_future(shim.create())
        shim.creating = creating
        await asyncio.sleep(0)
    try:
        await server.start()
    except BaseException:
        await shim.abandon(creating)
        raise
    trace.mark("serving")
    address = Path(bundle, "address")
    if saved is None:
        write_atomic(str(address), endpoint.encode())
        _announce(ready_fd, {"serving": endpoint})
    code = 0
    log.debug("shim serving after %.1f ms", (time.perf_counter() - t0) * 1000)
    try:
        state = await creating
    except CreateFailed as exc:
        _report(
            ready_fd,
            {"ok": False, "error": exc.message, "exit_status": exc.exit_status, "user_error": exc.user_error},
        )
        code = 1
    except Exception as exc:
        log.exception("create failed" if saved is None else "cannot take the task back after sleeping")
        _report(ready_fd, {"ok": False, "error": f"shim: {exc}", "exit_status": 128})
        code = 1
    else:
        report: dict[str, Any] = {"ok": True, "pid": state.pid, "shim_pid": os.getpid(), "address": endpoint}
        if launch.start and state.started_at is not None:
            report["started_at"] = state.started_at.isoformat()
        _report(ready_fd, report)
        trace.mark("reported")
        loop.call_later(TRIM_AFTER_S, _trim_heap)

        async def close_clients() -> None:
            await publisher.close()
            await events.close()

        sleeper = hibernate.sleeper(shim, server, settings.shim_idle_s, namespace, container_id, close_clients, saved)
        sleeping = asyncio.ensure_future(sleeper.run()) if sleeper is not None else None
        deleted = asyncio.ensure_future(shim.deleted.wait())
        await asyncio.wait([deleted, asyncio.ensure_future(shim.done.wait())], return_when=asyncio.FIRST_COMPLETED)
        if sleeping is not None:
            sleeping.cancel()
        if not shim.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shim.done.wait(), SHUTDOWN_WAIT_S)
        deleted.cancel()
    if code != 0:
        # the calls held for the task (an attach, a wait) end with the create's error: they
        # send it before the server closes them, and the closing socket keeps it until it is
        # out (the shim exits with os._exit, after the clients below close: no context term)
        pending = server.pending_replies()
        if pending:
            await asyncio.wait(pending, timeout=FAILED_REPLIES_S)
    await publisher.flush(1.0)
    await server.close(grace_s=2.0, linger_ms=FAILED_LINGER_MS if code != 0 else 0)
    await publisher.close()
    await events.close()
    if code != 0:  # a deleted task's shim removed it already (a new shim may own the bundle now)
        with contextlib.suppress(FileNotFoundError):
            address.unlink()
        _flush_replies(FAILED_LINGER_MS / 1000)
    trace.mark_cpu("exiting")
    return code
