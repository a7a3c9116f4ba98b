"""Shim API: what one container's shim serves on its own ROUTER (containerd's Task API, shim v2).

The shim of container ``<id>`` in namespace ``<ns>`` binds
``common.endpoints.shim_endpoint(ns, id)`` and writes that address into the bundle's
``address`` file (its pid into ``shim.pid``), so a restarted execution service finds
it again. Every method name starts with ``shim.``; the request's namespace is the
container's. ``exec_id`` "" means the task's init process (phase 2 adds execs).

Methods (request -> reply):

- ``shim.connect`` ``{}`` -> ``ConnectReply``: who the shim is (pid, container, incarnation).
- ``shim.state`` ``ProcessRequest`` -> ``TaskState``: the authoritative state of the task
  (or of one exec), also kept in ``<bundle>/state.json``.
- ``shim.start`` ``ProcessRequest`` -> ``PidReply``: ``runc start`` (or start an exec).
  FailedPrecondition (``cannot start task in running state``) on an illegal move. The first
  start of a task the launch started (``ShimLaunch.start``) only releases its held output.
- ``shim.kill`` ``KillRequest`` -> ``{}``: send a signal (number) to the init process
  (``all``: to every process of the container). FailedPrecondition when it is not running.
- ``shim.wait`` ``ProcessRequest`` -> ``ExitReply``: blocks until the process exited and
  its output was drained (no deadline; heartbeats keep the call alive).
- ``shim.delete`` ``ProcessRequest`` -> ``ExitReply``: ``runc delete``, unmount the rootfs,
  publish ``/tasks/delete``; afterwards the shim exits. FailedPrecondition while running.
- ``shim.attach`` ``AttachRequest`` -> stream: first ``{"attached": true}`` (the
  subscription is in place: nothing written afterwards is missed), then
  ``OutputFrame`` ``{"s": 1|2, "d": bytes}`` until the output streams end. With
  ``stdin=true`` the client's own stream (``bytes`` items, then EOF) is written to the
  process's stdin; EOF (or the client gone) closes it when the process has ``stdin_once``
  and no terminal (Docker's rule: a terminal's stdin stays open after an attach).
  The only call served before the shim's report: an attach of the init process that comes
  while the launch still creates the task waits for it (FailedPrecondition ``task not
  created: <why>`` if that fails). ``release=true``: the held output is released once the
  subscription is in place, and the first frame says ``"released": true`` (``shim.start``
  then has nothing left to do).
- ``shim.exec`` ``ExecRequest`` -> ``{}``: register an exec (``/tasks/exec-added``);
  ``shim.start`` with its ``exec_id`` runs it (``runc exec``, ``/tasks/exec-started``).
- ``shim.exec_run`` ``ExecRequest`` -> stream: ``shim.exec``, ``shim.attach``, ``shim.start``,
  ``shim.wait`` and ``shim.delete`` of one exec in one call (what ``dockyard exec`` uses):
  ``{"attached": true, "tty", "pid"}``, output frames, then ``{"exit_status": n}``.
- ``shim.resize`` ``ResizeRequest`` -> ``{}``: TIOCSWINSZ on the process's pty.
- ``shim.close_io`` ``ProcessRequest`` -> ``{}``: close the process's stdin.
- ``shim.pause`` / ``shim.resume`` ``{}`` -> ``{}``: freezer (``/tasks/paused``, ``/tasks/resumed``).
- ``shim.pids`` ``{}`` -> ``{"pids": [int]}``: host pids of the container's processes.
- ``shim.update`` ``UpdateRequest`` -> ``{}``: ``runc update`` with new LinuxResources.
- ``shim.stats`` ``{}`` -> ``StatsReply``: cgroup metrics (``runc events --stats``).
- ``shim.shutdown`` ``{}`` -> ``{}``: exit if no task is left (a leaked shim).

Events the shim publishes (payloads follow containerd's, containerd-model.md section 9),
in this order per incarnation, with ids ``<container id>/<incarnation>/<verb>``
(execs: ``<container id>/<incarnation>/exec/<exec id>/<verb>``):
``/tasks/create`` ``{container_id, bundle, pid}``, ``/tasks/start`` ``{container_id, pid}``,
``/tasks/exit`` ``{container_id, id, pid, exit_status, exited_at}``,
``/tasks/delete`` ``{container_id, id, pid, exit_status, exited_at}``.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from common.api.base import Reply, Request

SHIM_VERSION = 1


class TaskStatus(StrEnum):
    """State of a task or exec; the shim refuses moves outside this graph.

    created -> running -> (paused <-> running) -> stopped -> deleted;
    created -> stopped (killed before start) -> deleted.
    """

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


def event_id(container_id: str, incarnation: int, verb: str, exec_id: str = "") -> str:
    """Return the stable id of one task event: ``<cid>/<incarnation>/[exec/<exec id>/]<verb>``.

    The shim and, for a dead shim, the execution service both use it, so the events
    service journals each task event once.
    """
    if exec_id:
        return f"{container_id}/{incarnation}/exec/{exec_id}/{verb}"
    return f"{container_id}/{incarnation}/{verb}"


def container_event_id(container_id: str, verb: str) -> str:
    """Return the stable id of one container event (execution service): ``<cid>/container/<verb>``."""
    return f"{container_id}/container/{verb}"


class ShimLaunch(Reply):
    """What the execution service writes to ``<bundle>/shim.json`` before launching a shim.

    Immutable for the life of one shim (one task incarnation).
    """

    namespace: str
    container_id: str
    container_name: str = ""
    image: str = ""
    incarnation: int = Field(description="start count of the container: 1 for its first start")
    runtime: str = Field(default="runc", description="OCI runtime binary (name or path)")
    runtime_root: str = Field(description="--root handed to the runtime")
    log_path: str = Field(description="json-file log of the container")
    log_max_size: int = Field(default=0, description="rotate the log past this many bytes (0 = never)")
    log_max_files: int = Field(default=1, description="rotated files kept, the live one included")
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    user: str = Field(default="", description="the container's User, resolved by the shim inside the rootfs")
    group_add: list[str] = Field(default_factory=list, description="extra groups (names or gids)")
    create_workdir: bool = Field(default=True, description="create process.cwd if missing, owned by the user")
    console_width: int = 0
    console_height: int = 0
    events_endpoint: str = Field(default="", description="control endpoint of the events service")
    after_event: str = Field(
        default="",
        description="journal id of another publisher's event the task's first event must follow "
        "(the container's /containers/create on its first start); '' = none",
    )
    copy_up: list[dict[str, str]] = Field(
        default_factory=list, description="volumes to fill from the image: [{target, source (host dir)}]"
    )
    start: bool = Field(
        default=False,
        description="create and start the task in one runtime call (``run --detach``): the shim "
        "reports a running task; without it the task waits in ``created`` for ``shim.start``",
    )
    hold_output: bool = Field(
        default=False,
        description="with ``start``: read no output until ``shim.start`` (or ``HOLD_OUTPUT_S``), so "
        "that clients attaching between the report and ``shim.start`` miss nothing; the pipes (or "
        "the terminal) buffer it meanwhile",
    )
    seccomp_cache_dir: str = Field(
        default="",
        description="directory of compiled seccomp filters the shim hands crun instead of its profile "
        "(services.shim.seccomp_cache; common.endpoints.seccomp_cache_dir); used with crun only, the "
        "one runtime that takes a compiled filter; '' = no cache",
    )


class ProcessRequest(Request):
    exec_id: str = Field(default="", description="'' = the init process")


class ConnectReply(Reply):
    shim_pid: int
    task_pid: int
    container_id: str
    incarnation: int
    version: int = SHIM_VERSION


class TaskState(Reply):
    """The authoritative state of a task (or exec); ``state.json`` holds the same shape."""

    container_id: str
    exec_id: str = ""
    incarnation: int = 0
    bundle: str = ""
    status: TaskStatus
    pid: int = 0
    exit_status: int | None = Field(default=None, description="set once the process exited")
    exited_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    error: str = Field(default="", description="why create/start failed, from the runtime")
    oom_killed: bool = False
    shim_pid: int = 0
    shim_start_time: int = Field(default=0, description="the shim's start time in clock ticks (/proc/<pid>/stat)")
    tty: bool = False


class PidReply(Reply):
    pid: int
    started_at: dt.datetime | None = Field(default=None, description="taken just before the runtime's start")


class ExitReply(Reply):
    pid: int = 0
    exit_status: int
    exited_at: dt.datetime | None = None
    oom_killed: bool = False
    error: str = ""
    hibernated: bool = Field(
        default=False,
        description="``shim.wait`` only: the task still runs and the shim goes to sleep (its idle monitor);"
        " wait with ``common.shimwake.wait_awake``, then call again",
    )


class KillRequest(Request):
    exec_id: str = ""
    signal: int = Field(ge=1, le=64, description="signal number")
    all: bool = Field(default=False, description="signal every process in the container")
    after: str = Field(
        default="",
        max_length=200,
        description="id of the caller's last event about the container: /tasks/kill follows it in the journal",
    )


class RenameRequest(Request):
    """``shim.rename``: the container's new name, carried by the task's later events."""

    name: str = Field(min_length=1, max_length=255)


class AttachRequest(Request):
    exec_id: str = ""
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    detach_keys: str = Field(default="", description="e.g. 'ctrl-p,ctrl-q': detaches when seen on stdin")
    release: bool = Field(
        default=False,
        description="the task's held output (ShimLaunch.hold_output) is released once this attach is"
        " subscribed, as shim.start would: the attached frame then says released",
    )


class OutputFrame(Reply):
    """One chunk of output: ``s`` 1 = stdout, 2 = stderr; ``d`` the bytes."""

    s: int
    d: bytes


class ExecRequest(Request):
    exec_id: str = Field(min_length=1, max_length=128)
    process: dict = Field(description="OCI runtime-spec Process (args, env, cwd, user, terminal, capabilities...)")  # type: ignore[type-arg]
    user: str = Field(default="", description="User to resolve inside the rootfs (overrides process.user)")
    tty: bool = False
    stdin: bool = False
    console_width: int = 0
    console_height: int = 0
    after: str = Field(
        default="",
        max_length=200,
        description="id of the caller's last event about the container: /tasks/exec-added follows it in the journal",
    )


class ResizeRequest(Request):
    exec_id: str = ""
    width: int = Field(ge=0, le=65535)
    height: int = Field(ge=0, le=65535)


class UpdateRequest(Request):
    resources: dict = Field(description="OCI LinuxResources")  # type: ignore[type-arg]


class StatsReply(Reply):
    """Raw cgroup metrics as ``runc events --stats`` reports them (``data`` of its JSON)."""

    read: dt.datetime
    data: dict  # type: ignore[type-arg]
    pids: list[int] = Field(default_factory=list)
