"""``start_error_status``: the exit status Docker records for a process that could not start.

Regression: a bad working directory (``exec -w /nonexistent``) was 127 because runc's
message ends in "no such file or directory"; Docker gives 126 for it, whatever the errno.
"""

from __future__ import annotations

import pytest

from services.shim.runtime import start_error_status


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ('exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH', 127),
        ('unable to start container process: exec: "/nonexistent": stat /nonexistent: no such file or directory', 127),
        ('unable to start container process: exec: "/etc": permission denied', 126),
        ("exec format error", 126),
        # a bad working directory, from runc and from crun: 126 whatever the errno
        (
            'unable to start container process: chdir to cwd ("/nonexistent") set in config.json failed: '
            "no such file or directory",
            126,
        ),
        ('chdir to cwd ("/etc/passwd") set in config.json failed: not a directory', 126),
        ("chdir to `/nonexistent`: No such file or directory", 126),
        ("chdir `/nonexistent` failed: No such file or directory", 126),
        # a command named like the check is still a missing command
        ('exec: "chdir": executable file not found in $PATH', 127),
        ("container_linux.go: cgroup: something else failed", 128),
    ],
)
def test_start_error_status(message: str, status: int) -> None:
    assert start_error_status(message) == status
