"""The state directory on a tmpfs of its own (``common.statefs``) when its file system is a disk's.

``dockyard up`` mounts a tmpfs on an empty state directory that is not on one; a directory
with anything in it is left alone (it may hold a running instance's shims), and
``DOCKYARD_STATE_TMPFS=0`` turns it off. Containers run, survive ``down``/``up`` and are
removed as ever on it; the test's clean-up unmounts it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common import statefs
from tests.conftest import need_root
from tests.harness import Instance, mounts_under


def _mount_options(point: str) -> tuple[str, str]:
    """``(fs type, mount options)`` of the mount at ``point``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == point:
                sep = fields.index("-")
                return fields[sep + 1], fields[5]
    return "", ""


def _mounts_at(point: str) -> int:
    """How many mounts ``point`` has (stacked ones each count)."""
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == point)


def _emptied(inst: Instance) -> Instance:
    shutil.rmtree(inst.logs)  # the harness made it; `up` must find the state directory empty
    return inst


def test_up_puts_an_empty_state_directory_on_a_tmpfs_and_containers_run_on_it(instance: Instance) -> None:
    need_root()
    if statefs.is_volatile(instance.state):
        pytest.skip("the test's temporary directory is on a tmpfs already")
    _emptied(instance)
    r = instance.cli("up", timeout=90)
    assert r.returncode == 0, r.stderr.decode() + instance.log_tail("supervisor")
    assert statefs.is_volatile(instance.state)
    fstype, options = _mount_options(instance.state)
    assert fstype == "tmpfs" and "nosuid" in options and "nodev" in options, (fstype, options)
    assert (Path(instance.state) / "logs" / "supervisor.log").exists()  # written on the tmpfs
    instance.load_busybox()
    r = instance.cli("run", "--rm", "busybox", "echo", "hi from tmpfs")
    assert (r.returncode, r.stdout) == (0, b"hi from tmpfs\n"), r.stderr
    r = instance.cli("run", "-d", "--name", "keep", "busybox", "sleep", "300")
    assert r.returncode == 0, r.stderr
    # down, then up: the mount and the running container's state on it stay
    assert instance.cli("down", timeout=90).returncode == 0
    assert statefs.is_volatile(instance.state)
    r = instance.cli("up", timeout=90)
    assert r.returncode == 0, r.stderr.decode()
    assert _mounts_at(instance.state) == 1  # not stacked (mounts_under folds stacked mounts into one)
    r = instance.cli("exec", "keep", "echo", "still here")
    assert (r.returncode, r.stdout) == (0, b"still here\n"), r.stderr
    r = instance.cli("rm", "-f", "keep")
    assert r.returncode == 0, r.stderr
    assert not os.listdir(Path(instance.state) / "tasks" / "default")


def test_a_state_directory_in_use_or_the_setting_off_stays_where_it_is(tmp_path: Path) -> None:
    need_root()
    if statefs.is_volatile(str(tmp_path)):
        pytest.skip("the test's temporary directory is on a tmpfs already")
    in_use = tmp_path / "in-use"
    in_use.mkdir()
    (in_use / "execution.pid").write_text("1\n")
    assert statefs.ensure_tmpfs(str(in_use)) == "in use"
    off = tmp_path / "off"
    assert statefs.ensure_tmpfs(str(off), on=False) == "off"
    assert not off.exists()
    inst = Instance(state_tmpfs="0")
    try:
        _emptied(inst)
        r = inst.cli("up", timeout=90)
        assert r.returncode == 0, r.stderr.decode() + inst.log_tail("supervisor")
        assert not statefs.is_volatile(inst.state)
        assert mounts_under(inst.state) == []
    finally:
        inst.cleanup()
    assert mounts_under(inst.base) == []


def _ensure_at_the_barrier(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    results.put(statefs.ensure_tmpfs(path))


def test_several_ups_at_once_mount_one_tmpfs(tmp_path: Path) -> None:
    """Several ``dockyard up`` at once on an empty state directory: one mounts, the others find
    its tmpfs. Each found the directory empty on its disk and mounted, a tmpfs over the one before
    (4-5 stacked mounts of 6 processes, 10 times in 10 tries; the upper ones hide what an earlier
    ``up`` put there)."""
    need_root()
    if statefs.is_volatile(str(tmp_path)):
        pytest.skip("the test's temporary directory is on a tmpfs already")
    ctx = multiprocessing.get_context("fork")
    state = str(tmp_path / "state")
    try:
        for _ in range(3):
            os.makedirs(state, exist_ok=True)
            barrier, results = ctx.Barrier(6), ctx.Queue()
            procs = [ctx.Process(target=_ensure_at_the_barrier, args=(state, barrier, results)) for _ in range(6)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(30)
            got = sorted(results.get(timeout=5) for _ in procs)
            assert got == ["mounted"] + ["volatile"] * 5, got
            assert _mounts_at(state) == 1  # (mounts_under folds stacked mounts into one)
            subprocess.run(["umount", state], check=True)
    finally:
        for _ in range(_mounts_at(state)):
            subprocess.run(["umount", state], check=False)
