"""Reading a container's cgroup: OOM kills, processes and resource usage, on cgroup v1 and v2.

The runtime puts a container at ``linux.cgroupsPath`` (``/dockyard/<id>``); on v1 that
path exists under every controller's hierarchy (``/sys/fs/cgroup/<controller>/...``),
on v2 once under the unified mount. Files are read directly (``runc events`` does
the same and crun has no such command), so this works for both runtimes.

OOM (CASES.md C17): the container's *own* cgroup is read — v1 ``memory.oom_control``
``oom_kill``, v2 ``memory.events`` ``oom_kill``/``oom_group_kill`` — not a parent's,
and before the runtime deletes the cgroup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ROOT = "/sys/fs/cgroup"


def is_v2(root: str = ROOT) -> bool:
    """True on a pure cgroup v2 host (the unified hierarchy mounted at ``/sys/fs/cgroup``)."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def controller_dir(cgroups_path: str, controller: str, root: str = ROOT) -> str:
    """Directory of ``cgroups_path`` for ``controller`` (v1) or the unified one (v2)."""
    rel = cgroups_path.lstrip("/")
    if is_v2(root):
        return os.path.join(root, rel)
    return os.path.join(root, controller, rel)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int(text: str, default: int = 0) -> int:
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return default


def oom_kills(cgroups_path: str, root: str = ROOT) -> int:
    """How many processes the OOM killer killed in this cgroup so far (0 if unknown)."""
    d = controller_dir(cgroups_path, "memory", root)
    if is_v2(root):
        ev = _kv(_read(os.path.join(d, "memory.events")))
        return ev.get("oom_kill", 0) + ev.get("oom_group_kill", 0)
    return _kv(_read(os.path.join(d, "memory.oom_control"))).get("oom_kill", 0)


def oom_control_path(cgroups_path: str, root: str = ROOT) -> str | None:
    """v1 only: the ``memory.oom_control`` file to register an eventfd on (None on v2)."""
    if is_v2(root):
        return None
    return os.path.join(controller_dir(cgroups_path, "memory", root), "memory.oom_control")


def pids(cgroups_path: str, root: str = ROOT) -> list[int]:
    """Host pids of every process in the cgroup."""
    d = controller_dir(cgroups_path, "pids", root)
    text = _read(os.path.join(d, "cgroup.procs"))
    if not text and not is_v2(root):
        text = _read(os.path.join(controller_dir(cgroups_path, "memory", root), "cgroup.procs"))
    return [int(x) for x in text.split() if x.isdigit()]


@dataclass
class Usage:
    """One sample of a cgroup's counters (bytes, nanoseconds)."""

    cpu_total_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    memory_usage: int = 0
    memory_limit: int = -1
    memory_cache: int = 0
    pids: int = 0
    pids_limit: int = -1
    block_read: int = 0
    block_write: int = 0


def usage(cgroups_path: str, root: str = ROOT) -> Usage:
    """Read the container's resource usage (missing files read as 0)."""
    u = Usage()
    if is_v2(root):
        d = controller_dir(cgroups_path, "", root)
        cpu = _kv(_read(os.path.join(d, "cpu.stat")))
        u.cpu_total_ns = cpu.get("usage_usec", 0) * 1000
        u.cpu_user_ns = cpu.get("user_usec", 0) * 1000
        u.cpu_system_ns = cpu.get("system_usec", 0) * 1000
        u.memory_usage = _int(_read(os.path.join(d, "memory.current")))
        u.memory_limit = _int(_read(os.path.join(d, "memory.max")), -1)
        u.memory_cache = _kv(_read(os.path.join(d, "memory.stat"))).get("file", 0)
        u.pids = _int(_read(os.path.join(d, "pids.current")))
        u.pids_limit = _int(_read(os.path.join(d, "pids.max")), -1)
        for line in _read(os.path.join(d, "io.stat")).splitlines():
            for field in line.split()[1:]:
                key, _, val = field.partition("=")
                if key == "rbytes":
                    u.block_read += int(val)
                elif key == "wbytes":
                    u.block_write += int(val)
        return u
    cpuacct = controller_dir(cgroups_path, "cpuacct", root)
    u.cpu_total_ns = _int(_read(os.path.join(cpuacct, "cpuacct.usage")))
    ticks = os.sysconf("SC_CLK_TCK") or 100
    stat = _kv(_read(os.path.join(cpuacct, "cpuacct.stat")))
    u.cpu_user_ns = stat.get("user", 0) * 1_000_000_000 // ticks
    u.cpu_system_ns = stat.get("system", 0) * 1_000_000_000 // ticks
    mem = controller_dir(cgroups_path, "memory", root)
    u.memory_usage = _int(_read(os.path.join(mem, "memory.usage_in_bytes")))
    limit = _int(_read(os.path.join(mem, "memory.limit_in_bytes")), -1)
    u.memory_limit = -1 if limit >= 1 << 62 else limit
    mstat = _kv(_read(os.path.join(mem, "memory.stat")))
    u.memory_cache = mstat.get("total_inactive_file", mstat.get("cache", 0))
    pidsd = controller_dir(cgroups_path, "pids", root)
    u.pids = _int(_read(os.path.join(pidsd, "pids.current")))
    u.pids_limit = _int(_read(os.path.join(pidsd, "pids.max")), -1)
    blkio = controller_dir(cgroups_path, "blkio", root)
    for line in _read(os.path.join(blkio, "blkio.throttle.io_service_bytes")).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                u.block_read += int(parts[2])
            elif parts[1] == "Write":
                u.block_write += int(parts[2])
    return u
