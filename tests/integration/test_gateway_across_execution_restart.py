"""Docker clients of the gateway ride through a SIGKILL of the execution service.

What broke: a ``docker run`` (attached), ``docker wait C``, ``docker logs -f C`` or docker-py's
``container.wait()`` / ``container.logs(stream=True, follow=True)`` in progress when the
supervisor's execution service was SIGKILLed ended with "Error waiting for container" or a
broken stream, although the container ran on. Now the gateway keeps the client's connection
open, waits for the restarted service and resumes the wait, the log or the attached output
(from the container's log) exactly once (``services.gateway.resume``).

One instance started with ``dockyard up`` serves the module; the supervisor restarts the
killed service.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.gateway_util import Engine
from tests.integration.test_gateway_docker_cli import _service_pids
from tests.integration.test_run_output_across_execution_restart import _finish, _read_until

SCRIPT = "echo one; echo err-one >&2; sleep 3; echo two; echo err-two >&2; exit 7"


def _docker(eng: Engine, *args: str) -> subprocess.Popen[bytes]:
    if eng.cli is None:
        pytest.skip("no docker CLI installed")
    return subprocess.Popen(
        [eng.cli, *args],
        env=eng.env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_execution(eng: Engine) -> None:
    """SIGKILL the execution service and wait until the supervisor has it answering again."""
    (pid,) = _service_pids(eng, "execution")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if [p for p in _service_pids(eng, "execution") if p != pid]:
            eng.inst.wait_healthy("execution")
            return
        time.sleep(0.1)
    raise AssertionError("the supervisor did not restart the execution service")


def _run_detached(eng: Engine, name: str, script: str = SCRIPT) -> None:
    eng.ok("run", "-d", "--name", name, "busybox", "sh", "-c", script)


def test_attached_docker_run_shows_all_output_once_and_exits_with_the_code(eng: Engine) -> None:
    proc = _docker(eng, "run", "--name", "attached", "busybox", "sh", "-c", SCRIPT)
    head = _read_until(proc, b"one\n")
    _kill_execution(eng)
    out, err, code = _finish(proc, head)
    assert (out, err, code) == (b"one\ntwo\n", b"err-one\nerr-two\n", 7)
    assert eng.ok("inspect", "-f", "{{.State.ExitCode}}", "attached").strip() == "7"


def test_docker_logs_follow_goes_on_after_the_kill(eng: Engine) -> None:
    _run_detached(eng, "followed")
    proc = _docker(eng, "logs", "-f", "followed")
    head = _read_until(proc, b"one\n")
    _kill_execution(eng)
    out, err, code = _finish(proc, head)
    assert (out, err, code) == (b"one\ntwo\n", b"err-one\nerr-two\n", 0)


def test_docker_wait_gets_the_exit_code_across_the_kill(eng: Engine) -> None:
    _run_detached(eng, "waited")
    proc = _docker(eng, "wait", "waited")
    time.sleep(1)  # the wait is in
    _kill_execution(eng)
    out, err, code = _finish(proc, b"")
    assert (out, code) == (b"7\n", 0), err


def test_docker_wait_of_a_container_that_exits_during_the_outage(eng: Engine) -> None:
    """The exit happens while nobody serves: the restarted service has it in the container's
    state, and the resumed wait answers it."""
    _run_detached(eng, "quick", "sleep 2; exit 5")
    proc = _docker(eng, "wait", "quick")
    time.sleep(0.5)
    (pid,) = _service_pids(eng, "execution")
    os.kill(pid, signal.SIGKILL)  # the supervisor restarts it; the container exits meanwhile
    out, err, code = _finish(proc, b"")
    assert (out, code) == (b"5\n", 0), err


def test_docker_py_wait_and_follow_across_the_kill(eng: Engine) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=f"unix://{eng.sock}", timeout=120)
    try:
        script = "i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); sleep 0.1; done; exit 3"
        c = client.containers.run("busybox", ["sh", "-c", script], name="pywatched", detach=True)
        stream = c.logs(stream=True, follow=True)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waited = pool.submit(c.wait)
            followed = pool.submit(lambda: b"".join(stream))
            time.sleep(1)
            _kill_execution(eng)
            result: dict[str, Any] = waited.result(timeout=60)
            logged = followed.result(timeout=60)
        assert result["StatusCode"] == 3 and not result.get("Error")
        assert logged == b"".join(b"line-%d\n" % i for i in range(40))
    finally:
        client.close()
