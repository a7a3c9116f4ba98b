"""``top`` and ``stats``: what runs in a container and what it uses.

- ``top``: like dockerd, run the host's ``ps`` with the user's arguments and keep the
  rows whose PID belongs to the container (its cgroup's ``cgroup.procs``).
- ``stats``: a sample of the container's cgroup counters (``services.shim.cgroups``),
  the host's total CPU time (``/proc/stat``) and the network counters of its network
  namespace (``/proc/<pid>/net/dev``); CPU % is Docker's formula over two samples:
  ``(Δcontainer / Δsystem) * online CPUs * 100``.
"""

from __future__ import annotations

import os
from typing import Any

from common import codec
from common.errors import InvalidArgument
from services.shim import cgroups


def parse_ps(output: str, pids: set[int]) -> tuple[list[str], list[list[str]]]:
    """Titles and the rows of ``ps`` output whose PID column is one of ``pids``."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise InvalidArgument("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise InvalidArgument("couldn't find PID field in ps output")
    pid_col = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_col:
            continue
        try:
            pid = int(fields[pid_col])
        except ValueError:
            continue
        if pid in pids:
            rows.append(fields)
    return titles, rows


def system_cpu_ns() -> int:
    """Total CPU time of the host (all CPUs, all modes) in nanoseconds."""
    with open("/proc/stat", encoding="utf-8") as f:
        fields = f.readline().split()[1:8]
    ticks = os.sysconf("SC_CLK_TCK") or 100
    return sum(int(x) for x in fields) * 1_000_000_000 // ticks


def net_io(pid: int) -> tuple[int, int]:
    """(rx bytes, tx bytes) of every interface but ``lo`` in ``pid``'s network namespace."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev", encoding="utf-8") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = data.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def sample(cgroups_path: str, pid: int) -> dict[str, Any]:
    """One raw sample (blocking: reads sysfs and procfs)."""
    u = cgroups.usage(cgroups_path)
    rx, tx = net_io(pid) if pid else (0, 0)
    return {
        "read": codec.utcnow(),
        "cpu_total_ns": u.cpu_total_ns,
        "system_cpu_ns": system_cpu_ns(),
        "online_cpus": os.cpu_count() or 1,
        "memory_usage": u.memory_usage,
        "memory_cache": u.memory_cache,
        "memory_limit": u.memory_limit,
        "pids": u.pids,
        "block_read": u.block_read,
        "block_write": u.block_write,
        "net_rx": rx,
        "net_tx": tx,
    }


def host_memory() -> int:
    """Total RAM in bytes (the 'limit' shown for a container without one)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def compute(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, Any]:
    """Docker's derived numbers: CPU %, memory used (without cache), limit, memory %."""
    cpu_percent = 0.0
    if prev is not None:
        cpu_delta = cur["cpu_total_ns"] - prev["cpu_total_ns"]
        sys_delta = cur["system_cpu_ns"] - prev["system_cpu_ns"]
        if cpu_delta > 0 and sys_delta > 0:
            cpu_percent = cpu_delta / sys_delta * cur["online_cpus"] * 100.0
    limit = cur["memory_limit"] if cur["memory_limit"] > 0 else host_memory()
    used = max(0, cur["memory_usage"] - cur["memory_cache"])
    return {
        **{k: v for k, v in cur.items() if k != "memory_cache"},
        "cpu_percent": round(cpu_percent, 2),
        "memory_usage": used,
        "memory_limit": limit,
        "memory_percent": round(used / limit * 100.0, 2) if limit else 0.0,
    }
