"""An idle shim sleeps as its native monitor and wakes as itself (``services.shim.hibernate``).

With ``shim_idle_s`` at 0.5 s, each container's shim here becomes ``dockyard-shim-idle``
(same pid, still the container's parent) soon after its start, and every way back is
exercised on real containers: an exec, output, the task's exit, signals, a TTY, stdin,
``rm -f``, and a SIGKILL of the execution service while shims sleep. Each test checks what
a user sees (output, exit codes, logs, events) and that the shim's pid never changed.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from common import endpoints
from services.shim import idle
from tests.conftest import need_root, running_instance
from tests.harness import PROJECT, Instance


@pytest.fixture(scope="module")
def dy() -> Iterator[Instance]:
    need_root()
    assert idle.monitor_path() is not None, "deploy/setup.sh builds dockyard-shim-idle into the venv"
    with running_instance(shim_idle_s="0.5") as inst:
        yield inst


def _shim_pid(dy: Instance, cid: str) -> int:
    with open(os.path.join(endpoints.bundle_dir("default", cid, dy.env), "shim.pid")) as f:
        return int(f.read())


def _until(pred: object, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _run_asleep(dy: Instance, *args: str) -> tuple[str, int]:
    """``run -d args``; wait until its shim sleeps; (container id, shim pid)."""
    cid = dy.cli("run", "-d", *args, check=True).stdout.decode().strip()
    pid = _shim_pid(dy, cid)
    assert _until(lambda: idle.asleep(pid)), f"the shim of {cid[:12]} did not go to sleep"
    return cid, pid


def _state(dy: Instance, cid: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(dy.cli("inspect", cid, check=True).stdout)[0]["State"]
    return state


def _sleeps(shim_log: str) -> int:
    """How many times the shim went to sleep (its log says so each time)."""
    with open(shim_log) as f:
        return f.read().count("sleeping as dockyard-shim-idle")


def _time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with nanoseconds (Docker's)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC).timestamp()
    return seconds + float("0." + (frac or "0"))


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def test_an_idle_shim_sleeps_small_and_an_exec_wakes_it(dy: Instance) -> None:
    cid, pid = _run_asleep(dy, "busybox", "sleep", "600")
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "dockyard-shim"
    assert _pss_kib(pid) < 1024, "a sleeping shim is the small monitor, not an interpreter"
    out = dy.cli("exec", cid, "sh", "-c", "echo hello from $(hostname)")
    assert (out.returncode, out.stdout) == (0, f"hello from {cid[:12]}\n".encode()), out.stderr
    assert _shim_pid(dy, cid) == pid
    assert _until(lambda: idle.asleep(pid)), "it sleeps again once idle"
    state = _state(dy, cid)
    assert state["Status"] == "running"
    with open(f"/proc/{state['Pid']}/status") as f:
        assert f"PPid:\t{pid}\n" in f.read(), "the sleeping shim is still the container's parent"
    dy.cli("rm", "-f", cid, check=True)
    assert _until(lambda: not os.path.exists(f"/proc/{pid}")), "the shim ends with its task"
    assert not os.path.exists(endpoints.shim_endpoint("default", cid, dy.env).removeprefix("ipc://") + ".w")


def test_output_while_asleep_is_logged_by_the_monitor_in_order(dy: Instance) -> None:
    cid, pid = _run_asleep(
        dy, "busybox", "sh", "-c", "sleep 1.5; printf part; sleep 1.5; echo ial; echo err >&2; sleep 600"
    )
    shim_log = os.path.join(endpoints.bundle_dir("default", cid, dy.env), "shim.log")
    sleeps = _sleeps(shim_log)
    assert _until(lambda: b"partial" in dy.cli("logs", cid).stdout, 20), dy.cli("logs", cid).stdout
    logs = dy.cli("logs", cid)
    assert logs.stdout == b"partial\n" and logs.stderr == b"err\n"
    assert idle.asleep(pid) and _sleeps(shim_log) == sleeps, "the monitor logged it: the shim never woke"
    assert _shim_pid(dy, cid) == pid
    dy.cli("rm", "-f", cid, check=True)


def test_output_the_monitor_leaves_to_the_shim_is_logged_exactly(dy: Instance) -> None:
    script = "sleep 1.5; echo text; printf 'not utf-8: \\377\\376\\n'; sleep 600"
    cid, pid = _run_asleep(dy, "busybox", "sh", "-c", script)
    assert _until(lambda: b"not utf-8" in dy.cli("logs", cid).stdout, 20)
    assert dy.cli("logs", cid).stdout == b"text\nnot utf-8: \xff\xfe\n"
    assert _until(lambda: idle.asleep(pid)), "it sleeps again once it wrote them"
    dy.cli("rm", "-f", cid, check=True)


def test_an_exit_while_asleep_is_recorded_and_published(dy: Instance) -> None:
    cid, pid = _run_asleep(dy, "busybox", "sh", "-c", "sleep 2; exit 7")
    waited = dy.cli("wait", cid, timeout=30)
    assert (waited.returncode, waited.stdout.strip()) == (0, b"7"), waited.stderr
    state = _state(dy, cid)
    assert (state["Status"], state["ExitCode"]) == ("exited", 7)
    ran = _time(str(state["FinishedAt"])) - _time(str(state["StartedAt"]))
    assert 1.9 <= ran < 2.35, f"FinishedAt is when the monitor saw the exit, not the later reap ({ran:.3f} s)"
    assert _until(lambda: not os.path.exists(f"/proc/{pid}")), "the shim ends once the task is deleted"
    with dy.client("events") as c:
        head = int(c.call("events.head", {})["seq"])
    died = dy.cli("events", "--since-seq", "0", "--until-seq", str(head), "-f", "event=die", check=True)
    exits = [line for line in died.stdout.decode().splitlines() if cid in line]
    assert len(exits) == 1 and "exit_status=7" in exits[0], died.stdout
    dy.cli("rm", cid, check=True)


def test_stop_and_kill_wake_the_shim(dy: Instance) -> None:
    cid, _ = _run_asleep(dy, "busybox", "sleep", "600")
    t0 = time.monotonic()
    assert dy.cli("stop", "-t", "1", cid).returncode == 0
    assert time.monotonic() - t0 < 10
    assert _state(dy, cid)["ExitCode"] == 137  # PID 1 without a TERM handler: killed after 1 s
    cid2, _ = _run_asleep(dy, "busybox", "sleep", "600")
    assert dy.cli("kill", "-s", "KILL", cid2).returncode == 0
    assert dy.cli("wait", cid2, timeout=30).stdout.strip() == b"137"
    dy.cli("rm", "-f", cid, cid2, check=True)


def test_a_tty_container_and_stdin_survive_sleep(dy: Instance) -> None:
    tty, tty_pid = _run_asleep(dy, "-t", "busybox", "sh", "-c", "sleep 1.5; echo on-the-tty; sleep 600")
    assert _until(lambda: b"on-the-tty" in dy.cli("logs", tty).stdout, 20)
    assert dy.cli("exec", tty, "true").returncode == 0
    cat, cat_pid = _run_asleep(dy, "-i", "busybox", "sh", "-c", "read line; echo got $line; sleep 600")
    attach = subprocess.Popen(
        [sys.executable, "-m", "cli", "attach", cat],
        env=dy.env,
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert attach.stdin is not None
        attach.stdin.write(b"hello\n")
        attach.stdin.flush()
        assert _until(lambda: b"got hello" in dy.cli("logs", cat).stdout, 20)
    finally:
        attach.kill()
        attach.communicate(timeout=10)
    assert _shim_pid(dy, tty) == tty_pid and _shim_pid(dy, cat) == cat_pid
    dy.cli("rm", "-f", tty, cat, check=True)


def test_a_terminal_nobody_holds_any_more_does_not_keep_waking_the_shim(dy: Instance) -> None:
    script = "sleep 1.5; echo hi; exec sleep 600 >/dev/null 2>&1 </dev/null"
    cid, pid = _run_asleep(dy, "-t", "busybox", "sh", "-c", script)
    shim_log = os.path.join(endpoints.bundle_dir("default", cid, dy.env), "shim.log")
    assert _until(lambda: b"hi" in dy.cli("logs", cid).stdout, 20)
    assert _until(lambda: idle.asleep(pid) and _sleeps(shim_log) >= 2), "woken once by the terminal's end"
    settled = _sleeps(shim_log)
    time.sleep(2)
    assert idle.asleep(pid) and _sleeps(shim_log) == settled, "asleep for good: nothing to watch on that terminal"
    assert dy.cli("exec", cid, "true").returncode == 0
    dy.cli("rm", "-f", cid, check=True)


def test_sleeping_shims_ride_through_an_execution_restart(dy: Instance) -> None:
    cid, pid = _run_asleep(dy, "busybox", "sh", "-c", "trap 'exit 3' TERM; sleep 600 & wait")
    other, other_pid = _run_asleep(dy, "busybox", "sh", "-c", "sleep 3; exit 5")
    log = os.path.join(endpoints.bundle_dir("default", cid, dy.env), "shim.log")
    sleeps = _sleeps(log)
    dy.kill("execution")
    dy.start("execution")
    assert _state(dy, cid)["Status"] == "running"
    time.sleep(1)
    assert idle.asleep(pid) and _sleeps(log) == sleeps, "the restarted service adopted it asleep, without a wake"
    assert dy.cli("wait", other, timeout=30).stdout.strip() == b"5", "an adopted sleeping shim's exit is seen"
    assert _until(lambda: not os.path.exists(f"/proc/{other_pid}"))
    assert dy.cli("exec", cid, "true").returncode == 0
    assert dy.cli("stop", cid).returncode == 0
    assert _state(dy, cid)["ExitCode"] == 3
    assert _until(lambda: not os.path.exists(f"/proc/{pid}"))
    dy.cli("rm", cid, other, check=True)


def test_a_sigkilled_sleeping_shim_is_cleaned_up_as_an_awake_one(dy: Instance) -> None:
    victim, victim_pid = _run_asleep(dy, "busybox", "sleep", "600")
    other, other_pid = _run_asleep(dy, "busybox", "sleep", "600")
    os.kill(victim_pid, signal.SIGKILL)
    assert _until(lambda: _state(dy, victim)["Status"] == "exited")
    assert _state(dy, victim)["ExitCode"] == 255
    sock = endpoints.shim_endpoint("default", victim, dy.env).removeprefix("ipc://")
    assert _until(lambda: not os.path.exists(sock) and not os.path.exists(sock + ".w")), "its sockets are removed"
    assert _state(dy, other)["Status"] == "running" and idle.asleep(other_pid), "the other shim sleeps on"
    dy.cli("rm", "-f", victim, other, check=True)


def test_many_sleeping_shims_woken_at_once_all_answer(dy: Instance) -> None:
    """Twelve interpreters starting at once on two cores take seconds: every call waits for
    its shim (it used to fail after the client's 2 s connect wait, nothing done)."""
    started = [_run_asleep(dy, "busybox", "sleep", "600") for _ in range(12)]
    for _, pid in started:
        assert idle.asleep(pid)
    with concurrent.futures.ThreadPoolExecutor(len(started)) as pool:
        execs = list(pool.map(lambda c: dy.cli("exec", c[0], "echo", "hi"), started))
    assert [(r.returncode, r.stdout) for r in execs] == [(0, b"hi\n")] * len(started), [r.stderr for r in execs]
    for _, pid in started:
        assert _until(lambda pid=pid: idle.asleep(pid))
    with concurrent.futures.ThreadPoolExecutor(len(started)) as pool:
        kills = list(pool.map(lambda c: dy.cli("kill", c[0]), started))
    assert [r.returncode for r in kills] == [0] * len(started), [r.stderr for r in kills]
    for cid, _ in started:
        assert dy.cli("wait", cid, timeout=60).stdout.strip() == b"137"
    dy.cli("rm", *[c for c, _ in started], check=True)
