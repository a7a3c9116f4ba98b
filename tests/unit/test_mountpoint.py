"""``services.shim.mount.is_mountpoint``: its ``statx`` answer is mountinfo's, for every mount
this process can see and for paths that are not mounts (no root needed: it only looks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.shim import mount


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        points = {mount._unescape(line.split(" ", 5)[4]) for line in f}
    # a mount point covered by a later mount at a path above it is not reachable by its path
    return sorted(p for p in points if os.path.isdir(p) and os.path.realpath(p) == p)


def test_statx_and_mountinfo_agree_on_every_mount_point() -> None:
    points = _mount_points()
    assert "/" in points and "/proc" in points
    if mount._statx_mount_root("/") is None:
        pytest.skip("this kernel has no STATX_ATTR_MOUNT_ROOT: mountinfo answers alone")
    agreed = 0
    for point in points:
        if mount.is_mountpoint(point) != mount.in_mountinfo(point):
            # unmounted meanwhile (the integration tests' lazy unmounts)? Asked again, they agree
            assert mount.is_mountpoint(point) == mount.in_mountinfo(point), point
        agreed += mount.is_mountpoint(point)
    assert agreed >= 2


def test_directories_and_files_that_are_not_mounts(tmp_path: Path) -> None:
    inside = tmp_path / "dir"
    inside.mkdir()
    (inside / "file").write_text("x")
    candidates = [str(inside), str(inside / "file"), str(inside / "missing"), str(inside / "file" / "under")]
    for path in candidates:
        assert mount.is_mountpoint(path) is False, path
        assert mount.in_mountinfo(os.path.realpath(path)) is False, path


def test_a_symlink_to_a_mount_point_is_resolved_first(tmp_path: Path) -> None:
    link = tmp_path / "proc"
    link.symlink_to("/proc")
    assert mount.is_mountpoint(str(link)) is True
