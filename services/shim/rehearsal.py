"""A shim's first steps, rehearsed once in the template before it forks any shim.

A forked shim shares the template's pages copy-on-write, and CPython writes to an object
whenever it uses it: its reference count, and the first calls of a function (its warm-up
counter, then the specialised bytecode the interpreter writes into it, PEP 659). Code the
template never ran is written to by every shim, and each page written is copied: a shim
took ~1500 page faults from its fork to a running task. Caches filled on first use (the
event loop's, pyzmq's and libzmq's set-up, OpenSSL's, pydantic's validators, logging's)
are filled in every shim too.

``rehearse(state_dir)`` runs, in the template, what every shim runs around its task's
create: an event loop with the reaper's SIGCHLD handler and one spawned child, the shim's
launch file read through ``ShimLaunch``, an RPC server and a client on a throw-away
endpoint (an abstract unix socket), an ``EventPublisher`` with its outbox delivering to a
stand-in for the events service (a few rounds, so that the interpreter specialises their
bytecode here), the atomic writes of the bundle's files and the endpoint's digest.
Afterwards the template holds no thread, event loop, socket or zmq context (its context is
destroyed, closing any socket a failed step left open), so forking stays safe, and nothing
of the rehearsal is left on disk. A rehearsal that fails (an odd host) is logged at debug
level and skipped: it only makes shims cheaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common.api.events import PublishBatchReply, PublishBatchRequest, PublishReply, PublishRequest
from common.api.shim import ShimLaunch
from common.events import EventPublisher
from common.rpc import zasync
from common.rpc.aio import AsyncClient
from common.rpc.server import Context, RpcServer, rpc
from common.settings import Settings
from services.shim.reaper import Reaper
from services.shim.task import write_atomic

log = logging.getLogger(__name__)

ROUNDS = 3
"""How many times the shim's calls are made (CPython specialises code after a few runs)."""

TIMEOUT_S = 5.0
"""Bound on the whole rehearsal (a stuck one is abandoned: the template serves anyway)."""

PREFIX = ".rehearsal-"
"""Name prefix of a rehearsal's work directory in the state directory."""


class _Events:
    """Stands in for the events service: acknowledges what the rehearsal's publisher sends."""

    def __init__(self) -> None:
        self.seq = 0

    @rpc("events.publish", quiet=True)
    async def publish(self, req: PublishRequest, ctx: Context) -> PublishReply:
        self.seq += 1
        return PublishReply(seq=self.seq)

    @rpc("events.publish_batch", quiet=True)
    async def publish_batch(self, req: PublishBatchRequest, ctx: Context) -> PublishBatchReply:
        replies = []
        for _ in req.events:
            self.seq += 1
            replies.append(PublishReply(seq=self.seq))
        return PublishBatchReply(replies=replies)


async def _round(work: str, settings: Settings, reaper: Reaper, n: int) -> None:
    launch_file = Path(work, "shim.json")
    launch = ShimLaunch(
        namespace="default",
        container_id="rehearsal",
        incarnation=1,
        runtime_root=work,
        log_path=os.path.join(work, "log.json"),
        # an abstract unix socket (no path to outgrow the unix limit, however long the state
        # directory), one a round: a closed one is released by zmq's I/O thread a moment later
        events_endpoint=f"ipc://@dockyard{os.path.basename(work)}-{n}",
    )
    write_atomic(str(launch_file), launch.model_dump_json().encode())
    launch = ShimLaunch.model_validate_json(launch_file.read_text())
    server = RpcServer(launch.events_endpoint, _Events(), name="rehearsal", heartbeat_s=settings.heartbeat_s)
    await server.start()
    client = AsyncClient("events", launch.events_endpoint, namespace=launch.namespace)
    client.connect()
    publisher = EventPublisher(client, Path(work, f"outbox-{n}"))
    publisher.start()
    try:
        last = 0
        for topic in ("/tasks/create", "/tasks/start"):
            last = publisher.publish(
                topic,
                {"container_id": launch.container_id, "pid": os.getpid()},
                namespace=launch.namespace,
                event_id=f"rehearsal/{n}/{topic}",
            )
        await publisher.delivered(last, timeout_s=TIMEOUT_S)
        status, _ = await reaper.run(["true"])
        if status != 0:
            raise RuntimeError(f"true exited {status}")
        write_atomic(os.path.join(work, "address"), settings.shim_endpoint(launch.namespace, f"rehearsal-{n}").encode())
    finally:
        await publisher.close()
        await client.close()
        await server.close(grace_s=0)


async def _rehearse(work: str, settings: Settings) -> None:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())  # its SIGCHLD handler goes with the loop's close
    for n in range(ROUNDS):
        await _round(work, settings, reaper, n)


def _remove_leftovers(state_dir: str) -> None:
    """Remove the work directories of rehearsals whose template was killed in the middle."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(state_dir):
            if not entry.name.startswith(PREFIX):
                continue
            pid = entry.name[len(PREFIX) :].partition("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(entry.path, ignore_errors=True)


def rehearse(state_dir: str | os.PathLike[str], settings: Settings) -> bool:
    """Run a shim's first steps once in this process (see module docstring); True if it went
    through. Its files live in ``<state_dir>/.rehearsal-<pid>-*`` meanwhile. Leaves no
    thread, event loop, socket, zmq context or file behind either way. Refuses (False) in a
    process that has a zmq context already: the rehearsal ends by terminating its own."""
    if zasync.Context._instance is not None or asyncio._get_running_loop() is not None:
        return False
    _remove_leftovers(os.fspath(state_dir))
    work = ""
    try:
        work = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=state_dir)
        with asyncio.Runner() as runner:
            runner.run(asyncio.wait_for(_rehearse(work, settings), TIMEOUT_S))
        return True
    except Exception as exc:  # an optimisation only: the template serves without it
        log.debug("shim rehearsal skipped: %r", exc)
        return False
    finally:
        asyncio.set_event_loop(None)
        ctx: Any = zasync.Context._instance
        if ctx is not None and not ctx.closed:
            # destroy, not term: a socket a failed step left open (a bind refused: the
            # endpoint's path over the unix limit) would keep zmq_ctx_term waiting for ever
            ctx.destroy(linger=0)
        zasync.Context._instance = None
        if work:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
