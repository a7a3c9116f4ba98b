"""Pure parts of observability and attach: ps parsing, stats math, cgroup v1/v2 files, detach keys,
seccomp profile selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidArgument
from services.execution import observe, spec
from services.execution.detach import DetachScanner, parse_keys
from services.execution.seccomp import default_seccomp
from services.shim import cgroups

PS = """UID        PID  PPID  C STIME TTY          TIME CMD
root         1     0  0 10:00 ?        00:00:01 /sbin/init
root      4242     1  0 10:01 ?        00:00:00 sleep 300 with args
root      4243  4242  0 10:01 ?        00:00:00 sh -c x
"""


def test_parse_ps_keeps_the_containers_rows() -> None:
    titles, rows = observe.parse_ps(PS, {4242, 4243})
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [r[1] for r in rows] == ["4242", "4243"] and rows[0][-1] == "sleep 300 with args"
    with pytest.raises(InvalidArgument, match="PID"):
        observe.parse_ps("A B\n1 2\n", {1})


def test_cpu_percent_is_dockers_formula() -> None:
    prev = {"cpu_total_ns": 1_000, "system_cpu_ns": 10_000}
    cur = {
        "cpu_total_ns": 3_000,
        "system_cpu_ns": 14_000,
        "online_cpus": 2,
        "memory_usage": 300,
        "memory_cache": 100,
        "memory_limit": 1000,
        "read": None,
    }
    out = observe.compute(prev, cur)
    assert out["cpu_percent"] == 100.0  # 2000/4000 * 2 cpus * 100
    assert out["memory_usage"] == 200 and out["memory_percent"] == 20.0


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_cgroup_v1_files(tmp_path: Path) -> None:
    cg = "dockyard/abc"
    _tree(
        tmp_path,
        {
            f"memory/{cg}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            f"memory/{cg}/memory.usage_in_bytes": "4096\n",
            f"memory/{cg}/memory.limit_in_bytes": "9223372036854771712\n",
            f"memory/{cg}/memory.stat": "cache 1024\ntotal_inactive_file 512\n",
            f"cpuacct/{cg}/cpuacct.usage": "123456\n",
            f"pids/{cg}/pids.current": "3\n",
            f"pids/{cg}/pids.max": "max\n",
            f"pids/{cg}/cgroup.procs": "10\n11\n12\n",
            f"blkio/{cg}/blkio.throttle.io_service_bytes": "8:0 Read 100\n8:0 Write 50\nTotal 150\n",
        },
    )
    root = str(tmp_path)
    assert not cgroups.is_v2(root)
    assert cgroups.oom_kills("/" + cg, root) == 2
    assert cgroups.pids("/" + cg, root) == [10, 11, 12]
    u = cgroups.usage("/" + cg, root)
    assert (u.cpu_total_ns, u.memory_usage, u.memory_limit, u.memory_cache) == (123456, 4096, -1, 512)
    assert (u.pids, u.pids_limit, u.block_read, u.block_write) == (3, -1, 100, 50)


def test_cgroup_v2_files(tmp_path: Path) -> None:
    cg = "dockyard/abc"
    _tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory pids io\n",
            f"{cg}/memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
            f"{cg}/cpu.stat": "usage_usec 250\nuser_usec 200\nsystem_usec 50\n",
            f"{cg}/memory.current": "8192\n",
            f"{cg}/memory.max": "33554432\n",
            f"{cg}/memory.stat": "anon 4096\nfile 2048\n",
            f"{cg}/pids.current": "2\n",
            f"{cg}/pids.max": "40\n",
            f"{cg}/cgroup.procs": "7\n",
            f"{cg}/io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n",
        },
    )
    root = str(tmp_path)
    assert cgroups.is_v2(root)
    assert cgroups.oom_kills("/" + cg, root) == 1
    assert cgroups.oom_control_path("/" + cg, root) is None
    u = cgroups.usage("/" + cg, root)
    assert (u.cpu_total_ns, u.memory_usage, u.memory_limit, u.memory_cache) == (250_000, 8192, 33554432, 2048)
    assert (u.pids, u.pids_limit, u.block_read, u.block_write) == (2, 40, 10, 20)
    assert cgroups.pids("/" + cg, root) == [7]


def test_detach_keys() -> None:
    assert parse_keys("") == b"\x10\x11" and parse_keys("ctrl-x,y") == b"\x18y" and parse_keys("ctrl-@") == b"\x00"
    with pytest.raises(InvalidArgument):
        parse_keys("ctrl-xx")
    s = DetachScanner()
    assert s.feed(b"ab\x10") == (b"ab", False)  # a partial match is held back
    assert s.feed(b"c") == (b"\x10c", False)  # ... and released when it fails
    assert s.feed(b"\x10") == (b"", False)
    assert s.feed(b"\x11rest") == (b"", True)


def test_seccomp_follows_the_capabilities() -> None:
    default = default_seccomp(spec.DEFAULT_CAPS, "amd64")
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert default["architectures"][0] == "SCMP_ARCH_X86_64"

    def allowed(prof: dict, name: str) -> bool:
        return any(name in r["names"] and r["action"] == "SCMP_ACT_ALLOW" for r in prof["syscalls"])

    assert allowed(default, "read") and allowed(default, "arch_prctl")
    assert not allowed(default, "bpf") and not allowed(default, "s390_runtime_instr")
    assert allowed(default_seccomp([*spec.DEFAULT_CAPS, "CAP_SYS_ADMIN"], "amd64"), "bpf")
    assert not allowed(default_seccomp(spec.DEFAULT_CAPS, "arm64"), "arch_prctl")


def test_static_init_detection() -> None:
    assert spec.is_static_elf("/usr/bin/env") is False
    assert spec.is_static_elf("/nonexistent") is False


def test_seccomp_filters_x32_only_where_the_kernel_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.execution import seccomp

    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(seccomp, "host_has_x32_abi", lambda: True)
    assert default_seccomp(spec.DEFAULT_CAPS)["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    monkeypatch.setattr(seccomp, "host_has_x32_abi", lambda: False)
    assert default_seccomp(spec.DEFAULT_CAPS)["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    # another architecture's profile is not this kernel's to judge
    assert default_seccomp(spec.DEFAULT_CAPS, "arm64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def test_x32_probe_agrees_with_the_kernel_config() -> None:
    import gzip
    import platform

    from services.execution.seccomp import host_has_x32_abi

    config = Path("/proc/config.gz")
    if platform.machine() != "x86_64" or not config.exists():
        pytest.skip("needs an x86_64 kernel exposing /proc/config.gz")
    text = gzip.decompress(config.read_bytes()).decode()
    assert host_has_x32_abi() == ("CONFIG_X86_X32_ABI=y" in text)
