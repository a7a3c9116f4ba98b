"""The task state machine the shim keeps for its init process and each exec.

States (``common.api.shim.TaskStatus``): created -> running -> stopped -> deleted,
running <-> paused, created -> stopped (killed before start), created -> deleted
(never started). Any other move raises ``FailedPrecondition`` worded like
containerd's (``cannot pause task in created state``).

The init process's state is also written atomically to ``<bundle>/state.json`` at
every change, so the execution service can learn the exit status of a task whose
shim died.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from typing import Any

from common import codec, errors
from common.api.shim import TaskState, TaskStatus
from services.shim.stdio import ProcessIO

_MOVES: dict[TaskStatus, set[TaskStatus]] = {
    TaskStatus.CREATED: {TaskStatus.RUNNING, TaskStatus.STOPPED, TaskStatus.DELETED},
    TaskStatus.RUNNING: {TaskStatus.PAUSED, TaskStatus.STOPPED},
    TaskStatus.PAUSED: {TaskStatus.RUNNING, TaskStatus.STOPPED},
    TaskStatus.STOPPED: {TaskStatus.DELETED},
    TaskStatus.DELETED: set(),
}

_VERBS = {
    TaskStatus.RUNNING: "start",
    TaskStatus.PAUSED: "pause",
    TaskStatus.STOPPED: "stop",
    TaskStatus.DELETED: "delete",
}


def check_move(current: TaskStatus, to: TaskStatus, verb: str | None = None, what: str = "task") -> None:
    """Raise FailedPrecondition unless ``current -> to`` is a legal move."""
    if to not in _MOVES[current]:
        raise errors.FailedPrecondition(f"cannot {verb or _VERBS.get(to, to.value)} {what} in {current.value} state")


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (``<path>.tmp``, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_state_file(path: str, state: TaskState) -> None:
    """Write ``state`` as JSON to ``path`` atomically (temp name, rename)."""
    write_atomic(path, json.dumps(state.model_dump(mode="json")).encode())


def read_state_file(path: str) -> TaskState | None:
    """Read a ``state.json``; None if missing or torn."""
    try:
        with open(path, encoding="utf-8") as f:
            return TaskState.model_validate(json.load(f))
    except (OSError, ValueError):
        return None


class Process:
    """The init process or one exec: its state, its stdio, and its exit."""

    def __init__(self, state: TaskState, io: ProcessIO, state_file: str | None = None) -> None:
        self.state = state
        self.io = io
        self.state_file = state_file
        self.exited = asyncio.Event()
        self.start_settled = asyncio.Event()
        self.exec_spec: dict[str, Any] | None = None
        self.exec_user = ""  # an exec's Docker ``User``, resolved inside the rootfs at its start
        self.lock = asyncio.Lock()
        self.signalled_while_paused = False
        """A signal went to the frozen process: it acts on it once thawed (``shim.resume``)."""

    @property
    def what(self) -> str:
        return f"exec {self.state.exec_id}" if self.state.exec_id else "task"

    @property
    def status(self) -> TaskStatus:
        return self.state.status

    def check(self, to: TaskStatus, verb: str | None = None) -> None:
        check_move(self.state.status, to, verb, self.what)

    def move(self, to: TaskStatus, **fields: Any) -> None:
        """Move to ``to`` (checked), set ``fields`` and persist."""
        self.check(to)
        self.update(status=to, **fields)

    def update(self, **fields: Any) -> None:
        """Set fields without a transition check and persist."""
        for key, value in fields.items():
            setattr(self.state, key, value)
        self.persist()

    def persist(self) -> None:
        if self.state_file:
            write_state_file(self.state_file, self.state)

    def record_exit(self, status: int, at: dt.datetime | None = None) -> None:
        """The process exited with ``status`` (at ``at``, default now): stopped, exit status and time recorded."""
        self.state.exit_status = status
        self.state.exited_at = at or codec.utcnow()
        if self.state.status != TaskStatus.DELETED:
            self.state.status = TaskStatus.STOPPED
        self.persist()
