"""Live tasks: one shim per started container, watched until its task is deleted.

``TaskManager`` launches a shim for a start, keeps a ``Live`` handle per running task
(an RPC client of the shim, a pidfd watch on the shim process, a monitor task), and
handles the end of every task exactly once per incarnation:

- normal exit: the shim's ``shim.wait`` returns -> record the exit in the store, ask
  the shim to delete the task (it publishes ``/tasks/delete`` and exits), then hand the
  exit to the service (``--rm``, restart policy, waiters);
- the shim died (pidfd readable): take the exit status from its ``state.json`` (255 if
  it never wrote one), drain its outbox, ``<runtime> delete --force``, unmount, and
  publish ``/tasks/exit`` + ``/tasks/delete`` under the ids the shim would have used.

``recover()`` rebuilds all of this after the execution service restarts (it may have
been SIGKILLed anywhere): it reconnects to every live shim and cleans up after dead ones,
including one that died in the delete of a task whose exit was already recorded
(``clean_left_task``: its runtime container and rootfs mount, which nothing else deletes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import codec, errors, shimwake, topics, trace
from common.api.shim import ShimLaunch, TaskState, TaskStatus, container_event_id, event_id
from common.events import bundle_outboxes, drain_outbox, has_leftovers, take_leftovers
from common.settings import Settings
from services.execution import shims
from services.execution.store import Record, Store
from services.shim import mount
from services.shim.task import read_state_file

log = logging.getLogger(__name__)

FAILED_CALLS_S = 1.5
"""A launch that failed: how long the calls held by its shim get to bring back its error
(the shim waits up to 1 s for them, ``services.shim.main.FAILED_REPLIES_S``)."""

ShimClientFactory = Callable[[str, str], Any]
"""``factory(endpoint, namespace)`` -> an ``AsyncClient``-like object of a shim."""


@dataclass
class TaskExit:
    """How a task ended, as recorded for its container."""

    exit_code: int
    exited_at: dt.datetime
    oom_killed: bool = False
    error: str = ""
    incarnation: int = 0


@dataclass
class Live:
    """A task held by a live shim."""

    namespace: str
    container_id: str
    incarnation: int
    bundle: str
    runtime: str
    client: Any
    shim_pid: int
    task_pid: int = 0
    status: str = "created"
    watch: shims.ShimWatch | None = None
    monitor: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit: TaskExit | None = None
    early_wait: asyncio.Future[Any] | None = None
    """``shim.wait`` sent when the shim said it serves (the monitor's first wait)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.container_id)


class StartFailed(Exception):
    """The task could not be created or started; ``exit_status`` is Docker's (126/127/128)."""

    def __init__(self, message: str, exit_status: int, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status
        self.user_error = user_error


class TaskManager:
    """See module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        publisher: Any,
        events_client: Any,
        shim_client: ShimClientFactory,
        on_exit: Callable[[Record, TaskExit], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.events_client = events_client
        self.shim_client = shim_client
        self.on_exit = on_exit
        self.live: dict[tuple[str, str], Live] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.launcher = shims.Launcher(str(settings.state / "shim-template.sock"), settings.env())

    # -- helpers ---------------------------------------------------------------------------------
    def lock(self, namespace: str, container_id: str) -> asyncio.Lock:
        """The lock serialising start, exit handling and removal of one container."""
        return self._locks.setdefault((namespace, container_id), asyncio.Lock())

    def runtime_root(self, runtime: str) -> str:
        return self.settings.root_of_runtime(runtime)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def get(self, namespace: str, container_id: str) -> Live | None:
        return self.live.get((namespace, container_id))

    async def shim_died(self, live: Live, within_s: float) -> bool:
        """True if the shim process of ``live`` is gone, or goes within ``within_s`` seconds
        (a call to it that failed ``Unavailable``: its socket closes before its exit is
        reported); False if it still runs then. Its monitor cleans up after a gone shim
        (``clean_dead_shim``) and sets ``live.done``; this only looks. Raises nothing."""
        if live.watch is None:
            return not shims.shim_alive(live.bundle)
        try:
            await asyncio.wait_for(asyncio.shield(live.watch.died), within_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop watching (shims and containers keep running)."""
        await self.launcher.close()
        for live in list(self.live.values()):
            if live.monitor is not None:
                live.monitor.cancel()
            if live.early_wait is not None:  # not taken by its monitor yet (it goes with the monitor)
                live.early_wait.cancel()
            if live.watch is not None:
                live.watch.close()
        for task in list(self._background):
            task.cancel()
        tasks = [
            t
            for t in (
                *[lv.monitor for lv in self.live.values()],
                *[lv.early_wait for lv in self.live.values()],
                *self._background,
            )
            if t is not None
        ]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for live in list(self.live.values()):
            with contextlib.suppress(Exception):
                await live.client.close()
        self.live.clear()

    # -- start ------------------------------------------------------------------------------------
    def write_bundle_files(
        self, rec: Record, incarnation: int, *, hold_output: bool = False, after_event: str = ""
    ) -> str:
        """(Re)write ``config.json``, ``mounts.json`` and ``shim.json`` for a new incarnation.

        The shim creates and starts the task in one runtime call (``ShimLaunch.start``);
        ``hold_output``: clients wait to attach, the shim reads no output until ``shim.start``.
        ``after_event``: the id of the last event this service published about the container
        (``/containers/stop`` of a restart, ``/containers/attach``): the task's events follow
        it; by default the first task's follow ``/containers/create``.
        """
        bundle = str(self.settings.bundle_dir(rec.namespace, rec.id))
        os.makedirs(os.path.join(bundle, "rootfs"), exist_ok=True)
        shims.clear_shim_files(bundle)
        _write_json(os.path.join(bundle, "config.json"), rec.spec)
        _write_json(os.path.join(bundle, "mounts.json"), rec.extra.get("mounts", []))
        cfg = rec.config
        log_opts = cfg.get("log_opts") or {}
        launch = ShimLaunch(
            namespace=rec.namespace,
            container_id=rec.id,
            container_name=rec.name,
            image=rec.image,
            incarnation=incarnation,
            runtime=rec.runtime,
            runtime_root=self.runtime_root(rec.runtime),
            log_path=rec.extra.get("log_path", ""),
            log_max_size=_parse_size(log_opts.get("max-size", "")),
            log_max_files=int(log_opts.get("max-file", "1") or 1),
            tty=bool(cfg.get("tty")),
            open_stdin=bool(cfg.get("open_stdin")),
            stdin_once=bool(cfg.get("stdin_once")),
            user=rec.extra.get("user", ""),
            group_add=list(cfg.get("group_add") or []),
            console_width=int((cfg.get("console_size") or [0, 0])[1] or 0),
            console_height=int((cfg.get("console_size") or [0, 0])[0] or 0),
            events_endpoint=self.settings.control_endpoint("events"),
            copy_up=list(rec.extra.get("copy_up") or []),
            seccomp_cache_dir=self.settings.seccomp_cache_dir(rec.runtime),
            # a later start may follow a compacted /containers/create: only the first one waits
            after_event=after_event or (container_event_id(rec.id, "create") if incarnation == 1 else ""),
            start=True,
            hold_output=hold_output,
        )
        _write_json(os.path.join(bundle, "shim.json"), launch.model_dump(mode="json"))
        return bundle

    async def start(
        self,
        rec: Record,
        before_start: Callable[[Live], Awaitable[bool]],
        *,
        attaching: bool = False,
        after_event: str = "",
        on_client: Callable[[tuple[str, str], Any], None] | None = None,
    ) -> Live:
        """Launch a shim that creates and starts the task (call with the container's lock held).

        ``attaching``: clients wait to attach; the shim holds the task's output until
        ``before_start(live)`` attached them, then ``shim.start`` releases it (no runtime
        call: the task runs since the shim's report) unless ``before_start`` says an attach
        released it already. ``on_client((namespace, id), client)``: with ``attaching``, the
        client opened when the shim said it serves (attaches may go out on it at once; it
        is ``live.client`` if the launch succeeds). ``after_event``: see
        ``write_bundle_files``. Raises ``StartFailed`` (the exit is recorded) or a DockyardError.
        """
        incarnation = rec.incarnation + 1
        if os.path.isdir(os.path.join(self.runtime_root(rec.runtime), rec.id)):
            # a previous incarnation whose shim died mid-start left its runtime container behind
            await shims.clean_dead_task(
                rec.runtime,
                self.runtime_root(rec.runtime),
                rec.id,
                str(self.settings.bundle_dir(rec.namespace, rec.id)),
            )
        t0 = time.perf_counter()
        bundle = await asyncio.to_thread(
            self.write_bundle_files, rec, incarnation, hold_output=attaching, after_event=after_event
        )
        self.store.update(rec.namespace, rec.id, incarnation=incarnation, manual_stop=False)
        rec.incarnation = incarnation
        trace.mark("bundle written")
        t1 = time.perf_counter()
        early: list[Any] = []  # the client opened when the shim said it serves (once at most)
        early_wait: list[asyncio.Future[Any]] = []

        def serving(address: str) -> None:
            # connect while the runtime creates the task: the first call (shim.attach) then goes
            # out at once, not after a handshake between four threads (~3-5 ms of run --rm here)
            client = self.shim_client(address, rec.namespace)
            client.connect()
            early.append(client)
            trace.mark("connecting to the shim")
            if attaching and on_client is not None:
                on_client((rec.namespace, rec.id), client)
            # the monitor's first shim.wait, held by the shim until the task exists: an exit
            # right after the start reaches us with the shim's report, not a round trip later
            waiter = asyncio.ensure_future(client.call("shim.wait", {}, timeout_s=None, wake_shim=False))
            waiter.add_done_callback(_retrieved)
            early_wait.append(waiter)

        try:
            report = await self.launcher.launch(rec.namespace, rec.id, bundle, serving)
        except BaseException:
            if early:
                early_wait[0].cancel()
                await early[0].close()
            raise
        t2 = time.perf_counter()
        trace.mark("shim launched")
        client = early[0] if early else None
        if client is not None and not (report.get("ok") and client.endpoint == report.get("address")):
            if not report.get("ok"):
                # the shim ends the calls it held for the task (an attach sent early, our wait)
                # with the create's error before it exits: hear them before closing, or an
                # attach (run's) waits out the liveness window (3 s) for a reply we dropped
                await client.settle(FAILED_CALLS_S)
            early_wait[0].cancel()
            await client.close()
            client = None
        if not report.get("ok"):
            message = str(report.get("error") or "shim failed")
            status = int(report.get("exit_status") or 128)
            # dockerd records the exit code and the error of a start that failed, not a finish
            # (``FinishedAt`` keeps the last real exit's, or stays unset)
            self.store.update(rec.namespace, rec.id, exit_code=status, error=message, handled=incarnation)
            await self._drain_leftovers(bundle, incarnation)
            raise StartFailed(message, status, user_error=bool(report.get("user_error")))
        live = Live(
            rec.namespace,
            rec.id,
            incarnation,
            bundle,
            rec.runtime,
            client or self.shim_client(str(report["address"]), rec.namespace),
            int(report["shim_pid"]),
            task_pid=int(report["pid"]),
            early_wait=early_wait[0] if client is not None else None,
        )
        live.watch = shims.ShimWatch(live.shim_pid)
        self.live[live.key] = live
        try:
            released = await before_start(live)  # also hands the task to attaches that came during the launch
            if attaching and not released:
                reply = await live.client.call("shim.start", {}, timeout_s=60)
            else:
                reply = {"pid": live.task_pid, "started_at": _parse_time(report.get("started_at"))}
        except errors.DockyardError as exc:
            # the shim stopped the task; the monitor deletes it once our caller releases the lock
            status = int(exc.details.get("exit_status") or 128) if isinstance(exc.details, dict) else 128
            self.store.update(
                rec.namespace,
                rec.id,
                exit_code=status,
                error=exc.message,
                handled=incarnation,
                tasked=incarnation,
            )
            if shims.shim_alive(bundle):
                with contextlib.suppress(errors.DockyardError):
                    await live.client.call("shim.kill", {"signal": 9}, timeout_s=5)
                live.status = "stopped"  # a retried start waits for the monitor to delete this task
                live.monitor = self._spawn(self._monitor(live), f"monitor-{rec.id[:12]}")
            else:
                # the shim died while starting the task: clean up now, under the lock, so that a
                # retried start never meets this incarnation's leftovers (or has them cleaned under it)
                await self.clean_dead_shim(rec.namespace, rec.id, incarnation, bundle, rec.runtime)
                live.status = "stopped"
                live.done.set()
                await self._forget(live)
            raise StartFailed(exc.message, status) from None
        trace.mark("task started")
        t3 = time.perf_counter()
        log.debug(
            "start of %s: bundle %.1f ms, shim up and task created %.1f ms, attach + start %.1f ms",
            rec.id[:12],
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
        )
        live.task_pid = int(reply["pid"])
        live.status = "running"
        self.store.update(
            rec.namespace,
            rec.id,
            status="running",
            tasked=incarnation,
            pid=live.task_pid,
            started_at=reply.get("started_at") or codec.utcnow(),
            exit_code=0,
            error="",
            oom_killed=False,
        )
        live.monitor = self._spawn(self._monitor(live), f"monitor-{rec.id[:12]}")
        return live

    # -- watching ------------------------------------------------------------------------------------
    async def _monitor(self, live: Live) -> None:
        waiter: asyncio.Future[Any] | None = None
        try:
            while True:
                if await shimwake.sleeping(live.client.endpoint):
                    # adopted asleep (a restart of this service): wait for its wake, do not cause it
                    await self._until_awake(live)
                    continue
                # not waking it (a shim that sleeps, or is going to, answers or is waited for above)
                waiter, live.early_wait = live.early_wait, None
                if waiter is None:
                    waiter = asyncio.ensure_future(live.client.call("shim.wait", {}, timeout_s=None, wake_shim=False))
                assert live.watch is not None
                await asyncio.wait([waiter, live.watch.died], return_when=asyncio.FIRST_COMPLETED)
                if waiter.done() and waiter.exception() is None:
                    reply = waiter.result()
                    if reply.get("hibernated"):
                        # the shim sleeps as its idle monitor: wait (without waking it) until it
                        # wakes for whatever reason, then ask again
                        await self._until_awake(live)
                        continue
                    await self._task_exited(live, reply)
                    return
                if live.watch.died.done():
                    waiter.cancel()
                    with contextlib.suppress(BaseException):
                        await waiter
                    await self._shim_died(live)
                    return
                exc = waiter.exception()
                if isinstance(exc, errors.FailedPrecondition):
                    await asyncio.sleep(0.2)  # the shim is still creating the task
                elif live.client.asleep_or_waking():
                    continue  # it went to sleep (its answer lost) or is waking: looked at above
                else:
                    log.warning("shim of %s not answering (%s); still watching it", live.container_id[:12], exc)
        except asyncio.CancelledError:
            # its shim.wait goes with it (``close``): left running, it outlived the client's
            # close, opened the socket again, and its tasks were destroyed pending at the exit
            if waiter is not None and not waiter.done():
                waiter.cancel()
                with contextlib.suppress(BaseException):
                    await waiter
            raise
        except Exception:
            log.exception("monitor of container %s failed", live.container_id)
            live.done.set()

    async def _until_awake(self, live: Live) -> None:
        """Wait until the sleeping shim of ``live`` wakes (``common.shimwake``) or dies."""
        assert live.watch is not None
        awake: asyncio.Future[Any] = asyncio.ensure_future(shimwake.wait_awake(live.client.endpoint))
        both: list[asyncio.Future[Any]] = [awake, live.watch.died]
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            awake.cancel()

    async def _task_exited(self, live: Live, reply: dict[str, Any]) -> None:
        trace.mark("task exited")
        exited_at = reply.get("exited_at") or codec.utcnow()
        ex = TaskExit(
            int(reply.get("exit_status", 255)),
            exited_at,
            bool(reply.get("oom_killed")),
            str(reply.get("error") or ""),
            live.incarnation,
        )
        t0 = time.perf_counter()
        async with self.lock(live.namespace, live.container_id):
            live.status = "stopped"
            live.exit = ex
            rec = self.store.get(live.namespace, live.container_id)
            if rec is not None and rec.handled < live.incarnation:
                self._record_exit(live, ex)
            try:
                await live.client.call("shim.delete", {}, timeout_s=30)
            except errors.DockyardError as exc:
                log.warning("shim delete of %s failed: %s; cleaning up after it", live.container_id[:12], exc)
                await shims.clean_dead_task(
                    live.runtime, self.runtime_root(live.runtime), live.container_id, live.bundle
                )
                await self._shim_gone(live)
                # a shim killed during its delete may not have queued /tasks/delete: the journal
                # keeps one of the two (same event id), after what the shim's outbox held
                self._publish_task_delete(
                    live.namespace,
                    live.container_id,
                    live.incarnation,
                    live.task_pid,
                    ex,
                    self.store.get(live.namespace, live.container_id),
                )
                # after the events are queued: no wait between the shim's end and what the journal owes
                await asyncio.to_thread(
                    shims.remove_stale_socket, self.settings.shim_endpoint(live.namespace, live.container_id)
                )
            else:
                # the shim handed its events over and leaves the bundle alone: no need to wait for its exit
                trace.mark("task deleted")
                if self.live.get(live.key) is live:
                    del self.live[live.key]
                self._spawn(self._shim_gone(live), f"shim-exit-{live.container_id[:12]}")
        log.debug("exit of %s: recorded and deleted %.1f ms", live.container_id[:12], (time.perf_counter() - t0) * 1000)
        await self._after_exit(live, ex)

    async def _shim_gone(self, live: Live) -> None:
        """Tell the shim of a deleted task to exit, wait (up to 5 s) until it did, deliver what it left."""
        assert live.watch is not None
        call = None
        if not live.watch.died.done():
            with contextlib.suppress(errors.DockyardError):
                call = await live.client.start("shim.shutdown", {}, timeout_s=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(live.watch.died), 5.0)
        if call is not None:
            await call.cancel()
        await self._drain_leftovers(live.bundle, live.incarnation)
        await self._forget(live)

    async def _shim_died(self, live: Live) -> None:
        async with self.lock(live.namespace, live.container_id):
            if live.done.is_set():
                return  # already handled (a start that failed because its shim died)
            ex = await self.clean_dead_shim(
                live.namespace, live.container_id, live.incarnation, live.bundle, live.runtime
            )
            live.status = "stopped"
            live.exit = ex
            await self._forget(live)
        await self._after_exit(live, ex)

    async def clean_left_task(self, namespace: str, container_id: str, runtime: str, bundle: str) -> bool:
        """Finish the delete of a task whose shim is gone, if it did not: ``<runtime> delete
        --force`` under the shim's runtime root and unmount the rootfs (``shims.clean_dead_task``)
        when the runtime still has the container or the rootfs is still mounted.

        For a task whose exit was handled and whose shim was SIGKILLed during its delete (its
        ``runtime delete`` killed with it, or not run yet) while this service was down too:
        ``clean_dead_shim`` never ran for it. Call it with no shim serving the container (its
        task ended, its shim died or is killed). Idempotent and crash-safe: it looks at what is
        left, not at what was recorded, and the runtime's state stays until its delete ends
        (runc removes it after the cgroups), so a clean-up cut short or failed is done again by
        the next call (the next recovery, the removal). True when there was something to clean up.
        """
        root = self.runtime_root(runtime)
        rootfs = os.path.join(bundle, "rootfs")
        if not os.path.isdir(os.path.join(root, container_id)) and not (
            os.path.isdir(rootfs) and mount.is_mountpoint(rootfs)
        ):
            return False
        log.warning("the task of container %s/%s was left by its dead shim; deleting it", namespace, container_id[:12])
        await shims.clean_dead_task(runtime, root, container_id, bundle)
        return True

    async def clean_dead_shim(
        self, namespace: str, container_id: str, incarnation: int, bundle: str, runtime: str
    ) -> TaskExit:
        """Clean up after a shim that died (see module docstring); returns the recorded exit."""
        state = read_state_file(os.path.join(bundle, "state.json"))
        code = 255
        exited_at = codec.utcnow()
        deleted = False
        oom = False
        error = ""
        pid = 0
        started: dict[str, Any] = {}
        if state is not None and state.incarnation in (0, incarnation):
            pid = state.pid
            started = _start_fields(state, incarnation)
            if state.exit_status is not None:
                code = state.exit_status
                exited_at = state.exited_at or exited_at
            deleted = state.status == TaskStatus.DELETED
            oom = state.oom_killed
            error = state.error
        log.warning(
            "shim of container %s is gone; task exit status %d%s",
            container_id[:12],
            code,
            " (from its state file)" if code != 255 else "",
        )
        await self._drain_leftovers(bundle, incarnation)
        await shims.clean_dead_task(runtime, self.runtime_root(runtime), container_id, bundle)
        named = self.store.get(namespace, container_id)
        if not deleted or (state is not None and state.pid):
            body = {
                "container_id": container_id,
                "id": container_id,
                "pid": pid,
                "exit_status": code,
                "exited_at": exited_at,
                **_names(named),
            }
            if state is not None and state.started_at is not None:
                body["started_at"] = state.started_at
            if not deleted:
                self.publisher.publish(
                    topics.TASK_EXIT, body, namespace=namespace, event_id=event_id(container_id, incarnation, "exit")
                )
            self._publish_task_delete(namespace, container_id, incarnation, pid, TaskExit(code, exited_at), named)
        ex = TaskExit(code, exited_at, oom, error, incarnation)
        rec = named
        if rec is not None and rec.handled < incarnation:
            self.store.update(
                namespace,
                container_id,
                status="exited",
                exit_code=code,
                finished_at=exited_at,
                oom_killed=oom,
                pid=0,
                handled=incarnation,
                **({"error": error} if error else {}),
                **started,  # we may have died before we recorded its start
            )
        # last: no wait between the shim's end and the events and record the journal and store owe
        await asyncio.to_thread(shims.remove_stale_socket, self.settings.shim_endpoint(namespace, container_id))
        return ex

    def _publish_task_delete(
        self, namespace: str, container_id: str, incarnation: int, pid: int, ex: TaskExit, rec: Record | None = None
    ) -> None:
        """Queue ``/tasks/delete`` of a task whose shim could not (or may not have): same id as the shim's."""
        body = {
            "container_id": container_id,
            "id": container_id,
            "pid": pid,
            "exit_status": ex.exit_code,
            "exited_at": ex.exited_at,
            **_names(rec),
        }
        self.publisher.publish(
            topics.TASK_DELETE, body, namespace=namespace, event_id=event_id(container_id, incarnation, "delete")
        )

    async def _shutdown(self, live: Live) -> None:
        """Tell the shim to exit and wait for its pid to go (its reply may be lost as it exits)."""
        call = None
        with contextlib.suppress(errors.DockyardError):
            call = await live.client.start("shim.shutdown", {}, timeout_s=5)
        assert live.watch is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(live.watch.died), 5.0)
        if call is not None:
            with contextlib.suppress(Exception):
                await call.cancel()

    def _record_exit(self, live: Live, ex: TaskExit) -> None:
        fields: dict[str, Any] = {
            "status": "exited",
            "exit_code": ex.exit_code,
            "finished_at": ex.exited_at,
            "oom_killed": ex.oom_killed,
            "pid": 0,
            "handled": live.incarnation,
        }
        if ex.error:
            fields["error"] = ex.error
        self.store.update(live.namespace, live.container_id, **fields)

    async def _forget(self, live: Live) -> None:
        if self.live.get(live.key) is live:
            del self.live[live.key]
        if live.watch is not None:
            live.watch.close()
        with contextlib.suppress(Exception):
            await live.client.close()

    async def _after_exit(self, live: Live, ex: TaskExit) -> None:
        live.done.set()
        rec = self.store.get(live.namespace, live.container_id)
        if rec is not None:
            try:
                await self.on_exit(rec, ex)
            except Exception:
                log.exception("exit handling of container %s failed", live.container_id)

    async def _drain_leftovers(self, bundle: str, incarnation: int | None = None) -> None:
        """Deliver what the gone shim of task ``incarnation`` left in its outbox (None: every
        shim of ``bundle``, all gone); hand it to our own outbox if events is down. Only a gone
        shim's: a later incarnation's shim, alive, has an outbox of its own (``shim_outbox``)."""
        for outbox in bundle_outboxes(bundle, incarnation):
            await self._drain_outbox(outbox)

    async def _drain_outbox(self, outbox: Path) -> None:
        try:
            await self._deliver_leftovers(outbox)
        finally:
            if outbox.name.startswith("task-") and not has_leftovers(outbox):
                shutil.rmtree(outbox, ignore_errors=True)  # a gone shim's, all delivered or taken over

    async def _deliver_leftovers(self, outbox: Path) -> None:
        if not has_leftovers(outbox):
            return
        try:
            if await drain_outbox(self.events_client, outbox, 1.0):
                return
        except Exception as exc:
            log.warning("draining %s: %s", outbox, exc)

        def into_ours(item: dict[str, Any]) -> None:
            try:
                self.publisher.publish(
                    item["topic"],
                    item["event"],
                    namespace=item["namespace"],
                    event_id=item["id"],
                    after=item.get("after"),
                    source=str(outbox),  # its order kept apart from ours (common.events._in_causal_order)
                    timestamp=_as_time(item.get("timestamp")),  # when it happened, not when it was taken over
                )
            except (KeyError, TypeError) as exc:
                log.warning("dropping a malformed event of %s: %s", outbox, exc)

        try:
            take_leftovers(outbox, into_ours)
        except OSError as exc:  # our outbox cannot be written: the shim's keeps them for the next try
            log.error("cannot take over the events of %s: %s", outbox, exc)

    # -- recovery -----------------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Reconnect to live shims, clean up after dead ones and after interrupted creates."""
        self.launcher.start_background()
        records = self.store.list(None)
        known = {(r.namespace, r.id) for r in records}
        await asyncio.gather(*(self._recover_one(r) for r in records), return_exceptions=False)
        tasks_dir = Path(self.settings.state) / "tasks"
        if tasks_dir.is_dir():
            for ns_dir in tasks_dir.iterdir():
                if not ns_dir.is_dir():
                    continue
                for bundle in ns_dir.iterdir():
                    if bundle.is_dir() and (ns_dir.name, bundle.name) not in known:
                        self._spawn(self._remove_orphan_bundle(ns_dir.name, bundle.name, str(bundle)), "orphan")

    async def _recover_one(self, rec: Record) -> None:
        bundle = str(self.settings.bundle_dir(rec.namespace, rec.id))
        pid = shims.shim_alive(bundle)
        if pid:
            try:
                await self._adopt(rec, bundle, pid)
                return
            except errors.DockyardError as exc:
                log.warning("cannot reconnect to the shim of %s (%s); treating it as dead", rec.id[:12], exc)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        # a dead shim may have left acknowledged-never events (exit, delete) in its outbox,
        # even when its exit was already recorded: deliver them before anything removes the bundle
        await self._drain_leftovers(bundle)
        has_shim_files = os.path.exists(os.path.join(bundle, "shim.pid"))
        if rec.incarnation > rec.handled and (has_shim_files or rec.status in ("running", "paused")):
            ex = await self.clean_dead_shim(rec.namespace, rec.id, rec.incarnation, bundle, rec.runtime)
            fake = Live(rec.namespace, rec.id, rec.incarnation, bundle, rec.runtime, None, 0)
            fake.exit = ex
            fresh = self.store.get(rec.namespace, rec.id)
            if fresh is not None:
                self._spawn(self.on_exit(fresh, ex), f"recover-exit-{rec.id[:12]}")
            return
        if rec.status in ("running", "paused"):
            self.store.update(rec.namespace, rec.id, status="exited", pid=0)
        # its exit was handled, but its shim may have died in its delete (we died too, before
        # we saw that and cleaned up after it): what the shim would have deleted is ours to delete
        await self.clean_left_task(rec.namespace, rec.id, rec.runtime, bundle)

    async def _adopt(self, rec: Record, bundle: str, pid: int) -> None:
        try:
            address = Path(bundle, "address").read_text().strip()
        except OSError:
            # a shim removes its address once it deleted its task, and may live on for a while
            # (shim.shutdown, events to flush): nothing to adopt, it is cleaned up as a dead one
            raise errors.Unavailable(f"the shim of {rec.id[:12]} serves no task (no address file)") from None
        client = self.shim_client(address, rec.namespace)
        try:
            info: dict[str, Any] = {}
            saved = read_state_file(os.path.join(bundle, "state.json"))
            if await shimwake.sleeping(address) and saved is not None and saved.status in ("running", "paused"):
                # a sleeping shim's task is as its state file says (it sleeps only while its task
                # runs or is paused, and wakes when it exits): adopted without waking it
                info = {"container_id": saved.container_id, "incarnation": saved.incarnation}
                state: dict[str, Any] = {
                    "pid": saved.pid,
                    "status": saved.status.value,
                    "started_at": saved.started_at,
                }
            else:
                for _ in range(50):
                    info = await client.call("shim.connect", {}, timeout_s=3)
                    if info.get("task_pid"):
                        break
                    await asyncio.sleep(0.2)
                state = await client.call("shim.state", {}, timeout_s=3)
            if info.get("container_id") != rec.id:
                raise errors.Unavailable(f"shim at {address} serves another container")
        except BaseException:
            await client.close()
            raise
        incarnation = int(info.get("incarnation") or rec.incarnation)
        live = Live(rec.namespace, rec.id, incarnation, bundle, rec.runtime, client, pid, int(state.get("pid") or 0))
        live.status = str(state.get("status"))
        live.watch = shims.ShimWatch(pid)
        self.live[live.key] = live
        if incarnation != rec.incarnation or rec.tasked < incarnation:
            # a live shim created its task: its /tasks/delete is owed
            self.store.update(rec.namespace, rec.id, incarnation=incarnation, tasked=incarnation)
        started_at = _as_time(state.get("started_at"))
        if rec.handled < incarnation and started_at is not None and rec.started_at != started_at:
            # we died between the shim's start and recording it (``start``): the task ran, and
            # shows so (Up for as long as it runs, or Exited), never Created
            self.store.update(rec.namespace, rec.id, started_at=started_at, error="")
        if live.status in ("running", "paused") and rec.handled < incarnation:
            self.store.update(rec.namespace, rec.id, status=live.status, pid=live.task_pid)
        elif live.status == "stopped" and rec.handled < incarnation and state.get("exit_status") is not None:
            # it exited while we were down: record it before we serve (the monitor deletes the task)
            self._record_exit(
                live,
                TaskExit(
                    int(state["exit_status"]),
                    state.get("exited_at") or codec.utcnow(),
                    bool(state.get("oom_killed")),
                    str(state.get("error") or ""),
                    incarnation,
                ),
            )
        elif live.status == "deleted":
            # we crashed between its delete and its shutdown
            self.live[live.key] = live
            await self._shutdown(live)
            await self._forget(live)
            await self._drain_leftovers(bundle)
            return
        elif live.status == "created":
            # the start was interrupted by our crash: the task never ran
            with contextlib.suppress(errors.DockyardError):
                await client.call("shim.delete", {}, timeout_s=30)
            live.status = "stopped"  # a new start must wait for the monitor to finish this one
        log.info("reconnected to the shim of %s (pid %d, task %s)", rec.id[:12], pid, live.status)
        live.monitor = self._spawn(self._monitor(live), f"monitor-{rec.id[:12]}")

    async def _remove_orphan_bundle(self, namespace: str, container_id: str, bundle: str) -> None:
        """A bundle without a container record: a create or remove that was interrupted."""
        pid = shims.shim_alive(bundle)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        runtime = self.settings.runtime
        with contextlib.suppress(Exception):
            launch = json.loads(Path(bundle, "shim.json").read_text())
            runtime = launch.get("runtime") or runtime
        await self._drain_leftovers(bundle)
        await shims.clean_dead_task(runtime, self.runtime_root(runtime), container_id, bundle)
        await asyncio.to_thread(shutil.rmtree, bundle, True)
        log.info("removed the orphan bundle of %s/%s", namespace, container_id[:12])


def _parse_time(value: Any) -> dt.datetime | None:
    """An ISO 8601 time from a shim's report; None when absent or malformed."""
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _as_time(value: Any) -> dt.datetime | None:
    """A time from a shim's reply (a datetime, or ISO 8601 text); None when absent or malformed."""
    return value if isinstance(value, dt.datetime) else _parse_time(value)


def _start_fields(state: TaskState, incarnation: int) -> dict[str, Any]:
    """What ``start`` records of a started task (``started_at``, ``tasked``, no error), from
    the state file of the shim of ``incarnation`` that the service did not hear from (it was
    down); {} if that task never started (its runtime refused it: ``StartFailed``'s case)."""
    if state.started_at is None or not state.pid:
        return {}
    return {"started_at": state.started_at, "tasked": incarnation, **({} if state.error else {"error": ""})}


def _names(rec: Record | None) -> dict[str, str]:
    """``container_name`` and ``image`` of a task event, as a shim puts them (none without a record)."""
    if rec is None:
        return {}
    return {k: v for k, v in (("container_name", rec.name), ("image", rec.image)) if v}


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj))  # the C encoder (json.dump streams in Python)
    os.replace(tmp, path)


def _parse_size(value: str) -> int:
    """Docker's size strings: ``10m``, ``1g``, ``512k``, ``100`` (bytes)."""
    value = (value or "").strip().lower()
    if not value:
        return 0
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "b": 1}
    if value.endswith("b") and len(value) > 1 and value[-2] in units:
        value = value[:-1]
    mult = units.get(value[-1], 0)
    number = value[:-1] if mult else value
    try:
        return int(float(number) * (mult or 1))
    except ValueError:
        raise errors.InvalidArgument(f"invalid size {value!r}") from None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Done callback of a call nobody may await (an early ``shim.wait`` of a failed launch):
    its exception is retrieved, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
