"""The execution service's priming of the runtime's cgroup move moves nothing.

``common.cgroupmove``: when a ``run``, ``start`` or ``exec`` arrives, the execution service
writes its own pid to the ``cgroup.procs`` of the cgroup it is in, so that the kernel's grace
period for the runtime's move starts early. That write must leave the service where it is:
also when it was moved to another cgroup after it started (by systemd, an administrator), it
must not be put back where it was, and its other hierarchies stay as they were.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from tests.harness import Instance

pytestmark = pytest.mark.root


def _unified_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2" and fields[3] == "/":
                return fields[4]
    return None


def _cgroups(pid: int) -> dict[str, str]:
    """``{hierarchy id and controllers: path}`` of ``/proc/PID/cgroup``."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        out[f"{hid}:{controllers}"] = path
    return out


def test_the_execution_service_stays_in_the_cgroup_it_was_moved_to(inst: Instance) -> None:
    unified = _unified_mount()
    if unified is None:
        pytest.skip("no cgroup2 hierarchy mounted here")
    pid = inst.pid("execution")
    before = _cgroups(pid)
    home = before["0:"]
    group = f"/dockyard-test-prime-{os.getpid()}"
    os.mkdir(unified + group)
    try:
        Path(unified + group, "cgroup.procs").write_text(str(pid))
        assert _cgroups(pid)["0:"] == group
        r = inst.cli("run", "--rm", "busybox", "true")
        assert r.returncode == 0, r.stderr
        inst.cli("run", "-d", "--name", "primed", "busybox", "sleep", "60", check=True)
        try:
            r = inst.cli("exec", "primed", "true")
            assert r.returncode == 0, r.stderr
            inst.cli("restart", "-t", "0", "primed", check=True)
        finally:
            inst.cli("rm", "-f", "primed")
        after = _cgroups(pid)
        assert after["0:"] == group  # written where it is now, not moved back home
        assert {k: v for k, v in after.items() if k != "0:"} == {k: v for k, v in before.items() if k != "0:"}
    finally:
        with contextlib.suppress(OSError):
            Path(unified + home, "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            os.rmdir(unified + group)


def test_threads_placed_in_another_threaded_cgroup_stay_there(inst: Instance) -> None:
    """The service's threads split over a threaded subtree (v2 thread mode): a pid written to
    the main thread's ``cgroup.procs`` moved every thread there; the primer now turns itself
    off instead (one log line), and containers start as before."""
    unified = _unified_mount()
    if unified is None:
        pytest.skip("no cgroup2 hierarchy mounted here")
    pid = inst.pid("execution")
    home = _cgroups(pid)["0:"]
    group = f"/dockyard-test-threads-{os.getpid()}"
    os.makedirs(unified + group + "/a")
    os.makedirs(unified + group + "/b")
    try:
        for sub in ("a", "b"):
            Path(unified + group, sub, "cgroup.type").write_text("threaded")
        Path(unified + group, "a", "cgroup.procs").write_text(str(pid))
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        Path(unified + group, "b", "cgroup.threads").write_text(str(tids[0]))
        r = inst.cli("run", "--rm", "busybox", "true")
        assert r.returncode == 0, r.stderr
        assert _cgroups(pid)["0:"] == group + "/a"
        assert Path(f"/proc/{pid}/task/{tids[0]}/cgroup").read_text().splitlines()[-1] == f"0::{group}/b"
        assert "cgroup move priming off" in (inst.logs / "execution.log").read_text()
    finally:
        with contextlib.suppress(OSError):
            Path(unified + home, "cgroup.procs").write_text(str(pid))
        for sub in ("/a", "/b", ""):
            with contextlib.suppress(OSError):
                os.rmdir(unified + group + sub)
