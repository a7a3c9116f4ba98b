"""``run --rm`` gets its container's exit status when the execution service dies right after the removal.

What broke: with the events service down, the execution service removes an exited ``--rm``
container, then waits (``REMOVE_EVENT_WAIT_S``, 1 s) for its ``/containers/delete`` to be
journaled before the ``run`` call gets the exit status. SIGKILLed in that second, it left a
CLI that found no container once the service was back: ``error: container ... was removed
before its output could be shown``, exit 125 (a walkthrough: 10-17 of 50 concurrent
``run --rm``). Now the removal keeps the exit status for the holds of the calls following the
container (a tombstone, in the same transaction as the delete), and the resumed call asks
for it under its hold token.

The window is made certain: the events service is stopped first (so the wait after the
removal lasts its full second), and the execution service is killed as soon as its log says
the container was removed. The same goes for ``docker run --rm`` through the gateway, whose
``wait`` is sent again under its hold token (before: the exit status was looked up in the
events journal, which was down, and ``docker run`` exited 0).
"""

from __future__ import annotations

import time

from tests.gateway_util import Engine
from tests.harness import Instance
from tests.integration.test_gateway_across_execution_restart import _docker
from tests.integration.test_run_output_across_execution_restart import _finish, _names, _read_until

SCRIPT = "echo one; sleep 1; echo two; exit 7"


def _wait_for_log(inst: Instance, service: str, text: str, timeout_s: float = 30) -> None:
    """Poll ``service``'s log until it holds ``text`` (every 10 ms: the window is 1 s)."""
    path = inst.logs / f"{service}.log"
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the {service} log:\n{inst.log_tail(service)}"
        time.sleep(0.01)


def test_run_rm_exit_status_survives_a_kill_right_after_the_removal(dy: Instance) -> None:
    dy.kill("events")  # the removal's event cannot be journaled: the run's answer waits 1 s for it
    proc = dy.cli_popen("run", "--rm", "--name", "tomb", "busybox", "sh", "-c", SCRIPT)
    head = _read_until(proc, b"two\n", timeout_s=30)
    _wait_for_log(dy, "execution", "removed container")  # the record is deleted, the answer not sent
    dy.kill("execution")
    assert proc.poll() is None, "the run ended before the kill: the window was missed"
    dy.start("execution")  # the events service stays down: the exit status cannot come from the journal
    out, err, code = _finish(proc, head)
    assert b"removed before" not in err, err
    assert code == 7, err
    assert out == b"one\ntwo\n", err
    assert "tomb" not in _names(dy)


def test_docker_run_rm_exit_status_survives_a_kill_right_after_the_removal(dy: Instance) -> None:
    dy.start("gateway")
    eng = Engine(dy)
    try:
        dy.kill("events")
        proc = _docker(eng, "run", "--rm", "--name", "tombgw", "busybox", "sh", "-c", SCRIPT)
        head = _read_until(proc, b"two\n", timeout_s=30)
        _wait_for_log(dy, "execution", "removed container")
        dy.kill("execution")
        assert proc.poll() is None, "the run ended before the kill: the window was missed"
        dy.start("execution")
        out, err, code = _finish(proc, head)
        assert code == 7, err
        assert out == b"one\ntwo\n", err
        assert "tombgw" not in _names(dy)
    finally:
        eng.close()
