"""The walking skeleton from the user's side: ``dockyard up`` and the README's flow.

Everything goes through the real CLI (``python -m cli``) and the supervisor it
leaves running, on a private instance: services are separate processes, the
image is a real busybox built from the host's busybox-static, containers run
under real runc on real overlayfs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from common import endpoints
from tests.conftest import need_root
from tests.harness import PROJECT, Instance, _alive

SERVICES = endpoints.SERVICES


@pytest.fixture
def up() -> Iterator[Instance]:
    need_root()
    inst = Instance()
    try:
        r = inst.cli("up", timeout=90)
        assert r.returncode == 0, r.stderr.decode() + inst.log_tail("supervisor")
        inst.load_busybox()
        yield inst
    finally:
        inst.cleanup()


def _status(inst: Instance) -> dict[str, dict[str, str]]:
    out = inst.cli("status", check=True).stdout.decode().splitlines()
    rows = {}
    for line in out[1:]:
        cols = line.split()
        rows[cols[0]] = {"state": cols[1], "pid": cols[2] if len(cols) > 2 else ""}
    return rows


def _state(inst: Instance, name: str) -> dict:  # type: ignore[type-arg]
    """The container's state as ``dockyard inspect`` shows it: running, pid, exit_code."""
    r = inst.cli("inspect", name, check=True)
    data = json.loads(r.stdout)
    data = data[0] if isinstance(data, list) else data
    state = data.get("State") or data["state"]
    return {
        "running": state.get("Running", state.get("running")),
        "pid": state.get("Pid", state.get("pid")),
        "exit_code": state.get("ExitCode", state.get("exit_code")),
    }


def _wait_until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_starts_every_service_as_its_own_process_and_is_idempotent(up: Instance) -> None:
    rows = _status(up)
    assert set(rows) == set(SERVICES)
    pids = {name: row["pid"] for name, row in rows.items()}
    assert all(row["state"] == "running" for row in rows.values())
    assert len(set(pids.values())) == len(SERVICES)
    again = up.cli("up", check=True)
    assert again.returncode == 0
    assert {name: row["pid"] for name, row in _status(up).items()} == pids


def test_readme_flow_prints_hello_from_a_runc_container(up: Instance) -> None:
    r = up.cli("run", "--rm", "busybox", "echo", "hello from dockyard", check=True)
    assert r.stdout == b"hello from dockyard\n"
    assert up.cli("ps", "-a", check=True).stdout.decode().count("\n") == 1  # header only: --rm removed it


def test_exit_codes_of_foreground_runs(up: Instance) -> None:
    assert up.cli("run", "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    r = up.cli("run", "--rm", "busybox", "nosuchcmd")
    assert r.returncode == 127
    assert r.stderr.startswith(b"error: ") and b"nosuchcmd" in r.stderr and b"Traceback" not in r.stderr


def test_a_killed_service_is_restarted_by_the_supervisor(up: Instance) -> None:
    before = int(_status(up)["image"]["pid"])
    os.kill(before, signal.SIGKILL)

    def restarted() -> bool:
        row = _status(up)["image"]
        return row["state"] == "running" and row["pid"] not in ("", str(before))

    _wait_until(restarted, what="image service restarted")
    out = up.cli("status", check=True).stdout.decode()
    image_row = next(line for line in out.splitlines() if line.startswith("image"))
    assert " 1 " in image_row and "signal 9" in image_row
    assert up.cli("images", check=True).returncode == 0


def test_containers_survive_sigkill_of_every_service(up: Instance) -> None:
    up.cli("run", "-d", "--name", "s", "busybox", "sleep", "600", check=True)
    pid = _state(up, "s")["pid"]
    assert pid and _alive(pid)
    for service in ("execution", "snapshot", "image", "events"):
        os.kill(up.pid(service), signal.SIGKILL)
    assert up.cli("up", timeout=90).returncode == 0
    state = _state(up, "s")
    assert state["running"] is True and state["pid"] == pid
    assert up.cli("ps", check=True).stdout.decode().splitlines()[1].split()[-1] == "s"
    assert up.cli("stop", "-t", "1", "s").returncode == 0
    state = _state(up, "s")
    assert state["running"] is False and state["exit_code"] == 137  # sleep as PID 1 ignores SIGTERM


def test_exit_while_the_execution_service_is_down_keeps_the_real_status(up: Instance) -> None:
    up.cli("run", "-d", "--name", "b", "busybox", "sh", "-c", "sleep 2; echo bye; exit 7", check=True)
    os.kill(up.pid("supervisor"), signal.SIGKILL)
    os.kill(up.pid("execution"), signal.SIGKILL)
    time.sleep(4)  # the container exits while nothing supervises or runs the execution service
    assert up.cli("up", timeout=90).returncode == 0
    _wait_until(lambda: _state(up, "b")["running"] is False, what="b exited")
    assert _state(up, "b")["exit_code"] == 7
    assert up.cli("logs", "b", check=True).stdout == b"bye\n"


def test_events_show_the_lifecycle_of_a_run_rm_in_order(up: Instance) -> None:
    head = int(up.client("events").call("events.head", {})["seq"])
    up.cli("run", "--rm", "--name", "ev", "busybox", "true", check=True)
    lines = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "events", "--since-seq", str(head), "--filter", "type=task", "--json"],
        env=up.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        while len(lines) < 4:
            lines.append(json.loads(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()
    assert [e["topic"] for e in lines] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert len({e["event"]["container_id"] for e in lines}) == 1


def test_down_stops_services_but_not_containers(up: Instance) -> None:
    up.cli("run", "-d", "--name", "keep", "busybox", "sleep", "600", check=True)
    pid = _state(up, "keep")["pid"]
    service_pids = [up.pid(s) for s in SERVICES]
    assert up.cli("down", check=True).returncode == 0
    _wait_until(lambda: not any(_alive(p) for p in service_pids), what="services stopped")
    assert _alive(pid)
    r = up.cli("ps")
    assert r.returncode != 0 and b"not answering" in r.stderr
    assert up.cli("up", timeout=90).returncode == 0
    assert _state(up, "keep")["pid"] == pid
