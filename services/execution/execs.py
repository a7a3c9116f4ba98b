"""``exec``: more processes in a running container, through its shim (``runc exec``).

``execution.exec`` does both steps in one call (what ``dockyard exec`` uses).
Like Docker, an exec is created (``execution.exec_create`` -> id; the shim publishes
``/tasks/exec-added``), then started (``execution.exec_start``, a stream: first
``{"attached": true, "tty"}``, then output frames ``{s, d}``, and last
``{"exit_code": n}``; the shim publishes ``/tasks/exec-started`` and ``/tasks/exit``
with the exec id). ``exec_inspect`` gives Docker's ExecInspect fields. Exec records live
in memory (as in dockerd): they vanish with the container or a restart of the service.
The process runs with the container's environment (Docker's: ``PATH``, ``HOSTNAME`` and,
with the exec's own terminal, ``TERM=xterm``, then the container's ``Config.Env``, then
the request's), working directory, capabilities and user unless the request overrides them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from common import errors, ids
from common.api.execution import (
    ExecCreateReply,
    ExecCreateRequest,
    ExecIdRequest,
    ExecInfo,
    ExecResizeRequest,
    ExecRunRequest,
    ExecStartRequest,
)
from common.rpc.server import Context, rpc
from services.execution import spec
from services.execution.detach import DetachScanner

log = logging.getLogger(__name__)


@dataclass
class ExecRecord:
    id: str
    namespace: str
    container_id: str
    cmd: list[str]
    tty: bool
    stdin: bool
    user: str
    detach_keys: str
    pid: int = 0
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ExecService:
    """The ``execution.exec_*`` RPC methods; ``owner`` is the ``ExecutionService``."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.execs: dict[str, ExecRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def for_container(self, namespace: str, container_id: str) -> list[str]:
        return [e.id for e in self.execs.values() if (e.namespace, e.container_id) == (namespace, container_id)]

    def forget_container(self, namespace: str, container_id: str) -> None:
        for exec_id in self.for_container(namespace, container_id):
            self.execs.pop(exec_id, None)

    def _get(self, namespace: str, exec_id: str) -> ExecRecord:
        rec = self.execs.get(exec_id)
        if rec is None or rec.namespace != namespace:
            raise errors.NotFound(f"exec '{exec_id}' not found", {"kind": "exec"})
        return rec

    @rpc("execution.exec_create")
    async def exec_create(self, req: ExecCreateRequest, ctx: Context) -> ExecCreateReply:
        """Register an exec in a running container; Conflict if it does not run."""
        live, ex, body = self._prepare(req, ctx)
        try:
            await live.client.call("shim.exec", body, timeout_s=30)
        except errors.InvalidArgument:
            if not body.pop("after", ""):
                raise
            # a shim of an older version (it outlived an upgrade) refuses the field: no order then
            await live.client.call("shim.exec", body, timeout_s=30)
        self.execs[ex.id] = ex
        return ExecCreateReply(id=ex.id)

    def _prepare(self, req: ExecCreateRequest, ctx: Context) -> tuple[Any, ExecRecord, dict[str, Any]]:
        """The container's ``Live``, a new ``ExecRecord`` and the shim's ``ExecRequest`` body.

        The body's ``after`` is this service's last action event about the container, if
        lately (``_follows``): the exec's events follow a ``restart`` or ``attach`` made just
        before, also when they wait in two outboxes while the events service is down.
        Conflict when the container does not run; InvalidArgument for a relative working dir.
        """
        rec = self.owner._find(ctx.namespace, req.id)
        live = self.owner.tasks.get(rec.namespace, rec.id)
        if live is None or live.status != "running":
            what = "paused" if live is not None and live.status == "paused" else "not running"
            raise errors.Conflict(f"container '{rec.name}' is {what}", {"id": rec.id})
        process = rec.spec["process"]
        caps = process["capabilities"]["bounding"]
        if req.privileged:
            caps = spec.capabilities([], [], True, self.owner._available_caps)
        body = {
            "args": list(req.cmd),
            "env": spec.process_env(
                [*_config_env(rec), *req.env], hostname=rec.hostname or str(rec.spec.get("hostname") or ""), tty=req.tty
            ),
            "cwd": req.working_dir or process.get("cwd") or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": bool(process.get("noNewPrivileges")),
        }
        if req.working_dir and not req.working_dir.startswith("/"):
            raise errors.InvalidArgument(f"the working directory '{req.working_dir}' is invalid: not absolute")
        exec_id = ids.new_id()
        height, width = req.console_size or (0, 0)
        shim_req = {
            "exec_id": exec_id,
            "process": body,
            "user": req.user,
            "tty": req.tty,
            "stdin": req.stdin,
            "console_width": width,
            "console_height": height,
        }
        after = self.owner._follows((rec.namespace, rec.id))
        if after:
            shim_req["after"] = after
        ex = ExecRecord(exec_id, rec.namespace, rec.id, list(req.cmd), req.tty, req.stdin, req.user, req.detach_keys)
        return live, ex, shim_req

    @rpc("execution.exec", stream=True)
    async def exec(self, req: ExecRunRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``docker exec`` in one call: ``exec_create``, then ``{"id"}``, then ``exec_start``'s frames.

        Errors before ``{"id"}`` are ``exec_create``'s (Conflict: not running), after it
        ``exec_start``'s (InvalidArgument with ``details.exit_status`` 126, as dockerd's).
        """
        self.owner.primer.prime()  # runc exec moves the process ~7 ms later (common.cgroupmove)
        if req.detach:
            created = await self.exec_create(req.create_request(), ctx)
            yield {"id": created.id}
            start = ExecStartRequest(exec_id=created.id, detach=True, stdin=req.stdin)
            async for frame in self.exec_start(start, ctx):
                yield frame
            return
        # one shim call for the whole exec (shim.exec_run): register, attach, start, wait, delete
        live, ex, body = self._prepare(req.create_request(), ctx)
        client = live.client
        call = await client.start("shim.exec_run", body, timeout_s=None)
        ex.started = True
        self.execs[ex.id] = ex
        relay: asyncio.Task[None] | None = None
        detached = asyncio.Event()
        finished = False
        try:
            try:
                try:
                    await call.next_frame()  # {"registered": true}
                except errors.InvalidArgument:
                    if not body.pop("after", ""):
                        raise
                    # a shim of an older version refuses the field (see exec_create): no order then
                    call = await client.start("shim.exec_run", body, timeout_s=None)
                    await call.next_frame()
            except errors.DockyardError:
                self.execs.pop(ex.id, None)
                finished = True
                raise
            yield {"id": ex.id}
            try:
                _more, first = await call.next_frame()
            except errors.DockyardError as exc:
                ex.exit_code = int((exc.details or {}).get("exit_status") or 126)
                finished = True  # the shim deleted the exec
                await _raise_for_exec_start(exc, client, ex)
            ex.pid, ex.running = int(first.get("pid") or 0), True
            yield {"attached": True, "tty": ex.tty, "pid": ex.pid}
            if req.stdin:
                keys = ex.detach_keys if ex.tty else ""
                relay = asyncio.create_task(_relay(ctx, call, DetachScanner(keys) if ex.tty else None, detached))
            async for frame in _until(call, detached):
                if "exit_status" in frame:
                    ex.exit_code = int(frame["exit_status"])
                    finished = True
                    continue
                yield frame
            if detached.is_set():
                yield {"detached": True}
                return
            if ex.exit_code is None:  # the stream ended without the exit (the shim went away)
                ex.exit_code = 255
            yield {"exit_code": ex.exit_code}
        finally:
            if relay is not None:
                _drop(relay)
            if not call.done:
                await call.cancel()
            if finished:
                ex.running = False
                ex.done.set()
            elif not ex.done.is_set() and ex.running:
                self._spawn(self._watch(ex, client))  # detached, or the client went away: wait and delete

    @rpc("execution.exec_start", stream=True)
    async def exec_start(self, req: ExecStartRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Start an exec (see module docstring); ``detach`` returns after the start."""
        ex = self._get(ctx.namespace, req.exec_id)
        if ex.started:
            raise errors.Conflict(f"exec '{ex.id}' has already been started")
        live = self.owner.tasks.get(ex.namespace, ex.container_id)
        if live is None or live.status != "running":
            raise errors.Conflict(f"container '{ex.container_id[:12]}' is not running")
        ex.started = True
        self.owner.primer.prime()
        client = live.client
        if req.detach:
            await self._start_process(ex, client)
            yield {"attached": False, "pid": ex.pid}
            return
        stdin = req.stdin and ex.stdin
        att = await client.start(
            "shim.attach", {"exec_id": ex.id, "stdin": stdin, "stdout": True, "stderr": True}, timeout_s=None
        )
        relay: asyncio.Task[None] | None = None
        detached = asyncio.Event()
        try:
            await att.next_frame()
            await self._start_process(ex, client)
            yield {"attached": True, "tty": ex.tty, "pid": ex.pid}
            if stdin:
                keys = ex.detach_keys if ex.tty else ""
                relay = asyncio.create_task(_relay(ctx, att, DetachScanner(keys) if ex.tty else None, detached))
            async for frame in _until(att, detached):
                yield frame
            if detached.is_set():
                yield {"detached": True}
                return
            await ex.done.wait()
            yield {"exit_code": ex.exit_code if ex.exit_code is not None else 255}
        finally:
            if relay is not None:
                _drop(relay)
            if not att.done:
                await att.cancel()

    async def _start_process(self, ex: ExecRecord, client: Any) -> None:
        """``shim.start`` the exec and watch it; a failed start records its exit and re-raises."""
        try:
            reply = await client.call("shim.start", {"exec_id": ex.id}, timeout_s=60)
        except errors.DockyardError as exc:
            ex.exit_code = int((exc.details or {}).get("exit_status") or 126)
            ex.done.set()
            self._spawn(self._cleanup(ex, client))
            await _raise_for_exec_start(exc, client, ex)
        ex.pid, ex.running = int(reply["pid"]), True
        self._spawn(self._watch(ex, client))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, ex: ExecRecord, client: Any) -> None:
        try:
            reply = await client.call("shim.wait", {"exec_id": ex.id}, timeout_s=None)
            ex.exit_code = int(reply.get("exit_status", 255))
        except errors.DockyardError as exc:
            log.info("exec %s of %s: %s", ex.id[:12], ex.container_id[:12], exc)
            if ex.exit_code is None:
                ex.exit_code = 255
        ex.running = False
        ex.done.set()
        await self._cleanup(ex, client)

    async def _cleanup(self, ex: ExecRecord, client: Any) -> None:
        with contextlib.suppress(errors.DockyardError):
            await client.call("shim.delete", {"exec_id": ex.id}, timeout_s=10)

    @rpc("execution.exec_inspect", quiet=True)
    async def exec_inspect(self, req: ExecIdRequest, ctx: Context) -> ExecInfo:
        """Docker's ExecInspect: running, exit code (None while running), pid."""
        ex = self._get(ctx.namespace, req.exec_id)
        return ExecInfo(
            id=ex.id,
            container_id=ex.container_id,
            running=ex.running,
            exit_code=ex.exit_code,
            pid=ex.pid,
            cmd=ex.cmd,
            tty=ex.tty,
            user=ex.user,
            open_stdin=ex.stdin,
        )

    @rpc("execution.exec_resize")
    async def exec_resize(self, req: ExecResizeRequest, ctx: Context) -> dict[str, Any]:
        """Resize the exec's terminal."""
        ex = self._get(ctx.namespace, req.exec_id)
        live = self.owner.tasks.get(ex.namespace, ex.container_id)
        if live is None:
            raise errors.Conflict(f"container '{ex.container_id[:12]}' is not running")
        await live.client.call(
            "shim.resize", {"exec_id": ex.id, "width": req.width, "height": req.height}, timeout_s=10
        )
        return {}


def _config_env(rec: Any) -> list[str]:
    """The container's ``Config.Env`` an exec starts from (Docker's exec: the daemon's defaults
    for the exec's own terminal, then ``Config.Env``). A container created before it was
    recorded falls back to its init process's environment."""
    if "env" in rec.extra:
        return list(rec.extra["env"])
    return list(rec.spec["process"].get("env") or [])


async def _relay(ctx: Context, call: Any, scanner: DetachScanner | None, detached: asyncio.Event) -> None:
    """Client stdin -> the process; EOF closes it; the detach keys end the attach instead."""
    while True:
        item = await ctx.recv()
        if item is None:
            await call.send_eof()
            return
        data = bytes(item)
        if scanner is not None:
            data, hit = scanner.feed(data)
            if data:
                await call.send(data)
            if hit:
                detached.set()
                return
            continue
        await call.send(data)


async def _until(call: Any, stop: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
    """Frames of ``call`` until it ends or ``stop`` is set."""
    it = call.__aiter__()
    stopper = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[Any] | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            await asyncio.wait([nxt, stopper], return_when=asyncio.FIRST_COMPLETED)
            if nxt.done():
                try:
                    yield nxt.result()
                except StopAsyncIteration:
                    return
                continue
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
            return
    finally:
        stopper.cancel()
        if nxt is not None and not nxt.done():  # closed while waiting (the client went away)
            nxt.cancel()
            nxt.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    """Done callback of a task nobody awaits any more: retrieve its outcome (no 'never retrieved')."""
    if not task.cancelled():
        task.exception()


def _drop(task: asyncio.Task[Any]) -> None:
    """Cancel a helper task of a call that ended; whatever it ended with is not an error here."""
    task.cancel()
    task.add_done_callback(_consume)


async def _raise_for_exec_start(exc: errors.DockyardError, client: Any, ex: ExecRecord) -> NoReturn:
    """Re-raise a failed exec start; Conflict when the container's init exited meanwhile.

    ``runc exec`` into a container whose init is exiting fails with a setns error; the user
    asked to exec into a container that is no longer running, which is Docker's 409.
    """
    try:
        state = await client.call("shim.state", {}, timeout_s=5)
        running = state.get("status") == "running"
    except errors.DockyardError:
        running = False
    if not running:
        raise errors.Conflict(f"container '{ex.container_id[:12]}' is not running") from None
    raise exc
