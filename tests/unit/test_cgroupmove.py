"""common.cgroupmove: finding this process's own cgroup.procs, and the primer's thread."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from common.cgroupmove import MovePrimer, ThreadsApart, own_procs_file

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
36 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "8:pids:/svc\n9:name=systemd:/svc\n4:cpu:/\n0::/system.slice/dockyard.service\n"


def _files(tmp_path: Path, mountinfo: str, cgroup: str) -> tuple[str, str]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(cgroup)
    return str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")


def test_the_unified_hierarchy_is_used_where_it_is_mounted(tmp_path: Path) -> None:
    found = own_procs_file(*_files(tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP))
    assert found == "/sys/fs/cgroup/unified/system.slice/dockyard.service/cgroup.procs"


def test_a_pure_v2_host(tmp_path: Path) -> None:
    mountinfo = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    found = own_procs_file(*_files(tmp_path, mountinfo, "0::/user.slice\n"))
    assert found == "/sys/fs/cgroup/user.slice/cgroup.procs"


def test_a_v1_host_uses_a_mounted_hierarchy_of_the_process(tmp_path: Path) -> None:
    mountinfo = "\n".join(HYBRID_MOUNTINFO.splitlines()[:-1]) + "\n"  # no cgroup2
    found = own_procs_file(*_files(tmp_path, mountinfo, "8:pids:/svc\n9:name=systemd:/svc\n"))
    assert found == "/sys/fs/cgroup/pids/svc/cgroup.procs"


def test_no_hierarchy_of_the_process_mounted_here(tmp_path: Path) -> None:
    # a cgroup file system mounted for another namespace (its root is not "/") does not count
    mountinfo = "41 31 0:38 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert own_procs_file(*_files(tmp_path, mountinfo, "0::/x\n")) is None
    assert own_procs_file(str(tmp_path / "missing"), str(tmp_path / "missing")) is None


def _until(cond: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_prime_writes_the_pid_in_a_thread_of_its_own(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    where = [str(procs)]
    primer = MovePrimer(lambda: where[0])
    try:
        primer.prime()
        _until(lambda: primer.writes == 1)
        assert procs.read_text() == str(os.getpid())
        primer.prime()
        _until(lambda: primer.writes == 2)
        assert primer.enabled
        moved = tmp_path / "moved.procs"  # the process was moved: the next write goes there
        moved.write_text("")
        where[0] = str(moved)
        primer.prime()
        _until(lambda: primer.writes == 3)
        assert moved.read_text() == str(os.getpid())
    finally:
        primer.close()


def test_a_failed_write_turns_the_primer_off(tmp_path: Path) -> None:
    primer = MovePrimer(lambda: str(tmp_path / "no-such-dir" / "cgroup.procs"))
    primer.prime()
    _until(lambda: not primer.enabled)
    assert primer.writes == 0
    primer.prime()  # off: nothing happens, nothing raises
    assert primer.writes == 0


def test_no_cgroup_found_turns_the_primer_off() -> None:
    primer = MovePrimer(lambda: None)
    primer.prime()
    _until(lambda: not primer.enabled)
    assert primer.writes == 0


def test_a_primer_disabled_or_closed_does_nothing(tmp_path: Path) -> None:
    off = MovePrimer.for_this_process(enabled=False)
    assert not off.enabled
    off.prime()
    assert off.writes == 0
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    closed = MovePrimer(lambda: str(procs))
    closed.close()
    closed.prime()
    time.sleep(0.05)
    assert closed.writes == 0 and procs.read_text() == ""


def _tasks(tmp_path: Path, threads: dict[str, str]) -> str:
    for tid, cgroup in threads.items():
        (tmp_path / "task" / tid).mkdir(parents=True)
        (tmp_path / "task" / tid / "cgroup").write_text(cgroup)
    return str(tmp_path / "task")


def test_threads_placed_in_other_cgroups_are_not_gathered(tmp_path: Path) -> None:
    # a threaded v2 subtree: the main thread in /svc/a, the zmq I/O thread in /svc/b; writing the
    # pid to /svc/a's cgroup.procs moved the I/O thread back to /svc/a
    files = _files(tmp_path, HYBRID_MOUNTINFO, "8:pids:/\n0::/svc/a\n")
    tasks = _tasks(tmp_path, {"10": "8:pids:/\n0::/svc/a\n", "11": "8:pids:/\n0::/svc/b\n"})
    with pytest.raises(ThreadsApart):
        own_procs_file(*files, tasks=tasks)
    assert own_procs_file(*files) == "/sys/fs/cgroup/unified/svc/a/cgroup.procs"  # not asked to look


def test_threads_apart_in_a_hierarchy_not_written_do_not_matter(tmp_path: Path) -> None:
    files = _files(tmp_path, HYBRID_MOUNTINFO, "8:pids:/\n0::/svc\n")
    tasks = _tasks(tmp_path, {"10": "8:pids:/\n0::/svc\n", "11": "8:pids:/other\n0::/svc\n"})
    assert own_procs_file(*files, tasks=tasks) == "/sys/fs/cgroup/unified/svc/cgroup.procs"


def test_threads_apart_turn_the_primer_off(tmp_path: Path) -> None:
    def apart() -> str:
        raise ThreadsApart(16, "thread 11 is in /b")

    primer = MovePrimer(apart)
    primer.prime()
    _until(lambda: not primer.enabled)
    assert primer.writes == 0
