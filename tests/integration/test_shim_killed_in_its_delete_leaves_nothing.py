"""Regression: a shim SIGKILLed in its delete, with the execution service, left the runtime's container.

What broke: the task had exited and the execution service had recorded its exit; the shim
ran ``runc delete`` (at init's reap, then awaited by ``shim.delete``) when it was SIGKILLed,
its ``runc delete`` with it, and the execution service was SIGKILLed too before it saw the
dead shim. The restarted service's recovery cleaned up after dead shims only for exits it
had not recorded: the container showed ``Exited`` and ``rm`` (or ``--rm``'s removal) removed
it, but runc's state directory under the runtime root (``runc list`` still listed the
container, stopped) and its cgroups (``/sys/fs/cgroup/*/dockyard/<id>``) stayed for good.
The recovery now does what the shim would have done (``<runtime> delete --force``, unmount
the rootfs) for such a task, and so does a removal that finds one.

The moment is made certain with a runtime wrapper (the real runtime's basename: the same
runtime root) that holds the first ``delete`` for a few seconds: the shim, the wrapper
(and the runtime it would run) and, in the ``killed`` cases, the execution service are
SIGKILLed then. ``after runc delete``: the wrapper holds after the runtime deleted the
container (what is left is the shim's unmount, done at init's reap, and its events). Each
way to end a container is checked: the task exits by itself then ``rm``, ``rm -f``,
``run --rm``, ``stop`` then ``rm``; with the execution service alive throughout (its
clean-up after the dead shim, which worked) and killed too (its recovery, which did not).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.shim import mount
from tests.conftest import need_root
from tests.engine import Engine, ps_names
from tests.harness import Instance, mounts_under

pytestmark = pytest.mark.root

HOLD_S = 5
"""How long the wrapper holds the shim's ``delete`` (everything is killed meanwhile)."""


@pytest.fixture
def engine(instance: Instance) -> Iterator[Engine]:
    need_root()
    yield Engine(instance)


def _wrapper(tmp_path: Path, moment: str, *, refuse_once: bool = False) -> tuple[Path, Path]:
    """A runtime with the real one's basename whose first ``delete`` writes its pid to the
    mark file and waits ``HOLD_S``: before the real ``delete`` runs (``during runc delete``)
    or after (``after runc delete``). ``refuse_once``: the next ``delete`` (the clean-up
    after the dead shim) fails without deleting anything."""
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    real = shutil.which(runtime) or runtime
    mark = tmp_path / "deleting"
    refused = tmp_path / "refused"
    wrapper = tmp_path / os.path.basename(runtime)
    if moment == "during runc delete":
        on_delete = f'echo $$ > {mark}; sleep {HOLD_S}; exec {real} "$@"'
    else:
        on_delete = f'{real} "$@"; rc=$?; echo $$ > {mark}; sleep {HOLD_S}; exit $rc'
    refuse = f'[ "$a" = delete ] && [ ! -e {refused} ] && {{ touch {refused}; exit 1; }}; ' if refuse_once else ""
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = delete ] && [ ! -e {mark} ] && {{ {on_delete}; }}; {refuse}done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, mark


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its children (the wrapper and its ``sleep``)."""
    with contextlib.suppress(OSError, ValueError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _runtime_leftovers(engine: Engine, container_id: str) -> dict[str, list[str]]:
    """The runtime's state directory and cgroups of the container, its bundle (all should be gone)."""
    state = Path(engine.inst.state)
    return {
        "runtime state": [str(p) for p in (state / "runtime").glob(f"*/{container_id}")],
        "cgroups": glob.glob(f"/sys/fs/cgroup/dockyard/{container_id}")  # v2, and each v1 hierarchy
        + glob.glob(f"/sys/fs/cgroup/*/dockyard/{container_id}"),
        "bundle": [str(p) for p in (state / "tasks").glob(f"*/{container_id}")],
    }


def _task_leftovers(engine: Engine, container_id: str) -> list[str]:
    """What the shim's delete removes: the runtime's state and cgroups, the rootfs mount."""
    left = _runtime_leftovers(engine, container_id)
    return [*left["runtime state"], *left["cgroups"], *mounts_under(os.path.join(engine.inst.state, "tasks"))]


def _in_background(engine: Engine, *args: str) -> tuple[threading.Thread, list[subprocess.CompletedProcess[bytes]]]:
    result: list[subprocess.CompletedProcess[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(engine.cli(*args, timeout=90)))
    thread.start()
    return thread, result


@pytest.mark.parametrize("execution", ["alive", "killed"])
@pytest.mark.parametrize(
    ("how", "moment"),
    [
        ("exit then rm", "during runc delete"),
        ("exit then rm", "after runc delete"),
        ("rm -f", "during runc delete"),
        ("run --rm", "during runc delete"),
        ("stop then rm", "during runc delete"),
    ],
)
def test_shim_killed_in_its_delete_leaves_nothing(
    engine: Engine, tmp_path: Path, how: str, moment: str, execution: str
) -> None:
    wrapper, mark = _wrapper(tmp_path, moment)
    cmd = ("sleep", "300") if how in ("rm -f", "stop then rm") else ("true",)
    rm_flag = ("--rm",) if how == "run --rm" else ()
    run = engine.run("-d", *rm_flag, "--runtime", str(wrapper), "--name", "c", "busybox", *cmd)
    assert run.returncode == 0, run.stderr.decode()
    info = engine.inspect("c")
    cid, bundle = info["id"], info["bundle"]
    shim_pid = int(Path(bundle, "shim.pid").read_text())
    ending = None
    if how == "rm -f":
        ending = _in_background(engine, "rm", "-f", "c")
    elif how == "stop then rm":
        ending = _in_background(engine, "stop", "-t", "0", "c")
    try:
        engine.wait_until(lambda: mark.exists() and mark.read_text().strip() != "", 30, "the shim in its delete")
        engine.wait_until(lambda: engine.inspect("c")["state"]["status"] == "exited", 30, "the exit recorded")
        if execution == "killed":
            engine.inst.kill("execution")
        os.kill(shim_pid, signal.SIGKILL)
        _kill_tree(int(mark.read_text()))  # the runtime's delete dies with its shim
    finally:
        if ending is not None:
            ending[0].join()
    if execution == "killed":
        engine.inst.start("execution")
    elif ending is not None:  # the service cleans up after the dead shim and the call succeeds
        assert ending[1] and ending[1][0].returncode == 0, ending[1][0].stderr.decode() if ending[1] else "no end"
    # the clean-up after the dead shim (its monitor's, or the restarted service's recovery) deleted
    # the task: before the container is removed, as the shim's delete would have
    engine.wait_until(lambda: not _task_leftovers(engine, cid), 15, "the task deleted before the removal")
    if how == "run --rm":
        engine.wait_until(lambda: "c" not in ps_names(engine), 30, "the --rm container removed")
    elif "c" in ps_names(engine):
        state = engine.inspect("c")["state"]
        assert state["status"] == "exited", state
        removed = engine.cli("rm", "-f", "c")
        assert removed.returncode == 0, removed.stderr.decode()
    assert "c" not in ps_names(engine)
    engine.wait_until(
        lambda: not any(_runtime_leftovers(engine, cid).values()), 10, "runtime state, cgroups, bundle gone"
    )
    engine.assert_clean()


@pytest.mark.parametrize("execution", ["alive", "killed"])
def test_a_failed_clean_up_after_the_shim_is_done_by_the_removal(
    engine: Engine, tmp_path: Path, execution: str
) -> None:
    """The clean-up after the shim killed in its delete fails (the runtime's ``delete --force``
    does, once): the task is left, and the container's removal deletes it."""
    wrapper, mark = _wrapper(tmp_path, "during runc delete", refuse_once=True)
    assert engine.run("-d", "--runtime", str(wrapper), "--name", "c", "busybox", "true").returncode == 0
    info = engine.inspect("c")
    cid = info["id"]
    engine.wait_until(lambda: mark.exists() and mark.read_text().strip() != "", 30, "the shim in its delete")
    engine.wait_until(lambda: engine.inspect("c")["state"]["status"] == "exited", 30, "the exit recorded")
    if execution == "killed":
        engine.inst.kill("execution")
    os.kill(int(Path(info["bundle"], "shim.pid").read_text()), signal.SIGKILL)
    _kill_tree(int(mark.read_text()))
    if execution == "killed":
        engine.inst.start("execution")
    engine.wait_until((tmp_path / "refused").exists, 15, "the clean-up after the dead shim tried")
    assert _runtime_leftovers(engine, cid)["runtime state"], "the failed clean-up left the task"
    removed = engine.cli("rm", "c")
    assert removed.returncode == 0, removed.stderr.decode()
    assert not any(_runtime_leftovers(engine, cid).values()), _runtime_leftovers(engine, cid)
    engine.assert_clean()


def test_a_rootfs_left_mounted_by_the_dead_shim_is_unmounted_by_the_recovery(engine: Engine, tmp_path: Path) -> None:
    """The shim unmounts the rootfs at init's reap, beside its runtime delete and before the
    exit is published: no wrapper holds it between the two. The state a shim SIGKILLed there
    leaves (the runtime's container deleted, the rootfs still mounted) is made by mounting
    the rootfs again, from the bundle's ``mounts.json``, once the shim is dead."""
    wrapper, mark = _wrapper(tmp_path, "after runc delete")
    assert engine.run("-d", "--runtime", str(wrapper), "--name", "c", "busybox", "true").returncode == 0
    info = engine.inspect("c")
    cid, bundle = info["id"], Path(info["bundle"])
    engine.wait_until(lambda: mark.exists() and mark.read_text().strip() != "", 30, "the shim in its delete")
    engine.wait_until(lambda: engine.inspect("c")["state"]["status"] == "exited", 30, "the exit recorded")
    engine.inst.kill("execution")
    os.kill(int((bundle / "shim.pid").read_text()), signal.SIGKILL)
    _kill_tree(int(mark.read_text()))
    mount.mount_all(json.loads((bundle / "mounts.json").read_text()), str(bundle / "rootfs"))
    assert mounts_under(str(bundle / "rootfs"))
    engine.inst.start("execution")
    engine.wait_until(lambda: not _task_leftovers(engine, cid), 15, "the rootfs unmounted before the removal")
    assert engine.cli("rm", "c").returncode == 0
    assert not any(_runtime_leftovers(engine, cid).values()), _runtime_leftovers(engine, cid)
    engine.assert_clean()
