"""``--rm`` containers and their clients ride through a SIGKILL of the execution service.

What broke: ``docker run --rm busybox sh -c 'for i in $(seq 1 30); do echo line $i; sleep 0.1;
done; exit 4'`` with the execution service SIGKILLed at ~1.2 s exited 4 but printed only
up to ``line 11``: the restarted service auto-removed the finished container, log and all,
before the gateway resumed the output from it. docker-py's ``run(..., remove=True)`` lost
the same tail: its log stream, read last, was cut off by its own removal, which came in
while the stream was still catching up. ``dockyard wait C`` ended with ``error:
Unavailable: execution service not answering``. Now the gateway's attachment and wait
hold the auto-removal across the restart (bounded) until they are back, a client's
removal waits for the gateway's streams of the container to catch up, and ``dockyard
wait`` resumes as ``docker wait`` does.

The supervisor backs its restarts of a service off (doubling while it dies within 10 s of
its start), so every client of the module rides through one and the same kill (the
``outage`` fixture runs them all and keeps what each saw); each test asserts one client's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway_util import Engine, docker_py
from tests.harness import PROJECT
from tests.integration.test_gateway_across_execution_restart import _docker
from tests.integration.test_gateway_docker_cli import _service_pids
from tests.integration.test_run_output_across_execution_restart import _finish, _read_until

SCRIPT = "for i in $(seq 1 30); do echo line $i; sleep 0.1; done; exit 4"
LINES = b"".join(b"line %d\n" % i for i in range(1, 31))
PROMPT_S = 10.0
"""A container nobody follows is removed within this after the restart (a held one: 60 s)."""


@dataclasses.dataclass
class Outage:
    """What each client saw across the one kill: ``(stdout, stderr, exit code)`` per process,
    docker-py's results, and how long after the restart the ``--rm -d`` container was gone."""

    run_rm: tuple[bytes, bytes, int]
    two_run: tuple[bytes, bytes, int]
    two_attach: tuple[bytes, bytes, int]
    py_ok: Any
    py_fail: Any
    detached_gone_s: float | None
    dockyard_wait: tuple[bytes, bytes, int]
    exists: dict[str, bool]


def _gone(eng: Engine, name: str) -> bool:
    status, _h, _b = eng.api("GET", f"/containers/{name}/json")
    return status == 404


def _running(eng: Engine, name: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _h, body = eng.api("GET", f"/containers/{name}/json")
        if status == 200 and b'"Running": true' in body.replace(b'"Running":true', b'"Running": true'):
            return
        time.sleep(0.05)
    raise AssertionError(f"container {name} did not start")


@pytest.fixture(scope="module")
def outage(eng: Engine) -> Iterator[Outage]:
    dy = eng.inst
    # dockyard wait: one container exits (and, --rm, is removed) around the outage, one after it
    dy.cli("run", "-d", "--rm", "--name", "waitgone", "busybox", "sh", "-c", "sleep 3; exit 6", check=True)
    dy.cli("run", "-d", "--name", "waitkept", "busybox", "sh", "-c", "sleep 6; exit 5", check=True)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "cli", "wait", "waitgone", "waitkept"],
        env=dy.env,
        cwd=PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = [waiting]
    try:
        with docker_py(eng) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
            fail_script = SCRIPT.replace("echo line $i", "echo line $i >&2")
            ok_script = SCRIPT.replace("exit 4", "exit 0")
            py_ok = pool.submit(client.containers.run, "busybox", ["sh", "-c", ok_script], name="pyok", remove=True)
            py_fail = pool.submit(
                client.containers.run, "busybox", ["sh", "-c", fail_script], name="pyfail", remove=True
            )
            run_rm = _docker(eng, "run", "--rm", "--name", "rmheld", "busybox", "sh", "-c", SCRIPT)
            two_run = _docker(eng, "run", "--rm", "--name", "rmtwo", "busybox", "sh", "-c", SCRIPT)
            procs += [run_rm, two_run]
            heads = {"run_rm": _read_until(run_rm, b"line 1\n"), "two_run": _read_until(two_run, b"line 1\n")}
            two_attach = _docker(eng, "attach", "rmtwo")  # a second client of the same --rm container
            procs.append(two_attach)
            heads["two_attach"] = _read_until(two_attach, b"line ")
            _running(eng, "pyok")
            _running(eng, "pyfail")
            eng.ok("run", "-d", "--rm", "--name", "rmdetached", "busybox", "sh", "-c", "sleep 0.5; exit 3")
            heads["run_rm"] += _read_until(run_rm, b"line 6\n")  # ~0.6 s of output each: mid-run

            while time.monotonic() - wait_started < 2.0:  # the CLI (a Python start) has its wait in
                time.sleep(0.05)
            (pid,) = _service_pids(eng, "execution")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not [p for p in _service_pids(eng, "execution") if p != pid]:
                assert time.monotonic() < deadline, "the supervisor did not restart the execution service"
                time.sleep(0.05)
            dy.wait_healthy("execution")
            restarted = time.monotonic()
            gone_s: float | None = None
            while time.monotonic() - restarted < PROMPT_S:
                if _gone(eng, "rmdetached"):
                    gone_s = time.monotonic() - restarted
                    break
                time.sleep(0.1)

            def result(fut: concurrent.futures.Future[Any]) -> Any:
                try:
                    return fut.result(timeout=60)
                except Exception as exc:
                    return exc

            results = Outage(
                run_rm=_finish(run_rm, heads["run_rm"]),
                two_run=_finish(two_run, heads["two_run"]),
                two_attach=_finish(two_attach, heads["two_attach"]),
                py_ok=result(py_ok),
                py_fail=result(py_fail),
                detached_gone_s=gone_s,
                dockyard_wait=_finish(waiting, b""),
                exists={},
            )
        results.exists = {n: not _gone(eng, n) for n in ("rmheld", "rmtwo", "pyok", "pyfail", "waitgone")}
        yield results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_docker_run_rm_shows_every_line_and_the_exit_code_across_the_kill(outage: Outage) -> None:
    out, err, code = outage.run_rm
    assert (out, code) == (LINES, 4), err
    assert not outage.exists["rmheld"]  # removed once its client had it all (not after the hold's bound)


def test_two_attached_clients_of_an_rm_container_both_get_the_end(outage: Outage) -> None:
    out, err, code = outage.two_run
    assert (out, code) == (LINES, 4), err
    tail, err, code = outage.two_attach  # attached from some line on
    assert code == 4, err
    assert tail.startswith(b"line ") and LINES.endswith(tail), tail
    assert not outage.exists["rmtwo"]


def test_docker_py_run_remove_returns_the_whole_output_across_the_kill(outage: Outage) -> None:
    """docker-py reads its followed log after its wait and its own removal."""
    assert outage.py_ok == LINES
    assert not outage.exists["pyok"]


def test_docker_py_run_remove_failing_gives_the_exit_code_and_stderr_across_the_kill(outage: Outage) -> None:
    docker = pytest.importorskip("docker")
    assert isinstance(outage.py_fail, docker.errors.ContainerError), outage.py_fail
    assert (outage.py_fail.exit_status, outage.py_fail.stderr) == (4, LINES)
    assert not outage.exists["pyfail"]


def test_docker_run_rm_detached_is_removed_promptly_after_the_restart(outage: Outage) -> None:
    """No client follows it (it exited while the service was away): nothing holds its removal."""
    assert outage.detached_gone_s is not None, f"--rm -d container still there {PROMPT_S}s after the restart"


def test_dockyard_wait_gets_the_exit_codes_across_the_kill(outage: Outage) -> None:
    out, err, code = outage.dockyard_wait
    assert (out, code) == (b"6\n5\n", 0), err
    assert not outage.exists["waitgone"]
