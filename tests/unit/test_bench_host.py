"""``bench.host``: which cgroup hierarchy the probe writes in, and the report's line."""

from __future__ import annotations

from bench.host import _probe_hierarchy, describe
from common.cgroupmove import CgroupMount


def test_the_probe_prefers_v1_pids_then_a_writable_cgroup2() -> None:
    hybrid = [
        CgroupMount("/sys/fs/cgroup/unified", "cgroup2", "/", frozenset([])),
        CgroupMount("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "/", frozenset(["cpu", "cpuacct"])),
        CgroupMount("/sys/fs/cgroup/pids", "cgroup", "/", frozenset(["pids"])),
    ]
    assert _probe_hierarchy(hybrid) == "/sys/fs/cgroup/pids"
    assert _probe_hierarchy([CgroupMount("/sys/fs/cgroup/memory", "cgroup", "/", frozenset(["memory"]))]) is None
    assert _probe_hierarchy([]) is None


def test_the_report_line_names_each_setting() -> None:
    tuning = {"cgroup": "hybrid", "favordynmods": ["/sys/fs/cgroup/unified"], "rcu_expedited": "0"}
    line = describe({**tuning, "lone_procs_write_ms": 14.2})
    assert line == (
        "cgroup hybrid; favordynmods on: /sys/fs/cgroup/unified; rcu_expedited 0; "
        "a lone cgroup.procs write (after 0.25 s quiet): 14.20 ms"
    )
    assert "favordynmods on: none" in describe({"cgroup": "v2", "favordynmods": [], "lone_procs_write_ms": None})
    assert "not measured" in describe({"cgroup": "v2", "favordynmods": [], "lone_procs_write_ms": None})
