"""Regression: a ``pause`` during a stop's grace period left the stop waiting on a frozen task.

What broke: ``dockyard stop -t 2 c & sleep 0.5; dockyard pause c`` (or two restarts and a
pause at once: the queued restart's stop came while the pause was out). The stop's SIGTERM went
to a running task, the pause froze it, and the stop's SIGKILL after the timeout went to the
frozen task, which dies only once thawed: the stop waited 60 s for the exit and failed
``DeadlineExceeded``, and the container stayed paused with the kill pending (an ``unpause``
days later ended it). dockerd's ``killWithSignal`` resumes a paused container after each signal
of its stop, so the stop ends at its timeout, exit 137. Same for ``rm -f`` of a container
paused while its kill was out.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import need_root, running_instance
from tests.engine import leftovers
from tests.harness import PROJECT, Instance

pytestmark = pytest.mark.root

IGNORES_TERM = "trap '' TERM; while true; do sleep 0.1; done"


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    need_root()
    with running_instance() as i:
        yield i


def _cli(inst: Instance, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=inst.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_pause_during_the_stop_timeout_does_not_hang_the_stop(inst: Instance) -> None:
    inst.cli("run", "-d", "--name", "frozen", "busybox", "sh", "-c", IGNORES_TERM, check=True)
    try:
        t0 = time.monotonic()
        stop = _cli(inst, "stop", "-t", "2", "frozen")
        time.sleep(0.7)  # the SIGTERM is out, the wait for the exit runs
        r = inst.cli("pause", "frozen")
        assert r.returncode == 0, r.stderr.decode()
        try:
            _, err = stop.communicate(timeout=20)
        finally:
            stop.kill()
        assert stop.returncode == 0, err
        assert time.monotonic() - t0 < 10
        r = inst.cli("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "frozen", check=True)
        assert r.stdout.decode().split() == ["exited", "137"]
    finally:
        inst.cli("unpause", "frozen")
        inst.cli("rm", "-f", "frozen")
    deadline = time.monotonic() + 10
    while any(leftovers(inst.state).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = leftovers(inst.state)
    assert not left["mounts"] and not left["runtime"], left
