"""Execution service API: containers (metadata) and their tasks, as Docker users see them.

A container is metadata (``Container``: image, config as received, labels, snapshot
key; containerd's Containers service); its task is the running init process, held
by a per-container shim (``common.api.shim``). Containers are named by their full
64-hex id, any unique id prefix, or their name (with or without a leading ``/``);
an unknown one raises NotFound ``container 'x' not found``.

Methods (service ``execution``; every method acts in the request's namespace):

- ``execution.create`` ``CreateRequest`` -> ``CreateReply``: resolve the image
  (``image.resolve``; NotFound ``image 'x' not found`` lets the caller pull and retry),
  prepare the rootfs snapshot, build the OCI spec and bundle. Starts nothing.
  InvalidArgument for a bad config (e.g. no command: ``no command specified``),
  AlreadyExists for a name in use. Publishes ``/containers/create``.
- ``execution.run`` ``RunRequest`` -> stream: ``docker run`` in one call. Creates the
  container (errors as ``create``: NotFound with ``details.kind == "image"`` lets the
  caller pull and call again), then sends ``{"id", "name"}``. With ``detach`` it starts
  the task and ends. Otherwise it attaches (``{"attached": true, "tty"}``; nothing the
  task writes is missed), starts, streams ``{s, d}`` output frames (the call's own stream
  goes to stdin when ``stdin``), waits for the exit (and for the removal with
  ``auto_remove``) and sends ``{"exit_code", "error"}`` last. A process that cannot start
  raises as ``start`` does (after the removal with ``auto_remove``).
- ``execution.start`` ``IdRequest`` -> ``StartReply``: launch the shim, create and start
  the task. ``already_running=true`` (Docker's 304) if it runs. A process that cannot
  start raises InvalidArgument with ``details.exit_status`` 126 or 127 (the container
  is then exited with that status).
- ``execution.stop`` ``StopRequest`` -> ``StopReply``: StopSignal (default SIGTERM), then
  SIGKILL after ``timeout_s`` (default the container's, else 10). ``already_stopped``
  (304) if it was not running.
- ``execution.kill`` ``KillRequest`` -> ``{}``: a signal (name or number, default
  SIGKILL). Conflict ``container 'x' is not running``.
- ``execution.remove`` ``RemoveRequest`` -> ``{}``: Conflict while running unless
  ``force`` (kill first). Removes the snapshot, bundle and logs; ``/containers/delete``.
- ``execution.wait`` ``WaitRequest`` -> ``WaitReply``: block until the condition
  (``not-running``, ``next-exit``, ``removed``) holds (no deadline).
- Holds (``hold`` of ``attach``, and of ``wait`` for ``removed``): a client that follows an
  ``auto_remove`` container through the execution service names itself with a token; the
  record keeps it while the call runs, so that a restarted service which finds the container
  exited holds its auto-removal (at most ``RUN_CLIENT_HOLD_S``, 60 s) until every client whose
  call died with the previous process is back: a ``wait`` sent again with the same token takes
  its hold over; a client that read the rest of the output from the log says so with
  ``execution.release`` ``ReleaseRequest`` ``{id, hold}`` -> ``{}`` (NotFound once removed).
  A container removed while calls held it keeps its exit status for each of their tokens
  (10 minutes): an ``execution.wait`` with such a ``hold`` (a ``run``'s token is
  ``common.resume.run_hold`` of its request id) gets it instead of NotFound, so a call cut
  off by a SIGKILL right after the removal still learns how the container exited.
- ``execution.list`` ``ListRequest`` -> ``ListReply``; ``execution.inspect``
  ``IdRequest`` -> ``Container``.
- ``execution.logs`` ``LogsRequest`` -> stream of ``LogFrame`` ``{s, d, t}``
  (``follow``: until the container stops).
- ``execution.attach`` ``AttachRequest`` -> stream: first ``{"attached": true, "tty"}``
  (the subscription is in place; a not-yet-started container is attached as soon as
  it starts), then ``{s, d}`` frames until the output ends. With ``stdin`` the
  client's own stream (bytes, then EOF) goes to the container's stdin.
- ``execution.restart`` ``StopRequest`` -> ``StartReply``: stop (as ``stop``) then start.
  Restarts of one container at once take turns, each a whole stop and start (events kill,
  die, stop, start, restart each); a ``stop`` meanwhile waits for the same exit.
  An ``auto_remove`` container is kept across it (same id, same writable layer) and removed
  at its next exit, as dockerd does; a ``run`` or a ``wait`` for ``removed`` following it goes
  on until that removal and gets that exit's status (the output of an attach ends with the
  first task). Conflict ``container 'x' is being removed`` for one that exited already.
- ``execution.pause`` / ``execution.unpause`` ``IdRequest`` -> ``{}``: freezer;
  Conflict ``container 'x' is already paused`` / ``is not paused`` / ``is not running``.
- ``execution.update`` ``UpdateRequest`` -> ``{warnings: [str]}``: new resources (and
  restart policy), applied to a running task at once and kept for later starts.
- ``execution.resize`` ``ResizeRequest`` -> ``{}``: the TTY's rows and columns.
- ``execution.top`` ``TopRequest`` -> ``TopReply``: the host's ``ps <ps_args>`` rows of
  the container's processes.
- ``execution.stats`` ``StatsRequest`` -> stream of ``Stats`` (one per second; one only
  with ``stream=false``, computed over a 1 s window).
- ``execution.exec_create`` ``ExecCreateRequest`` -> ``ExecCreateReply``: Conflict when
  the container does not run. ``execution.exec_start`` ``ExecStartRequest`` -> stream:
  ``{"attached": true, "tty", "pid"}``, output ``{s, d}``, last ``{"exit_code"}`` (or
  ``{"detached": true}``); with ``detach`` one frame ``{"attached": false, "pid"}``.
  ``execution.exec_inspect`` ``ExecIdRequest`` -> ``ExecInfo``;
  ``execution.exec_resize`` ``ExecResizeRequest`` -> ``{}``.
- ``execution.exec`` ``ExecRunRequest`` -> stream: ``exec_create`` and ``exec_start`` in
  one call (what ``dockyard exec`` uses): ``{"id"}`` first (errors before it are
  ``exec_create``'s), then ``exec_start``'s frames.
- ``execution.archive_stat`` ``ArchivePathRequest`` -> ``PathStat`` (``docker cp``, moby's
  ``HEAD /containers/{id}/archive``): the path resolved in the container's root (symlinks
  followed in scope, never out of it; a volume or bind path in the mount's source), its last
  component not followed. NotFound ``Could not find the file P in container C``.
- ``execution.archive_get`` ``ArchivePathRequest`` -> stream: ``{"stat": PathStat}`` first
  (errors before it as ``archive_stat``), then the tar as bytes frames (moby's names: the
  path's basename is the top entry, ``dir/.`` gives ``./``). ``/containers/update``
  action ``archive-path``.
- ``execution.archive_put`` ``ArchivePutRequest`` -> stream: ``{"ready": true}`` once the
  destination is known good (an existing directory, writable), then the call's own stream
  (the tar, plain or compressed, then EOF) is extracted and ``{"entries": n}`` ends it.
  NotFound as above; InvalidArgument ``extraction point is not a directory``, ``container
  rootfs is marked read-only``, ``mounted volume is marked read-only``, a tar entry that
  would leave the directory, ``cannot overwrite directory ...``, a stream that is no tar.
  ``/containers/update`` action ``extract-to-dir``. A stopped container's snapshot is
  mounted for the call (start and removal wait for it).
- ``execution.volume_create`` ``VolumeCreateRequest`` -> ``Volume``;
  ``execution.volume_list`` ``{size?}`` -> ``VolumeListReply`` (``size``: measure each); ``execution.volume_inspect``
  ``{name}`` -> ``Volume``; ``execution.volume_remove`` ``VolumeRemoveRequest`` -> ``{}``
  (Conflict while a container uses it); ``execution.volume_prune`` ``{}`` -> ``{removed}``.

Attach and exec streams on a TTY end with ``{"detached": true}`` when the client types
the detach keys (default ctrl-p,ctrl-q); the container keeps running.

Events published here: ``/containers/create`` ``{id, name, image, runtime, labels}``,
``/containers/update`` ``{id, name}``, ``/containers/delete`` ``{id, name}``; and, for a
shim that died, ``/tasks/exit`` + ``/tasks/delete`` under the shim's own event ids.
The task events themselves come from the shims (``common.api.shim``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from common.api.base import Reply, Request

WaitCondition = Literal["not-running", "next-exit", "removed"]


class RestartPolicy(Request):
    name: Literal["no", "always", "on-failure", "unless-stopped"] = "no"
    maximum_retry_count: int = Field(default=0, ge=0, description="on-failure only; 0 = unlimited")


class Resources(Request):
    """Docker's resource flags; None = not set (unlimited)."""

    memory: int | None = Field(default=None, ge=0, description="bytes (--memory)")
    memory_swap: int | None = Field(default=None, ge=-1, description="memory+swap bytes; -1 = unlimited")
    nano_cpus: int | None = Field(default=None, ge=0, description="--cpus x 1e9")
    cpu_shares: int | None = Field(default=None, ge=0)
    cpu_period: int | None = Field(default=None, ge=0)
    cpu_quota: int | None = Field(default=None)
    cpuset_cpus: str | None = None
    pids_limit: int | None = Field(default=None, description="<= 0 = unlimited")


class Mount(Request):
    """A mount into the container: ``bind`` (host path), ``volume`` (named volume) or ``tmpfs``."""

    type: Literal["bind", "volume", "tmpfs"]
    source: str = Field(default="", description="host path (bind) or volume name ('' = anonymous)")
    target: str = Field(min_length=1, description="absolute path in the container")
    read_only: bool = False
    options: list[str] = Field(default_factory=list, description="tmpfs options, e.g. size=64m, mode=1777")
    create_source: bool = Field(
        default=True,
        description="bind: make a missing host path as a directory (-v, Binds); False refuses it "
        "(--mount, HostConfig.Mounts: 'bind source path does not exist')",
    )


class CreateRequest(Request):
    """A container's configuration as the client sent it (stored and echoed by inspect)."""

    image: str = Field(min_length=1, description="required; reference or image id")
    name: str | None = Field(default=None, description="optional; Docker name rules; random if absent")
    cmd: list[str] | None = Field(default=None, description="None = the image's Cmd")
    entrypoint: list[str] | None = Field(default=None, description="None = the image's; [] or [''] = none")
    env: list[str] = Field(default_factory=list, description="KEY=VALUE (or KEY to take it from nowhere: dropped)")
    working_dir: str = ""
    user: str = ""
    group_add: list[str] = Field(default_factory=list)
    hostname: str = ""
    domainname: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    auto_remove: bool = False
    network_mode: str = Field(default="none", description="'none' (own netns with lo only) or 'host'")
    stop_signal: str | None = None
    stop_timeout: int | None = None
    read_only: bool = False
    mounts: list[Mount] = Field(default_factory=list)
    volumes: list[str] = Field(
        default_factory=list,
        description="Docker's Config.Volumes: container paths that each get a new anonymous volume unless "
        "a mount already covers them (the image's Volumes are added to these)",
    )
    init: bool = False
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    resources: Resources = Field(default_factory=Resources)
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    privileged: bool = False
    security_opt: list[str] = Field(default_factory=list)
    log_opts: dict[str, str] = Field(default_factory=dict, description="json-file: max-size, max-file")
    console_size: tuple[int, int] | None = Field(default=None, description="[height, width]")
    runtime: str | None = Field(default=None, description="runc or crun; default: the service's setting")
    platform: str | None = None


class RunRequest(CreateRequest):
    """``execution.run``: a ``CreateRequest`` plus how the client runs it (``docker run``)."""

    detach: bool = Field(default=False, description="start and reply; no output, no waiting")
    stdin: bool = Field(default=False, description="the call's own stream goes to the container's stdin")

    def create_request(self) -> CreateRequest:
        """The ``CreateRequest`` part (what the container record keeps as its config)."""
        return CreateRequest.model_validate(self.model_dump(exclude={"detach", "stdin"}))


class CreateReply(Reply):
    id: str
    name: str
    warnings: list[str] = Field(default_factory=list)


class IdRequest(Request):
    id: str = Field(min_length=1, description="required; id, id prefix or name")


class RenameRequest(Request):
    id: str = Field(min_length=1, description="required; id, id prefix or current name")
    name: str = Field(min_length=1, description="required; the new name (Docker name rules)")


class CommitRequest(Request):
    """``execution.commit`` (``docker commit``)."""

    id: str = Field(min_length=1, description="required; the container")
    ref: str = Field(default="", max_length=1024, description="optional; REPO[:TAG] of the new image")
    comment: str = Field(default="", max_length=4096)
    author: str = Field(default="", max_length=1024)
    changes: list[str] = Field(default_factory=list, description="Dockerfile instructions (CMD, ENV, ...)")
    pause: bool = Field(default=True, description="freeze a running container while its changes are read")
    config: dict[str, Any] | None = Field(
        default=None,
        description="optional; Docker's commit body (a container Config, PascalCase: Cmd, Entrypoint, Env, "
        "Labels, User, WorkingDir, ExposedPorts, Volumes, StopSignal): the new image's config, its empty "
        "fields filled from the container's (moby's merge)",
    )


class CommitReply(Reply):
    id: str = Field(description="the new image's id")
    name: str = ""


class ExportRequest(Request):
    id: str = Field(min_length=1, description="required; the container")


class ArchivePathRequest(Request):
    """``execution.archive_stat`` / ``execution.archive_get``: a path in the container."""

    id: str = Field(min_length=1, description="required; the container")
    path: str = Field(min_length=1, description="required; absolute, or relative to /, in the container")


class ArchivePutRequest(Request):
    """``execution.archive_put``: where to extract the tar the client streams."""

    id: str = Field(min_length=1, description="required; the container")
    path: str = Field(min_length=1, description="required; an existing directory in the container")
    no_overwrite_dir_non_dir: bool = Field(
        default=False, description="refuse to replace a directory by a non-directory or the reverse"
    )
    copy_uid_gid: bool = Field(
        default=False, description="entries owned by the container's user (its Config.User) instead of the tar's ids"
    )


class PathStat(Reply):
    """moby's ``ContainerPathStat`` (the ``X-Docker-Container-Path-Stat`` header, base64 JSON)."""

    name: str
    size: int = Field(description="bytes (lstat)")
    mode: int = Field(description="Go os.FileMode bits: permissions | ModeDir 1<<31 | ModeSymlink 1<<27 ...")
    mtime: str = Field(description="RFC 3339 (nanoseconds), UTC")
    link_target: str = Field(
        default="", description="a symlink's target fully resolved in the container (moby's linkTarget)"
    )


class StartReply(Reply):
    id: str
    pid: int = 0
    already_running: bool = False


class StopRequest(Request):
    id: str = Field(min_length=1)
    timeout_s: int | None = Field(
        default=None, description="None = the container's StopTimeout, else 10; -1 = wait forever"
    )
    signal: str | None = None


class StopReply(Reply):
    already_stopped: bool = False
    exit_code: int | None = None


class KillRequest(Request):
    id: str = Field(min_length=1)
    signal: str = Field(default="SIGKILL", description="name (SIGTERM, TERM) or number")


class RemoveRequest(Request):
    id: str = Field(min_length=1)
    force: bool = False
    volumes: bool = Field(default=False, description="also remove anonymous volumes")


HOLD_DESCRIPTION = (
    "optional; a token (unique per client) under which this call holds the auto-removal of an "
    "``auto_remove`` container for its client across a restart of the execution service"
)


class WaitRequest(Request):
    id: str = Field(min_length=1)
    condition: WaitCondition = "not-running"
    hold: str = Field(default="", max_length=128, description=HOLD_DESCRIPTION + " (with ``removed``)")


class ReleaseRequest(Request):
    """``execution.release``: the client of a ``hold`` has what it needed."""

    id: str = Field(min_length=1, description="required; the container")
    hold: str = Field(min_length=1, max_length=128, description="required; the token the client held it under")


class WaitReply(Reply):
    exit_code: int
    error: str = ""


LIST_FILTERS = frozenset({"id", "name", "label", "status", "ancestor", "exited"})
"""The filters ``execution.list`` applies (the gateway applies Docker's others itself)."""
CONTAINER_STATUSES = frozenset({"created", "restarting", "running", "removing", "paused", "exited", "dead"})
"""The values of a ``status`` filter (Docker's container states)."""


class ListRequest(Request):
    all: bool = False
    filters: dict[str, list[str]] = Field(
        default_factory=dict, description="id, name, label, status, ancestor, exited (LIST_FILTERS)"
    )
    limit: int | None = None


class ContainerState(Reply):
    """Docker's ``State`` object."""

    status: Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class Container(Reply):
    """A container: metadata (immutable unless noted) plus its current state."""

    id: str
    name: str = Field(description="without leading '/'; mutable (rename)")
    namespace: str
    image: str = Field(description="the reference as given at create")
    image_id: str = Field(description="config digest of the image")
    image_name: str = Field(default="", description="normalised image name")
    created_at: dt.datetime
    labels: dict[str, str] = Field(default_factory=dict)
    snapshot_key: str
    config: dict[str, Any] = Field(description="the CreateRequest as received")
    env: list[str] = Field(
        default_factory=list,
        description="Docker's Config.Env: the request's entries, then the image's it does not set "
        "(no HOSTNAME, TERM or default PATH: those are added to the process only)",
    )
    path: str = Field(default="", description="argv[0] of the init process")
    args: list[str] = Field(default_factory=list)
    hostname: str = ""
    state: ContainerState
    restart_count: int = 0
    log_path: str = ""
    bundle: str = ""
    runtime: str = ""
    exec_ids: list[str] = Field(default_factory=list)
    mounts: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[str] = Field(
        default_factory=list, description="Docker's Config.Volumes: the request's paths and the image's, sorted"
    )
    stop_signal: str = "SIGTERM"


class ListReply(Reply):
    containers: list[Container]


class LogsRequest(Request):
    id: str = Field(min_length=1)
    follow: bool = False
    stdout: bool = True
    stderr: bool = True
    tail: int | None = Field(
        default=None, description="only the last N entries the other filters accept; None or < 0 = all"
    )
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    timestamps: bool = False
    stamp_inline: bool = Field(
        default=False,
        description="with timestamps: each entry's time and a space are written into ``d`` before "
        "its output, so one frame carries many entries (without it, one frame per entry, its time in ``t``)",
    )
    cursor: bool = Field(
        default=False,
        description="every frame carries ``c``: where the stream is in the log after it (see LogFrame.c), "
        "for a client that loses the stream to resume it exactly with ``after``/``skip``",
    )
    after: str | None = Field(
        default=None,
        max_length=64,
        description="resume a stream: only entries after the ``skip``-th entry (among those the filters "
        "accept) with exactly this RFC 3339 nano time; ``tail`` is ignored. When the log no longer "
        "holds that entry (rotated out), a frame with ``gap`` comes before the first entry sent",
    )
    skip: int = Field(default=0, ge=0, description="with ``after``: entries at that time already received")
    tail_as_of: dt.datetime | None = Field(
        default=None,
        description="with ``tail``: the tail is taken of the entries logged at or before this time; "
        "every later one comes after it (resuming a ``tail`` + ``follow`` that received nothing yet)",
    )


class LogFrame(Reply):
    s: int = Field(description="1 stdout, 2 stderr")
    d: bytes
    t: str = Field(default="", description="RFC 3339 nano timestamp of the entry")
    c: list[Any] | None = Field(
        default=None,
        description="with ``cursor``: ``[time, n]``, the RFC 3339 nano time of the last entry sent so far "
        "and how many entries with that time were sent; ``after=time, skip=n`` resumes right after it",
    )
    gap: bool = Field(default=False, description="entries between ``after`` and what follows were rotated out")


class AttachRequest(Request):
    id: str = Field(min_length=1)
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    logs: bool = Field(default=False, description="replay the log before live output")
    detach_keys: str = ""
    hold: str = Field(default="", max_length=128, description=HOLD_DESCRIPTION)


class ResizeRequest(Request):
    id: str = Field(min_length=1)
    height: int = Field(ge=0, le=65535)
    width: int = Field(ge=0, le=65535)


class UpdateRequest(Request):
    id: str = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    restart_policy: RestartPolicy | None = None


class ExecCreateRequest(Request):
    id: str = Field(min_length=1, description="the container")
    cmd: list[str] = Field(min_length=1)
    env: list[str] = Field(default_factory=list)
    user: str = ""
    working_dir: str = ""
    tty: bool = False
    stdin: bool = False
    privileged: bool = False
    detach_keys: str = ""
    console_size: tuple[int, int] | None = None


class ExecRunRequest(ExecCreateRequest):
    """``execution.exec``: an ``ExecCreateRequest`` started at once (``docker exec``)."""

    detach: bool = Field(default=False, description="start it and reply; no output, no waiting")

    def create_request(self) -> ExecCreateRequest:
        """The ``ExecCreateRequest`` part."""
        return ExecCreateRequest.model_validate(self.model_dump(exclude={"detach"}))


class ExecCreateReply(Reply):
    id: str


class ExecStartRequest(Request):
    exec_id: str = Field(min_length=1)
    detach: bool = False
    stdin: bool = False


class ExecIdRequest(Request):
    exec_id: str = Field(min_length=1)


class ExecResizeRequest(Request):
    exec_id: str = Field(min_length=1)
    height: int = Field(ge=0, le=65535)
    width: int = Field(ge=0, le=65535)


class ExecInfo(Reply):
    id: str
    container_id: str
    running: bool
    exit_code: int | None = None
    pid: int = 0
    cmd: list[str] = Field(default_factory=list)
    tty: bool = False
    user: str = ""
    open_stdin: bool = False


class TopRequest(Request):
    id: str = Field(min_length=1)
    ps_args: str = "-ef"


class TopReply(Reply):
    titles: list[str]
    processes: list[list[str]]


class StatsRequest(Request):
    id: str = Field(min_length=1)
    stream: bool = True


class Stats(Reply):
    """One sample (Docker's stats shape, simplified names)."""

    id: str
    name: str
    read: dt.datetime
    cpu_total_ns: int = 0
    system_cpu_ns: int = 0
    online_cpus: int = 1
    cpu_percent: float = 0.0
    memory_usage: int = 0
    memory_limit: int = 0
    memory_percent: float = 0.0
    pids: int = 0
    block_read: int = 0
    block_write: int = 0
    net_rx: int = 0
    net_tx: int = 0


class Volume(Reply):
    name: str
    driver: str = "local"
    mountpoint: str
    created_at: dt.datetime
    labels: dict[str, str] = Field(default_factory=dict)
    anonymous: bool = False
    in_use_by: list[str] = Field(default_factory=list)
    size: int | None = Field(
        default=None,
        description="bytes of its data (moby's directory.Size); only from volume_list with size=true",
    )


class VolumeCreateRequest(Request):
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class VolumeRemoveRequest(Request):
    name: str = Field(min_length=1)
    force: bool = False


class VolumePruneRequest(Request):
    """``execution.volume_prune``: which unused volumes to remove (Docker's prune filters)."""

    all: bool = Field(False, description="named volumes too (docker volume prune -a); else anonymous ones only")
    label: list[str] = Field(default_factory=list, description="key or key=value: only volumes carrying all of them")
    label_not: list[str] = Field(
        default_factory=list, description="key or key=value (Docker's label!=): not volumes carrying all of them"
    )


class VolumeListReply(Reply):
    volumes: list[Volume]
