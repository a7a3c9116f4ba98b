"""Docker's security defaults inside a container (issue 5 point 2): masked /proc, no mount,
Docker's capability set, no engine fd, seccomp; and --cap-add/--cap-drop, --privileged,
--security-opt no-new-privileges."""

from __future__ import annotations

import pytest

from services.execution import spec
from tests.engine import Engine

pytestmark = pytest.mark.root

DOCKER_DEFAULT_CAPS = 0x00000000A80425FB
"""CapEff of a default Docker container (the 14 capabilities of moby's defaults)."""


def _status(engine: Engine, *flags: str) -> dict[str, str]:
    p = engine.run("--rm", *flags, "busybox", "cat", "/proc/self/status", check=True)
    return dict(line.split(":\t", 1) for line in p.stdout.decode().splitlines() if ":\t" in line)


def test_capabilities_equal_dockers_default(engine: Engine) -> None:
    st = _status(engine)
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert int(st[key], 16) == DOCKER_DEFAULT_CAPS, key
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["Seccomp"].strip() == "2"  # a seccomp filter is on
    assert st["NoNewPrivs"].strip() == "0"


def test_proc_kcore_is_unreadable_and_mount_is_refused(engine: Engine) -> None:
    p = engine.run("--rm", "busybox", "cat", "/proc/kcore")
    assert p.returncode != 0
    p = engine.run("--rm", "busybox", "mount", "-t", "tmpfs", "x", "/tmp")
    assert p.returncode != 0 and b"mount" in p.stderr
    p = engine.run("--rm", "busybox", "sh", "-c", "echo 1 > /proc/sys/kernel/panic")
    assert p.returncode != 0  # /proc/sys is read-only


def test_only_stdio_fds_reach_the_container(engine: Engine) -> None:
    # the shell's own fds (ls's directory fd belongs to ls, not to PID 1)
    p = engine.run("--rm", "busybox", "sh", "-c", "ls /proc/1/fd; true")
    assert p.stdout.split() == [b"0", b"1", b"2"]
    p = engine.run("--rm", "-i", "busybox", "sh", "-c", "ls /proc/1/fd; true", input=b"")
    assert p.stdout.split() == [b"0", b"1", b"2"]


def test_cap_add_and_cap_drop(engine: Engine) -> None:
    st = _status(engine, "--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN")
    eff = int(st["CapEff"], 16)
    assert eff & (1 << spec.ALL_CAPS.index("CAP_NET_ADMIN"))
    assert not eff & (1 << spec.ALL_CAPS.index("CAP_CHOWN"))
    p = engine.run("--rm", "--cap-drop", "CHOWN", "busybox", "chown", "1000", "/tmp")
    assert p.returncode != 0
    st = _status(engine, "--cap-drop", "ALL")
    assert int(st["CapEff"], 16) == 0


def test_privileged_can_mount_and_sees_devices(engine: Engine) -> None:
    p = engine.run("--rm", "--privileged", "busybox", "sh", "-c", "mount -t tmpfs x /tmp && grep ' /tmp ' /proc/mounts")
    assert p.returncode == 0 and b"tmpfs" in p.stdout
    st = _status(engine, "--privileged")
    assert st["Seccomp"].strip() == "0"
    assert int(st["CapEff"], 16) == int(
        "".join("1" if c in spec.host_capabilities() else "0" for c in reversed(spec.ALL_CAPS)), 2
    )


def test_no_new_privileges(engine: Engine) -> None:
    st = _status(engine, "--security-opt", "no-new-privileges")
    assert st["NoNewPrivs"].strip() == "1"


def test_seccomp_blocks_what_the_profile_does_not_allow(engine: Engine) -> None:
    # unshare(2) needs CAP_SYS_ADMIN in the profile: refused in a default container
    p = engine.run("--rm", "busybox", "unshare", "-m", "true")
    assert p.returncode != 0
