"""Regression: ``rm -f`` of a container whose shim was SIGKILLed at the same moment failed.

The execution service's ``shim.kill`` was in flight when the shim died: the call failed
``Unavailable`` (the connection dropped) before the service had cleaned up after the dead
shim, and ``rm -f`` gave that error to the user (4 of 24 tries in the walkthrough); a
second ``rm`` removed the container. Docker's ``rm -f`` succeeds. The removal now sees that
the shim is gone, waits for the clean-up of the dead shim and removes the container: no
record, bundle, mount, shim or container process is left.

The race is made certain here: the shim is stopped (SIGSTOP) so that ``rm -f``'s
``shim.kill`` reaches it and waits unanswered, then SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.engine import Engine, ps_names

pytestmark = pytest.mark.root

KILL_AFTER_S = 1.0
"""How long ``rm -f`` runs before the shim dies: its ``shim.kill`` has reached the stopped
shim by then (a CLI start is ~0.2 s here), and the service's 3 s liveness has not run out."""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_rm_force_succeeds_when_the_shim_is_sigkilled_meanwhile(engine: Engine) -> None:
    assert engine.run("-d", "--name", "rf", "busybox", "sleep", "300").returncode == 0
    info = engine.inspect("rf")
    task_pid = int(info["state"]["pid"])
    bundle = info["bundle"]
    shim_pid = int(Path(bundle, "shim.pid").read_text())
    result: list[subprocess.CompletedProcess[bytes]] = []
    rm = threading.Thread(target=lambda: result.append(engine.cli("rm", "-f", "rf", timeout=90)))
    os.kill(shim_pid, signal.SIGSTOP)
    try:
        rm.start()
        time.sleep(KILL_AFTER_S)
    finally:
        os.kill(shim_pid, signal.SIGKILL)
        rm.join()
    assert result and result[0].returncode == 0, result[0].stderr.decode() if result else "rm did not end"
    assert "rf" not in ps_names(engine)
    assert not os.path.exists(bundle)
    engine.wait_until(lambda: not _alive(task_pid), 10, "the container's process gone")
    engine.wait_until(lambda: "/containers/delete" in engine.topics(info["id"]), 15, "delete journaled")
    topics = engine.topics(info["id"])
    for topic in ("/tasks/exit", "/tasks/delete", "/containers/delete"):
        assert topics.count(topic) == 1, topics
    engine.assert_clean()
