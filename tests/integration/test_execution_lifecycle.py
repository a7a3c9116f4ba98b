"""Lifecycle semantics Docker users rely on (issue 5; CASES.md C17, C20, C25): stop signals and
timeouts, kill, restart, pause, wait, no-op double start/stop, rm of a running container,
restart policies with back-off, OOM kills."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine import Engine
from tests.harness import PROJECT

pytestmark = pytest.mark.root


def _state(engine: Engine, ref: str) -> dict:
    return engine.inspect(ref)["state"]


def test_stop_of_a_pid1_that_ignores_sigterm_waits_the_timeout_then_137(engine: Engine) -> None:
    engine.run("-d", "--name", "ign", "busybox", "sleep", "1000", check=True)
    t0 = time.monotonic()
    assert engine.cli("stop", "-t", "2", "ign").returncode == 0
    took = time.monotonic() - t0
    assert 2.0 <= took < 4.5, took
    assert _state(engine, "ign")["exit_code"] == 137
    engine.cli("rm", "ign", check=True)


def test_stop_with_init_returns_at_once_with_143(engine: Engine) -> None:
    engine.run("-d", "--init", "--name", "withinit", "busybox", "sleep", "1000", check=True)
    t0 = time.monotonic()
    assert engine.cli("stop", "-t", "10", "withinit").returncode == 0
    assert time.monotonic() - t0 < 5  # well under the 10 s timeout: tini passed SIGTERM on
    assert _state(engine, "withinit")["exit_code"] == 143
    engine.cli("rm", "withinit", check=True)


def test_image_stop_signal_is_used(engine: Engine) -> None:
    engine.load("usr1:latest", config={"StopSignal": "SIGUSR1"})
    engine.run(
        "-d", "--name", "usr1", "usr1", "sh", "-c", "trap 'exit 0' USR1; while true; do sleep 0.1; done", check=True
    )
    time.sleep(0.3)
    t0 = time.monotonic()
    assert engine.cli("stop", "usr1").returncode == 0
    assert time.monotonic() - t0 < 3
    assert _state(engine, "usr1")["exit_code"] == 0
    engine.cli("rm", "usr1", check=True)


def test_kill_with_a_signal_and_kill_of_a_stopped_container(engine: Engine) -> None:
    engine.run(
        "-d", "--name", "k", "busybox", "sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done", check=True
    )
    time.sleep(0.3)
    assert engine.cli("kill", "-s", "TERM", "k").returncode == 0
    engine.wait_until(lambda: not _state(engine, "k")["running"])
    assert _state(engine, "k")["exit_code"] == 7
    p = engine.cli("kill", "k")
    assert p.returncode != 0 and b"is not running" in p.stderr
    engine.cli("rm", "k", check=True)


def test_double_start_and_stop_are_noops_and_rm_of_running_is_refused(engine: Engine) -> None:
    engine.run("-d", "--name", "twice", "busybox", "sleep", "1000", check=True)
    pid = _state(engine, "twice")["pid"]
    p = engine.cli("start", "twice")
    assert p.returncode == 0 and b"already running" in p.stderr
    assert _state(engine, "twice")["pid"] == pid
    p = engine.cli("rm", "twice")
    assert p.returncode == 1 and b"Stop the container before attempting removal or force remove" in p.stderr
    assert _state(engine, "twice")["running"]
    engine.cli("stop", "-t", "0", "twice", check=True)
    p = engine.cli("stop", "twice")
    assert p.returncode == 0 and b"not running" in p.stderr
    cid = engine.inspect("twice")["id"]
    assert engine.topics(cid).count("/tasks/start") == 1
    engine.cli("start", "twice", check=True)
    assert engine.cli("rm", "-f", "twice").returncode == 0
    assert "twice" not in [c["name"] for c in engine.containers()]


def test_concurrent_starts_start_once(engine: Engine) -> None:
    cid = engine.cli("create", "--name", "conc", "busybox", "sleep", "1000", check=True).stdout.decode().strip()
    import concurrent.futures

    def start() -> bool:
        with engine.inst.client("execution") as c:
            return bool(c.call("execution.start", {"id": cid})["already_running"])

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: start(), range(10)))
    assert results.count(False) == 1
    engine.wait_until(lambda: "/tasks/start" in engine.topics(cid))
    assert engine.topics(cid).count("/tasks/start") == 1
    engine.cli("rm", "-f", "conc", check=True)


def test_restart_and_wait(engine: Engine) -> None:
    engine.run("-d", "--name", "rs", "busybox", "sleep", "1000", check=True)
    pid = _state(engine, "rs")["pid"]
    assert engine.cli("restart", "-t", "0", "rs").returncode == 0
    st = _state(engine, "rs")
    assert st["running"] and st["pid"] != pid
    engine.run("-d", "--name", "w", "busybox", "sh", "-c", "sleep 0.5; exit 9", check=True)
    p = engine.cli("wait", "w")
    assert p.stdout == b"9\n"
    engine.cli("rm", "-f", "rs", "w", check=True)


def test_pause_and_unpause(engine: Engine) -> None:
    engine.run(
        "-d", "--name", "pz", "busybox", "sh", "-c", "while true; do date +%s%N >> /tmp/t; sleep 0.05; done", check=True
    )
    time.sleep(0.3)
    assert engine.cli("pause", "pz").returncode == 0
    st = _state(engine, "pz")
    assert st["status"] == "paused" and st["paused"]
    assert "(Paused)" in engine.cli("ps").stdout.decode()
    p = engine.cli("pause", "pz")
    assert p.returncode != 0 and b"already paused" in p.stderr
    before = engine.cli("exec", "pz", "true")
    assert before.returncode != 0  # exec into a paused container is refused
    assert engine.cli("unpause", "pz").returncode == 0
    assert _state(engine, "pz")["status"] == "running"
    p = engine.cli("unpause", "pz")
    assert p.returncode != 0 and b"not paused" in p.stderr
    cid = engine.inspect("pz")["id"]
    engine.wait_until(lambda: "/tasks/resumed" in engine.topics(cid))
    assert [t for t in engine.topics(cid) if t in ("/tasks/paused", "/tasks/resumed")] == [
        "/tasks/paused",
        "/tasks/resumed",
    ]
    engine.cli("pause", "pz", check=True)
    assert engine.cli("stop", "-t", "1", "pz").returncode == 0  # a paused container can be stopped
    assert _state(engine, "pz")["status"] == "exited"
    engine.cli("start", "pz", check=True)
    engine.cli("pause", "pz", check=True)
    t0 = time.monotonic()
    engine.cli("rm", "-f", "pz", check=True)  # and force-removed
    assert time.monotonic() - t0 < 10


def test_on_failure_restarts_exactly_n_times(engine: Engine) -> None:
    engine.run("-d", "--name", "of", "--restart", "on-failure:3", "busybox", "sh", "-c", "exit 1", check=True)
    cid = engine.inspect("of")["id"]
    engine.wait_until(lambda: engine.topics(cid).count("/tasks/delete") == 4, 30, "4 runs")
    time.sleep(2)  # no fifth run comes
    assert engine.topics(cid).count("/tasks/start") == 4
    info = engine.inspect("of")
    assert info["restart_count"] == 3 and info["state"]["status"] == "exited" and info["state"]["exit_code"] == 1
    engine.cli("rm", "of", check=True)


def test_always_restarts_until_stopped(engine: Engine) -> None:
    engine.run("-d", "--name", "alw", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2; exit 0", check=True)
    cid = engine.inspect("alw")["id"]
    engine.wait_until(lambda: engine.topics(cid).count("/tasks/start") >= 3, 30, "restarts")
    assert engine.cli("stop", "-t", "1", "alw").returncode == 0
    time.sleep(1.5)
    starts = engine.topics(cid).count("/tasks/start")
    time.sleep(1.5)
    assert engine.topics(cid).count("/tasks/start") == starts
    assert not _state(engine, "alw")["running"]
    p = engine.run("--rm", "--restart", "always", "busybox", "true")
    assert p.returncode == 125 and b"conflicting options" in p.stderr
    engine.cli("rm", "-f", "alw", check=True)


def test_oom_kill_is_137_with_oomkilled_and_an_event(engine: Engine) -> None:
    p = engine.run("--name", "oom", "-m", "32m", "--memory-swap", "32m", "busybox", "sh", "-c", "tail /dev/zero")
    assert p.returncode == 137
    info = engine.inspect("oom")
    assert info["state"]["oom_killed"] is True and info["state"]["exit_code"] == 137
    cid = info["id"]
    topics = engine.topics(cid)
    assert "/tasks/oom" in topics and topics.index("/tasks/oom") < topics.index("/tasks/exit")
    engine.cli("rm", "oom", check=True)


def test_plain_sigkill_is_not_an_oom(engine: Engine) -> None:
    engine.run("-d", "--name", "notoom", "-m", "32m", "busybox", "sleep", "300", check=True)
    engine.cli("kill", "notoom", check=True)
    engine.wait_until(lambda: not _state(engine, "notoom")["running"])
    st = _state(engine, "notoom")
    assert st["exit_code"] == 137 and st["oom_killed"] is False
    assert "/tasks/oom" not in engine.topics(engine.inspect("notoom")["id"])
    engine.cli("rm", "notoom", check=True)


@pytest.mark.parametrize("verb", [("rm", "-f"), ("stop", "-t", "1")], ids=["rm-f", "stop"])
def test_rm_f_and_stop_during_the_start_act_on_the_started_task(
    engine: Engine, tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """``rm -f`` or ``stop`` while the runtime is still starting the container (a slow runtime
    here) waits for that start and then ends the task, as dockerd's container lock makes them."""
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    real = shutil.which(runtime) or runtime
    mark = tmp_path / "starting"
    wrapper = tmp_path / runtime  # the same basename: the same runtime root
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$7" = run ] && {{ touch {mark}; sleep 1; }}\n'  # argv: --root R --log L --log-format json run
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--runtime", str(wrapper), "--name", "slow", "busybox", "sleep", "60"],
        env=engine.inst.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        engine.wait_until(mark.exists, what="the runtime starting the container")
        p = engine.cli(*verb, "slow")
        assert p.returncode == 0, p.stderr
        assert run.wait(30) in (137, 143)  # the attached run ends with the task it started
        if verb[0] == "rm":
            assert "slow" not in str(engine.containers())
        else:
            assert engine.inspect("slow")["state"]["running"] is False
            engine.cli("rm", "slow", check=True)
    finally:
        run.kill()
        run.wait()
    engine.assert_clean()
