"""Regression: two ``restart``s of one running container at once, and the second did not restart it.

What broke: ``dockyard restart c & dockyard restart c`` (or two ``POST /containers/c/restart``)
ran both restarts side by side in the execution service: both stops signalled the one task and
waited for its exit, the first start started a new task, and the second start found that task
running and answered ``already running``: ``warning: container c is already running (nothing to
do)`` on the CLI, no ``start`` or ``restart`` event of its own, two ``stop`` events for one
exit, and one new task for two restarts. The restarts of one container now take turns (a lock
held across the stop and the start), so each is a whole restart, as when they come one after
the other on dockerd (daemon/restart.go ``containerRestart``: stop if running, then start, then
the ``restart`` event): every call succeeds (204 on the Docker API), the journal has kill, die,
stop, start, restart for each of them, and one task runs at the end.

Beside them: a ``stop`` that comes while a restart stops the container waits for the same exit
and succeeds, and the restart then starts the container again (dockerd's stop and restart do
not serialise either: the restart's start comes after both stops); an ``rm -f`` while restarts
wait for their turn removes the container, and every restart fails ``marked for removal`` or
``not found`` (``test_rm_during_restart.py`` for one restart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from common import dockerfmt
from tests.engine import leftovers
from tests.gateway_util import Engine
from tests.harness import Instance

pytestmark = pytest.mark.root

SLOW_TERM = "trap 'sleep 1; exit 3' TERM; while true; do sleep 0.1; done"
"""A PID 1 that exits 3 about a second after a SIGTERM: each stop lasts long enough for the
other calls to arrive while it runs."""

STOP_TIMEOUT = "3"
"""Seconds before the SIGKILL: more than ``SLOW_TERM`` needs, little for a new task's shell that
had no trap set yet when the next restart's SIGTERM came (then kill 15, kill 9, die 137)."""

RESTART = ["kill", "die", "stop", "start", "restart"]


def _head(inst: Instance) -> int:
    with inst.client("events") as c:
        return int(c.call("events.head", {})["seq"])


def _journal(inst: Instance, head: int, cid: str) -> list[str]:
    """The Docker actions journaled about ``cid`` after ``head``, consecutive kills as one (a
    stop's SIGKILL after its timeout is a second kill)."""
    with inst.client("events") as c:
        envs = list(c.stream("events.replay", {"since": head}))
    actions: list[str] = []
    for env in envs:
        ev = dockerfmt.docker_event(env)
        if not ev or ev["Type"] != "container" or ev["Actor"]["ID"] != cid:
            continue
        if not (ev["Action"] == "kill" and actions and actions[-1] == "kill"):
            actions.append(ev["Action"])
    return actions


def _actions(inst: Instance, head: int, cid: str, count: int, timeout_s: float = 30.0) -> list[str]:
    """``_journal`` once it has ``count`` actions (or ``timeout_s`` passed), looked at again a
    moment later: events of other publishers may reach the journal after the call that caused
    them returned, and there must be no more than those."""
    deadline = time.monotonic() + timeout_s
    while len(_journal(inst, head, cid)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    return _journal(inst, head, cid)


def _when_stopping(inst: Instance, head: int, cid: str) -> None:
    """Return once a stop of ``cid`` signalled it (its ``kill`` is journaled; 10 s at most)."""
    deadline = time.monotonic() + 10
    while "kill" not in _journal(inst, head, cid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _at_once(calls: list[Callable[[], Any]], timeout_s: float = 90.0) -> list[Any]:
    """Run ``calls`` in threads released together; their results, in order."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the test reads it as the call's result
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), "a call did not end"
    return results


def _inspect(inst: Instance, ref: str) -> dict[str, Any]:
    with inst.client("execution") as c:
        return c.call("execution.inspect", {"id": ref})  # type: ignore[no-any-return]


def _run(inst: Instance, name: str, *flags: str) -> str:
    """``dockyard run -d`` ``SLOW_TERM`` as ``name``; its id once its shell has set the trap."""
    inst.cli("run", "-d", *flags, "--name", name, "busybox", "sh", "-c", SLOW_TERM, check=True)
    time.sleep(0.3)
    return str(_inspect(inst, name)["id"])


def _assert_one_task_runs(inst: Instance, ref: str) -> None:
    """``ref`` runs, with one task: one shim (the old tasks' shims gone) and one runtime container."""
    state = _inspect(inst, ref)["state"]
    assert state["running"] and state["pid"] > 0, state
    deadline = time.monotonic() + 10
    while len(leftovers(inst.state)["shims"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    left = leftovers(inst.state)
    assert len(left["shims"]) == 1 and len(left["runtime"]) == 1, left


def _remove(inst: Instance, name: str) -> None:
    """Remove ``name`` whatever the test left it in (the instance is shared by the module's tests)."""
    inst.cli("rm", "-f", name)


@pytest.mark.parametrize(("count", "flags"), [(2, ()), (3, ()), (2, ("--rm",))], ids=["2", "3", "2-rm"])
def test_restarts_at_once_each_restart_the_container(eng: Engine, count: int, flags: tuple[str, ...]) -> None:
    inst = eng.inst
    name = f"cr{count}{'rm' if flags else ''}"
    try:
        cid = _run(inst, name, *flags)
        head = _head(inst)
        results = _at_once([lambda: inst.cli("restart", "-t", STOP_TIMEOUT, name, timeout=90)] * count)
        for r in results:
            assert r.returncode == 0 and r.stdout == f"{name}\n".encode(), r
            assert r.stderr == b"", r  # not "already running (nothing to do)"
        assert _actions(inst, head, cid, len(RESTART) * count) == RESTART * count
        _assert_one_task_runs(inst, name)
        if flags:  # still an --rm container: the next exit removes it
            assert inst.cli("stop", "-t", STOP_TIMEOUT, name).returncode == 0
            deadline = time.monotonic() + 15
            while name in inst.cli("ps", "-a").stdout.decode() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert name not in inst.cli("ps", "-a").stdout.decode()
    finally:
        _remove(inst, name)


@pytest.mark.parametrize("count", [2, 3])
def test_restarts_at_once_on_the_docker_api_each_answer_204(eng: Engine, count: int) -> None:
    inst = eng.inst
    name = f"gr{count}"
    try:
        cid = _run(inst, name)
        head = _head(inst)
        path = f"/containers/{name}/restart?t={STOP_TIMEOUT}"
        results = _at_once([lambda: eng.api("POST", path, timeout=90)] * count)
        assert [r[0] for r in results] == [204] * count, results
        assert _actions(inst, head, cid, len(RESTART) * count) == RESTART * count
        _assert_one_task_runs(inst, name)
    finally:
        _remove(inst, name)


def test_a_stop_during_a_restart_succeeds_and_the_restart_starts_the_container(eng: Engine) -> None:
    inst = eng.inst
    name = "sr"
    try:
        cid = _run(inst, name)
        head = _head(inst)

        def stop_once_the_restart_stops() -> Any:
            _when_stopping(inst, head, cid)
            return inst.cli("stop", "-t", STOP_TIMEOUT, name, timeout=90)

        restarted, stopped = _at_once(
            [lambda: inst.cli("restart", "-t", STOP_TIMEOUT, name, timeout=90), stop_once_the_restart_stops]
        )
        assert restarted.returncode == 0 and restarted.stderr == b"", restarted
        assert stopped.returncode == 0, stopped
        # both stops saw the one exit; then the restart's start
        assert _actions(inst, head, cid, 6) == ["kill", "die", "stop", "stop", "start", "restart"]
        _assert_one_task_runs(inst, name)
    finally:
        _remove(inst, name)


def test_rm_f_while_restarts_wait_for_their_turn_removes_the_container(eng: Engine) -> None:
    inst = eng.inst
    name = "rr"
    try:
        cid = _run(inst, name)
        head = _head(inst)

        def rm_once_the_restart_stops() -> Any:
            _when_stopping(inst, head, cid)
            time.sleep(0.2)  # the other restarts are in, waiting for their turn
            return inst.cli("rm", "-f", name, timeout=90)

        def restart() -> Any:
            return inst.cli("restart", "-t", STOP_TIMEOUT, name, timeout=90)

        *restarts, removed = _at_once([restart, restart, rm_once_the_restart_stops])
        assert removed.returncode == 0, removed
        for r in restarts:
            assert r.returncode != 0, r
            assert b"marked for removal" in r.stderr or b"not found" in r.stderr, r
        assert name not in inst.cli("ps", "-a").stdout.decode()
        assert _actions(inst, head, cid, 4).count("destroy") == 1
        deadline = time.monotonic() + 10
        while any(leftovers(inst.state).values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(leftovers(inst.state).values()), leftovers(inst.state)
    finally:
        _remove(inst, name)
