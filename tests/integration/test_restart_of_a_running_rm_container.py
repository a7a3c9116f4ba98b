"""Regression: ``restart`` of a running ``run --rm`` container removed it.

What broke: ``dockyard run -d --rm --name v busybox ...`` then ``dockyard restart v`` (or
``docker restart`` through the gateway) stopped the container, its exit removed it, and the
start that should have followed failed with ``container 'v' is being removed``. dockerd
(daemon/restart.go, daemon/monitor.go) sets ``HasBeenManuallyRestarted`` before the stop, its
exit handler skips ``autoRemove`` while it is set, and the start clears it: the container is
stopped and started again (same id, same writable layer, ``RestartCount`` unchanged, events
kill, die, stop, start, restart) and removed at its next exit.

A client following the container (``dockyard run --rm`` or ``docker run --rm`` in the
foreground) sees what dockerd's do: its output ends with the first task (dockerd closes the
attached streams at the exit), and the call goes on waiting for the removal (a ``wait`` for
``removed`` is woken by the removal only), which comes at the restarted task's exit: it ends
with that exit's status.

Crash safety: a restart cut short by a SIGKILL of the execution service leaves a running
container running (and removed at its next exit), an exited one removed, never one that is
kept forever; the moments are made certain by a runtime wrapper that holds the old task's
delete, or the new task's create-and-start (``runc run``), for 1.5 s, and by heartbeats slow
enough that the shim's delete outlives the service that asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.mount import volatile_supported
from tests.conftest import need_root
from tests.engine import Engine, ps_names
from tests.gateway_util import Engine as GatewayEngine
from tests.harness import Instance
from tests.integration.test_docker_events_parity import _actions, _events
from tests.integration.test_gateway_across_execution_restart import _docker
from tests.integration.test_run_output_across_execution_restart import _finish, _read_until
from tests.integration.test_volatile_rootfs import ROOT_LINE

pytestmark = pytest.mark.root

SCRIPT = "trap 'exit 3' TERM; echo start >> /runs; while true; do sleep 0.1; done"
"""Appends a line to /runs at each start (the writable layer shows both), exits 3 on TERM."""

FOLLOWED = (
    'if [ -e /f ]; then c=4; else c=3; touch /f; fi; trap "exit $c" TERM; echo hello; while :; do sleep 0.1; done'
)
"""Says hello at each start; exits 3 on TERM the first time, 4 once restarted."""

RESTART_TOPICS = [
    "/tasks/kill",
    "/tasks/exit",
    "/tasks/delete",
    "/containers/stop",
    "/tasks/create",
    "/tasks/start",
    "/containers/restart",
]


@pytest.fixture
def engine(instance: Instance) -> Iterator[Engine]:
    need_root()
    yield Engine(instance)


@pytest.fixture
def slow_heartbeats() -> Iterator[Engine]:
    """An engine whose calls send heartbeats every 3 s: a shim's ``shim.delete`` whose caller
    died goes on for 3 s at least before the failed heartbeat cancels it."""
    need_root()
    inst = Instance(heartbeat_s="3", liveness_s="8")
    try:
        yield Engine(inst)
    finally:
        inst.cleanup()


@pytest.fixture
def gateway(engine: Engine) -> Iterator[GatewayEngine]:
    engine.inst.start("gateway")
    eng = GatewayEngine(engine.inst)
    if eng.cli is None:
        pytest.skip("no docker CLI installed")
    try:
        yield eng
    finally:
        eng.close()


def _started_twice(engine: Engine, name: str) -> None:
    engine.wait_until(lambda: engine.cli("exec", name, "cat", "/runs").stdout == b"start\nstart\n", 15, "second start")


def test_cli_restart_keeps_the_rm_container_and_its_writable_layer(engine: Engine) -> None:
    assert engine.run("-d", "--rm", "--name", "v", "busybox", "sh", "-c", SCRIPT).returncode == 0
    engine.cli("exec", "v", "sh", "-c", "echo data > /f", check=True)
    before = engine.inspect("v")
    cid = before["id"]
    r = engine.cli("restart", "-t", "5", "v")
    assert r.returncode == 0, r.stderr.decode()
    after = engine.inspect("v")
    assert after["id"] == cid
    assert after["state"]["running"] and after["state"]["pid"] != before["state"]["pid"]
    assert after["restart_count"] == before["restart_count"] == 0
    assert engine.cli("exec", "v", "cat", "/f").stdout == b"data\n"
    if volatile_supported():  # the volatile overlay mounted again (its workdir's mark cleared first)
        root = engine.cli("exec", "v", "sh", "-c", ROOT_LINE).stdout.decode()
        assert " overlay " in root and "volatile" in root, root
    _started_twice(engine, "v")
    topics = [
        e["topic"] for e in engine.events(cid) if not e["event"].get("exec_id") and e["event"].get("id", cid) == cid
    ]
    assert topics[topics.index("/tasks/start") + 1 :] == RESTART_TOPICS, topics
    # still an auto-remove container: its next exit removes it
    assert engine.cli("stop", "-t", "5", "v").returncode == 0
    engine.wait_until(lambda: "v" not in ps_names(engine), 15, "removed at its next exit")
    engine.wait_until(lambda: "/containers/delete" in engine.topics(cid), 15, "delete journaled")
    r = engine.cli("restart", "v")
    assert r.returncode != 0 and b"not found" in r.stderr
    engine.assert_clean()


def test_docker_restart_keeps_the_rm_container(gateway: GatewayEngine) -> None:
    t0 = time.time()
    cid = gateway.ok("run", "-d", "--rm", "--name", "gv", "busybox", "sh", "-c", SCRIPT).strip()
    gateway.ok("exec", "gv", "sh", "-c", "echo data > /f")
    pid = int(gateway.ok("inspect", "-f", "{{.State.Pid}}", "gv"))
    gateway.ok("restart", "-t", "5", "gv")
    state = json.loads(gateway.ok("inspect", "gv"))[0]
    assert state["Id"] == cid and state["RestartCount"] == 0 and state["HostConfig"]["AutoRemove"]
    assert state["State"]["Running"] and state["State"]["Pid"] != pid
    assert gateway.ok("exec", "gv", "cat", "/f") == "data\n"
    lifecycle = ["event=" + e for e in ("create", "start", "kill", "die", "stop", "restart", "destroy")]
    evs = _events(gateway, t0, cid, 7, *lifecycle)
    assert _actions(evs) == ["create", "start", "kill", "die", "stop", "start", "restart"], evs
    # the Engine API call itself (the docker CLI's): 204, and the container runs on
    status, _h, body = gateway.api("POST", f"/containers/{cid}/restart?t=5")
    assert status == 204, body
    assert gateway.ok("exec", "gv", "cat", "/runs") == "start\nstart\nstart\n"
    gateway.ok("stop", "-t", "5", "gv")
    deadline = time.monotonic() + 15
    while cid in gateway.leftovers():
        assert time.monotonic() < deadline, "not removed at its next exit"
        time.sleep(0.1)
    assert "destroy" in _actions(_events(gateway, t0, cid, 15, *lifecycle))


def _follow_through_a_restart(
    proc: subprocess.Popen[bytes], restart: Callable[[], None], stop: Callable[[], bool]
) -> tuple[bytes, bytes, int]:
    """``proc`` follows a ``--rm`` container printing ``hello``: once it has, ``restart`` the
    container, check ``proc`` is still following it a second later, ``stop`` it, and return
    ``proc``'s ``(stdout, stderr, exit code)``. ``proc`` is killed if anything fails."""
    try:
        head = _read_until(proc, b"hello\n", timeout_s=30)
        restart()
        time.sleep(1.0)
        assert proc.poll() is None, "the following client ended at the restart"
        assert stop()
        return _finish(proc, head)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_foreground_run_rm_ends_when_the_restarted_container_is_removed(engine: Engine) -> None:
    """dockerd's ``docker run --rm`` client after ``docker restart``: the output ends with the
    first task, the client waits on (the container is not removed) and exits with the status
    of the exit that removed it."""
    proc = engine.inst.cli_popen("run", "--rm", "--name", "fg", "busybox", "sh", "-c", FOLLOWED)

    def restart() -> None:
        assert engine.cli("restart", "-t", "5", "fg").returncode == 0
        assert engine.inspect("fg")["state"]["running"]

    out, err, code = _follow_through_a_restart(
        proc, restart, lambda: engine.cli("stop", "-t", "5", "fg").returncode == 0
    )
    assert code == 4, err
    assert out == b"hello\n", err
    assert "fg" not in ps_names(engine)
    engine.assert_clean()


def test_a_foreground_docker_run_rm_ends_when_the_restarted_container_is_removed(gateway: GatewayEngine) -> None:
    proc = _docker(gateway, "run", "--rm", "--name", "fgd", "busybox", "sh", "-c", FOLLOWED)

    def restart() -> None:
        gateway.ok("restart", "-t", "5", "fgd")
        assert gateway.ok("inspect", "-f", "{{.State.Running}}", "fgd").strip() == "true"

    out, err, code = _follow_through_a_restart(proc, restart, lambda: bool(gateway.ok("stop", "-t", "5", "fgd")))
    assert code == 4, err
    assert out == b"hello\n", err
    assert gateway.docker("inspect", "fgd").returncode != 0


def test_restart_of_an_exited_rm_container_being_removed_is_refused(engine: Engine) -> None:
    """Its removal waits for the snapshot service (down): restart says so, and starts nothing."""
    assert engine.run("-d", "--rm", "--name", "gone", "busybox", "sleep", "600").returncode == 0
    cid = engine.inspect("gone")["id"]
    engine.inst.kill("snapshot")
    try:
        assert engine.cli("kill", "gone").returncode == 0
        engine.wait_until(lambda: engine.inspect("gone")["state"]["status"] == "removing", 15, "removal under way")
        r = engine.cli("restart", "gone")
        assert r.returncode != 0
        assert b"container 'gone' is being removed" in r.stderr, r.stderr
        assert not engine.inspect("gone")["state"]["running"]
    finally:
        engine.inst.start("snapshot")
    engine.wait_until(lambda: "gone" not in ps_names(engine), 30, "removed once the snapshot service is back")
    assert engine.topics(cid).count("/tasks/start") == 1
    engine.assert_clean()


# -- a SIGKILL of the execution service during the restart ----------------------------------------------


def _wrapper(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A runtime wrapper (same basename: same runtime root) that, once armed with a verb
    (``arm`` holds ``delete``, or ``run``: the shim's create-and-start), holds the next such
    call for 1.5 s (``held`` exists meanwhile), runs it and writes ``done``. Returns (wrapper,
    arm, held, done)."""
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    real = shutil.which(runtime) or runtime
    arm, held, done = tmp_path / "arm", tmp_path / "held", tmp_path / "done"
    wrapper = tmp_path / runtime
    wrapper.write_text(
        "#!/bin/sh\n"
        f"verb=$(cat {arm} 2>/dev/null)\n"
        'if [ -n "$verb" ]; then\n'
        '  for a in "$@"; do\n'
        '    if [ "$a" = "$verb" ]; then\n'
        f'      rm -f {arm}; touch {held}; sleep 1.5; {real} "$@"; rc=$?; touch {done}; exit $rc\n'
        "    fi\n"
        "  done\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, arm, held, done


def _task_status(bundle: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads(Path(bundle, "state.json").read_text()).get("status"))
    return ""


@pytest.mark.parametrize("moment", ["stopping", "deleting the old task", "creating the new task"])
def test_restart_cut_short_by_a_sigkill_of_execution(slow_heartbeats: Engine, tmp_path: Path, moment: str) -> None:
    """``stopping``: the old task ignores SIGTERM (the stop waits 30 s): it runs on, and the
    restart's keeping of the container died with the service: its next exit removes it.
    ``deleting the old task``: it exited, the service recorded it and died; its shim deleted
    the task after that: nothing will report the exit again, the service back removes the
    container (dockerd's restore removes an exited AutoRemove container; before, it was kept
    exited forever). ``creating the new task``: the new task runs when the service is back:
    it is kept, and removed at its next exit."""
    engine = slow_heartbeats
    wrapper, arm, held, done = _wrapper(tmp_path)
    script = "echo start >> /runs; exec sleep 600"  # a PID 1 without a TERM handler ignores it
    r = engine.run("-d", "--rm", "--runtime", str(wrapper), "--name", "cut", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr.decode()
    info = engine.inspect("cut")
    cid, bundle, pid = info["id"], info["bundle"], info["state"]["pid"]
    engine.wait_until(lambda: engine.cli("exec", "cut", "cat", "/runs").stdout == b"start\n", 15, "first start")
    if moment != "stopping":
        arm.write_text("delete" if moment == "deleting the old task" else "run")
    result: list[subprocess.CompletedProcess[bytes]] = []
    timeout = "30" if moment == "stopping" else "1"
    restart = threading.Thread(target=lambda: result.append(engine.cli("restart", "-t", timeout, "cut", timeout=90)))
    restart.start()
    try:
        if moment == "stopping":
            engine.wait_until(lambda: "/tasks/kill" in engine.topics(cid), 15, "the stop signal sent")
        else:
            engine.wait_until(held.exists, 15, "the wrapper holding the runtime call")
        if moment == "deleting the old task":  # the exit recorded, the shim's delete under way
            engine.wait_until(lambda: engine.inspect("cut")["state"]["status"] == "exited", 15, "exit recorded")
        engine.inst.kill("execution")
    except BaseException:
        restart.join(timeout=60)
        raise
    if moment != "stopping":
        engine.wait_until(done.exists, 15, "the held runtime call done")
    if moment == "creating the new task":
        engine.wait_until(lambda: _task_status(bundle) == "running", 15, "the new task running")
    elif moment == "deleting the old task":
        engine.wait_until(lambda: not Path(bundle, "address").exists(), 15, "the old task deleted by its shim")
    engine.inst.start("execution")
    restart.join(timeout=60)
    assert result and result[0].returncode != 0  # its service died under it

    if moment == "deleting the old task":
        engine.wait_until(lambda: "cut" not in ps_names(engine), 15, "the exited container removed")
    else:
        time.sleep(1.0)  # a wrong removal would come now
        state = engine.inspect("cut")["state"]
        assert state["running"], state
        runs = b"start\n" if moment == "stopping" else b"start\nstart\n"
        assert (state["pid"] == pid) == (moment == "stopping")
        assert engine.cli("exec", "cut", "cat", "/runs").stdout == runs
        assert engine.cli("stop", "-t", "1", "cut").returncode == 0
        engine.wait_until(lambda: "cut" not in ps_names(engine), 15, "removed at its next exit")
    engine.wait_until(lambda: "/containers/delete" in engine.topics(cid), 15, "delete journaled")
    engine.assert_clean()
