"""The shim's work: one task (a container's init process and its execs) driven through the OCI runtime.

``Shim.create()`` runs once at boot: mount the rootfs from ``<bundle>/mounts.json``,
resolve the user and working directory inside it, create the stdio pipes and run
``<runtime> create``; the task is then ``created`` and ``/tasks/create`` is published.
With crun, the seccomp filter crun compiled for an identical profile before is handed
to it in ``config.json`` (``services.shim.seccomp_cache``), so crun does not compile it again.
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
import datetime as dt
import json
import logging
import os
import signal as signal_mod
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

from common import codec, errors, topics, trace
from common.api.shim import (
    AttachRequest,
    ConnectReply,
    ExecRequest,
    ExitReply,
    KillRequest,
    PidReply,
    ProcessRequest,
    RenameRequest,
    ResizeRequest,
    ShimLaunch,
    TaskState,
    TaskStatus,
    UpdateRequest,
    event_id,
)
from common.rpc.server import Context, rpc
from services.shim import cgroups, mount, rootfs
from services.shim.jsonlog import LogWriter
from services.shim.reaper import Reaper
from services.shim.runtime import Runtime, RuntimeError_, start_error_status
from services.shim.seccomp_cache import ANNOTATION, Lookup, SeccompCache, is_seccomp_error
from services.shim.stdio import ConsoleSocket, ProcessIO, Subscriber, set_winsize
from services.shim.task import Process, read_state_file, write_atomic
from services.shim.threads import in_new_thread

log = logging.getLogger(__name__)

IO_DRAIN_S = 2.0
"""How long the output may stay open after the init exited (processes that escaped the pid namespace)."""

SHUTDOWN_WAIT_S = 10.0
"""How long a shim whose task is deleted waits for ``shim.shutdown`` before it exits anyway."""

HOLD_OUTPUT_S = 5.0
"""How long a task started at create (``ShimLaunch.hold_output``) waits for ``shim.start``
before its output is read anyway (the log must not stall behind a caller that went away)."""

EXEC_START_FAILED = 126
"""The exit status of an exec that could not be started, whatever the cause (a missing command
too): dockerd's ``ContainerExecStart`` records 126 for every start failure, where ``run``
distinguishes 127 (``start_error_status``)."""

RESUMED_EXIT_WAIT_S = 0.25
"""How long ``shim.resume`` of a task signalled while frozen waits for its exit before it
publishes ``/tasks/resumed`` (none when the exit comes first, as dockerd's ``unpause``)."""

DELETE_FLUSH_S = 1.0
"""How long ``shim.delete`` waits for the events service to acknowledge the task's events."""


class CreateFailed(Exception):
    """The task could not be created; ``exit_status`` is what Docker would record.

    ``user_error``: the container's own configuration or image is at fault (unknown user,
    a working directory that is a file...), not the engine: callers answer InvalidArgument.
    """

    def __init__(self, message: str, exit_status: int, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status
        self.user_error = user_error


class Publisher(Protocol):
    """What the shim needs from ``common.events.EventPublisher``."""

    def publish(
        self, topic: str, event: dict[str, Any], *, namespace: str, event_id: str, after: str | None = None
    ) -> object: ...

    async def flush(self, timeout_s: float | None = None) -> bool: ...

    def pending(self) -> int: ...


async def _frames(sub: Subscriber) -> AsyncIterator[dict[str, Any]]:
    """``OutputFrame``s of a subscription until its end; what is queued for one stream is coalesced."""
    while True:
        item = await sub.get()
        if item is None:
            return
        stream, data = item
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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as seen (its owner awaits it later, or never)."""
    if not fut.cancelled():
        fut.exception()


def _closes_stdin(proc: Process) -> bool:
    """Whether the end of an attach's stdin (its EOF, or the client gone) closes the process's
    stdin: only with ``stdin_once`` and no terminal (moby ``container/stream/attach.go``:
    ``CloseStdin && !TTY``). On a terminal it stays open, so a shell left by the detach keys
    (``docker run -it``, whose CLI spots them and just hangs up) goes on running and can be
    attached to again."""
    return proc.io.stdin_once and not proc.io.tty


def proc_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _write_spec(config_path: str, spec: dict[str, Any]) -> None:
    """Replace ``config.json`` with ``spec`` (temporary file + rename)."""
    write_atomic(config_path, json.dumps(spec).encode())  # the C encoder: json.dump streams in Python, ~10 ms


class Shim:
    """One task and its processes (see module docstring)."""

    def __init__(self, launch: ShimLaunch, bundle: str, reaper: Reaper, publisher: Publisher) -> None:
        self.launch = launch
        self.bundle = bundle
        self.reaper = reaper
        self.publisher = publisher
        self.id = launch.container_id
        self.runtime = Runtime(launch.runtime, launch.runtime_root, bundle, reaper)
        self.seccomp_cache = SeccompCache.for_runtime(launch.seccomp_cache_dir, launch.runtime)
        self._seccomp: Lookup | None = None
        """The task's use of the seccomp cache (set by ``_prepare_rootfs``)."""
        self.rootfs = os.path.join(bundle, "rootfs")
        self.done = asyncio.Event()
        """Set by ``shim.shutdown``: the shim may exit."""
        self.deleted = asyncio.Event()
        """Set by ``shim.delete``: the task is gone; the shim exits on ``shim.shutdown`` (or soon anyway)."""
        self.init: Process | None = None
        self.creating: asyncio.Future[TaskState] | None = None
        """The launch's ``create`` while it runs (set by ``services.shim.main``): an early attach waits for it."""
        self.execs: dict[str, Process] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mounted = False
        self._unmounting: asyncio.Future[None] | None = None
        self._counter = 0
        self._oom_seen = 0
        self._oom_watch: int = -1
        self.cgroups_path = ""
        self.own_pid_ns = False
        """The task has a PID namespace of its own: its processes all die with its init."""
        self._early_delete: asyncio.Future[None] | None = None
        """The runtime's delete of the stopped task, started when its init was reaped (``_finish_exit``)."""
        self.console_base = ""
        self.container_name = launch.container_name
        """The container's name for events: the launch's, then what ``shim.rename`` says."""
        self.hibernating = asyncio.Event()
        """Set when the shim goes to sleep (``services.shim.hibernate``): ``shim.wait`` answers ``hibernated``."""

    # -- helpers ---------------------------------------------------------------------------
    def _publish(
        self, topic: str, verb: str, event: dict[str, Any], exec_id: str = "", after: str | None = None
    ) -> None:
        body = {"container_id": self.id, **event}
        if self.container_name:
            body.setdefault("container_name", self.container_name)
        if self.launch.image:
            body.setdefault("image", self.launch.image)
        try:
            self.publisher.publish(
                topic,
                body,
                namespace=self.launch.namespace,
                event_id=event_id(self.id, self.launch.incarnation, verb, exec_id),
                after=after,
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
            proc = self.execs.get(exec_id)
            if proc is None:
                raise errors.NotFound(f"exec '{exec_id}' not found in container '{self.id}'")
            return proc
        return self.init

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _console_path(self, exec_id: str = "") -> str:
        return f"{self.console_base}.{'e' + str(self._next()) if exec_id else 'c'}"

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
                # in the loop, not a thread: a few local syscalls, nobody is connected yet, and an
                # idle shim without an executor thread is smaller (no thread stack, no pool)
                t0 = time.perf_counter()
                not_executable = self._prepare_rootfs()
                t1 = time.perf_counter()
                trace.mark("rootfs ready")
            except rootfs.WorkdirError as exc:
                raise CreateFailed(str(exc), 126) from None
            except rootfs.RootfsError as exc:
                raise CreateFailed(str(exc), 128, user_error=True) from None
            except OSError as exc:
                raise CreateFailed(str(exc), 128) from None
            if not_executable:
                raise CreateFailed(not_executable, 126)
            log_writer = LogWriter(
                self.launch.log_path, max_size=self.launch.log_max_size, max_files=self.launch.log_max_files
            )
            io = ProcessIO(
                log_writer, open_stdin=self.launch.open_stdin, stdin_once=self.launch.stdin_once, tty=self.launch.tty
            )
            if not self.launch.tty:
                io.make_pipes()
            try:
                if self.launch.start:
                    state.started_at = codec.utcnow()  # before: the process may exit before it returns
                try:
                    await self._runtime_create(pid_file, io)
                except RuntimeError_ as exc:
                    if not await self._forget_cached_seccomp(exc.message):
                        raise
                    io.discard_pending()  # the runtime's complaint on the container's stderr
                    await self._runtime_create(pid_file, io)
                log.debug(
                    "rootfs ready in %.1f ms, %s create in %.1f ms (seccomp cache: %s)",
                    (t1 - t0) * 1000,
                    self.runtime.name,
                    (time.perf_counter() - t1) * 1000,
                    "-" if self._seccomp is None else "hit" if self._seccomp.hit else "miss",
                )
            except RuntimeError_ as exc:
                if self.launch.start:  # the start half may have failed after the create half
                    with contextlib.suppress(RuntimeError_):
                        await self.runtime.delete(self.id, force=True)
                raise CreateFailed(exc.message, start_error_status(exc.message)) from None
            except (OSError, TimeoutError) as exc:
                with contextlib.suppress(RuntimeError_):
                    await self.runtime.delete(self.id, force=True)
                raise CreateFailed(f"console: {exc}", 128) from None
            finally:
                io.close_child_ends()
            if self.seccomp_cache is not None:
                self.seccomp_cache.remember(self._seccomp, os.path.join(self.runtime.root, self.id))
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
        if self.launch.start:
            state.status = TaskStatus.RUNNING
        proc = Process(state, io, state_file)
        self.init = proc
        proc.persist()
        if not (self.launch.start and self.launch.hold_output):
            await io.start_pumps()
        else:
            asyncio.get_running_loop().call_later(HOLD_OUTPUT_S, self._release_output, proc)
        self.reaper.watch(pid, lambda status: self._on_exit(proc, status))
        # the task's events follow its container's (another publisher's outbox): /containers/create first
        self._publish(
            topics.TASK_CREATE,
            "create",
            {"bundle": self.bundle, "pid": pid},
            after=self.launch.after_event or None,
        )
        if self.launch.start:
            self._publish(topics.TASK_START, "start", {"pid": pid})
            proc.start_settled.set()
        self._watch_oom()
        return state

    def _release_output(self, proc: Process) -> None:
        """Start reading a held output (``ShimLaunch.hold_output``); idempotent."""
        self._spawn(proc.io.start_pumps(), "release-output")

    async def _runtime_create(self, pid_file: str, io: ProcessIO) -> None:
        """``runtime create`` (``run --detach`` with ``ShimLaunch.start``) on ``io``'s pipes, or on
        a new pty whose master then goes to ``io``.

        Raises ``RuntimeError_``, or ``OSError``/``TimeoutError`` when no pty master arrives.
        """
        create = self.runtime.run_detached if self.launch.start else self.runtime.create
        if not self.launch.tty:
            await create(self.id, pid_file, io.child_fds)
            return
        console = ConsoleSocket(self._console_path())
        receiving = asyncio.create_task(console.receive())
        try:
            await create(self.id, pid_file, io.child_fds, console_socket=console.path)
            io.set_pty(await receiving)
        finally:
            if not receiving.done():
                receiving.cancel()
            elif io.pty_master < 0 and not receiving.cancelled() and receiving.exception() is None:
                os.close(receiving.result())  # the pty of an init that failed after sending it
            console.close()

    async def _forget_cached_seccomp(self, message: str) -> bool:
        """After a create that failed with ``message``: if it used a cached seccomp filter and
        the error is about seccomp, drop that entry, take the annotation out of
        ``config.json`` and clean up, and return True (create once more: crun compiles).

        A valid entry is byte for byte what crun wrote for the same key, so this is for a
        key that missed a change (see ``services.shim.seccomp_cache``), never the normal path.
        """
        lookup = self._seccomp
        if self.seccomp_cache is None or lookup is None or not lookup.hit or not is_seccomp_error(message):
            return False
        log.warning("%s refused the cached seccomp filter (%s): compiling it again", self.runtime.name, message)
        self.seccomp_cache.drop(lookup.key)
        self._seccomp = Lookup(lookup.key, hit=False)
        config_path = os.path.join(self.bundle, "config.json")
        try:
            with open(config_path, encoding="utf-8") as f:
                spec = json.load(f)
            (spec.get("annotations") or {}).pop(ANNOTATION, None)
            _write_spec(config_path, spec)
        except (OSError, ValueError) as exc:
            log.error("cannot take the seccomp filter out of %s: %s", config_path, exc)
            return False
        with contextlib.suppress(RuntimeError_):
            await self.runtime.delete(self.id, force=True)
        return True

    async def abandon(self, creating: asyncio.Future[TaskState]) -> None:
        """Undo ``create`` (running as ``creating``) when the shim cannot serve its task.

        Waits for the create to end; a task it created is deleted (``runtime delete --force``)
        and the rootfs unmounted, so a shim that fails to bind leaves nothing running.
        """
        try:
            await creating
        except BaseException:
            return
        with contextlib.suppress(RuntimeError_):
            await self.runtime.delete(self.id, force=True)
        if self.init is not None:
            self.init.io.close()
        await self._teardown_rootfs()

    def _prepare_rootfs(self) -> str | None:
        """Mount the snapshot, resolve the user and the working directory (blocking).

        Rewrites ``config.json`` with the user, ``HOME`` and, with crun, a cached seccomp
        filter (``SeccompCache.annotate``). Returns why the command cannot be executed (a
        missing interpreter), or None.
        """
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
        self.cgroups_path = str(spec.get("linux", {}).get("cgroupsPath") or "")
        self.own_pid_ns = any(
            ns.get("type") == "pid" and not ns.get("path") for ns in spec.get("linux", {}).get("namespaces") or []
        )
        self._prepare_volumes()
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
        if self.seccomp_cache is not None:
            self._seccomp = self.seccomp_cache.annotate(spec)
        _write_spec(config_path, spec)
        return rootfs.missing_interpreter(self.rootfs, list(process.get("args") or []), env, cwd)

    async def _teardown_rootfs(self) -> None:
        """Unmount the rootfs once (later calls wait for the first one's unmount)."""
        if self._unmounting is None:
            self._unmounting = asyncio.ensure_future(self._unmount_rootfs())
        await asyncio.shield(self._unmounting)

    async def _unmount_rootfs(self) -> None:
        if not self._mounted:
            return
        try:
            # in a thread: an overlay's unmount takes ~5 ms (the kernel waits out an RCU grace period)
            await in_new_thread(lambda: mount.unmount(self.rootfs, detach=True))
            self._mounted = False
        except OSError as exc:
            log.error("cannot unmount the rootfs: %s", exc)

    # -- exits --------------------------------------------------------------------------------------
    def _on_exit(self, proc: Process, status: int, at: dt.datetime | None = None) -> None:
        trace.mark("reaped exec" if proc.state.exec_id else "reaped init")
        proc.record_exit(status, at)
        self._spawn(self._finish_exit(proc), f"exit-{proc.state.exec_id or 'init'}")

    async def _finish_exit(self, proc: Process) -> None:
        if proc is self.init:
            # read the container's own cgroup before the runtime deletes it (C17)
            # one small read from cgroupfs, in the loop: a thread would cost more on the exit path
            kills = cgroups.oom_kills(self.cgroups_path) if self.cgroups_path else 0
            if kills > self._oom_seen:
                self._publish_oom(kills)
            if self._oom_seen and proc.state.exit_status == 137:
                proc.update(oom_killed=True)
            self._stop_oom_watch()
            if self.own_pid_ns and self._early_delete is None:
                # With init gone every process of its PID namespace is gone: the task is stopped and
                # nothing but a delete can follow. The runtime's delete (its state and cgroup, a Go
                # process of ~10 ms) and the rootfs's unmount start now, while the exit is published
                # and the caller comes to shim.delete, which then only waits for them. After the OOM
                # read and the OOM watch's end: removing the cgroup fires its eventfd.
                self._early_delete = asyncio.ensure_future(self.runtime.delete(self.id))
                self._early_delete.add_done_callback(_retrieve)
                self._spawn(self._teardown_rootfs(), "unmount")  # no process of the task uses it now
        await proc.io.pumping.wait()  # a held output is read first (shim.start, or HOLD_OUTPUT_S)
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
                **({"started_at": state.started_at} if state.started_at and not state.exec_id else {}),
            },
            state.exec_id,
        )
        trace.mark("exit published exec" if state.exec_id else "exit published init")
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
        if req.exec_id:
            return await self._start_exec(proc)
        if self.launch.start and not proc.io.pumping.is_set():
            # started by the create (ShimLaunch.start): the first start releases the held output
            # (if an attach did not already: AttachRequest.release)
            await proc.io.start_pumps()
            return PidReply(pid=proc.state.pid, started_at=proc.state.started_at)
        async with proc.lock:
            proc.check(TaskStatus.RUNNING)
            started_at = codec.utcnow()  # before the start: the process may exit before it returns
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
            fields: dict[str, Any] = {"started_at": started_at}
            if proc.state.exit_status is None:
                fields["status"] = TaskStatus.RUNNING
            proc.update(**fields)
            proc.start_settled.set()
            return PidReply(pid=proc.state.pid, started_at=started_at)

    @rpc("shim.kill")
    async def kill(self, req: KillRequest, ctx: Context) -> dict[str, Any]:
        """Send ``signal`` to the process (``all``: every process of the container).

        A signal delivered to the init is published as ``/tasks/kill`` ``{signal}`` (Docker's
        ``kill`` event), queued before the task's ``/tasks/exit`` (same outbox; nothing runs
        between the signal and the queueing), and journaled after ``after`` (the caller's last
        event about the container: a ``restart`` before this ``kill``, from another outbox).
        FailedPrecondition when the process is not created, running or paused.
        """
        proc = self._process(req.exec_id)
        if proc.state.status not in (TaskStatus.CREATED, TaskStatus.RUNNING, TaskStatus.PAUSED):
            raise errors.FailedPrecondition(f"cannot kill {proc.what} in {proc.state.status.value} state")
        if req.all and not req.exec_id:
            try:
                await self.runtime.kill(self.id, req.signal, all_processes=True)
            except RuntimeError_ as exc:
                raise errors.FailedPrecondition(exc.message) from None
            self._publish_kill(req.signal, req.after)
            return {}
        try:
            os.kill(proc.state.pid, req.signal)
        except ProcessLookupError:
            raise errors.FailedPrecondition(f"cannot kill {proc.what}: process {proc.state.pid} is gone") from None
        if proc.state.status == TaskStatus.PAUSED:
            proc.signalled_while_paused = True
        if not req.exec_id:
            self._publish_kill(req.signal, req.after)
        return {}

    def _publish_kill(self, signal: int, after: str = "") -> None:
        self._publish(topics.TASK_KILL, f"kill/{self._next()}", {"signal": signal}, after=after or None)

    @rpc("shim.rename")
    async def rename(self, req: RenameRequest, ctx: Context) -> dict[str, Any]:
        """The container was renamed: later events carry ``name`` (``container_name``)."""
        self.container_name = req.name
        return {}

    @rpc("shim.wait")
    async def wait(self, req: ProcessRequest, ctx: Context) -> ExitReply:
        """Block until the process exited and its output is drained; its exit status. For the
        init, also ends when the shim goes to sleep: ``hibernated`` (``services.shim.hibernate``).
        A wait for the init sent while the runtime creates the task is held until it exists
        (FailedPrecondition ``task not created: <why>`` if that fails)."""
        if self.init is None and not req.exec_id and self.creating is not None:
            await self._until_created()
        proc = self._process(req.exec_id)
        if req.exec_id:
            await proc.exited.wait()
        else:
            sleeping = asyncio.ensure_future(self.hibernating.wait())
            exited = asyncio.ensure_future(proc.exited.wait())
            try:
                await asyncio.wait([sleeping, exited], return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeping.cancel()
                exited.cancel()
            if not proc.exited.is_set():
                return ExitReply(pid=proc.state.pid, exit_status=0, hibernated=True)
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

        FailedPrecondition while it runs. The task's events are acknowledged by the events
        service before the reply. The shim then waits for ``shim.shutdown`` (at most
        ``SHUTDOWN_WAIT_S``) before it exits: closing its socket right after the reply could
        drop the reply (ZeroMQ discards what a closed ROUTER has not sent yet).
        """
        proc = self._process(req.exec_id)
        if req.exec_id:
            return await self._delete_exec(proc)
        await proc.io.start_pumps()  # a held output (nobody called shim.start) is read now; else a no-op
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
            # the runtime's delete (its state and cgroup, ~10 ms in another process) runs while
            # the rootfs is unmounted here when the task had its own PID namespace: with init gone,
            # every process of the container is gone, and the runtime does not touch the rootfs of a
            # stopped one (both started already when init was reaped). Without one, the runtime
            # first kills what is left in the cgroup.
            deleting = self._early_delete or asyncio.ensure_future(self.runtime.delete(self.id))
            if self.own_pid_ns:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([deleting])
            self._stop_oom_watch()
            for ex in list(self.execs.values()):
                ex.io.close()
            self.execs.clear()
            await self._teardown_rootfs()
            proc.io.close()
            if proc.io.log is not None:
                proc.io.log.close()
            try:
                await deleting
            except RuntimeError_:
                try:
                    await self.runtime.delete(self.id, force=True)
                except RuntimeError_ as exc:
                    raise errors.Internal(f"{self.runtime.name} delete failed: {exc.message}") from None
            proc.move(TaskStatus.DELETED)
            s = proc.state
            exit_status = s.exit_status if s.exit_status is not None else 255
            self._publish(
                topics.TASK_DELETE,
                "delete",
                {"id": self.id, "pid": s.pid, "exit_status": exit_status, "exited_at": s.exited_at},
            )
            # The task's events reach the journal before the caller goes on (its own events, such as
            # /containers/delete, come after them), and the shim leaves the bundle alone from now on,
            # so the caller need not wait for this process to exit.
            await self.publisher.flush(DELETE_FLUSH_S)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.bundle, "address"))
            self.deleted.set()
            return ExitReply(
                pid=s.pid, exit_status=exit_status, exited_at=s.exited_at, oom_killed=s.oom_killed, error=s.error
            )

    @rpc("shim.attach", stream=True)
    async def attach(self, req: AttachRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Stream the process's output from now on (see ``common.api.shim``).

        With ``stdin`` the caller's stream goes to the process's stdin. At its EOF, as moby's
        ``container/stream/attach.go`` (``CloseStdin && !TTY``, else close stdout and stderr):
        a process created ``stdin_once`` without a terminal has its stdin closed and the attach
        goes on until the output ends; otherwise stdin stays open and, for the container's init
        process, this attach ends (``echo x | docker attach c`` of a ``run -d -i`` container).
        """
        if self.init is None and not req.exec_id and self.creating is not None:
            await self._until_created()
        proc = self._process(req.exec_id)
        streams = {s for s, on in ((1, req.stdout), (2, req.stderr)) if on}
        sub = proc.io.subscribe(streams)
        stdin_task: asyncio.Task[None] | None = None
        if req.stdin and proc.io.has_stdin:
            # an exec's attach keeps its output to the end: its caller waits for the exit anyway
            hangup = sub.close if not req.exec_id else None
            stdin_task = asyncio.create_task(self._pump_stdin(proc, ctx, hangup))
        try:
            first: dict[str, Any] = {"attached": True, "tty": proc.io.tty}
            if req.release and not req.exec_id and self.launch.start:
                await proc.io.start_pumps()  # subscribed: nothing it reads is missed
                first["released"] = True
            yield first
            async for frame in _frames(sub):
                yield frame
        finally:
            proc.io.unsubscribe(sub)
            if stdin_task is not None:
                self._end_stdin(proc, stdin_task)

    async def _until_created(self) -> None:
        """Wait for the launch's create (an attach or a wait sent while the runtime still runs:
        the caller connected when the shim said it serves); FailedPrecondition if it failed."""
        assert self.creating is not None
        try:
            await asyncio.shield(self.creating)
        except CreateFailed as exc:
            raise errors.FailedPrecondition(f"task not created: {exc.message}") from None
        except Exception as exc:  # the launch reports it; the attach only needs to end
            raise errors.FailedPrecondition(f"task not created: {exc}") from None

    def _end_stdin(self, proc: Process, pump: asyncio.Task[None]) -> None:
        """An attach that carried stdin ended. Its client went away before sending EOF (the
        pump still runs): stdin is closed as at EOF, by ``_closes_stdin``'s rule (a ``cat`` fed
        by a killed ``docker run -i`` ends; a shell on a terminal stays)."""
        if not pump.done():
            pump.cancel()
            if _closes_stdin(proc):
                self._spawn(proc.io.close_stdin(), "close-stdin")

    async def _pump_stdin(self, proc: Process, ctx: Context, hangup: Callable[[], None] | None = None) -> None:
        """The caller's stream -> the process's stdin; at its EOF, stdin is closed by
        ``_closes_stdin``'s rule, else ``hangup`` (if any) ends the caller's output."""
        while True:
            item = await ctx.recv()
            if item is None:
                if _closes_stdin(proc):
                    await proc.io.close_stdin()
                elif hangup is not None:
                    hangup()
                return
            if isinstance(item, (bytes, bytearray)) and item and not await proc.io.write_stdin(bytes(item)):
                return

    # -- volumes, OOM ---------------------------------------------------------------------------------
    def _prepare_volumes(self) -> None:
        """Docker's volume copy-up: a new, empty volume gets the image's content at its target."""
        for item in self.launch.copy_up:
            target = rootfs.secure_join(self.rootfs, item["target"])
            source = item["source"]
            try:
                if os.path.isdir(target) and not os.listdir(source) and os.listdir(target):
                    rootfs.copy_tree(target, source)
            except OSError as exc:
                log.warning("volume copy-up of %s: %s", item["target"], exc)

    def _watch_oom(self) -> None:
        """cgroup v1: an eventfd on ``memory.oom_control`` (``/tasks/oom`` as it happens)."""
        path = cgroups.oom_control_path(self.cgroups_path) if self.cgroups_path else None
        if not path:
            return
        efd = cfd = -1
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            cfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            with open(os.path.join(os.path.dirname(path), "cgroup.event_control"), "w") as f:
                f.write(f"{efd} {cfd}")
        except OSError as exc:
            log.warning("cannot watch OOM events: %s", exc)
            for fd in (efd, cfd):
                if fd >= 0:
                    os.close(fd)
            return
        os.close(cfd)
        self._oom_watch = efd
        asyncio.get_running_loop().add_reader(efd, self._on_oom_event)

    def _on_oom_event(self) -> None:
        try:
            os.eventfd_read(self._oom_watch)
        except OSError:
            return
        kills = cgroups.oom_kills(self.cgroups_path)
        if kills > self._oom_seen:
            self._publish_oom(kills)

    def _publish_oom(self, kills: int) -> None:
        self._oom_seen = kills
        self._publish(topics.TASK_OOM, f"oom/{kills}", {})
        if self.init is not None:
            self.init.update(oom_killed=True)

    def _stop_oom_watch(self) -> None:
        if self._oom_watch >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._oom_watch)
            os.close(self._oom_watch)
            self._oom_watch = -1

    # -- exec ---------------------------------------------------------------------------------------------
    @rpc("shim.exec")
    async def exec_(self, req: ExecRequest, ctx: Context) -> dict[str, Any]:
        """Register an exec in the running task (``/tasks/exec-added``); start it with ``shim.start``.

        FailedPrecondition unless the task runs; AlreadyExists for a used exec id. The user
        is resolved inside the rootfs like the container's, at the start (as dockerd's
        ``ContainerExecStart``): an unknown user is a failed start (exit 126), not an error here.
        ``/tasks/exec-added`` is journaled after ``req.after`` (the caller's last event about
        the container, if any), and the exec's later events after it.
        """
        init = self._process("")
        if init.state.status != TaskStatus.RUNNING:
            raise errors.FailedPrecondition(f"cannot exec in task in {init.state.status.value} state")
        if req.exec_id in self.execs:
            raise errors.AlreadyExists(f"exec '{req.exec_id}' already exists")
        process = dict(req.process)
        process["terminal"] = req.tty
        if req.tty and req.console_width and req.console_height:
            process["consoleSize"] = {"height": req.console_height, "width": req.console_width}
        state = TaskState(
            container_id=self.id,
            exec_id=req.exec_id,
            incarnation=self.launch.incarnation,
            bundle=self.bundle,
            status=TaskStatus.CREATED,
            created_at=codec.utcnow(),
            tty=req.tty,
        )
        proc = Process(state, ProcessIO(None, open_stdin=req.stdin, stdin_once=True, tty=req.tty))
        proc.exec_spec = process
        proc.exec_user = req.user or self.launch.user
        self.execs[req.exec_id] = proc
        args = [str(a) for a in process.get("args") or []]
        self._publish(
            topics.TASK_EXEC_ADDED,
            "exec-added",
            {"exec_id": req.exec_id, "args": args},
            req.exec_id,
            after=req.after or None,
        )
        return {}

    @rpc("shim.exec_run", stream=True)
    async def exec_run(self, req: ExecRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``shim.exec`` + ``shim.attach`` + ``shim.start`` + ``shim.wait`` + ``shim.delete`` of one exec.

        Stream: ``{"registered": true}``, then ``{"attached": true, "tty", "pid"}`` once the
        process runs (subscribed before it started: no byte is missed), then
        ``OutputFrame``s, then ``{"exit_status": n}`` after its output is drained, when the
        exec is deleted (``/tasks/delete``). With ``stdin`` the caller's stream is written
        to the process's stdin (EOF closes it). Errors before the first frame: those of
        ``shim.exec``; after it, a start that fails raises InvalidArgument with
        ``details.exit_status`` (126, ``EXEC_START_FAILED``) and deletes the exec. A caller that goes away
        before the last frame leaves the exec registered (``shim.wait`` and ``shim.delete``
        still work on it).
        """
        await self.exec_(req, ctx)
        proc = self.execs[req.exec_id]
        yield {"registered": True}
        sub = proc.io.subscribe({1, 2})
        stdin_task: asyncio.Task[None] | None = None
        try:
            try:
                started = await self._start_exec(proc)
            except errors.DockyardError:
                await self._delete_exec(proc)
                raise
            if req.stdin and proc.io.has_stdin:
                stdin_task = asyncio.create_task(self._pump_stdin(proc, ctx))
            yield {"attached": True, "tty": proc.io.tty, "pid": started.pid}
            async for frame in _frames(sub):
                yield frame
            await proc.exited.wait()
            gone = await self._delete_exec(proc)
            yield {"exit_status": gone.exit_status}
        finally:
            proc.io.unsubscribe(sub)
            if stdin_task is not None:
                self._end_stdin(proc, stdin_task)

    async def _start_exec(self, proc: Process) -> PidReply:
        exec_id = proc.state.exec_id
        async with proc.lock:
            proc.check(TaskStatus.RUNNING)
            try:
                process = self._exec_process(proc)
            except rootfs.RootfsError as exc:  # dockerd's words (its getUser), no runtime prefix
                self._exec_start_failed(proc, str(exc))
            process_file = os.path.join(self.bundle, f"exec-{self._next()}.json")
            pid_file = process_file[: -len(".json")] + ".pid"
            with open(process_file, "w", encoding="utf-8") as f:
                f.write(json.dumps(process))
            console: ConsoleSocket | None = None
            receiving: asyncio.Task[int] | None = None
            if proc.io.tty:
                console = ConsoleSocket(self._console_path(exec_id))
                receiving = asyncio.create_task(console.receive())
            else:
                proc.io.make_pipes()
            try:
                await self.runtime.exec(
                    self.id, process_file, pid_file, proc.io.child_fds, console_socket=console.path if console else None
                )
                if receiving is not None:
                    proc.io.set_pty(await receiving)
                with open(pid_file, encoding="utf-8") as f:
                    pid = int(f.read().strip())
            except (RuntimeError_, OSError, TimeoutError) as exc:
                message = exc.message if isinstance(exc, RuntimeError_) else str(exc)
                if isinstance(exc, RuntimeError_):  # what dockerd reports for a failed exec start
                    message = f"OCI runtime exec failed: {message}"
                self._exec_start_failed(proc, message)
            finally:
                proc.io.close_child_ends()
                if receiving is not None and not receiving.done():
                    receiving.cancel()
                if console is not None:
                    console.close()
                for path in (process_file, pid_file):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            proc.update(pid=pid, status=TaskStatus.RUNNING, started_at=codec.utcnow())
            await proc.io.start_pumps()  # before the watch: an exit already reaped is handled at once
            self.reaper.watch(pid, lambda status: self._on_exit(proc, status))
            args = [str(a) for a in (proc.exec_spec or {}).get("args") or []]
            self._publish(
                topics.TASK_EXEC_STARTED, "exec-started", {"exec_id": exec_id, "pid": pid, "args": args}, exec_id
            )
            proc.start_settled.set()
            return PidReply(pid=pid)

    def _exec_process(self, proc: Process) -> dict[str, Any]:
        """The exec's OCI Process with its user resolved inside the rootfs (uid, gid, additional
        gids; ``HOME`` from passwd unless set). Raises ``rootfs.RootfsError`` for an unknown user
        or group. Two small reads capped at MAX_FILE_BYTES, opened non-blocking (rootfs.py): in
        the loop, as a first thread of the shim would cost more than the lookup."""
        process = dict(proc.exec_spec or {})
        user = rootfs.resolve_user(self.rootfs, proc.exec_user, self.launch.group_add)
        process["user"] = {"uid": user.uid, "gid": user.gid}
        if user.additional_gids:
            process["user"]["additionalGids"] = user.additional_gids
        env = list(process.get("env") or [])
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={user.home}")
        process["env"] = env
        return process

    def _exec_start_failed(self, proc: Process, message: str) -> NoReturn:
        """Record a start that failed as dockerd's ``ContainerExecStart`` does (exit 126, whatever
        the cause) and raise InvalidArgument with ``details.exit_status``."""
        proc.record_exit(EXEC_START_FAILED)
        proc.update(error=message)
        proc.io.close()
        proc.start_settled.set()
        proc.exited.set()
        raise errors.InvalidArgument(message, {"exit_status": EXEC_START_FAILED}) from None

    async def _delete_exec(self, proc: Process) -> ExitReply:
        if proc.state.status not in (TaskStatus.STOPPED, TaskStatus.CREATED):
            raise errors.FailedPrecondition(f"cannot delete {proc.what} in {proc.state.status.value} state")
        proc.start_settled.set()
        proc.io.close()
        self.execs.pop(proc.state.exec_id, None)
        s = proc.state
        exit_status = s.exit_status if s.exit_status is not None else 255
        if s.pid:
            self._publish(
                topics.TASK_DELETE,
                "delete",
                {"id": s.exec_id, "pid": s.pid, "exit_status": exit_status, "exited_at": s.exited_at},
                s.exec_id,
            )
        return ExitReply(pid=s.pid, exit_status=exit_status, exited_at=s.exited_at, error=s.error)

    # -- pause, resize, update, pids ---------------------------------------------------------------------
    @rpc("shim.pause")
    async def pause(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Freeze every process (``runtime pause``): running -> paused; ``/tasks/paused``."""
        proc = self._process("")
        async with proc.lock:
            proc.check(TaskStatus.PAUSED)
            try:
                await self.runtime.pause(self.id)
            except RuntimeError_ as exc:
                raise errors.FailedPrecondition(exc.message) from None
            proc.move(TaskStatus.PAUSED)
            self._publish(topics.TASK_PAUSED, f"paused/{self._next()}", {})
        return {}

    @rpc("shim.resume")
    async def resume(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Thaw the task (``runtime resume``): paused -> running; ``/tasks/resumed``.

        A task that was signalled while frozen (a kill or a stop of a paused container) may end
        as soon as it is thawed: its exit is awaited for up to ``RESUMED_EXIT_WAIT_S`` and, if
        it comes, no ``/tasks/resumed`` is published, as dockerd logs no ``unpause`` for a
        resume whose container's exit was handled first (daemon/monitor.go, ``EventResumed``
        when ``c.Paused``): ``pause, kill, die``, not ``pause, kill, unpause, die``."""
        proc = self._process("")
        async with proc.lock:
            if proc.state.status != TaskStatus.PAUSED:
                raise errors.FailedPrecondition(f"cannot resume task in {proc.state.status.value} state")
            try:
                await self.runtime.resume(self.id)
            except RuntimeError_ as exc:
                raise errors.FailedPrecondition(exc.message) from None
            if proc.state.exit_status is None:
                proc.move(TaskStatus.RUNNING)
            signalled, proc.signalled_while_paused = proc.signalled_while_paused, False
            if not signalled:
                self._publish(topics.TASK_RESUMED, f"resumed/{self._next()}", {})
                return {}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.exited.wait()), RESUMED_EXIT_WAIT_S)
        if not proc.exited.is_set():
            self._publish(topics.TASK_RESUMED, f"resumed/{self._next()}", {})
        return {}

    @rpc("shim.resize")
    async def resize(self, req: ResizeRequest, ctx: Context) -> dict[str, Any]:
        """Set the pty size of the process; a process without a terminal is left alone (as
        containerd's runc shim: no console, nothing to do)."""
        proc = self._process(req.exec_id)
        if proc.io.pty_master < 0:
            return {}
        set_winsize(proc.io.pty_master, req.height, req.width)
        return {}

    @rpc("shim.update")
    async def update(self, req: UpdateRequest, ctx: Context) -> dict[str, Any]:
        """Change the running task's resources (``runtime update``)."""
        proc = self._process("")
        if proc.state.status not in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.CREATED):
            raise errors.FailedPrecondition(f"cannot update task in {proc.state.status.value} state")
        try:
            await self.runtime.update(self.id, req.resources)
        except RuntimeError_ as exc:
            raise errors.InvalidArgument(exc.message) from None
        return {}

    @rpc("shim.pids", quiet=True)
    async def pids(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Host pids of the container's processes (from its cgroup)."""
        self._process("")
        return {"pids": await asyncio.to_thread(cgroups.pids, self.cgroups_path)}

    @rpc("shim.close_io")
    async def close_io(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Close the process's stdin (EOF reaches it after what was already written)."""
        await self._process(req.exec_id).io.close_stdin()
        return {}

    @rpc("shim.shutdown")
    async def shutdown(self, req: ProcessRequest, ctx: Context) -> dict[str, Any]:
        """Exit if no task is left (the task is deleted or was never created).

        The shim exits right after answering; a caller should not count on the reply
        (watch the shim's pid instead).
        """
        if self.init is not None and self.init.state.status != TaskStatus.DELETED:
            raise errors.FailedPrecondition(f"cannot shut down the shim: task is {self.init.state.status.value}")
        asyncio.get_running_loop().call_soon(self.done.set)
        return {}

    # -- sleeping as the idle monitor (services.shim.hibernate) ------------------------------------
    def can_sleep(self) -> bool:
        """The task needs nothing of the shim now but its RPC server (``services.shim.hibernate``):
        it runs or is paused, no exec, background work, attached client or unsent event.
        Output does not count: the idle monitor writes it to the log."""
        proc = self.init
        if proc is None or proc.state.status not in (TaskStatus.RUNNING, TaskStatus.PAUSED):
            return False
        if self.execs or self._tasks or self.deleted.is_set() or not proc.start_settled.is_set():
            return False
        if proc.exited.is_set() or proc.state.exit_status is not None or not proc.io.idle():
            return False
        return not self.publisher.pending()

    def hand_over(self) -> dict[str, Any]:
        """What the next image of this process needs to go on (``restore``), its fds made
        inheritable; the output stops being read."""
        proc = self.init
        assert proc is not None
        if self._oom_watch >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._oom_watch)
            os.set_inheritable(self._oom_watch, True)
        fds = proc.io.handover()
        if proc.io.log is not None:  # the idle monitor logs on from the unterminated lines (idle.c)
            for stream, data in proc.io.log.partial().items():
                write_atomic(self.partial_path(stream), data)
        return {
            "pid": proc.state.pid,
            "fds": fds,
            "oom_fd": self._oom_watch,
            "oom_seen": self._oom_seen,
            "counter": self._counter,
            "mounted": self._mounted,
            "cgroups_path": self.cgroups_path,
            "own_pid_ns": self.own_pid_ns,
            "container_name": self.container_name,
        }

    async def restore(self, saved: dict[str, Any]) -> TaskState:
        """Take the task back from what ``hand_over`` saved (this process, a new image)."""
        state_file = os.path.join(self.bundle, "state.json")
        state = read_state_file(state_file)
        if state is None or state.pid != saved["pid"]:
            raise RuntimeError(f"state.json does not describe the task of pid {saved['pid']}")
        log_writer = LogWriter(
            self.launch.log_path, max_size=self.launch.log_max_size, max_files=self.launch.log_max_files
        )
        held: dict[int, bytes] = {}
        for stream in (1, 2):  # what the idle monitor left unterminated (or could not log)
            with contextlib.suppress(FileNotFoundError):
                path = self.partial_path(stream)
                with open(path, "rb") as f:
                    held[stream] = f.read()
                os.unlink(path)
        log_writer.restore_partial(held)
        io = ProcessIO.adopt(
            log_writer,
            {str(k): int(v) for k, v in saved["fds"].items()},
            open_stdin=self.launch.open_stdin,
            stdin_once=self.launch.stdin_once,
            tty=self.launch.tty,
        )
        proc = Process(state, io, state_file)
        proc.start_settled.set()
        self.init = proc
        self._counter = int(saved.get("counter", 0))
        self._mounted = bool(saved.get("mounted"))
        self._oom_seen = int(saved.get("oom_seen", 0))
        self.cgroups_path = str(saved.get("cgroups_path", ""))
        self.own_pid_ns = bool(saved.get("own_pid_ns"))
        self.container_name = str(saved.get("container_name", self.container_name))
        await io.start_pumps()
        for stream in held:  # complete lines the idle monitor left to us (not UTF-8, a full log)
            try:
                log_writer.write(stream, b"")
            except OSError as exc:
                log.error("cannot write the container log: %s", exc)
        oom_fd = int(saved.get("oom_fd", -1))
        if oom_fd >= 0:
            os.set_inheritable(oom_fd, False)
            self._oom_watch = oom_fd
            asyncio.get_running_loop().add_reader(oom_fd, self._on_oom_event)
        if state.exit_status is not None:  # reaped while the shim got ready to sleep: not published yet
            self._spawn(self._finish_exit(proc), "exit-init")
        else:
            # when the idle monitor saw the init gone (it woke us for that): its exit time
            seen = os.environ.pop("DOCKYARD_SHIM_EXITED_AT", "")
            at = dt.datetime.fromtimestamp(int(seen) / 1e9, dt.UTC) if seen.isdigit() else None
            self.reaper.watch(state.pid, lambda status: self._on_exit(proc, status, at))
            self.reaper.reap()  # it may have exited while the monitor held it (that woke us)
        return state

    def partial_path(self, stream: int) -> str:
        """The file that holds a stream's unterminated line while the shim sleeps (idle.c's ``--partial``)."""
        return os.path.join(self.bundle, f"partial.{stream}")

    def bundle_path(self, name: str) -> Path:
        return Path(self.bundle) / name
