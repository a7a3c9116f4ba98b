"""The execution service: containers (metadata) and their tasks (through shims).

RPC surface documented in ``common.api.execution``. ``create`` turns an image
and a request into a container record (its OCI spec included) and an active snapshot;
``start`` writes the OCI bundle and hands it to a new shim (``services.execution.tasks``); stop, kill,
wait, attach and logs act on the task through its shim or on the files it left.
Exits come back through ``TaskManager`` and end here in ``_on_exit``: waiters,
``--rm`` and the restart policy.

An ``auto_remove`` container whose clients lost us in a crash: the record keeps in
``extra["run_client"]`` the tokens of the calls that follow it (a foreground
``execution.run``, which marks it at insert; an ``attach`` or a ``wait`` for ``removed``
with a ``hold``: the gateway's ``docker run --rm``), each dropped when its call ends in
this process. The removal leaves a tombstone per token still recorded (its exit status,
``Store.delete``): a call sent again after a SIGKILL between the removal and its answer
(``wait`` with its ``hold``; a ``run``'s token is ``common.resume.run_hold``) gets it.
A restarted service that sees the container exit while tokens of calls it
does not serve are left (orphans) holds the auto-removal (``RUN_CLIENT_HOLD_S`` at most)
until each of those clients is back: the CLI, which resumes the output from the log
(``cli.resume``), removes the container itself; the gateway sends its ``wait`` again
under the same token (taken over by the new call) and releases (``release``) an attachment's
token once it read the rest of the output from the log (``services.gateway.resume``).

A ``restart`` of a running ``auto_remove`` container keeps it, as dockerd's does (daemon/restart.go
sets ``HasBeenManuallyRestarted`` before the stop, daemon/monitor.go skips ``autoRemove`` while it
is set, ``containerStart`` clears it): the exit it causes is not followed by the removal, the task
starts again (same id, same writable layer) and the next exit removes the container. The mark is
this process's alone (``_restarting``; dockerd does not persist it either): a restart cut short by a
SIGKILL of this process leaves a running container to be removed at its next exit, and one that
exited meanwhile is removed by ``recover`` (dockerd's restore removes an exited AutoRemove
container). A client following the container (``run``; the gateway's attach and ``wait`` for
``removed``) sees what dockerd's see: the output ends with the first task (dockerd closes the
attached streams at the exit), the wait for the removal goes on, and ends with the status of the
exit that removed it. A restart of one that exited already (its removal under way) is refused.

No zmq here: the wiring in ``__main__`` passes the clients.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal as signal_mod
import stat as stat_mod
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from common import codec, errors, ids, topics, trace
from common.api.base import NamespacesReply
from common.api.execution import (
    CONTAINER_STATUSES,
    LIST_FILTERS,
    AttachRequest,
    CommitReply,
    CommitRequest,
    Container,
    ContainerState,
    CreateReply,
    CreateRequest,
    ExportRequest,
    IdRequest,
    KillRequest,
    ListReply,
    ListRequest,
    LogsRequest,
    ReleaseRequest,
    RemoveRequest,
    RenameRequest,
    ResizeRequest,
    RunRequest,
    StartReply,
    Stats,
    StatsRequest,
    StopReply,
    StopRequest,
    TopReply,
    TopRequest,
    UpdateRequest,
    WaitReply,
    WaitRequest,
)
from common.api.shim import container_event_id
from common.api.shim import event_id as task_event_id
from common.cgroupmove import MovePrimer
from common.mount import volatile_supported, with_volatile
from common.resume import run_hold
from common.rpc.server import Context, rpc
from common.settings import Settings
from services.execution import logs as logs_mod
from services.execution import observe, shims, spec
from services.execution.archive import ArchiveService
from services.execution.detach import DetachScanner
from services.execution.execs import ExecService, _drop, _until
from services.execution.seccomp import default_seccomp
from services.execution.store import Record, Store, name_in_use
from services.execution.tasks import Live, StartFailed, TaskExit, TaskManager
from services.execution.volumes import Volumes
from services.shim import cgroups, mount
from services.shim.jsonlog import parse_time

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 10
ATTACH_CONNECT_S = 10.0
REMOVE_EVENT_WAIT_S = 1.0
SHIM_DEATH_GRACE_S = 2.0
"""How long a call that failed ``Unavailable`` waits to see its shim's process gone (its
socket closes a moment before its pidfd reports the exit) before the error stands."""
KILLED_PAUSE_LOOK_S = 0.5
"""How often a stop or ``rm -f`` waiting for its SIGKILLed task looks whether a ``pause``
froze it meanwhile (``_kill_and_wait``)."""
TRASH_DELAY_S = 0.05
"""A removal's trash is deleted this long after its renames: by then ``rm`` or ``run --rm``
has its answer (a thread's ``rmtree`` beside the event loop slowed the answer's last hops)."""
AFTER_EVENT_MAX_AGE_S = 60.0
"""A new task's events wait for the last action event (stop, attach) only if it is this recent."""
RESTART_BACKOFF_MIN_S = 0.1
RUN_CLIENT_HOLD_S = 60.0
"""How long a restarted service keeps an exited ``--rm`` container whose clients' calls died
with the previous process, for them to come back and read the log (``cli.resume``,
``services.gateway.resume``): the bound when one never does."""
RUN_CLIENT = "run_client"
"""``Record.extra`` key: the hold tokens of the calls following this ``--rm`` container
(a list; ``True``, as older records have it, is one ``run`` call's)."""
RESTART_BACKOFF_MAX_S = 60.0
RESTART_RESET_AFTER_S = 10.0
INIT_PATH = "/sbin/docker-init"


class _PendingAttach:
    """An attach waiting for its container's task. ``client``: the shim's client, given when
    the shim says it serves (the runtime still creating the task: the shim holds the attach
    until it exists) or with the started task; ``release``: this attach releases the task's
    held output (the only one waiting: no ``shim.start`` after it); ``connected``: its
    subscription is in place (True: and it released the output)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.client: asyncio.Future[Any] = loop.create_future()
        self.release = False
        self.connected: asyncio.Future[bool] = loop.create_future()


class ExecutionService:
    """See module docstring. ``image``, ``snapshot``, ``events`` are AsyncClients."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        image: Any,
        snapshot: Any,
        events: Any,
        publisher: Any,
        shim_client: Any,
        volumes: Volumes | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.volumes = volumes or Volumes(
            settings.service_dir("execution") / "containers.db",
            settings.service_dir("execution") / "volumes",
            self.volume_users,
        )
        self.execs = ExecService(self)
        self.archive = ArchiveService(self)
        self._backoff: dict[tuple[str, str], float] = {}
        self._restarts: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.image = image
        self.snapshot = snapshot
        self.events = events
        self.publisher = publisher
        self.tasks = TaskManager(settings, store, publisher, events, shim_client, self._on_exit)
        self.primer = MovePrimer.for_this_process(settings.prime_cgroup_move)
        """Starts the kernel's grace period for the runtime's cgroup move when a request that
        ends in one arrives (``common.cgroupmove``)."""
        self._waiters: dict[tuple[str, str], list[tuple[str, asyncio.Future[WaitReply]]]] = {}
        self._pending: dict[tuple[str, str], list[_PendingAttach]] = {}
        self._early: dict[tuple[str, str], Any] = {}
        """Per container whose task is being started: the client of its shim once it serves
        (``_attach_early``); an attach that comes meanwhile goes out on it at once."""
        self._holding: dict[tuple[str, str], set[str]] = {}
        """The hold tokens of the calls following each container in this process (``RUN_CLIENT``)."""
        self._held: dict[tuple[str, str], asyncio.Event] = {}
        """Auto-removals held for clients that lost the previous process (set: a token was
        released or the container removed: look again)."""
        self._restarting: dict[tuple[str, str], int] = {}
        """Per ``auto_remove`` container: the ``restart`` calls in flight here; an exit meanwhile
        does not remove it (dockerd's ``HasBeenManuallyRestarted``)."""
        self._restart_turns: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        """Per container with ``restart`` calls in flight here: the lock they take turns on and
        how many hold or wait for it (``_restart_turn``)."""
        self._force_removing: dict[tuple[str, str], int] = {}
        """Per container: the ``rm -f`` calls in flight here; nothing starts it meanwhile
        (dockerd's ``RemovalInProgress``), not a ``restart`` whose stop the kill ended."""
        self._background: set[asyncio.Task[Any]] = set()
        self._available_caps = spec.host_capabilities()
        self._last_event: dict[tuple[str, str], tuple[str, float]] = {}
        """Per container: the id (and monotonic time) of the last Docker-action event published
        here; the next task's events follow it (``TaskManager.start``'s ``after_event``)."""

    # -- helpers -------------------------------------------------------------------------
    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _find(self, namespace: str, ref: str) -> Record:
        return self.store.find(namespace, ref)

    def volume_users(self, namespace: str, name: str) -> list[str]:
        """Names of the containers that mount volume ``name``."""
        return [r.name for r in self.store.list(namespace) if name in (r.extra.get("volumes") or [])]

    def _live_or_conflict(self, rec: Record, *states: str) -> Live:
        live = self.tasks.get(rec.namespace, rec.id)
        if live is None or live.done.is_set() or live.status not in states:
            raise errors.Conflict(f"container '{rec.name}' is not running", {"id": rec.id})
        return live

    def _log_path(self, namespace: str, container_id: str) -> str:
        return str(self.settings.container_dir(namespace, container_id) / f"{container_id}-json.log")

    def _publish(
        self, topic: str, verb: str, namespace: str, container_id: str, event: dict[str, Any], after: str | None = None
    ) -> int:
        event_id = container_event_id(container_id, verb)
        return int(self.publisher.publish(topic, event, namespace=namespace, event_id=event_id, after=after))

    def _publish_action(
        self, topic: str, verb: str, rec: Record, extra: dict[str, Any] | None = None, after: str | None = None
    ) -> str:
        """Queue a Docker-action event about ``rec`` (``common.topics.DOCKYARD_OWN``):
        ``{id, name, image, **extra}``, id ``<cid>/container/<verb>/<unique>``; returns the id."""
        event_id = container_event_id(rec.id, f"{verb}/{ids.new_id()[:16]}")
        event = {"id": rec.id, "name": rec.name, "image": rec.image, **(extra or {})}
        self.publisher.publish(topic, event, namespace=rec.namespace, event_id=event_id, after=after)
        self._last_event[(rec.namespace, rec.id)] = (event_id, time.monotonic())
        return event_id

    def _follows(self, key: tuple[str, str]) -> str:
        """The last action event published here about the container ``key``, if lately, else
        "": a shim's event that this service's call causes (``/tasks/kill``) follows it."""
        last = self._last_event.get(key)
        if last is None or time.monotonic() - last[1] > AFTER_EVENT_MAX_AGE_S:
            return ""
        return last[0]

    def _after_event(self, rec: Record) -> str:
        """The event a new task of ``rec`` must follow in the journal ("" for the default): the
        last action event published here, if lately (an old one may be compacted away)."""
        last = self._last_event.pop((rec.namespace, rec.id), None)
        if last is None or time.monotonic() - last[1] > AFTER_EVENT_MAX_AGE_S:
            return ""
        return last[0]

    async def close(self) -> None:
        self.primer.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.tasks.close()

    async def recover(self) -> None:
        """Rebuild the live view after a restart (see ``TaskManager.recover``)."""
        started = codec.utcnow()
        trash = [os.path.join(d, n) for d in _trash_dirs(self.settings) if os.path.isdir(d) for n in os.listdir(d)]
        if trash:  # what a crash left between a removal's rename and its delete
            self._spawn(asyncio.to_thread(_empty_trash, trash), "empty-trash")
        await self.archive.recover()  # before any task starts: a crash's temporary mounts of snapshots
        await self.tasks.recover()
        for rec in self.store.list(None):
            if rec.status == "removing":
                self._spawn(self._remove(rec), f"resume-remove-{rec.id[:12]}")
            elif (
                rec.status == "exited"
                and rec.config.get("auto_remove")
                and self.tasks.get(rec.namespace, rec.id) is None
            ):
                # exited with no removal under way (a restart, or a removal held for its clients,
                # cut short by our crash): removed now, as dockerd's restore removes an exited
                # AutoRemove container. A task adopted by tasks.recover ends in _on_exit instead;
                # a second removal (tasks.recover's _on_exit of a dead shim's task) is a no-op.
                self._spawn(self._auto_remove_exited(rec), f"resume-auto-remove-{rec.id[:12]}")
            elif rec.status == "restarting" and self.tasks.get(rec.namespace, rec.id) is None:
                # its back-off timer died with the previous process
                self.store.update(rec.namespace, rec.id, restart_count=max(0, rec.restart_count - 1))
                self._schedule_restart(self.store.get(rec.namespace, rec.id) or rec)
        self._spawn(self._remove_orphan_snapshots(started), "orphan-snapshots")

    async def _remove_orphan_snapshots(self, before: dt.datetime) -> None:
        """Remove container snapshots whose create was cut short by our crash (prepared, never recorded).

        Only snapshots older than this process's start are considered, so a create running
        now is never touched. Retries while the snapshot service is down.
        """
        namespaces = {rec.namespace for rec in self.store.list(None)} | {"default"}
        tasks_dir = Path(self.settings.state) / "tasks"
        if tasks_dir.is_dir():
            namespaces |= {p.name for p in tasks_dir.iterdir() if p.is_dir()}
        delay = 0.5
        for ns in sorted(namespaces):
            while True:
                try:
                    reply = await self.snapshot.call(
                        "snapshot.list", {"filters": ['labels."dockyard.container"']}, namespace=ns, timeout_s=30
                    )
                    break
                except (errors.Unavailable, errors.DeadlineExceeded):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            for info in reply.get("snapshots") or []:
                key = str(info.get("name") or "")
                created = info.get("created_at")
                if self.store.get(ns, key) is not None or (isinstance(created, dt.datetime) and created >= before):
                    continue
                with contextlib.suppress(errors.DockyardError):
                    await self.snapshot.call("snapshot.remove", {"key": key}, namespace=ns, timeout_s=30)
                    log.info("removed snapshot %s of a container whose create was interrupted", key[:12])

    # -- create --------------------------------------------------------------------------
    @rpc("execution.create")
    async def create(self, req: CreateRequest, ctx: Context) -> CreateReply:
        """Create a container (see ``common.api.execution``); starts nothing."""
        return await self._create(req, ctx.namespace)

    async def _prepare_snapshot(self, ns: str, key: str, ref: str, image: dict[str, Any]) -> dict[str, Any]:
        """``snapshot.prepare`` of the container's snapshot on the image's chain ID -> its mounts.

        An image whose layers are not unpacked (a pull while the snapshot service was down,
        a snapshot removed by hand) is unpacked by ``image.resolve`` with ``unpack`` first.
        Raises NotFound (the image went away meanwhile), Unavailable, or the snapshot's errors.
        """
        body = {"key": key, "parent": image.get("chain_id") or "", "labels": {"dockyard.container": key}}
        try:
            return dict(await self.snapshot.call("snapshot.prepare", body, namespace=ns, timeout_s=60))
        except errors.NotFound:
            if not body["parent"]:
                raise
        try:
            await self.image.call(
                "image.resolve", {"ref": image.get("id") or ref, "unpack": True}, namespace=ns, timeout_s=300
            )
        except errors.NotFound as exc:
            raise errors.NotFound(exc.message, {"kind": "image", "ref": ref}) from None
        return dict(await self.snapshot.call("snapshot.prepare", body, namespace=ns, timeout_s=60))

    async def _create(self, req: CreateRequest, ns: str, *, run_client: str = "") -> CreateReply:
        """Create a container; ``run_client``: the hold token of a foreground ``execution.run``
        (with ``--rm``, the record is marked ``RUN_CLIENT`` at insert)."""
        if req.name:
            name = ids.validate_name(req.name)
            if self.store.name_taken(ns, name):
                raise name_in_use(name, self.store.find(ns, name).id)
        else:
            name = ids.random_name()
            while self.store.name_taken(ns, name):
                name = ids.random_name()
        self._validate(req)
        try:
            # unpacked or not: the snapshot's prepare finds out (one hop less than asking here)
            image = await self.image.call(
                "image.resolve", {"ref": req.image, "unpack": False}, namespace=ns, timeout_s=300
            )
        except errors.NotFound as exc:
            raise errors.NotFound(exc.message, {"kind": "image", "ref": req.image}) from None
        trace.mark("image resolved")
        image_cfg: dict[str, Any] = dict((image.get("config") or {}).get("config") or {})
        args = spec.process_args(image_cfg, req.entrypoint, req.cmd)
        config_env = spec.config_env(image_cfg.get("Env") or [], req.env)
        cwd = req.working_dir or image_cfg.get("WorkingDir") or "/"
        user = req.user if req.user else str(image_cfg.get("User") or "")
        stop_signal = req.stop_signal or image_cfg.get("StopSignal") or "SIGTERM"
        spec.parse_signal(stop_signal)
        container_id = ids.new_id()
        hostname = req.hostname or container_id[:12]
        env = spec.process_env(config_env, hostname=hostname, tty=req.tty)
        labels = {**(image_cfg.get("Labels") or {}), **req.labels}
        runtime = req.runtime or self.settings.runtime
        if shutil.which(runtime) is None:  # Docker's words; found later, it would fail in the shim
            raise errors.InvalidArgument(f"unknown or invalid runtime name: {runtime}")
        caps = spec.capabilities(req.cap_add, req.cap_drop, req.privileged, self._available_caps)
        no_new_privs = any(
            o.split("=")[0].split(":")[0] == "no-new-privileges" and not o.endswith("false") for o in req.security_opt
        )
        seccomp = None if req.privileged or "seccomp=unconfined" in req.security_opt else default_seccomp(caps)
        resources = spec.linux_resources(req.resources.model_dump(), swap_accounting=_swap_accounting())
        bundle = str(self.settings.bundle_dir(ns, container_id))
        cdir = str(self.settings.container_dir(ns, container_id))
        etc = {
            "/etc/hostname": os.path.join(cdir, "hostname"),
            "/etc/hosts": os.path.join(cdir, "hosts"),
            "/etc/resolv.conf": os.path.join(cdir, "resolv.conf"),
        }
        config_volumes = _config_volumes(req.volumes, image_cfg.get("Volumes"))
        mounts, volume_names, copy_up = await asyncio.to_thread(self._resolve_mounts, ns, req, config_volumes)
        if req.init:
            init_binary = spec.find_init()
            mounts.append({"type": "bind", "source": init_binary, "target": INIT_PATH, "read_only": True})
            args = [INIT_PATH, "--", *args]
        oci = spec.build_spec(
            container_id=container_id,
            args=args,
            env=env,
            cwd=cwd,
            hostname=hostname,
            domainname=req.domainname,
            tty=req.tty,
            open_stdin=req.open_stdin,
            network_mode=req.network_mode,
            read_only=req.read_only,
            caps=caps,
            privileged=req.privileged,
            no_new_privileges=no_new_privs,
            seccomp=seccomp,
            mounts=mounts,
            etc_files=etc,
            resources=resources,
            console_size=req.console_size,
            devices=spec.host_devices() if req.privileged else None,
            cgroup_v2=cgroups.is_v2(),
        )
        prepared = False
        try:
            reply = await self._prepare_snapshot(ns, container_id, req.image, image)
            prepared = True
            trace.mark("snapshot prepared")
            await asyncio.to_thread(_write_etc_files, cdir, hostname, req.network_mode)
            rec = Record(
                namespace=ns,
                id=container_id,
                name=name,
                image=req.image,
                image_id=str(image.get("id") or ""),
                image_name=str(image.get("name") or ""),
                config=req.model_dump(mode="json"),
                spec=oci,
                snapshot_key=container_id,
                runtime=runtime,
                created_at=codec.utcnow(),
                hostname=hostname,
                labels=labels,
                extra={
                    "mounts": _rootfs_mounts(reply, bool(req.auto_remove)),
                    "log_path": self._log_path(ns, container_id),
                    "user": user,
                    "stop_signal": stop_signal,
                    "args": args,
                    "env": config_env,
                    "volumes": volume_names,
                    "config_volumes": config_volumes,
                    "copy_up": copy_up,
                    "user_mounts": mounts,
                    **({RUN_CLIENT: [run_client]} if run_client and req.auto_remove else {}),
                },
            )
            self.store.insert(rec)
        except BaseException:
            await self._rollback_create(ns, container_id, bundle, cdir, prepared)
            for vol in volume_names:
                vinfo = self.volumes.get(ns, vol)
                if vinfo is not None and vinfo.anonymous:
                    with contextlib.suppress(errors.DockyardError):
                        await asyncio.to_thread(self.volumes.remove, ns, vol, True)
            raise
        self._publish(
            topics.CONTAINER_CREATE,
            "create",
            ns,
            container_id,
            {"id": container_id, "name": name, "image": req.image, "runtime": {"name": runtime}, "labels": labels},
        )
        log.info("created container %s (%s) from %s", container_id[:12], name, req.image)
        return CreateReply(id=container_id, name=name)

    def _validate(self, req: CreateRequest) -> None:
        """Refuse contradictory or malformed options before any work (Docker's messages)."""
        if req.working_dir and not req.working_dir.startswith("/"):
            raise errors.InvalidArgument(
                f"the working directory '{req.working_dir}' is invalid, it needs to be an absolute path"
            )
        if req.auto_remove and req.restart_policy.name != "no":
            raise errors.InvalidArgument("conflicting options: --restart and --rm")
        if req.restart_policy.maximum_retry_count and req.restart_policy.name != "on-failure":
            raise errors.InvalidArgument(
                f"maximum retry count cannot be used with restart policy '{req.restart_policy.name}'"
            )
        for key in req.log_opts:
            if key not in ("max-size", "max-file", "compress", "labels", "env", "tag"):
                raise errors.InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
        if "max-file" in req.log_opts:
            if not req.log_opts["max-file"].isdigit() or int(req.log_opts["max-file"]) < 1:
                raise errors.InvalidArgument("max-file must be a positive number")
            if "max-size" not in req.log_opts and int(req.log_opts["max-file"]) > 1:
                raise errors.InvalidArgument("max-file cannot be set without max-size")
        for opt in req.security_opt:
            key = opt.split("=")[0].split(":")[0]
            if key not in ("no-new-privileges", "seccomp", "label", "apparmor"):
                raise errors.InvalidArgument(f"invalid --security-opt {opt!r}")
            if key == "seccomp" and opt not in ("seccomp=unconfined", "seccomp:unconfined"):
                raise errors.InvalidArgument("only seccomp=unconfined is supported (custom profiles are not)")

    def _resolve_mounts(
        self, ns: str, req: CreateRequest, config_volumes: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], list[str], list[dict[str, str]]]:
        """Host sources for the request's mounts; creates missing bind dirs (like ``-v``) and volumes.

        Then, as moby's ``createContainerOSSpecificSettings``, a new anonymous volume for each of
        ``config_volumes`` (Config.Volumes with the image's) that no mount already covers.
        """
        out: list[dict[str, Any]] = []
        volume_names: list[str] = []
        copy_up: list[dict[str, str]] = []
        seen: set[str] = set()
        for m in req.mounts:
            target = os.path.normpath(m.target)
            if not m.target.startswith("/") or target == "/":
                raise errors.InvalidArgument(
                    f"invalid mount target {m.target!r}: must be an absolute path other than /"
                )
            if target in seen:
                raise errors.InvalidArgument(f"duplicate mount point: {target}")
            seen.add(target)
            if m.type == "bind":
                if not m.source.startswith("/"):
                    raise errors.InvalidArgument(f"invalid bind source {m.source!r}: must be an absolute host path")
                if not os.path.exists(m.source):
                    if not m.create_source:  # --mount (HostConfig.Mounts): moby's validateMountConfig
                        raise errors.InvalidArgument(
                            f'invalid mount config for type "bind": bind source path does not exist: {m.source}'
                        )
                    os.makedirs(m.source, exist_ok=True)
                out.append({"type": "bind", "source": m.source, "target": target, "read_only": m.read_only})
            elif m.type == "volume":
                vol, created = self.volumes.ensure(ns, m.source)
                volume_names.append(vol.name)
                out.append(
                    {
                        "type": "bind",
                        "source": vol.mountpoint,
                        "target": target,
                        "read_only": m.read_only,
                        "volume": vol.name,
                    }
                )
                if created or not os.listdir(vol.mountpoint):
                    copy_up.append({"target": target, "source": vol.mountpoint})
            else:
                out.append({"type": "tmpfs", "target": target, "read_only": m.read_only, "options": list(m.options)})
        for path in config_volumes:
            target = os.path.normpath(path)
            if target in seen:
                continue
            seen.add(target)
            vol, _ = self.volumes.ensure(ns)
            volume_names.append(vol.name)
            out.append(
                {"type": "bind", "source": vol.mountpoint, "target": target, "read_only": False, "volume": vol.name}
            )
            copy_up.append({"target": target, "source": vol.mountpoint})
        return out, volume_names, copy_up

    async def _rollback_create(self, ns: str, container_id: str, bundle: str, cdir: str, prepared: bool) -> None:
        if prepared:
            try:
                await self.snapshot.call("snapshot.remove", {"key": container_id}, namespace=ns, timeout_s=30)
            except errors.DockyardError as exc:
                log.error("rollback: cannot remove snapshot %s: %s", container_id, exc)
        await asyncio.to_thread(shutil.rmtree, bundle, True)
        await asyncio.to_thread(shutil.rmtree, cdir, True)

    # -- start ---------------------------------------------------------------------------
    @rpc("execution.start")
    async def start(self, req: IdRequest, ctx: Context) -> StartReply:
        """Start the container's task (see ``common.api.execution``)."""
        rec = self._find(ctx.namespace, req.id)
        pending = self._restarts.pop((rec.namespace, rec.id), None)
        if pending is not None:
            pending.cancel()
        return await self._start(rec, manual=True)

    @rpc("execution.restart")
    async def restart(self, req: StopRequest, ctx: Context) -> StartReply:
        """Stop (as ``execution.stop``) if running, then start; ``/containers/restart`` once
        started (Docker's events: kill, die, stop, start, restart).

        Restarts of one container take turns (``_restart_turn``): each is a whole stop and start
        with its own events, and all succeed, as they do on dockerd when they come one after the
        other. An ``auto_remove`` container is kept across it and removed at its next exit (see
        module docstring); Conflict ``container 'x' is being removed`` for one that exited already,
        and removed then if the start fails. dockerd: daemon/restart.go ``containerRestart``."""
        rec = self._find(ctx.namespace, req.id)
        key = (rec.namespace, rec.id)
        async with self._restart_turn(key):
            # as an earlier restart (or an rm -f) left it
            current = self.store.get(*key)
            if current is None:
                raise errors.NotFound(f"container '{req.id}' not found")
            rec = current
            keep = bool(rec.config.get("auto_remove"))
            if keep:
                await self._start_settled(rec)  # a start in flight first: its task is the one to restart
                rec = self.store.get(*key) or rec
                if rec.status != "created" and self._not_running(rec) and not self._restarting.get(key):
                    raise errors.Conflict(f"container '{rec.name}' is being removed", {"id": rec.id})
                self._restarting[key] = self._restarting.get(key, 0) + 1
            try:
                await self.stop(req, ctx)
                live = self.tasks.get(*key)
                if live is not None:
                    await asyncio.wait_for(asyncio.shield(live.done.wait()), 60)
                reply = await self._start(self.store.get(*key) or rec, manual=True)
            finally:
                if keep:
                    self._restart_ended(key)
            if not reply.already_running:
                current = self.store.get(rec.namespace, rec.id) or rec
                started = task_event_id(rec.id, current.incarnation, "start")
                self._publish_action(topics.CONTAINER_RESTART, "restart", current, after=started)
            return reply

    @contextlib.asynccontextmanager
    async def _restart_turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """Hold the restart turn of container ``key`` (``restart`` calls of one container run one
        after the other, each a whole stop and start). Without it, a second restart's stop acted
        on the task the first was stopping, and its start found the first's new task running:
        ``already running``, no ``restart`` event, one task started for two restarts. The entry
        goes with the last caller."""
        lock, users = self._restart_turns.get(key, (asyncio.Lock(), 0))
        self._restart_turns[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._restart_turns[key]
            if users > 1:
                self._restart_turns[key] = (lock, users - 1)
            else:
                del self._restart_turns[key]

    def _not_running(self, rec: Record) -> bool:
        """True when ``rec`` has no task that runs, is paused, or is being started here."""
        live = self.tasks.get(rec.namespace, rec.id)
        return live is None or live.done.is_set() or live.status not in ("running", "paused", "created")

    def _restart_ended(self, key: tuple[str, str]) -> None:
        """A ``restart`` of the ``auto_remove`` container ``key`` ended. The last one in flight
        that leaves it exited (its stop worked, its start did not) hands it to ``--rm`` now."""
        left = self._restarting.get(key, 0) - 1
        if left > 0:
            self._restarting[key] = left
            return
        self._restarting.pop(key, None)
        rec = self.store.get(*key)
        if rec is not None and rec.status == "exited" and self._not_running(rec):
            self._spawn(self._auto_remove_exited(rec), f"auto-remove-{rec.id[:12]}")

    @rpc("execution.pause")
    async def pause(self, req: IdRequest, ctx: Context) -> dict[str, Any]:
        """Freeze every process of the container (``/tasks/paused``); Conflict unless running."""
        rec = self._find(ctx.namespace, req.id)
        live = self.tasks.get(rec.namespace, rec.id)
        if live is not None and live.status == "paused":
            raise errors.Conflict(f"container '{rec.name}' is already paused", {"id": rec.id})
        live = self._live_or_conflict(rec, "running")
        await live.client.call("shim.pause", {}, timeout_s=30)
        live.status = "paused"
        self.store.update(rec.namespace, rec.id, status="paused")
        return {}

    @rpc("execution.unpause")
    async def unpause(self, req: IdRequest, ctx: Context) -> dict[str, Any]:
        """Thaw a paused container (``/tasks/resumed``); Conflict unless paused."""
        rec = self._find(ctx.namespace, req.id)
        live = self.tasks.get(rec.namespace, rec.id)
        if live is None or live.status != "paused":
            raise errors.Conflict(f"container '{rec.name}' is not paused", {"id": rec.id})
        await live.client.call("shim.resume", {}, timeout_s=30)
        live.status = "running"
        self.store.update(rec.namespace, rec.id, status="running")
        return {}

    @rpc("execution.update")
    async def update(self, req: UpdateRequest, ctx: Context) -> dict[str, Any]:
        """Change resources (and the restart policy); applied at once to a running task.

        Returns ``{warnings: [...]}``. The new values are kept for later starts.
        """
        rec = self._find(ctx.namespace, req.id)
        config = dict(rec.config)
        merged = dict(config.get("resources") or {})
        merged.update({k: v for k, v in req.resources.model_dump().items() if v is not None})
        if req.resources.memory and req.resources.memory_swap is None and merged.get("memory_swap") not in (None, -1):
            merged["memory_swap"] = None  # a new memory limit re-derives swap (Docker: 2 x memory)
        resources = spec.linux_resources(merged, swap_accounting=_swap_accounting())
        if req.restart_policy is not None:
            if config.get("auto_remove") and req.restart_policy.name != "no":
                raise errors.InvalidArgument("conflicting options: --restart and --rm")
            config["restart_policy"] = req.restart_policy.model_dump()
        config["resources"] = merged
        oci = dict(rec.spec)
        linux = dict(oci["linux"])
        linux["resources"] = {"devices": linux.get("resources", {}).get("devices", []), **resources}
        oci["linux"] = linux
        live = self.tasks.get(rec.namespace, rec.id)
        if live is not None and not live.done.is_set() and resources:
            await live.client.call("shim.update", {"resources": resources}, timeout_s=30)
        self.store.update(rec.namespace, rec.id, config=config, spec=oci)
        self._publish(
            topics.CONTAINER_UPDATE,
            f"update/{codec.utcnow().timestamp()}",
            rec.namespace,
            rec.id,
            {"id": rec.id, "name": rec.name},
        )
        return {"warnings": []}

    @rpc("execution.resize")
    async def resize(self, req: ResizeRequest, ctx: Context) -> dict[str, Any]:
        """Set the container's terminal size. Without a terminal there is nothing to resize and
        it succeeds (containerd's runc shim ignores it; dockerd answers 200 and logs ``resize``)."""
        rec = self._find(ctx.namespace, req.id)
        live = self._live_or_conflict(rec, "running", "paused")
        await live.client.call("shim.resize", {"width": req.width, "height": req.height}, timeout_s=10)
        # after the task's /tasks/start (the shim's outbox, another publisher): the docker CLI resizes
        # a -t container right after its start, and dockerd's events say start, then resize
        after = task_event_id(rec.id, live.incarnation, "start")
        self._publish_action(
            topics.CONTAINER_RESIZE, "resize", rec, {"height": req.height, "width": req.width}, after=after
        )
        return {}

    @rpc("execution.commit")
    async def commit(self, req: CommitRequest, ctx: Context) -> CommitReply:
        """``docker commit``: the container's changes as a new image (see ``common.api.execution``).

        The new image's config section is the container's effective one (its image's,
        overridden by the container's command, entrypoint, env, working dir, user, labels
        and stop signal), then ``changes``. NotFound for an unknown container.
        """
        rec = self._find(ctx.namespace, req.id)
        image = await self.image.call(
            "image.resolve", {"ref": rec.image_id, "unpack": False}, namespace=rec.namespace, timeout_s=60
        )
        section = _committed_config(dict((image.get("config") or {}).get("config") or {}), rec)
        if req.config:
            section = _merge_commit_config(req.config, section)
        live = self.tasks.get(rec.namespace, rec.id)
        paused = False
        if req.pause and live is not None and live.status == "running":
            await live.client.call("shim.pause", {}, timeout_s=30)
            paused = True
        try:
            reply = await self.image.call(
                "image.commit",
                {
                    "snapshot_key": rec.snapshot_key,
                    "parent": rec.image_id,
                    "ref": req.ref,
                    "config": section,
                    "changes": req.changes,
                    "comment": req.comment,
                    "author": req.author,
                    "container_id": rec.id,
                    "created_by": " ".join(rec.extra.get("args") or []),
                },
                namespace=rec.namespace,
                timeout_s=600,
            )
            # dockerd: pause, commit, unpause (its unpause is deferred): the commit event is in
            # the journal before the shim's /tasks/resumed (bounded wait: events may be down)
            number = self.publisher.publish(
                topics.CONTAINER_UPDATE,
                {
                    "id": rec.id,
                    "name": rec.name,
                    "image": rec.image,
                    "action": "commit",
                    "comment": req.comment,
                    "image_id": str(reply["id"]),
                    "image_ref": str(reply.get("name") or ""),
                },
                namespace=rec.namespace,
                event_id=f"{rec.id}/container/commit/{ids.new_id()[:16]}",
            )
            if paused:
                await self.publisher.delivered(number, REMOVE_EVENT_WAIT_S)
        finally:
            if paused and live is not None:
                with contextlib.suppress(errors.DockyardError):
                    await live.client.call("shim.resume", {}, timeout_s=30)
        return CommitReply(id=str(reply["id"]), name=str(reply.get("name") or ""))

    @rpc("execution.export", stream=True)
    async def export(self, req: ExportRequest, ctx: Context) -> AsyncIterator[bytes]:
        """``docker export``: stream the container's merged rootfs as a tar (1 MiB frames)."""
        rec = self._find(ctx.namespace, req.id)
        scratch = Path(self.settings.service_dir("execution")) / "export-tmp" / f"{ids.new_id()}.tar"
        await asyncio.to_thread(scratch.parent.mkdir, parents=True, exist_ok=True)
        try:
            await self.snapshot.call(
                "snapshot.export",
                {"key": rec.snapshot_key, "path": str(scratch)},
                namespace=rec.namespace,
                timeout_s=600,
            )
            f = await asyncio.to_thread(open, scratch, "rb")
        finally:
            await asyncio.to_thread(scratch.unlink, True)  # the open file stays readable
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                yield chunk
        finally:
            f.close()
        self._publish_action(topics.CONTAINER_EXPORT, "export", rec)

    @rpc("execution.namespaces", quiet=True)
    async def namespaces(self, _req: Any, _ctx: Context) -> NamespacesReply:
        """``{}`` -> ``{namespaces}``: namespaces that hold at least one container."""
        return NamespacesReply(namespaces=sorted({rec.namespace for rec in self.store.list(None)}))

    @rpc("execution.rename")
    async def rename(self, req: RenameRequest, ctx: Context) -> dict[str, Any]:
        """Rename a container; AlreadyExists when another container has the name."""
        rec = self._find(ctx.namespace, req.id)
        new = ids.validate_name(req.name)
        if new == rec.name:
            return {}
        if self.store.name_taken(rec.namespace, new):
            raise name_in_use(new, self.store.find(rec.namespace, new).id)
        self.store.update(rec.namespace, rec.id, name=new)  # a create or rename that took it meanwhile: the same error
        self.publisher.publish(
            topics.CONTAINER_UPDATE,
            {"id": rec.id, "name": new, "image": rec.image, "action": "rename", "old_name": rec.name},
            namespace=rec.namespace,
            event_id=f"{rec.id}/container/rename/{ids.new_id()[:16]}",
        )
        live = self.tasks.get(rec.namespace, rec.id)
        if live is not None and not live.done.is_set():
            try:  # the task's later events (die ...) carry the new name, as dockerd's do
                await live.client.call("shim.rename", {"name": new}, timeout_s=5)
            except errors.DockyardError as exc:  # a shim of an older release, or one ending
                log.info("shim of %s keeps the old name for its events: %s", rec.id[:12], exc)
        log.info("renamed container %s from %s to %s", rec.id[:12], rec.name, new)
        return {}

    @rpc("execution.top")
    async def top(self, req: TopRequest, ctx: Context) -> TopReply:
        """The host's ``ps <ps_args>`` rows of the container's processes (as dockerd does)."""
        rec = self._find(ctx.namespace, req.id)
        live = self._live_or_conflict(rec, "running", "paused")
        pids = set((await live.client.call("shim.pids", {}, timeout_s=10))["pids"])
        import shlex

        args = shlex.split(req.ps_args or "-ef")
        proc = await asyncio.create_subprocess_exec(
            "ps",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await proc.communicate()
        if proc.returncode:
            raise errors.InvalidArgument(f"ps {req.ps_args}: {err.decode(errors='replace').strip()}")
        titles, rows = observe.parse_ps(out.decode(errors="replace"), pids)
        self._publish_action(topics.CONTAINER_TOP, "top", rec)  # dockerd's ContainerTop logs "top"
        return TopReply(titles=titles, processes=rows)

    @rpc("execution.stats", stream=True)
    async def stats(self, req: StatsRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Resource usage, one ``Stats`` per second (``stream=false``: one, over a 1 s window)."""
        rec = self._find(ctx.namespace, req.id)
        cg = str(rec.spec.get("linux", {}).get("cgroupsPath") or "")
        prev: dict[str, Any] | None = None
        while True:
            live = self.tasks.get(rec.namespace, rec.id)
            running = live is not None and not live.done.is_set() and live.status in ("running", "paused")
            pid = live.task_pid if running and live is not None else 0
            if running:
                cur = await asyncio.to_thread(observe.sample, cg, pid)
            else:
                cur = {
                    "read": codec.utcnow(),
                    "cpu_total_ns": 0,
                    "system_cpu_ns": 0,
                    "online_cpus": 1,
                    "memory_usage": 0,
                    "memory_cache": 0,
                    "memory_limit": 0,
                    "pids": 0,
                    "block_read": 0,
                    "block_write": 0,
                    "net_rx": 0,
                    "net_tx": 0,
                }
            if prev is None and running:
                prev = cur
                await asyncio.sleep(1.0 if not req.stream else 0.5)
                continue
            yield Stats(id=rec.id, name=rec.name, **observe.compute(prev, cur)).model_dump()
            if not req.stream:
                return
            prev = cur
            await asyncio.sleep(1.0)

    async def _start(self, rec: Record, *, manual: bool = False) -> StartReply:
        """Start ``rec``'s task. ``manual``: a user's start or restart, which sets ``RestartCount``
        back to 0 as dockerd's does (daemon/start.go, ``ResetRestartManager(true)``); a restart
        by the container's policy keeps counting."""
        self.primer.prime()  # start, restart, a policy's restart; a run primed at its arrival already (one more write)
        previous = self.tasks.get(rec.namespace, rec.id)
        if previous is not None and previous.status == "stopped" and not previous.done.is_set():
            # the last incarnation is still being cleaned up (its runtime container shares our id)
            try:
                await asyncio.wait_for(asyncio.shield(previous.done.wait()), 30)
            except TimeoutError:
                raise errors.Unavailable(
                    f"the previous task of container '{rec.name}' is still being cleaned up"
                ) from None
        async with self.tasks.lock(rec.namespace, rec.id):
            current = self.store.get(rec.namespace, rec.id)
            if current is None:  # removed meanwhile (an rm -f while a restart stopped it): start nothing
                raise errors.NotFound(f"container '{rec.name}' not found")
            rec = current
            if self._force_removing.get((rec.namespace, rec.id)):
                raise errors.Conflict(f"container '{rec.name}' is marked for removal and cannot be started")
            live = self.tasks.get(rec.namespace, rec.id)
            if live is not None and live.status == "paused":
                raise errors.Conflict(f"cannot start a paused container '{rec.name}', try unpause instead")
            if live is not None and live.status in ("running", "created"):
                return StartReply(id=rec.id, pid=live.task_pid, already_running=True)
            if rec.status == "removing":
                raise errors.Conflict(f"container '{rec.name}' is being removed")
            if manual and rec.restart_count:
                self.store.update(rec.namespace, rec.id, restart_count=0)
                rec = self.store.get(rec.namespace, rec.id) or rec
            try:
                live = await self.tasks.start(
                    rec,
                    self._connect_pending,
                    attaching=bool(self._pending.get((rec.namespace, rec.id))),
                    after_event=self._after_event(rec),
                    on_client=self._attach_early,
                )
            except StartFailed as exc:
                self._fail_pending(rec, exc.message)
                self._notify(rec.namespace, rec.id, exc.exit_status, exc.message, removed=False)
                user_error = exc.exit_status in (126, 127) or exc.user_error
                cls = errors.InvalidArgument if user_error else errors.Internal
                failed = cls(exc.message, {"exit_status": exc.exit_status})
            else:
                return StartReply(id=rec.id, pid=live.task_pid)
            finally:
                self._early.pop((rec.namespace, rec.id), None)
        if rec.config.get("auto_remove"):
            # removed before the start answers, as dockerd's containerStart does: the docker CLI's
            # wait for `removed` has its answer before the start's error, which makes the CLI
            # cancel that wait (20.10 printed "error waiting for container: context canceled")
            try:
                await self._remove(rec)
            except errors.DockyardError as exc:
                log.warning("auto-remove of %s after its failed start waits: %s", rec.id[:12], exc)
                self._spawn(self._auto_remove(rec), f"auto-remove-{rec.id[:12]}")
        raise failed

    def _attach_early(self, key: tuple[str, str], client: Any) -> None:
        """The shim of ``key``'s starting task serves (its runtime still creating the task):
        the attaches waiting for it go out now, on ``client``. One alone releases the held
        output as soon as it is subscribed, which saves the ``shim.start`` round trip."""
        self._early[key] = client
        pending = self._pending.get(key, [])
        for p in pending:
            if not p.client.done():
                p.release = len(pending) == 1
                p.client.set_result(client)

    async def _connect_pending(self, live: Live) -> bool:
        """Hand the started ``live`` task to the attaches waiting for it and wait (at most
        ``ATTACH_CONNECT_S``) until they are subscribed. True if one of them released the
        task's held output (``shim.start`` has nothing left to do)."""
        pending = self._pending.pop(live.key, [])
        for p in pending:
            if not p.client.done():
                p.client.set_result(live.client)
        if not pending:
            return False
        await asyncio.wait([p.connected for p in pending], timeout=ATTACH_CONNECT_S)
        return any(p.connected.done() and p.connected.result() for p in pending)

    def _fail_pending(self, rec: Record, message: str) -> None:
        for p in self._pending.pop((rec.namespace, rec.id), []):
            if not p.client.done():
                p.client.set_exception(errors.FailedPrecondition(message))

    # -- run -----------------------------------------------------------------------------
    @rpc("execution.run", stream=True)
    async def run(self, req: RunRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``docker run`` in one call: create, attach, start, stream, wait (see ``common.api.execution``)."""
        self.primer.prime()  # the runtime's cgroup move comes ~15 ms later (common.cgroupmove)
        # a foreground run --rm is marked from the start (RUN_CLIENT): no second write on its path
        token = "" if req.detach else run_hold(ctx.request_id)
        created = await self._create(req.create_request(), ctx.namespace, run_client=token)
        trace.mark("created")
        yield {"id": created.id, "name": created.name}
        rec = self.store.get(ctx.namespace, created.id)
        if rec is None:
            raise errors.NotFound(f"container '{created.id}' not found")
        if req.detach:
            await self._start(rec)
            return
        key = (rec.namespace, rec.id)
        waiter: asyncio.Future[WaitReply] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(("removed" if req.auto_remove else "next-exit", waiter))
        attach = self._attach(AttachRequest(id=rec.id, stdin=req.stdin), ctx)
        if req.auto_remove:
            self._holding.setdefault(key, set()).add(token)  # persisted at insert
        ended = False
        try:
            yield await attach.__anext__()  # {"attached": true}: the subscription waits for the task
            start = self._spawn(self._start_attached(rec), f"run-{rec.id[:12]}")
            try:
                async for frame in attach:
                    yield frame
                    if frame.get("detached"):
                        return  # the detach keys: the container goes on running
            except errors.DockyardError:
                # an attach sent early ends when the start fails, maybe before the launch's
                # report says why: the start's error is the one to report
                await asyncio.wait([start])
                if start.cancelled() or start.exception() is None:
                    raise
            try:
                await asyncio.shield(start)
            except errors.DockyardError:
                if req.auto_remove:
                    await asyncio.shield(waiter)  # the failed container is removed first
                raise
            result = await asyncio.shield(waiter)
            ended = True  # with --rm, removed: nothing left to unmark
            trace.mark("run exit")
            yield {"exit_code": result.exit_code, "error": result.error}
        finally:
            if req.auto_remove:
                # ended here, not in a crash: nobody will resume (removed with the container: nothing to write)
                self._unhold(key, token, write=not ended)
            await attach.aclose()
            waiters = self._waiters.get(key)
            if waiters is not None:
                self._waiters[key] = [w for w in waiters if w[1] is not waiter]
                if not self._waiters[key]:
                    del self._waiters[key]

    def _hold(self, key: tuple[str, str], token: str) -> None:
        """A call of this process follows the ``--rm`` container ``key`` under ``token``
        (recorded in ``RUN_CLIENT`` unless it is already: a call sent again after a restart
        takes the hold of its lost predecessor over)."""
        self._holding.setdefault(key, set()).add(token)
        rec = self.store.get(*key)
        if rec is not None and token not in _holders(rec):
            self.store.update(*key, extra={**rec.extra, RUN_CLIENT: [*_holders(rec), token]})
        held = self._held.get(key)
        if held is not None:
            held.set()  # one orphan fewer

    def _unhold(self, key: tuple[str, str], token: str, *, write: bool = True) -> None:
        """Drop the hold ``token`` on ``key`` (its call ended here, or its client has what it
        needed: ``release``); a removal held for it looks again. ``write=False``: only this
        process's part (the record is gone)."""
        live = self._holding.get(key)
        if live is not None:
            live.discard(token)
            if not live:
                del self._holding[key]
        rec = self.store.get(*key) if write else None
        if rec is not None and token in _holders(rec):
            left = [t for t in _holders(rec) if t != token]
            extra = {k: v for k, v in rec.extra.items() if k != RUN_CLIENT}
            self.store.update(*key, extra={**extra, RUN_CLIENT: left} if left else extra)
        held = self._held.get(key)
        if held is not None:
            held.set()

    def _orphans(self, rec: Record) -> set[str]:
        """The hold tokens on ``rec`` of calls this process does not serve (they died with a
        previous one); read again from the store when ``rec`` has some (they are only ever
        dropped after ``rec`` was read)."""
        key = (rec.namespace, rec.id)
        if not set(_holders(rec)) - self._holding.get(key, set()):
            return set()
        current = self.store.get(*key)
        return set(_holders(current)) - self._holding.get(key, set()) if current is not None else set()

    @rpc("execution.release")
    async def release(self, req: ReleaseRequest, ctx: Context) -> dict[str, Any]:
        """``{id, hold}`` -> ``{}``: the client that followed an ``auto_remove`` container under
        the token ``hold`` has what it needed (it read the rest of the output from the log after
        a restart of this service): a removal held for it goes on once no other client is
        missing. An unknown token is a no-op; NotFound when the container is gone."""
        rec = self._find(ctx.namespace, req.id)
        self._unhold((rec.namespace, rec.id), req.hold)
        return {}

    async def _start_attached(self, rec: Record) -> StartReply:
        """``_start`` for ``run``: any failure also ends the attach waiting for the task."""
        try:
            return await self._start(rec)
        except BaseException as exc:
            self._fail_pending(rec, str(exc))
            raise

    # -- stop, kill ----------------------------------------------------------------------
    @rpc("execution.stop")
    async def stop(self, req: StopRequest, ctx: Context) -> StopReply:
        """Stop signal, then SIGKILL after the timeout; ``already_stopped`` if not running."""
        rec = self._find(ctx.namespace, req.id)
        await self._start_settled(rec)
        live = self.tasks.get(rec.namespace, rec.id)
        if live is None or live.done.is_set() or live.status not in ("running", "paused", "created"):
            if self._cancel_restart(rec):  # dockerd: no signal to a restarting container, but a stop
                self._publish_action(topics.CONTAINER_STOP, "stop", self.store.get(rec.namespace, rec.id) or rec)
                return StopReply(already_stopped=False, exit_code=rec.exit_code)
            return StopReply(already_stopped=True, exit_code=rec.exit_code)
        self.store.update(rec.namespace, rec.id, manual_stop=True)
        sig = spec.parse_signal(req.signal or rec.extra.get("stop_signal") or "SIGTERM")
        timeout: float | None
        if req.timeout_s is not None:
            timeout = None if req.timeout_s < 0 else float(req.timeout_s)
        else:
            configured = rec.config.get("stop_timeout")
            timeout = float(configured) if configured is not None else float(DEFAULT_STOP_TIMEOUT_S)
        await self._signal(live, sig)
        if live.status == "paused":
            with contextlib.suppress(errors.DockyardError):
                await live.client.call("shim.resume", {}, timeout_s=10)
        try:
            await asyncio.wait_for(asyncio.shield(live.done.wait()), timeout)
        except TimeoutError:
            log.info("container %s did not stop within %ss; killing it", rec.id[:12], timeout)
            await self._kill_and_wait(live)
        code = live.exit.exit_code if live.exit else None
        exited = task_event_id(rec.id, live.incarnation, "exit")
        self._publish_action(topics.CONTAINER_STOP, "stop", self.store.get(rec.namespace, rec.id) or rec, after=exited)
        return StopReply(already_stopped=False, exit_code=code)

    async def _start_settled(self, rec: Record) -> None:
        """Wait for a start of ``rec`` in flight (its shim launching, its task not registered yet)
        to end, so that ``stop`` and ``rm -f`` act on the task it starts, as dockerd's container
        lock makes them do, instead of finding nothing to stop and the container running after."""
        async with self.tasks.lock(rec.namespace, rec.id):
            pass

    async def _shim_kill(self, live: Live, sig: int) -> None:
        """``shim.kill`` of the task's init; its ``/tasks/kill`` follows our last action event
        about the container (``_follows``). Raises as ``shim.kill``."""
        after = self._follows(live.key)
        try:
            await live.client.call("shim.kill", {"signal": sig, **({"after": after} if after else {})}, timeout_s=10)
        except errors.InvalidArgument:
            if not after:
                raise
            # a shim of an older version (it outlived an upgrade) refuses the field: no order then
            await live.client.call("shim.kill", {"signal": sig}, timeout_s=10)

    async def _signal(self, live: Live, sig: int) -> None:
        """Send ``sig`` to the task of ``live`` (``shim.kill``, as ``_shim_kill``). Returns
        quietly when the task exited meanwhile, or when its shim is gone: a shim SIGKILLed as
        the call went out fails it ``Unavailable`` before its monitor cleaned up after it
        (``TaskManager.shim_died``); the caller waits for ``live.done``, which that clean-up
        sets with the exit it records (255, or its state file's). Raises ``Unavailable`` when
        the shim lives on and does not answer, or what ``shim.kill`` raises otherwise."""
        try:
            await self._shim_kill(live, sig)
        except errors.FailedPrecondition:
            pass  # it exited meanwhile
        except errors.Unavailable:
            if live.done.is_set() or await self.tasks.shim_died(live, SHIM_DEATH_GRACE_S):
                log.info("shim of %s gone while signalling it; its clean-up ends the task", live.container_id[:12])
                return
            raise

    async def _kill_and_wait(self, live: Live, timeout_s: float = 60.0) -> None:
        """SIGKILL the task of ``live`` and wait for its end (``live.done``); TimeoutError after
        ``timeout_s``. A frozen process dies only once thawed, so a task found paused, before
        the kill or while it is awaited, is resumed: a ``pause`` that came during a stop's grace
        period (or while its kill was out) left the stop waiting 60 s on a frozen task and the
        container paused with the kill pending. dockerd's ``killWithSignal`` resumes a paused
        container after its signal the same way, at each kill of its stop."""
        await self._signal(live, signal_mod.SIGKILL)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if live.status == "paused" and not live.done.is_set():
                await self._resume_signalled(live)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError
            try:
                # a pause still in flight when we looked is seen at the next look
                await asyncio.wait_for(asyncio.shield(live.done.wait()), min(left, KILLED_PAUSE_LOOK_S))
                return
            except TimeoutError:
                continue

    async def _resume_signalled(self, live: Live) -> None:
        """Thaw the paused task of ``live`` that a signal went to (a frozen process acts on it
        once thawed) and record it running, as ``unpause`` does, unless its exit came first;
        a failed ``shim.resume`` (it exited, or resumed meanwhile) is no error."""
        with contextlib.suppress(errors.DockyardError):
            await live.client.call("shim.resume", {}, timeout_s=10)
            if not live.done.is_set():
                live.status = "running"
                self.store.update(*live.key, status="running")

    @rpc("execution.kill")
    async def kill(self, req: KillRequest, ctx: Context) -> dict[str, Any]:
        """Send a signal to the running task; Conflict when it is not running.

        A paused task is resumed after SIGKILL or the container's stop signal, so that the
        signal that ends it is received (dockerd's ``killWithSignal``; another signal stays
        pending until an ``unpause``)."""
        rec = self._find(ctx.namespace, req.id)
        sig = spec.parse_signal(req.signal, signal_mod.SIGKILL)
        live = self.tasks.get(rec.namespace, rec.id)
        if live is None or live.status not in ("running", "paused"):
            raise errors.Conflict(f"container '{rec.name}' is not running", {"id": rec.id})
        if sig in (signal_mod.SIGKILL, signal_mod.SIGTERM, signal_mod.SIGINT):
            self.store.update(rec.namespace, rec.id, manual_stop=True)
        try:
            await self._shim_kill(live, sig)
        except errors.FailedPrecondition:
            raise errors.Conflict(f"container '{rec.name}' is not running", {"id": rec.id}) from None
        if live.status == "paused" and sig in (
            signal_mod.SIGKILL,
            spec.parse_signal(rec.extra.get("stop_signal") or "SIGTERM"),
        ):
            await self._resume_signalled(live)
        return {}

    # -- remove --------------------------------------------------------------------------
    @rpc("execution.remove")
    async def remove(self, req: RemoveRequest, ctx: Context) -> dict[str, Any]:
        """Remove a container; Conflict while it runs unless ``force``."""
        rec = self._find(ctx.namespace, req.id)
        key = (rec.namespace, rec.id)
        self._cancel_restart(rec)
        if req.force:
            await self._start_settled(rec)
            self._force_removing[key] = self._force_removing.get(key, 0) + 1
        try:
            live = self.tasks.get(*key)
            if live is not None and not live.done.is_set():
                if not req.force:
                    raise errors.Conflict(
                        f"you cannot remove a running container {rec.id}. "
                        "Stop the container before attempting removal or force remove",
                        {"id": rec.id},
                    )
                self.store.update(rec.namespace, rec.id, manual_stop=True)
                await self._kill_and_wait(live)
            rec = self.store.get(*key) or rec
            await self._remove(rec, volumes=req.volumes)
        finally:
            if req.force:
                left = self._force_removing.pop(key, 1) - 1
                if left:
                    self._force_removing[key] = left
        return {}

    async def _remove(self, rec: Record, volumes: bool = False) -> None:
        """Remove a stopped container: snapshot, bundle, logs, record; anonymous volumes with ``volumes``."""
        ns, cid = rec.namespace, rec.id
        async with self.tasks.lock(ns, cid):
            current = self.store.get(ns, cid)
            if current is None:
                return
            live = self.tasks.get(ns, cid)
            if live is not None and not live.done.is_set():
                raise errors.Conflict(f"container '{rec.name}' is running")
            self.store.update(ns, cid, status="removing")
            bundle = str(self.settings.bundle_dir(ns, cid))
            # a task left by a shim that died in its delete, and whose clean-up failed or was cut
            # short (TaskManager.clean_left_task): deleted, and its rootfs unmounted, before its snapshot goes
            await self.tasks.clean_left_task(ns, cid, current.runtime, bundle)
            try:
                await self.snapshot.call("snapshot.remove", {"key": rec.snapshot_key}, namespace=ns, timeout_s=60)
            except errors.NotFound:
                pass
            cdir = str(self.settings.container_dir(ns, cid))
            await self.tasks._drain_leftovers(bundle)  # the shim's undelivered events outlive its bundle
            trace.mark("outbox drained")
            trash = _trash_dirs(self.settings)
            left = _discard_dirs(bundle, cdir, trash)  # renames; the deleting happens off the critical path
            if left:
                self._spawn(_empty_trash_later(left), f"trash-{cid[:12]}")
            trace.mark("directories removed")
            # the calls holding it get its exit status from a tombstone if this process dies
            # before they have their answer (the wait for /containers/delete below); a hold taken
            # here since ``current`` was read is in ``_holding``
            holds = [*_holders(current), *sorted(self._holding.get((ns, cid), ()))]
            self.store.delete(ns, cid, tombstones=holds)
            self.execs.forget_container(ns, cid)
            self._backoff.pop((ns, cid), None)
            self._last_event.pop((ns, cid), None)
            if volumes or current.config.get("auto_remove"):
                for name in current.extra.get("volumes") or []:
                    vol = self.volumes.get(ns, name)
                    if vol is not None and vol.anonymous and not vol.in_use_by:
                        await asyncio.to_thread(self.volumes.remove, ns, name)
            # its last task's /tasks/delete (the shim's outbox, or ours) comes first in the journal;
            # a start that never created its task (the runtime refused it) owes no event to wait for
            last_task = task_event_id(cid, current.tasked, "delete") if current.tasked > 0 else None
            number = self._publish(
                topics.CONTAINER_DELETE,
                "delete",
                ns,
                cid,
                {"id": cid, "name": rec.name, "image": rec.image},
                after=last_task,
            )
            log.info("removed container %s (%s)", cid[:12], rec.name)
        # whoever waits for the removal (rm, run --rm) finds /containers/delete in the journal
        # (bounded: with the events service down the event waits in the outbox, the removal does not)
        held = self._held.get((ns, cid))
        if held is not None:
            held.set()
        await self.publisher.delivered(number, REMOVE_EVENT_WAIT_S)
        self._notify(ns, cid, current.exit_code, current.error, removed=True)

    # -- exits ---------------------------------------------------------------------------
    async def _on_exit(self, rec: Record, ex: TaskExit) -> None:
        """A task ended (called once per incarnation by the TaskManager)."""
        self._notify(rec.namespace, rec.id, ex.exit_code, ex.error, removed=False)
        if rec.config.get("auto_remove"):
            if self._restarting.get((rec.namespace, rec.id)):
                log.info("container %s exited for its restart: kept", rec.id[:12])
                return
            await self._auto_remove_exited(rec)
        elif self._should_restart(rec, ex):
            self._schedule_restart(rec)

    def _should_restart(self, rec: Record, ex: TaskExit) -> bool:
        """Docker's restart policies; a container stopped by the user is never restarted."""
        policy = rec.config.get("restart_policy") or {}
        name = policy.get("name", "no")
        if rec.manual_stop or name == "no":
            return False
        if name == "on-failure":
            limit = int(policy.get("maximum_retry_count") or 0)
            return ex.exit_code != 0 and (limit == 0 or rec.restart_count < limit)
        return name in ("always", "unless-stopped")

    def _schedule_restart(self, rec: Record) -> None:
        """Restart after a back-off: 100 ms doubling up to 1 min, reset after 10 s of running."""
        key = (rec.namespace, rec.id)
        ran_s = 0.0
        if rec.started_at is not None and rec.finished_at is not None:
            ran_s = (rec.finished_at - rec.started_at).total_seconds()
        delay = RESTART_BACKOFF_MIN_S if ran_s >= RESTART_RESET_AFTER_S else self._backoff.get(key, 0.0)
        delay = min(max(delay * 2, RESTART_BACKOFF_MIN_S), RESTART_BACKOFF_MAX_S)
        self._backoff[key] = delay
        self.store.update(rec.namespace, rec.id, status="restarting", restart_count=rec.restart_count + 1)
        log.info(
            "restarting container %s in %.1fs (policy %s)",
            rec.id[:12],
            delay,
            (rec.config.get("restart_policy") or {}).get("name"),
        )

        async def later() -> None:
            await asyncio.sleep(delay)
            current = self.store.get(rec.namespace, rec.id)
            if current is None or current.manual_stop or current.status != "restarting":
                return
            try:
                await self._start(current)
            except errors.DockyardError as exc:
                log.warning("restart of %s failed: %s", rec.id[:12], exc)
                fresh = self.store.get(rec.namespace, rec.id)
                if fresh is not None and fresh.status == "restarting":
                    self.store.update(rec.namespace, rec.id, status="exited")
            finally:
                self._restarts.pop(key, None)

        self._restarts[key] = asyncio.ensure_future(later())

    def _cancel_restart(self, rec: Record) -> bool:
        """Stop a pending restart (the user stopped or removed the container); True if one was pending."""
        task = self._restarts.pop((rec.namespace, rec.id), None)
        if task is not None:
            task.cancel()
        current = self.store.get(rec.namespace, rec.id)
        if current is not None and current.status == "restarting":
            self.store.update(rec.namespace, rec.id, status="exited", manual_stop=True)
            return True
        return task is not None

    async def _auto_remove_exited(self, rec: Record) -> None:
        """``--rm`` of the exited ``rec``: removed now, or held for its clients that lost a
        previous process (``_auto_remove_held``, in the background)."""
        if self._orphans(rec):
            self._spawn(self._auto_remove_held(rec), f"auto-remove-held-{rec.id[:12]}")
        else:
            await self._auto_remove(rec)

    async def _auto_remove_held(self, rec: Record) -> None:
        """``--rm`` of a container whose clients lost the previous process (``_orphans``): each
        reads the log and removes the container (``cli.resume``) or releases its hold (the
        gateway); removed here once none is missing, or after ``RUN_CLIENT_HOLD_S`` (a client
        died too). One at a time per container: a second one returns at once."""
        key = (rec.namespace, rec.id)
        if key in self._held:
            return
        changed = self._held[key] = asyncio.Event()
        log.info("auto-remove of %s held for its clients (at most %.0fs)", rec.id[:12], RUN_CLIENT_HOLD_S)
        deadline = time.monotonic() + RUN_CLIENT_HOLD_S
        try:
            while True:
                changed.clear()
                current = self.store.get(*key)
                if current is None:
                    return  # removed by its client
                missing = self._orphans(current)
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    if missing:
                        log.info("auto-remove of %s: clients %s did not come back", rec.id[:12], sorted(missing))
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            if self._held.get(key) is changed:
                del self._held[key]
        await self._auto_remove(current)

    async def _auto_remove(self, rec: Record) -> None:
        delay = 0.2
        while True:
            try:
                await self._remove(rec)
                return
            except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                log.warning("auto-remove of %s waits: %s", rec.id[:12], exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except errors.Conflict:
                return  # started again meanwhile

    def _notify(self, ns: str, cid: str, code: int, error: str, *, removed: bool) -> None:
        key = (ns, cid)
        waiters = self._waiters.get(key, [])
        keep = []
        for condition, fut in waiters:
            if fut.done():
                continue
            if removed or condition in ("not-running", "next-exit"):
                fut.set_result(WaitReply(exit_code=code, error=error))
            else:
                keep.append((condition, fut))
        if keep:
            self._waiters[key] = keep
        else:
            self._waiters.pop(key, None)

    @rpc("execution.wait")
    async def wait(self, req: WaitRequest, ctx: Context) -> WaitReply:
        """Block until ``condition`` holds; ``{exit_code, error}``. A ``hold`` whose container
        was removed while it held it (by this process or an earlier one, ``Store.tombstone``)
        gets the exit status it was removed with; NotFound otherwise."""
        try:
            rec = self._find(ctx.namespace, req.id)
        except errors.NotFound:
            gone = self.store.tombstone(ctx.namespace, req.hold) if req.hold else None
            if gone is None or not gone.names(req.id):
                raise
            return WaitReply(exit_code=gone.exit_code, error=gone.error)
        key = (rec.namespace, rec.id)
        live = self.tasks.get(*key)
        running = live is not None and not live.done.is_set()
        if req.condition == "not-running" and not running:
            return WaitReply(exit_code=rec.exit_code, error=rec.error)
        fut: asyncio.Future[WaitReply] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((req.condition, fut))
        hold = req.hold if req.condition == "removed" and rec.config.get("auto_remove") else ""
        if hold:
            self._hold(key, hold)  # sent again after a restart: the lost call's hold is taken over
        try:
            return await fut
        finally:
            if hold:
                self._unhold(key, hold)
            waiters = self._waiters.get(key)
            if waiters is not None:
                self._waiters[key] = [w for w in waiters if w[1] is not fut]
                if not self._waiters[key]:
                    del self._waiters[key]

    # -- list, inspect -------------------------------------------------------------------
    def _state(self, rec: Record) -> ContainerState:
        live = self.tasks.get(rec.namespace, rec.id)
        status = rec.status
        if live is not None and not live.done.is_set() and live.status in ("running", "paused"):
            status = live.status
        elif status in ("running", "paused"):
            status = "exited"
        if status == "exited" and rec.incarnation == 0:
            status = "created"
        running = status in ("running", "paused")
        return ContainerState(
            status=status,  # type: ignore[arg-type]
            running=running,
            paused=status == "paused",
            restarting=status == "restarting",
            oom_killed=rec.oom_killed,
            dead=status == "dead",
            pid=(live.task_pid if live is not None and running else 0),
            exit_code=rec.exit_code,
            error=rec.error,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
        )

    def _container(self, rec: Record) -> Container:
        args = list(rec.extra.get("args") or rec.spec.get("process", {}).get("args", []))
        return Container(
            id=rec.id,
            name=rec.name,
            namespace=rec.namespace,
            image=rec.image,
            image_id=rec.image_id,
            image_name=rec.image_name,
            created_at=rec.created_at,
            labels=rec.labels,
            snapshot_key=rec.snapshot_key,
            config=rec.config,
            env=list(rec.extra.get("env") or rec.config.get("env") or []),
            path=args[0] if args else "",
            args=args[1:],
            hostname=rec.hostname,
            state=self._state(rec),
            restart_count=rec.restart_count,
            log_path=str(rec.extra.get("log_path", "")),
            bundle=str(self.settings.bundle_dir(rec.namespace, rec.id)),
            runtime=rec.runtime,
            stop_signal=str(rec.extra.get("stop_signal") or "SIGTERM"),
            exec_ids=self.execs.for_container(rec.namespace, rec.id),
            volumes=list(rec.extra.get("config_volumes") or []),
            mounts=_mount_points(rec),
        )

    @rpc("execution.inspect", quiet=True)
    async def inspect(self, req: IdRequest, ctx: Context) -> Container:
        """The container with its Docker-like state."""
        return self._container(self._find(ctx.namespace, req.id))

    @rpc("execution.list", quiet=True)
    async def list(self, req: ListRequest, ctx: Context) -> ListReply:
        """Containers of the namespace, newest first (running only unless ``all``).

        An ``ancestor`` value is resolved to its image id first, as Docker does, so
        ``busybox``, ``busybox:latest``, ``docker.io/library/busybox`` and the id all
        match a container made from that image.
        """
        filters = req.filters
        _check_filters(filters)
        if filters.get("ancestor"):
            filters = {**filters, "ancestor": await self._ancestor_refs(ctx.namespace, filters["ancestor"])}
        out = []
        for rec in self.store.list(ctx.namespace, with_spec=False):  # a Container shows no spec
            c = self._container(rec)
            if not req.all and not c.state.running:
                continue
            if not _matches(c, filters):
                continue
            out.append(c)
            if req.limit and len(out) >= req.limit:
                break
        return ListReply(containers=out)

    async def _ancestor_refs(self, namespace: str, values: builtins.list[str]) -> builtins.list[str]:
        """``values`` plus the id of each local image one of them names (an unknown one adds nothing)."""
        out = list(values)
        for value in values:
            try:
                image = await self.image.call(
                    "image.resolve", {"ref": value, "unpack": False}, namespace=namespace, timeout_s=10
                )
            except (errors.NotFound, errors.InvalidArgument):
                continue
            except (errors.Unavailable, errors.DeadlineExceeded):
                log.warning("ancestor filter %r: image service not answering; matching by name only", value)
                continue
            out.append(str(image.get("id") or ""))
        return [v for v in out if v]

    # -- logs, attach --------------------------------------------------------------------
    @rpc("execution.logs", stream=True)
    async def logs(self, req: LogsRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """The container's json-file log as ``{s, d, t}`` frames (``LogFrame``), oldest first.

        ``tail``: the last N entries the stream/time filters accept (N < 0: all; 0: none but,
        with ``follow``, what comes next); ``since``/``until``: inclusive bounds; ``follow``:
        then what the container writes, until its task ends (or ``until`` passes). The log is
        read in bounded slices off the event loop, each slice's frames sent under the
        client's credit before the next is read (``services.execution.logs``), so a log of
        any size streams with flat memory. ``cursor``/``after``/``skip``/``tail_as_of``: resuming a
        stream exactly after a restart (``services.execution.logs``, ``common.resume``).
        NotFound for an unknown container; InvalidArgument for an ``after`` that is no time.
        """
        rec = self._find(ctx.namespace, req.id)
        path = str(rec.extra.get("log_path") or self._log_path(rec.namespace, rec.id))
        since_ns = _ns(req.since)
        until_ns = _ns(req.until)
        if until_ns is not None:
            until_ns += 999  # a datetime keeps microseconds; entries carry nanoseconds
        flt = logs_mod.LogFilter(frozenset(s for s, on in ((1, req.stdout), (2, req.stderr)) if on), since_ns, until_ns)
        try:
            reader = logs_mod.LogReader(
                path,
                flt,
                tail=req.tail,
                follow=req.follow,
                timestamps=req.timestamps,
                stamp_inline=req.stamp_inline,
                cursor=req.cursor,
                after=None if req.after is None else (req.after, req.skip),
                tail_as_of_ns=_ns(req.tail_as_of),
            )
        except ValueError:
            raise errors.InvalidArgument(f"invalid after {req.after!r}: expected an RFC 3339 time") from None
        try:
            delay = 0.02
            while True:
                live = self.tasks.get(rec.namespace, rec.id)
                ended = live is None or live.done.is_set()
                batch, caught_up = await asyncio.to_thread(reader.next_frames)
                for frame in batch:
                    yield frame
                if not caught_up:
                    continue
                if not req.follow:
                    return
                if batch:
                    delay = 0.02
                    continue
                if ended or (until_ns is not None and dt.datetime.now(dt.UTC).timestamp() * 1e9 > until_ns):
                    return
                if live is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(live.done.wait()), delay)
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
        finally:
            reader.close()  # waits for a slice being read, if any (one slice: ms)

    @rpc("execution.attach", stream=True)
    async def attach(self, req: AttachRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Live output of the task (see ``common.api.execution``); ``/containers/attach`` when
        attached (Docker's ``attach`` event: ``docker attach``, ``docker run`` without ``-d``)."""
        inner = self._attach(req, ctx, announce=True)
        try:
            async for frame in inner:
                yield frame
        finally:
            await inner.aclose()  # its cleanup (the shim call, a pending attach) at once, not when collected

    async def _attach(
        self, req: AttachRequest, ctx: Context, *, announce: bool = False
    ) -> AsyncGenerator[dict[str, Any], None]:
        rec = self._find(ctx.namespace, req.id)
        key = (rec.namespace, rec.id)
        live = self.tasks.get(*key)
        pending: _PendingAttach | None = None
        tty = bool(rec.config.get("tty"))
        hold = req.hold if rec.config.get("auto_remove") else ""
        if live is None or live.done.is_set() or live.status not in ("running", "paused"):
            pending = _PendingAttach()
            self._pending.setdefault(key, []).append(pending)
            early = self._early.get(key)
            if early is not None:
                # the shim serves, its task being created: this attach reaches it before the task
                # exists, so it is subscribed before an earlier attach releases the output
                pending.client.set_result(early)
        shim_call = None
        stdin_task: asyncio.Task[None] | None = None
        detached = asyncio.Event()
        scanner = DetachScanner(req.detach_keys) if tty and req.stdin else None
        if hold:
            self._hold(key, hold)  # recorded before the client hears it is attached (and starts it)
        try:
            if req.logs:
                reader = logs_mod.LogReader(str(rec.extra.get("log_path") or self._log_path(rec.namespace, rec.id)))
                try:
                    while True:
                        batch, done = await asyncio.to_thread(reader.next_frames)
                        for frame in batch:
                            yield frame
                        if done:
                            break
                finally:
                    reader.close()  # waits for a slice being read, if any (one slice: ms)
            if announce:
                self._publish_action(topics.CONTAINER_ATTACH, "attach", rec)
            yield {"attached": True, "tty": tty}
            if pending is not None:
                client = await pending.client
            else:
                assert live is not None
                client = live.client
            body = {"stdin": req.stdin, "stdout": req.stdout, "stderr": req.stderr}
            if pending is not None and pending.release:
                body["release"] = True
            trace.mark("attach sent")
            shim_call = await client.start("shim.attach", body, timeout_s=None)
            released = False
            try:
                _more, first = await shim_call.next_frame()
                released = isinstance(first, dict) and bool(first.get("released"))
                trace.mark("attached")
            finally:
                if pending is not None and not pending.connected.done():
                    pending.connected.set_result(released)
            if req.stdin:
                stdin_task = asyncio.create_task(_relay_stdin(ctx, shim_call, scanner, detached))
            async for frame in _until(shim_call, detached):
                yield frame
            if detached.is_set():
                yield {"detached": True}
        finally:
            if hold:
                self._unhold(key, hold)
            if pending is not None:
                with contextlib.suppress(ValueError, KeyError):
                    self._pending[key].remove(pending)
                if not pending.connected.done():
                    pending.connected.set_result(False)
            if stdin_task is not None:
                _drop(stdin_task)
            if shim_call is not None and not shim_call.done:
                await shim_call.cancel()


def _holders(rec: Record) -> list[str]:
    """The hold tokens recorded on ``rec`` (``RUN_CLIENT``)."""
    value = rec.extra.get(RUN_CLIENT)
    if value is True:
        return ["run"]  # a record of an older version: one run call
    return [str(t) for t in value] if isinstance(value, list) else []


async def _relay_stdin(ctx: Context, shim_call: Any, scanner: DetachScanner | None, detached: asyncio.Event) -> None:
    """Client stdin -> shim; EOF is passed on; on a TTY the detach keys end the attach instead."""
    while True:
        item = await ctx.recv()
        if item is None:
            await shim_call.send_eof()
            return
        data = bytes(item)
        if scanner is not None:
            data, hit = scanner.feed(data)
            if data:
                await shim_call.send(data)
            if hit:
                detached.set()
                return
            continue
        await shim_call.send(data)


def _mount_points(rec: Record) -> builtins.list[dict[str, Any]]:
    """The container's mounts as moby's ``MountPoint`` (``docker inspect``'s Mounts, snake_case):
    ``{type: volume|bind|tmpfs, name, source, destination, driver, mode, rw, propagation}``;
    a volume's ``source`` is the host directory of its data, a bind's its host path. The
    ``--init`` binary's mount is the engine's own, left out (as Docker's docker-init)."""
    out = []
    for m in rec.extra.get("user_mounts") or []:
        if rec.config.get("init") and m.get("target") == INIT_PATH:
            continue
        volume = str(m.get("volume") or "")
        kind = "volume" if volume else str(m["type"])
        out.append(
            {
                "type": kind,
                "name": volume,
                "source": str(m.get("source") or "") if kind != "tmpfs" else "",
                "destination": str(m["target"]),
                "driver": "local" if volume else "",
                "mode": "ro" if m.get("read_only") else "",
                "rw": not m.get("read_only"),
                "propagation": "rprivate" if kind == "bind" else "",
            }
        )
    return out


def _config_volumes(requested: Sequence[str], image_volumes: Mapping[str, Any] | None) -> list[str]:
    """Docker's Config.Volumes of a new container: the request's paths plus the image's
    (moby merges the image's config into the container's), cleaned, each once, sorted.
    A path from the image that is relative is taken from the root (as moby's
    ``GetResourcePath``). InvalidArgument for a requested path that is not absolute or is /."""
    out: set[str] = set()
    for path in requested:
        target = os.path.normpath(path) if path.startswith("/") else ""
        if target in ("", "/"):
            raise errors.InvalidArgument(f"invalid volume path {path!r}: must be an absolute path other than /")
        out.add(target)
    for path in image_volumes or {}:
        target = os.path.normpath("/" + str(path).lstrip("/"))
        if target != "/":
            out.add(target)
    return sorted(out)


def _ns(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return parse_time(value.isoformat())


def _check_filters(filters: Mapping[str, list[str]]) -> None:
    """Refuse a filter ``_matches`` does not know, as dockerd's ``GET /containers/json`` does
    (``invalid filter 'bogus'``, ``invalid filter 'status=bogus'``): never an unfiltered list."""
    for key, values in filters.items():
        if key not in LIST_FILTERS:
            raise errors.InvalidArgument(f"invalid filter '{key}'")
        if key == "status":
            for value in values:
                if value not in CONTAINER_STATUSES:
                    raise errors.InvalidArgument(f"invalid filter 'status={value}'")


def _matches(c: Container, filters: dict[str, list[str]]) -> bool:
    """Docker's ``ps`` filters: id, name, label, status, ancestor, exited (OR within, AND across)."""
    for key, values in filters.items():
        if not values:
            continue
        if key == "id" and not any(c.id.startswith(v) for v in values):
            return False
        if key == "name" and not any(v.lstrip("/") in c.name for v in values):
            return False
        if key == "status" and c.state.status not in values:
            return False
        if key == "exited" and not (c.state.status == "exited" and str(c.state.exit_code) in values):
            return False
        if key == "ancestor" and not any(
            v in (c.image, c.image_id, c.image_name) or c.image_id.startswith(v) for v in values
        ):
            return False
        if key == "label":
            for v in values:
                k, sep, want = v.partition("=")
                if k not in c.labels or (sep and c.labels[k] != want):
                    return False
    return True


def _rootfs_mounts(reply: Mapping[str, Any], auto_remove: bool) -> list[dict[str, Any]]:
    """The container's rootfs mounts from ``snapshot.prepare``'s reply: an ``auto_remove``
    container's writable overlay is ``volatile`` (``common.mount.with_volatile``) where the
    kernel has it; its writable layer goes with it, so nothing needs syncing at its exit."""
    mounts = [dict(m) for m in reply.get("mounts") or []]
    return with_volatile(mounts) if auto_remove and volatile_supported() else mounts


def _write_etc_files(cdir: str, hostname: str, network_mode: str) -> None:
    os.makedirs(cdir, exist_ok=True)
    host_hosts = host_resolv = None
    with contextlib.suppress(OSError):
        host_hosts = Path("/etc/hosts").read_text()
    with contextlib.suppress(OSError):
        host_resolv = Path("/etc/resolv.conf").read_text()
    files = {
        "hostname": hostname + "\n",
        "hosts": spec.hosts_file(hostname, network_mode, host_hosts),
        "resolv.conf": spec.resolv_conf(host_resolv, network_mode),
    }
    for name, text in files.items():
        tmp = os.path.join(cdir, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(cdir, name))


def _trash_dirs(settings: Settings) -> tuple[str, str]:
    """``(<state>/trash, <root>/trash)``: where removed bundles and container directories wait to be deleted."""
    return os.path.join(str(settings.state), "trash"), os.path.join(str(settings.root), "trash")


def _discard_dirs(bundle: str, cdir: str, trash: tuple[str, str]) -> list[str]:
    """Unmount the bundle's rootfs, then move the bundle and the container directory into the trash.

    A rename is one metadata operation where deleting a bundle is a dozen, so ``rm`` and
    ``run --rm`` return sooner; ``_empty_trash`` deletes them afterwards (and at start-up,
    whatever a crash left there). Falls back to deleting in place (another file system,
    no trash directory). Returns the trash entries to delete.
    """
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.isdir(rootfs) and mount.is_mountpoint(rootfs):
        with contextlib.suppress(OSError):
            mount.unmount(rootfs, detach=True)
    moved = []
    for path, where in ((bundle, trash[0]), (cdir, trash[1])):
        if not os.path.lexists(path):
            continue
        target = os.path.join(where, f"{os.path.basename(path)}.{os.urandom(4).hex()}")
        try:
            os.makedirs(where, exist_ok=True)
            os.rename(path, target)
            moved.append(target)
        except OSError:
            _remove_tree(path)
    return moved


def _remove_tree(path: str) -> None:
    """Delete a bundle or container directory, never through a mount in it (``_remove_within``):
    what stays mounted is left, with the directories above it and a warning, for the next
    start's ``_empty_trash``. An ``rmtree`` would delete a still-mounted rootfs's files, and
    those of anything mounted below, through the mount."""
    if not _remove_within(path):
        log.warning("left %s: something is still mounted in it", path)


def _remove_within(path: str) -> bool:
    """Delete ``path`` and what is in it without entering a mount point (``mount.is_mountpoint``:
    statx's mount-root attribute, one syscall a directory, no mountinfo): one found is
    unmounted lazily first, one that stays mounted is kept. True when all of it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat_mod.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return True
    if mount.is_mountpoint(path):
        with contextlib.suppress(OSError):
            mount.unmount(path, detach=True)
        if mount.is_mountpoint(path):
            return False
    try:
        with os.scandir(path) as it:
            children = [entry.path for entry in it]
    except OSError:
        return False
    gone = True
    for child in children:
        gone = _remove_within(child) and gone
    if gone:
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return gone


def _empty_trash(entries: list[str]) -> None:
    """Delete trash entries (``_discard_dirs``'s, or what a crash left in the trash directories)."""
    for path in entries:
        _remove_tree(path)


async def _empty_trash_later(entries: list[str]) -> None:
    """``_empty_trash`` in a thread, ``TRASH_DELAY_S`` from now."""
    await asyncio.sleep(TRASH_DELAY_S)
    await asyncio.to_thread(_empty_trash, entries)


def _swap_accounting() -> bool:
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") or os.path.exists(
        "/sys/fs/cgroup/cgroup.controllers"
    )


__all__ = ["ExecutionService", "shims"]


_COMMIT_FIELDS = ("Cmd", "Entrypoint", "Env", "Labels", "User", "WorkingDir", "ExposedPorts", "Volumes", "StopSignal")


def _merge_commit_config(user: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """Docker's commit body over the container's config section (moby ``daemon/commit.go`` merge):
    a field the body leaves empty is the container's; Env, Labels, ExposedPorts and Volumes
    add the container's entries the body does not name; an Entrypoint in the body keeps its
    own (possibly empty) Cmd. InvalidArgument for a field of the wrong shape."""
    out = dict(container)
    for key in _COMMIT_FIELDS:
        value = user.get(key)
        ok = (
            value is None
            or (key in ("Cmd", "Entrypoint", "Env") and isinstance(value, list | str))
            or (key in ("Labels", "ExposedPorts", "Volumes") and isinstance(value, dict))
            or (key in ("User", "WorkingDir", "StopSignal") and isinstance(value, str))
        )
        if not ok:
            raise errors.InvalidArgument(f"commit config: {key} has the wrong type ({type(value).__name__})")
    listed = {k: ([v] if isinstance(v, str) else v) for k, v in user.items() if k in ("Cmd", "Entrypoint", "Env")}
    if listed.get("Env"):
        names = {str(e).partition("=")[0] for e in listed["Env"]}
        out["Env"] = [str(e) for e in listed["Env"]] + [
            e for e in container.get("Env") or [] if e.partition("=")[0] not in names
        ]
    for key in ("Labels", "ExposedPorts", "Volumes"):
        if user.get(key):
            out[key] = {**(container.get(key) or {}), **user[key]}
    if listed.get("Entrypoint"):
        out["Entrypoint"] = [str(a) for a in listed["Entrypoint"]]
        out["Cmd"] = [str(a) for a in listed.get("Cmd") or []] or None
    elif listed.get("Cmd"):
        out["Cmd"] = [str(a) for a in listed["Cmd"]]
    for key in ("User", "WorkingDir", "StopSignal"):
        if user.get(key):
            out[key] = user[key]
    return {k: v for k, v in out.items() if v is not None}


def _committed_config(image_config: dict[str, Any], rec: Record) -> dict[str, Any]:
    """The config section ``docker commit`` records: the image's, with the container's overrides."""
    cfg = dict(rec.config)
    out = dict(image_config)
    if cfg.get("entrypoint") is not None:
        entrypoint = list(cfg["entrypoint"])
        out["Entrypoint"] = None if entrypoint in ([], [""]) else entrypoint
        out["Cmd"] = list(cfg["cmd"]) if cfg.get("cmd") else None  # Docker: a new entrypoint drops the image's Cmd
    elif cfg.get("cmd"):
        out["Cmd"] = list(cfg["cmd"])
    out["Env"] = spec.merge_env(image_config.get("Env") or [], cfg.get("env") or [])
    if cfg.get("working_dir"):
        out["WorkingDir"] = cfg["working_dir"]
    if cfg.get("user"):
        out["User"] = cfg["user"]
    labels = {**(image_config.get("Labels") or {}), **(cfg.get("labels") or {})}
    out["Labels"] = labels or None
    if cfg.get("stop_signal"):
        out["StopSignal"] = cfg["stop_signal"]
    volumes = rec.extra.get("config_volumes") or cfg.get("volumes") or []
    if volumes:
        out["Volumes"] = {**(image_config.get("Volumes") or {}), **{str(p): {} for p in volumes}}
    return {k: v for k, v in out.items() if v is not None}
