"""The shim's task state machine refuses illegal moves with containerd's wording."""

from __future__ import annotations

import pytest

from common.api.shim import TaskStatus
from common.errors import FailedPrecondition
from services.shim.runtime import start_error_status
from services.shim.task import check_move

S = TaskStatus


@pytest.mark.parametrize(
    ("current", "to"),
    [
        (S.CREATED, S.RUNNING),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.STOPPED),
        (S.PAUSED, S.STOPPED),
        (S.STOPPED, S.DELETED),
        (S.CREATED, S.DELETED),
        (S.CREATED, S.STOPPED),
    ],
)
def test_legal_moves(current: TaskStatus, to: TaskStatus) -> None:
    check_move(current, to)


@pytest.mark.parametrize(
    ("current", "to", "message"),
    [
        (S.CREATED, S.PAUSED, "cannot pause task in created state"),
        (S.RUNNING, S.RUNNING, "cannot start task in running state"),
        (S.RUNNING, S.DELETED, "cannot delete task in running state"),
        (S.STOPPED, S.RUNNING, "cannot start task in stopped state"),
        (S.DELETED, S.RUNNING, "cannot start task in deleted state"),
    ],
)
def test_illegal_moves(current: TaskStatus, to: TaskStatus, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        check_move(current, to)


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ('exec: "nosuchcmd": executable file not found in $PATH', 127),
        ('exec: "/nonexistent": stat /nonexistent: no such file or directory', 127),
        ("executable file `x` not found in $PATH: No such file or directory", 127),  # crun
        ('exec: "/etc": permission denied', 126),
        ("open executable: Operation not permitted", 126),  # crun, a directory
        ("cgroup: something else", 128),
    ],
)
def test_start_errors_map_to_dockers_exit_codes(message: str, status: int) -> None:
    assert start_error_status(message) == status
