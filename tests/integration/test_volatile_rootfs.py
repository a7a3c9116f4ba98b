"""A ``run --rm`` container's writable overlay is mounted ``volatile``; others' are not.

A volatile overlay (Linux 5.10) skips the ``syncfs`` of the upper file system that an
unmount otherwise waits for at the container's exit, and ignores the container's own
``fsync``s. Its contents may not survive a host crash, which costs nothing for a container
that is removed when it exits (Podman does the same for ``run --rm``). A kept container's
writable layer must survive, so it stays a plain overlay. overlayfs marks a workdir a
volatile mount used, and refuses to mount it again while the mark is there: Dockyard's
mounts remove it first, so such a rootfs can be mounted again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.mount import VOLATILE_MARKER, volatile_supported
from services.shim import mount as mountlib
from tests.conftest import need_root, running_instance
from tests.harness import Instance

pytestmark = pytest.mark.root

ROOT_LINE = r"""awk '$5 == "/" {print}' /proc/self/mountinfo"""
"""The container's own view of its root mount (mountinfo: field 5 is the mount point)."""


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    need_root()
    if not volatile_supported():
        pytest.skip("overlayfs has no volatile mounts before Linux 5.10")
    with running_instance() as i:
        yield i


def test_a_run_rm_rootfs_is_volatile_and_a_kept_ones_is_not(inst: Instance) -> None:
    r = inst.cli("run", "--rm", "busybox", "sh", "-c", ROOT_LINE)
    assert r.returncode == 0, r.stderr
    line = r.stdout.decode()
    assert " overlay " in line and "volatile" in line, line  # fsync=volatile since 6.x, volatile before
    r = inst.cli("run", "--name", "kept", "busybox", "sh", "-c", ROOT_LINE)
    try:
        assert r.returncode == 0, r.stderr
        line = r.stdout.decode()
        assert " overlay " in line and "volatile" not in line, line
    finally:
        inst.cli("rm", "-f", "kept")


def test_a_run_rm_container_writes_and_reads_its_files(inst: Instance) -> None:
    script = "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null && sync && wc -c < /big && rm /big && echo ok"
    r = inst.cli("run", "--rm", "busybox", "sh", "-c", script)
    assert (r.returncode, r.stdout.split()) == (0, [b"8388608", b"ok"]), r.stderr


def test_a_volatile_overlay_mounts_again_after_its_unmount(tmp_path: Path) -> None:
    need_root()
    if not volatile_supported():
        pytest.skip("overlayfs has no volatile mounts before Linux 5.10")
    for d in ("lower", "upper", "work", "mnt"):
        (tmp_path / d).mkdir()
    (tmp_path / "lower" / "a").write_text("from the image\n")
    options = [
        f"workdir={tmp_path / 'work'}",
        f"upperdir={tmp_path / 'upper'}",
        f"lowerdir={tmp_path / 'lower'}",
        "volatile",
    ]
    mounts = [{"type": "overlay", "source": "overlay", "target": "", "options": options}]
    point = str(tmp_path / "mnt")
    mountlib.mount_all(mounts, point)
    try:
        (tmp_path / "mnt" / "b").write_text("written by the container\n")
    finally:
        mountlib.unmount(point)
    marker = tmp_path / "work" / Path(*VOLATILE_MARKER)
    assert marker.is_dir()  # what overlayfs leaves, and refuses to mount over:
    with pytest.raises(OSError) as refused:
        mountlib.mount("overlay", point, "overlay", options)
    assert refused.value.errno == errno.EINVAL
    mountlib.mount_all(mounts, point)  # clears the mark first
    try:
        assert sorted(os.listdir(point)) == ["a", "b"]
        assert (tmp_path / "mnt" / "b").read_text() == "written by the container\n"
    finally:
        mountlib.unmount(point)
