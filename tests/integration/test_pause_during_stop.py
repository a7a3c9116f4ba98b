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

import time

import pytest

from common import dockerfmt
from tests.engine import leftovers
from tests.harness import Instance

pytestmark = pytest.mark.root

IGNORES_TERM = "trap '' TERM; while true; do sleep 0.1; done"


def test_a_pause_during_the_stop_timeout_does_not_hang_the_stop(inst: Instance) -> None:
    inst.cli("run", "-d", "--name", "frozen", "busybox", "sh", "-c", IGNORES_TERM, check=True)
    try:
        t0 = time.monotonic()
        stop = inst.cli_popen("stop", "-t", "2", "frozen")
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


EXITS_ON_TERM_AND_HUP = "trap 'exit 3' TERM; trap 'exit 4' HUP; while true; do sleep 0.1; done"


def test_kill_with_the_stop_signal_resumes_a_paused_container_and_another_signal_does_not(inst: Instance) -> None:
    """dockerd's ``killWithSignal``: a paused container is resumed after SIGKILL or its stop
    signal, which it then receives; another signal waits, pending, for an ``unpause``. The
    old code resumed it after SIGKILL only: ``kill -s TERM`` left it paused."""
    inst.cli("run", "-d", "--name", "pk", "busybox", "sh", "-c", EXITS_ON_TERM_AND_HUP, check=True)
    try:
        time.sleep(0.3)  # the traps are set
        inst.cli("pause", "pk", check=True)
        inst.cli("kill", "-s", "HUP", "pk", check=True)
        time.sleep(0.5)
        r = inst.cli("inspect", "-f", "{{.State.Status}}", "pk", check=True)
        assert r.stdout.decode().strip() == "paused"  # not the stop signal: still frozen
        inst.cli("kill", "-s", "TERM", "pk", check=True)
        r = inst.cli("wait", "pk", timeout=20)
        assert r.returncode == 0, r.stderr.decode()
        # the HUP was pending while frozen: whichever trap ran first ended it, once resumed
        assert r.stdout.decode().strip() in ("3", "4"), r.stdout
        r = inst.cli("inspect", "-f", "{{.State.Status}}", "pk", check=True)
        assert r.stdout.decode().strip() == "exited"
    finally:
        inst.cli("unpause", "pk")
        inst.cli("rm", "-f", "pk")


def _docker_actions(inst: Instance, head: int, cid: str, last: str, timeout_s: float = 15.0) -> list[str]:
    """The Docker actions journaled about ``cid`` after ``head``, once ``last`` is among them
    (read again half a second later: nothing may follow it)."""

    def journal() -> list[str]:
        with inst.client("events") as c:
            envs = list(c.stream("events.replay", {"since": head}))
        events = [dockerfmt.docker_event(env) for env in envs]
        return [ev["Action"] for ev in events if ev and ev["Type"] == "container" and ev["Actor"]["ID"] == cid]

    deadline = time.monotonic() + timeout_s
    while last not in journal():
        assert time.monotonic() < deadline, journal()
        time.sleep(0.1)
    time.sleep(0.5)
    return journal()


def _since(inst: Instance) -> int:
    with inst.client("events") as c:
        return int(c.call("events.head", {})["seq"])


def test_a_paused_container_that_a_kill_ends_has_no_unpause_event(inst: Instance) -> None:
    """dockerd logs no ``unpause`` for the resume of a paused container that its SIGKILL ends
    (the exit is handled first): ``pause, kill, die``. A stop whose SIGTERM the paused
    process ignores is resumed and lives on: that ``unpause`` stays, before the SIGKILL."""
    r = inst.cli("run", "-d", "--name", "pkill", "busybox", "sleep", "600", check=True)
    cid = r.stdout.decode().strip()
    try:
        inst.cli("pause", "pkill", check=True)
        head = _since(inst)
        inst.cli("kill", "pkill", check=True)
        assert _docker_actions(inst, head, cid, "die") == ["kill", "die"]
    finally:
        inst.cli("rm", "-f", "pkill")
    r = inst.cli("run", "-d", "--name", "pstop", "busybox", "sh", "-c", IGNORES_TERM, check=True)
    cid = r.stdout.decode().strip()
    try:
        time.sleep(0.3)  # the trap is set
        inst.cli("pause", "pstop", check=True)
        head = _since(inst)
        inst.cli("stop", "-t", "1", "pstop", check=True)
        assert _docker_actions(inst, head, cid, "stop") == ["kill", "unpause", "kill", "die", "stop"]
    finally:
        inst.cli("rm", "-f", "pstop")
