"""bench/host: the kernel settings that move every engine's start time, measured and reported.

Every runtime (runc, crun, and so containerd, docker, podman and Dockyard) moves the
container's first process into its cgroups by writing its pid to ``cgroup.procs``. The
kernel takes ``cgroup_threadgroup_rwsem`` for writing there; with the default per-CPU
mode, the first writer after a quiet spell waits out an RCU grace period: a few jiffies,
~15 ms on a 250 Hz kernel whose idle CPUs sleep. Back-to-back writes share one grace
period, so a loop of ``runc run`` hides what a lone ``run`` pays. The ``favordynmods``
mount option of a cgroup hierarchy (Linux 6.0; the ``cgroup_favordynmods=`` boot option
from 6.7) makes such writes cheap at some cost to ``fork`` and ``exit``; on recent kernels
(6.18 here) it cannot be turned off again without a reboot, whatever the mount options
then say; ``/sys/kernel/rcu_expedited`` makes every grace period short. Neither Dockyard
nor its peers set them: the host does, so ``host_tuning()`` records them beside the
figures, and times one lone write (``lone_procs_write_ms``) so that results of hosts
tuned differently are not compared as if they were alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from common.cgroupmove import CgroupMount, cgroup_mounts

PROBE_IDLE_S = 0.25
"""Quiet time before each timed write: longer than a grace period, so none is shared."""


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _probe_hierarchy(mounts: list[CgroupMount]) -> str | None:
    """A cgroup hierarchy to time a write in: v1 ``pids`` (cheap, no limits), else cgroup2."""
    for point, fstype, _root, supers in mounts:
        if fstype == "cgroup" and "pids" in supers:
            return point
    for point, fstype, _root, _supers in mounts:
        if fstype == "cgroup2" and os.access(os.path.join(point, "cgroup.procs"), os.W_OK):
            return point
    return None


def lone_procs_write_ms(runs: int = 5) -> float | None:
    """Median ms of writing a sleeping child's pid to a new cgroup's ``cgroup.procs``, each
    write after ``PROBE_IDLE_S`` of quiet (what a lone container start pays for it); None
    when no cgroup hierarchy can be written here. The cgroup and the child are removed."""
    hierarchy = _probe_hierarchy(cgroup_mounts())
    if hierarchy is None:
        return None
    group = os.path.join(hierarchy, f"dockyard-bench-probe-{os.getpid()}")
    home = os.path.join(hierarchy, "cgroup.procs")
    pid = os.fork()
    if pid == 0:  # the child only sleeps until it is killed
        try:
            signal.pause()
        finally:
            os._exit(0)
    times = []
    try:
        os.mkdir(group)
        for _ in range(runs):
            time.sleep(PROBE_IDLE_S)
            t0 = time.perf_counter()
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            times.append((time.perf_counter() - t0) * 1000)
            with open(home, "w") as f:  # back to the root, for the next write to move it again
                f.write(str(pid))
    except OSError:
        return None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            os.rmdir(group)
    times.sort()
    return times[len(times) // 2]


def host_tuning() -> dict[str, Any]:
    """``{"cgroup": "v1"|"v2"|"hybrid", "favordynmods": [mount points with it],
    "rcu_expedited": "0"|"1"|None, "lone_procs_write_ms": float|None}``."""
    mounts = cgroup_mounts()
    kinds = {m.fstype for m in mounts}
    if kinds == {"cgroup2"}:
        mode = "v2"
    elif kinds == {"cgroup"}:
        mode = "v1"
    else:
        mode = "hybrid" if kinds else "none"
    return {
        "cgroup": mode,
        "favordynmods": [m.point for m in mounts if "favordynmods" in m.supers],
        "rcu_expedited": _read("/sys/kernel/rcu_expedited"),
        "lone_procs_write_ms": lone_procs_write_ms(),
    }


def describe(tuning: dict[str, Any]) -> str:
    """One line for the report, e.g. ``cgroup hybrid; favordynmods on /sys/fs/cgroup/unified;
    rcu_expedited 0; a lone cgroup.procs write 0.05 ms``."""
    fav = ", ".join(tuning.get("favordynmods") or []) or "none"
    write = tuning.get("lone_procs_write_ms")
    write_text = "not measured" if write is None else f"{write:.2f} ms"
    return (
        f"cgroup {tuning.get('cgroup')}; favordynmods on: {fav}; rcu_expedited {tuning.get('rcu_expedited')}; "
        f"a lone cgroup.procs write (after {PROBE_IDLE_S} s quiet): {write_text}"
    )
