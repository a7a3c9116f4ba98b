"""Crash safety (CASES.md C19): the execution service SIGKILLed at any time; shims SIGKILLed.

Containers keep running with the same pid, exits that happen while the service is down
show their real status afterwards (one exit event), ``--rm`` containers are removed, and
a dead shim is noticed within seconds and cleaned up with exit status 255.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import endpoints, errors, ids
from tests.conftest import need_root
from tests.engine import Engine, ps_names
from tests.harness import Instance

pytestmark = pytest.mark.root


@pytest.fixture
def engine(instance: Instance) -> Iterator[Engine]:
    need_root()
    yield Engine(instance)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_running_container_survives_a_restart_of_execution(engine: Engine, sig: int) -> None:
    """SIGKILL (a crash) or SIGTERM (a graceful stop, like ``dockyard down``): the container runs on."""
    assert engine.run("-d", "--name", "s", "busybox", "sleep", "60").returncode == 0
    pid = engine.inspect("s")["state"]["pid"]
    assert pid > 0
    engine.inst.kill("execution", sig)
    assert os.path.exists(f"/proc/{pid}")
    engine.inst.start("execution")
    ps = engine.cli("ps").stdout.decode()
    assert " s\n" in ps + "\n" and "Up " in ps
    assert engine.inspect("s")["state"]["pid"] == pid
    t0 = time.monotonic()
    assert engine.cli("stop", "-t", "1", "s").returncode == 0
    assert time.monotonic() - t0 < 8
    state = engine.inspect("s")["state"]
    assert state["status"] == "exited" and state["exit_code"] in (137, 143)
    assert engine.cli("rm", "s").returncode == 0
    engine.assert_clean()


def test_exit_while_execution_is_down_shows_real_status(engine: Engine) -> None:
    assert engine.run("-d", "--name", "b", "busybox", "sh", "-c", "sleep 2; echo bye; exit 3").returncode == 0
    assert engine.run("-d", "--rm", "--name", "r", "busybox", "sh", "-c", "sleep 2; exit 4").returncode == 0
    cid = engine.inspect("b")["id"]
    engine.inst.kill("execution")
    time.sleep(4)
    engine.inst.start("execution")
    info = engine.inspect("b")
    assert info["state"]["status"] == "exited" and info["state"]["exit_code"] == 3
    logs = engine.cli("logs", "b")
    assert (logs.returncode, logs.stdout) == (0, b"bye\n"), logs.stderr
    engine.wait_until(lambda: "r" not in ps_names(engine), what="--rm container removed")
    engine.wait_until(lambda: "/tasks/delete" in engine.topics(cid), what="delete event")
    exits = [e for e in engine.events(cid) if e["topic"] == "/tasks/exit"]
    assert len(exits) == 1 and exits[0]["event"]["exit_status"] == 3
    assert engine.topics(cid)[-2:] == ["/tasks/exit", "/tasks/delete"]
    assert engine.cli("rm", "b").returncode == 0
    engine.assert_clean()


def test_restart_beside_a_shim_that_deleted_its_task_and_lingers(engine: Engine) -> None:
    """A shim removes its address file once it deleted its task, then may live on for seconds
    (here: flushing its events to a stopped events service). An execution service restarted
    in that moment (SIGKILLed during ``rm -f``) cleans the shim up as a dead one; its start
    failed on the missing file before. The container's events end up complete, once each."""
    assert engine.run("-d", "--name", "g", "busybox", "sleep", "600").returncode == 0
    info = engine.inspect("g")
    address = Path(info["bundle"], "address")
    engine.inst.kill("events")
    rm = threading.Thread(target=engine.cli, args=("rm", "-f", "g"), kwargs={"timeout": 60})
    rm.start()
    try:
        engine.wait_until(lambda: not address.exists(), 30, "task deleted by its shim")
        engine.inst.kill("execution")
    finally:
        rm.join()
    engine.inst.start("execution")
    engine.inst.start("events")
    if "g" in ps_names(engine):
        assert engine.cli("rm", "-f", "g").returncode == 0
    engine.wait_until(lambda: "/containers/delete" in engine.topics(info["id"]), 30, "delete journaled")
    topics = engine.topics(info["id"])
    for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/delete"):
        assert topics.count(topic) == 1, topics
    engine.assert_clean()


def test_sigkilled_shim_is_noticed_and_cleaned_up(engine: Engine) -> None:
    assert engine.run("-d", "--name", "k", "busybox", "sleep", "60").returncode == 0
    info = engine.inspect("k")
    shim_pid = int(Path(info["bundle"], "shim.pid").read_text())
    os.kill(shim_pid, signal.SIGKILL)
    t0 = time.monotonic()
    engine.wait_until(lambda: not engine.inspect("k")["state"]["running"], 10, "dead shim noticed")
    assert time.monotonic() - t0 < 5
    state = engine.inspect("k")["state"]
    assert state["exit_code"] == 255
    engine.wait_until(lambda: "/tasks/delete" in engine.topics(info["id"]), what="delete event")
    topics = engine.topics(info["id"])
    assert topics.count("/tasks/exit") == 1 and topics.count("/tasks/delete") == 1
    assert engine.cli("rm", "k").returncode == 0
    engine.assert_clean()


@pytest.mark.parametrize("moment", ["during runc delete", "after runc delete"])
def test_shim_killed_during_its_delete_still_journals_the_delete(engine: Engine, tmp_path: Path, moment: str) -> None:
    """A shim SIGKILLed while it deletes its task (before it queued /tasks/delete): the execution
    service cleans up and the journal still gets exactly one /tasks/delete, after the exit."""
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    real = shutil.which(runtime) or runtime
    mark = tmp_path / "deleting"
    wrapper = tmp_path / runtime  # the same basename: the same runtime root
    if moment == "during runc delete":  # the shim is killed before the runtime deleted anything
        on_delete = f'echo $$ > {mark}; sleep 5; exec {real} "$@"'
    else:  # ... or after the runtime deleted the container, before the shim went on
        on_delete = f'{real} "$@"; rc=$?; echo $$ > {mark}; sleep 5; exit $rc'
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = delete ] && [ ! -e {mark} ] && {{ {on_delete}; }}; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    assert engine.run("-d", "--runtime", str(wrapper), "--name", "kd", "busybox", "true").returncode == 0
    info = engine.inspect("kd")
    engine.wait_until(lambda: mark.exists() and mark.read_text().strip() != "", what="the shim in runc delete")
    os.kill(int(Path(info["bundle"], "shim.pid").read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(mark.read_text()), signal.SIGKILL)  # the wrapper would go on after its shim
    engine.wait_until(lambda: "/tasks/delete" in engine.topics(info["id"]), 30, "delete event")
    topics = engine.topics(info["id"])
    assert topics == ["/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert engine.inspect("kd")["state"]["exit_code"] == 0
    assert engine.cli("rm", "kd").returncode == 0
    assert engine.topics(info["id"])[-1] == "/containers/delete"
    engine.assert_clean()


def test_shim_dies_while_execution_is_down(engine: Engine) -> None:
    assert engine.run("-d", "--name", "d", "busybox", "sh", "-c", "exit 5").returncode == 0
    engine.wait_until(lambda: engine.inspect("d")["state"]["status"] == "exited")
    assert engine.run("-d", "--name", "e", "busybox", "sleep", "60").returncode == 0
    info = engine.inspect("e")
    engine.inst.kill("execution")
    os.kill(int(Path(info["bundle"], "shim.pid").read_text()), signal.SIGKILL)
    engine.inst.start("execution")
    state = engine.inspect("e")["state"]
    assert state["status"] == "exited" and state["exit_code"] == 255
    assert engine.inspect("d")["state"]["exit_code"] == 5
    assert engine.cli("rm", "d", "e").returncode == 0
    engine.assert_clean()


def test_create_interrupted_by_a_crash_is_rolled_back(engine: Engine) -> None:
    """A SIGKILL between ``snapshot.prepare`` and the container record leaves a labelled
    snapshot and a bundle with no container: the restarted service removes both."""
    cid = ids.new_id()
    with engine.inst.client("snapshot") as s:
        s.call("snapshot.prepare", {"key": cid, "parent": "", "labels": {"dockyard.container": cid}})
    bundle = endpoints.bundle_dir("default", cid, engine.inst.env)
    os.makedirs(os.path.join(bundle, "rootfs"))
    engine.inst.kill("execution")
    engine.inst.start("execution")

    def gone() -> bool:
        with engine.inst.client("snapshot") as s:
            try:
                s.call("snapshot.stat", {"key": cid})
                return False
            except errors.NotFound:
                return not os.path.exists(bundle)

    engine.wait_until(gone, 15, "orphan snapshot and bundle removed")
