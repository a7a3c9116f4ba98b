"""Regression: a container that ran while the execution service was SIGKILLed showed ``Created``.

What broke: after a SIGKILL of the execution service during concurrent ``run -d``, some
containers that had run and exited showed ``Created`` in ``ps -a`` (exit code and events
right). The service died after the shim started the task and before it recorded the start;
its recovery (adopting the live shim, or cleaning up after a dead one) recorded the exit
but not ``started_at`` from the shim's state. Docker shows ``Exited (3) ...`` with the real
start and finish times; so does Dockyard now, and a recovered container that still runs
shows its real uptime.

The moment is made certain with a runtime wrapper that holds the shim's ``runc run`` for a
few seconds after the task started (the task exits meanwhile): the service is killed then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import codec
from tests.conftest import need_root
from tests.engine import Engine, ps_names
from tests.harness import Instance

pytestmark = pytest.mark.root

HOLD_S = 3
"""How long the wrapper holds the shim after ``runc run`` (the service is killed meanwhile)."""


@pytest.fixture
def engine(instance: Instance) -> Iterator[Engine]:
    need_root()
    yield Engine(instance)


def _wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A runtime with the real one's basename (the same runtime root) whose first ``run``
    writes its pid to the mark file, then waits ``HOLD_S`` before it returns."""
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    real = shutil.which(runtime) or runtime
    mark = tmp_path / "started"
    wrapper = tmp_path / runtime
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = run ] && [ ! -e {mark} ] && '
        f'{{ {real} "$@"; rc=$?; echo $$ > {mark}; sleep {HOLD_S}; exit $rc; }}; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, mark


def _bundle(engine: Engine) -> Path:
    """The bundle of the test's one container."""
    return next(Path(engine.inst.state, "tasks", "default").iterdir())


def _task_state(bundle: Path) -> dict[str, object]:
    """The shim's ``state.json`` (its authoritative task state); {} while there is none."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((bundle / "state.json").read_text())  # type: ignore[no-any-return]
    return {}


def _time(value: object) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _run_d_then_kill_execution(engine: Engine, wrapper: Path, mark: Path, name: str, *cmd: str) -> None:
    """``run -d --name <name> busybox <cmd>`` through the runtime ``wrapper``; SIGKILL the
    execution service once the task started (``mark`` written), before the start is recorded."""
    run = threading.Thread(
        target=engine.run,
        args=("-d", "--runtime", str(wrapper), "--name", name, "busybox", *cmd),
        kwargs={"timeout": 60},
    )
    run.start()
    try:
        engine.wait_until(lambda: mark.exists() and mark.read_text().strip() != "", 30, "the task started")
        engine.inst.kill("execution")
    finally:
        run.join()


@pytest.mark.parametrize("shim", ["alive", "dead"])
def test_exit_recovered_after_a_crash_during_run_keeps_its_start(engine: Engine, tmp_path: Path, shim: str) -> None:
    """``alive``: the restarted service adopts the shim of the exited task; ``dead``: the shim
    was SIGKILLed too, after it recorded the exit in its state file (clean-up of a dead shim)."""
    wrapper, mark = _wrapper(tmp_path)
    before = codec.utcnow()
    _run_d_then_kill_execution(engine, wrapper, mark, "c", "sh", "-c", "exit 3")
    bundle = _bundle(engine)
    engine.wait_until(lambda: _task_state(bundle).get("exit_status") == 3, 30, "the exit in the shim's state file")
    recorded = _task_state(bundle)
    if shim == "dead":
        os.kill(int((bundle / "shim.pid").read_text()), signal.SIGKILL)
    engine.inst.start("execution")
    engine.wait_until(lambda: engine.inspect("c")["state"]["status"] == "exited", 30, "the exit recorded")
    st = engine.inspect("c")["state"]
    assert st["exit_code"] == 3
    started, finished = _time(st["started_at"]), _time(st["finished_at"])
    assert started == _time(recorded["started_at"]), (st, recorded)
    assert finished == _time(recorded["exited_at"]), (st, recorded)
    assert started is not None and finished is not None and before <= started <= finished
    ps = engine.cli("ps", "-a", check=True).stdout.decode()
    assert "Exited (3)" in ps and "Created" not in ps, ps
    assert engine.cli("rm", "c").returncode == 0
    assert "c" not in ps_names(engine)
    engine.assert_clean()


def test_running_container_adopted_after_a_crash_during_run_keeps_its_start(engine: Engine, tmp_path: Path) -> None:
    """The task still runs when the service comes back: ``Up`` for as long as it really runs."""
    wrapper, mark = _wrapper(tmp_path)
    before = codec.utcnow()
    _run_d_then_kill_execution(engine, wrapper, mark, "u", "sleep", "300")
    bundle = _bundle(engine)
    engine.wait_until(lambda: _task_state(bundle).get("status") == "running", 30, "the task in the shim's state file")
    recorded = _task_state(bundle)
    engine.inst.start("execution")
    engine.wait_until(lambda: engine.inspect("u")["state"]["status"] == "running", 30, "the task adopted")
    st = engine.inspect("u")["state"]
    started = _time(st["started_at"])
    assert started is not None and started == _time(recorded["started_at"]) and started >= before, (st, recorded)
    assert engine.cli("rm", "-f", "u").returncode == 0
    engine.assert_clean()
