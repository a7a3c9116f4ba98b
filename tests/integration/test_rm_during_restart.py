"""Regression: ``rm -f`` while ``restart`` waits for the stop started the container again.

The restart stops the task, then starts it. ``rm -f``'s kill ended that stop, and the
restart's start got the container's lock before the removal did: the container ran again
and ``rm -f`` failed "is running". (Had the removal come first, the start fell back to the
record it was given and started a removed container.) dockerd marks the container for
removal before it kills it (``RemovalInProgress``) and its start refuses one so marked:
``rm -f`` succeeds and the ``restart`` fails "marked for removal" (or "not found", had the
removal ended first). So does Dockyard now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import need_root
from tests.engine import Engine, ps_names
from tests.harness import Instance

pytestmark = pytest.mark.root


@pytest.fixture
def engine(instance: Instance) -> Iterator[Engine]:
    need_root()
    yield Engine(instance)


def test_a_container_removed_while_its_restart_stops_it_is_not_started_again(engine: Engine) -> None:
    # PID 1 `sleep` has no SIGTERM handler: the stop waits its 3 s before the SIGKILL
    assert engine.run("-d", "--name", "x", "busybox", "sleep", "600").returncode == 0
    result: dict[str, Any] = {}

    def restart() -> None:
        result["r"] = engine.cli("restart", "-t", "3", "x")

    t = threading.Thread(target=restart)
    t.start()
    time.sleep(1.0)  # the restart is waiting for the task to stop
    r = engine.cli("rm", "-f", "x")
    assert r.returncode == 0, r.stderr
    t.join(30)
    assert not t.is_alive()
    restarted = result["r"]
    # refused under the removal's mark, or (had the removal ended first) for want of a container
    assert restarted.returncode != 0, restarted
    assert b"marked for removal" in restarted.stderr or b"not found" in restarted.stderr, restarted
    assert "x" not in ps_names(engine)
    engine.assert_clean()  # no shim, task, mount or runtime state of a started-again container
