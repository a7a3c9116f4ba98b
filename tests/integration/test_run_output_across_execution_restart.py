"""A foreground ``run`` (and ``start -a``) rides through a SIGKILL of the execution service.

What broke: ``dockyard run busybox sh -c 'sleep 3; echo done; exit 7'`` with the execution
service killed mid-run printed ``error: Unavailable: execution service not answering``
and exited 125; ``done`` was never shown although the container went on and exited 7.
Now the CLI waits for the service to come back, resumes the output from the container's
log exactly once, and exits with the container's code (``cli.resume``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import pytest

from tests.harness import Instance

SCRIPT = "echo one; echo err-one >&2; sleep 2; echo two; echo err-two >&2; exit 7"


def _read_until(proc: subprocess.Popen[bytes], want: bytes, timeout_s: float = 15) -> bytes:
    """Read the CLI's stdout until ``want`` was printed; what was read."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout_s
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} on stdout (got {got!r})"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout ended before {want!r} (got {got!r})"
            got += chunk
    return got


def _finish(proc: subprocess.Popen[bytes], head: bytes) -> tuple[bytes, bytes, int]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return head + out, err, proc.returncode


def _names(inst: Instance) -> list[str]:
    r = inst.cli("ps", "-a", "--format", "json", check=True)
    return [json.loads(line)["Names"] for line in r.stdout.decode().splitlines() if line.strip()]  # docker ps json


def test_run_output_resumes_once_after_execution_is_killed_mid_run(dy: Instance) -> None:
    proc = dy.cli_popen("run", "--name", "inflight", "busybox", "sh", "-c", SCRIPT)
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    dy.start("execution")  # back while the container still sleeps
    out, err, code = _finish(proc, head)
    assert out == b"one\ntwo\n", err
    assert err == b"err-one\nerr-two\n"
    assert code == 7
    assert "inflight" in _names(dy)  # no --rm: kept, Exited (7)
    r = dy.cli("inspect", "inflight", check=True)
    assert b'"ExitCode": 7' in r.stdout


def test_run_rm_container_exiting_while_execution_is_down(dy: Instance) -> None:
    """The container exits during the outage: the restarted service holds its removal for
    the client, which prints the rest from the log, gets 7 and removes it (once)."""
    proc = dy.cli_popen("run", "--rm", "--name", "gone", "busybox", "sh", "-c", SCRIPT)
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    time.sleep(2.5)  # "two" is written and the container exits while nobody serves
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert out == b"one\ntwo\n", err
    assert err == b"err-one\nerr-two\n"
    assert code == 7
    assert "gone" not in _names(dy)


def test_run_tty_output_resumes_once(dy: Instance) -> None:
    baseline = dy.cli("run", "--rm", "-t", "busybox", "true")
    if b"console:" in baseline.stderr:  # the host gives containers no terminal (test_execution_io fails too)
        pytest.skip(f"no container terminal on this host: {baseline.stderr.decode().strip()}")
    proc = dy.cli_popen("run", "-t", "busybox", "sh", "-c", "echo one; sleep 2; echo two; exit 7")
    head = _read_until(proc, b"one\r\n")
    dy.kill("execution")
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert out == b"one\r\ntwo\r\n", err
    assert code == 7


def test_start_attached_resumes_after_the_earlier_runs_output(dy: Instance) -> None:
    """``start -a`` of a container that ran before: its earlier output, in the same log, is
    neither shown again nor counted."""
    dy.cli("create", "--name", "again", "busybox", "sh", "-c", SCRIPT, check=True)
    first = dy.cli("start", "-a", "again")
    assert first.returncode == 7 and first.stdout == b"one\ntwo\n", first.stderr
    proc = dy.cli_popen("start", "-a", "again")
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert out == b"one\ntwo\n", err
    assert err == b"err-one\nerr-two\n"
    assert code == 7


def test_run_gives_up_when_execution_stays_away(dy: Instance) -> None:
    """Not back within the wait: the original one-line error and 125 (the wait shortened here)."""
    dy.env["DOCKYARD_RESUME_WAIT_S"] = "2"
    proc = dy.cli_popen("run", "busybox", "sh", "-c", SCRIPT)
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    out, err, code = _finish(proc, head)
    assert out == b"one\n"
    assert code == 125
    assert err.decode().splitlines()[-1].startswith("error: Unavailable: execution service not answering at ")
