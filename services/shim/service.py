"""The shim's work: one task (a container's init process and its execs) driven through the OCI runtime.

``Shim.create()`` runs once at boot: mount the rootfs from ``<bundle>/mounts.json``,
resolve the user and working directory inside it, create the stdio pipes and run
``<runtime> create``; the task is then ``created`` and ``/tasks/create`` is published.
The ``shim.*`` RPC methods (``common.api.shim``) do the rest. The shim is the
container's subreaper: the init's exit arrives through the ``Reaper``, is recorded in
memory and in ``state.json`` at once, and is published as ``/tasks/exit`` after the
output was drained and ``/tasks/start`` was published. ``shim.delete`` tears the task
down and ends the shim.

No zmq here: ``services.shim.main`` wires this object to an ``RpcServer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal as signal_mod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from common import codec, errors, topics
from common.api.shim import (
    AttachRequest,
    ConnectReply,
    ExitReply,
    KillRequest,
    PidReply,
    ProcessRequest,
    ShimLaunch,
    TaskState,
    TaskStatus,
    event_id,
)
from common.rpc.server import Context, rpc
from services.shim import mount, rootfs
from services.shim.jsonlog import LogWriter
from services.shim.reaper import Reaper
from services.shim.runtime import Runtime, RuntimeError_, start_error_status
from services.shim.stdio import ProcessIO
from services.shim.task import Process

log = logging.getLogger(__name__)

IO_DRAIN_S = 2.0
"""How long the output may stay open after the init exited (processes that escaped the pid namespace)."""


class CreateFailed(Exception):
    """The task could not be created; ``exit_status`` is what Docker would record."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


class Publisher:
    """What the shim needs from ``common.events.EventPublisher``."""

    def publish(self, topic: str, event: dict[str, Any], *, namespace: str, event_id: str) -> None: ...


def proc_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


class Shim:
    """One task and its processes (see module docstring)."""

    def __init__(self, launch: ShimLaunch, bundle: str, reaper: Reaper, publisher: Publisher) -> None:
        self.launch = launch
        self.bundle = bundle
        self.reaper = reaper
        self.publisher = publisher
        self.id = launch.container_id
        self.runtime = Runtime(launch.runtime, launch.runtime_root, bundle, reaper)
        self.rootfs = os.path.join(bundle, "rootfs")
        self.done = asyncio.Event()
        self.init: Process | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mounted = False

    # -- helpers ---------------------------------------------------------------------------
    def _publish(self, topic: str, verb: str, event: dict[str, Any], exec_id: str = "") -> None:
        body = {"container_id": self.id, **event}
        if self.launch.container_name:
            body.setdefault("container_name", self.launch.container_name)
        if self.launch.image:
            body.setdefault("image", self.launch.image)
        try:
            self.publisher.publish(
                topic,
                body,
                namespace=self.launch.namespace,
                event_id=event_id(self.id, self.launch.incarnation, verb, exec_id),
            )
        except OSError as exc:
            log.error("cannot queue event %s: %s", topic, exc)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _process(self, exec_id: str) -> Process:
        if self.init is None:
            raise errors.FailedPrecondition("task not created")
        if exec_id:
            raise errors.NotFound(f"exec '{exec_id}' not found in container '{self.id}'")
        return self.init

    # -- create (at boot) -----------------------------------------------------------------------
    async def create(self) -> TaskState:
        """Mount, prepare and ``runtime create`` the task; raises ``CreateFailed``."""
        state_file = os.path.join(self.bundle, "state.json")
        pid_file = os.path.join(self.bundle, "init.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
        state = TaskState(
            container_id=self.id,
            incarnation=self.launch.incarnation,
            bundle=self.bundle,
            status=TaskStatus.CREATED,
            shim_pid=os.getpid(),
            shim_start_time=proc_start_time(os.getpid()),
            tty=self.launch.tty,
        )
        io: ProcessIO | None = None
        try:
            try:
                await asyncio.to_thread(self._prepare_rootfs)
            except (OSError, rootfs.RootfsError) as exc:
                raise CreateFailed(str(exc), 128) from None
            log_writer = LogWriter(
                self.launch.log_path, max_size=self.launch.log_max_size, max_files=self.launch.log_max_files
            )
            io = ProcessIO(
                log_writer, open_stdin=self.launch.open_stdin, stdin_once=self.launch.stdin_once, tty=self.launch.tty
            )
            io.make_pipes()
            try:
                await self.runtime.create(self.id, pid_file, io.child_fds)
            except RuntimeError_ as exc:
                raise CreateFailed(exc.message, start_error_status(exc.message)) from None
            finally:
                io.close_child_ends()
            with open(pid_file, encoding="utf-8") as f:
                pid = int(f.read().strip())
        except CreateFailed as exc:
            if io is not None:
                io.close()
            await self._teardown_rootfs()
            state.status = TaskStatus.DELETED
            state.exit_status = exc.exit_status
            state.exited_at = codec.utcnow()
            state.error = exc.message
            with contextlib.suppress(OSError):
                Process(state, ProcessIO(None, open_stdin=False, stdin_once=False, tty=False), state_file).persist()
            raise
        state.pid = pid
        state.created_at = codec.utcnow()
        proc = Process(state, io, state_file)
        self.init = proc
        proc.persist()
        self.reaper.watch(pid, lambda status: self._on_exit(proc, status))
        await io.start_pumps()
        self._publish(topics.TASK_CREATE, "create", {"bundle": self.bundle, "pid": pid})
        return state

    def _prepare_rootfs(self) -> None:
        """Mount the snapshot, resolve the user and the working directory (blocking)."""
        mounts_file = os.path.join(self.bundle, "mounts.json")
        with open(mounts_file, encoding="utf-8") as f:
            mounts = json.load(f)
        os.makedirs(self.rootfs, exist_ok=True)
        if mounts and not mount.is_mountpoint(self.rootfs):
            mount.mount_all(mounts, self.rootfs)
        self._mounted = bool(mounts)
        config_path = os.path.join(self.bundle, "config.json")
        with open(config_path, encoding="utf-8") as f:
            spec = json.load(f)
        process = spec["process"]
        user = rootfs.resolve_user(self.rootfs, self.launch.user, self.launch.group_add)
        process["user"] = {"uid": user.uid, "gid": user.gid}
        if user.additional_gids:
            process["user"]["additionalGids"] = user.additional_gids
        env = process.setdefault("env", [])
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={user.home}")
        cwd = process.get("cwd") or "/"
        if self.launch.create_workdir and cwd != "/":
            rootfs.make_workdir(self.rootfs, cwd, user.uid, user.gid)
        tmp = config_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        os.replace(tmp, config_path)

    async def _teardown_rootfs(self) -> None:
        if not self._mounted:
            return
        try:
            await asyncio.to_thread(mount.unmount, self.rootfs, detach=True)
            self._mounted = False
        except OSError as exc:
            log.error("cannot unmount the rootfs: %s", exc)

    # -- exits --------------------------------------------------------------------------------------
    def _on_exit(self, proc: Process, status: int) -> None:
        proc.record_exit(status)
        self._spawn(self._finish_exit(proc), f"exit-{proc.state.exec_id or 'init'}")

    async def _finish_exit(self, proc: Process) -> None:
        await proc.io.wait_output_closed(IO_DRAIN_S)
        await proc.start_settled.wait()
        state = proc.state
        self._publish(
            topics.TASK_EXIT,
            "exit",
            {
                "id": state.exec_id or self.id,
                "pid": state.pid,
                "exit_status": state.exit_status,
                "exited_at": state.exited_at,
            },
            state.exec_id,
        )
        proc.exited.set()

    # -- RPC ------------------------------------------------------------------------------------------
    @rpc("shim.connect", quiet=True)
    async def connect(self, req: ProcessRequest, ctx: Context) -> ConnectReply:
        """Who this shim is: ``{shim_pid, task_pid, container_id, incarnation, version}``."""
        return ConnectReply(
            shim_pid=os.getpid(),
            task_pid=self.init.state.pid if self.init else 0,
            container_id=self.id,
            incarnation=self.launch.incarnation,
        )

    @rpc("shim.state", quiet=True)
    async def state(self, req: ProcessRequest, ctx: Context) -> TaskState:
        """The process's ``TaskState``; NotFound for an unknown exec."""
        return self._process(req.exec_id).state

    @rpc("shim.start")
    async def start(self, req: ProcessRequest, ctx: Context) -> PidReply:
        """Start the task (``runtime start``): created -> running; publishes ``/tasks/start``.

        FailedPrecondition from any other state (``cannot start task in running state``).
        A start that fails leaves the task stopped with Docker's exit status (126/127/128)
        and raises InvalidArgument with ``details.exit_status``.
        """
        proc = self._process(req.exec_id)
        async with proc.lock:
            proc.check(TaskStatus.RUNNING)
            try:
                await self.runtime.start(self.id)
            except RuntimeError_ as exc:
                status = start_error_status(exc.message)
                proc.update(error=exc.message)
                if proc.state.exit_status is None:
                    with contextlib.suppress(RuntimeError_):
                        await self.runtime.kill(self.id, signal_mod.SIGKILL)
                proc.start_settled.set()
                raise errors.InvalidArgument(exc.message, {"exit_status": status}) from None
            self._publish(topics.TASK_START, "start", {"pid": proc.state.pid})
            fields: dict[str, Any] = {"started_at": codec.utcnow()}
            if proc.state.exit_status is None:
                fields["status"] = TaskStatus.RUNNING
            proc.update(**fields)
            proc.start_settled.set()
            return PidReply(pid=proc.state.pid)

    @rpc("shim.kill")
    async def kill(self, req: KillRequest, ctx: Context) -> dict[str, Any]:
        """Send ``signal`` to the process (``all``: every process of the container).

        FailedPrecondition when the process is not created, running or paused.
        """
        proc = self._process(req.exec_id)
        if proc.state.status not in (TaskStatus.CREATED, TaskStatus.RUNNING, TaskStatus.PAUSED):
            raise errors.FailedPrecondition(f"cannot kill {proc.what} in {proc.state.status.value} state")
        if req.all:
            try:
                await self.runtime.kill(self.id, req.signal, all_processes=True)
            except RuntimeError_ as exc:
                raise errors.FailedPrecondition(exc.message) from None
            return {}
        try:
            os.kill(proc.state.pid, req.signal)
        except ProcessLookupError:
            raise errors.FailedPrecondition(f"cannot kill {proc.what}: process {proc.state.pid} is gone") from None
        return {}

    @rpc("shim.wait")
    async def wait(self, req: ProcessRequest, ctx: Context) -> ExitReply:
        """Block until the process exited and its output is drained; its exit status."""
        proc = self._process(req.exec_id)
        await proc.exited.wait()
        s = proc.state
        return ExitReply(
            pid=s.pid,
            exit_status=s.exit_status if s.exit_status is not None else 255,
            exited_at=s.exited_at,
            oom_killed=s.oom_killed,
            error=s.error,
        )

    @rpc("shim.delete")
    async def delete(self, req: ProcessRequest, ctx: Context) -> ExitReply:
        """Delete the stopped (or never started) task: ``runtime delete``, unmount, ``/tasks/delete``.

        FailedPrecondition while it runs. The shim exits once the reply is sent.
        """
        proc = self._process(req.exec_id)
        async with proc.lock:
            proc.check(TaskStatus.DELETED)
            if proc.state.status == TaskStatus.CREATED:
                # never started: kill the waiting init, its exit is recorded as usual
                proc.start_settled.set()
                with contextlib.suppress(RuntimeError_):
                    await self.runtime.delete(self.id, force=True)
            try:
                await asyncio.wait_for(proc.exited.wait(), 10.0)
            except TimeoutError:
                raise errors.Internal(f"task of container '{self.id}' did not exit") from None
            try:
                await self.runtime.delete(self.id)
            except RuntimeError_:
                try:
                    await self.runtime.delete(self.id, force=True)
                except RuntimeError_ as exc:
                    raise errors.Internal(f"{self.runtime.name} delete failed: {exc.message}") from None
            await self._teardown_rootfs()
            proc.io.close()
            if proc.io.log is not None:
                proc.io.log.close()
            proc.move(TaskStatus.DELETED)
            s = proc.state
            exit_status = s.exit_status if s.exit_status is not None else 255
            self._publish(
                topics.TASK_DELETE,
                "delete",
                {"id": self.id, "pid": s.pid, "exit_status": exit_status, "exited_at": s.exited_at},
            )
            self.done.set()
            return ExitReply(
                pid=s.pid, exit_status=exit_status, exited_at=s.exited_at, oom_killed=s.oom_killed, error=s.error
            )

    @rpc("shim.attach", stream=True)
    async def attach(self, req: AttachRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Stream the process's output from now on (see ``common.api.shim``)."""
        proc = self._process(req.exec_id)
        streams = {s for s, on in ((1, req.stdout), (2, req.stderr)) if on}
        sub = proc.io.subscribe(streams)
        stdin_task: asyncio.Task[None] | None = None
        if req.stdin and proc.io.has_stdin:
            stdin_task = asyncio.create_task(self._pump_stdin(proc, ctx))
        try:
            yield {"attached": True, "tty": proc.io.tty}
            while True:
                item = await sub.get()
                if item is None:
                    return
                stream, data = item
                # coalesce what is already queued for the same stream (fewer frames)
                while not sub.queue.empty() and len(data) < 256 * 1024:
                    nxt = sub.queue.get_nowait()
                    if nxt is None:
                        sub.queue.put_nowait(None)
                        break
                    sub.pending -= len(nxt[1])
                    if nxt[0] != stream:
                        yield {"s": stream, "d": data}
                        stream, data = nxt
                        continue
                    data += nxt[1]
                yield {"s": stream, "d": data}
        finally:
            proc.io.unsubscribe(sub)
            if stdin_task is not None:
                stdin_task.cancel()

    async def _pump_stdin(self, proc: Process, ctx: Context) -> None:
        while True:
            item = await ctx.recv()
            if item is None:
                if proc.io.stdin_once:
                    await proc.io.close_stdin()
                return
            if isinstance(item, (bytes, bytearray)) and item and not await proc.io.write_stdin(bytes(item)):
                return

    @rpc("shim.close_io")
    async def close_io(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Close the process's stdin (EOF reaches it after what was already written)."""
        await self._process(req.exec_id).io.close_stdin()
        return {}

    @rpc("shim.shutdown")
    async def shutdown(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Exit if no task is left (the task is deleted or was never created)."""
        if self.init is not None and self.init.state.status != TaskStatus.DELETED:
            raise errors.FailedPrecondition(f"cannot shut down the shim: task is {self.init.state.status.value}")
        self.done.set()
        return {}

    def bundle_path(self, name: str) -> Path:
        return Path(self.bundle) / name
