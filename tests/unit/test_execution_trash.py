"""The execution service's trash (``_empty_trash``) never deletes through a rootfs still mounted.

A removal renames the bundle into the trash after unmounting its rootfs, and deletes it 50 ms
later (or at the next start, after a crash). If that unmount failed, an ``rmtree`` would walk
into the mount and delete the container's files through it: the rootfs is unmounted lazily
first, and a bundle whose rootfs stays mounted is left where it is.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services.execution import service


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "trash" / "abc.1234"
    (bundle / "rootfs" / "etc").mkdir(parents=True)
    (bundle / "rootfs" / "etc" / "seen-through-the-mount").write_text("x")
    (bundle / "config.json").write_text("{}")
    return bundle


def test_a_bundle_whose_rootfs_stays_mounted_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path)
    tried: list[str] = []

    def unmount(target: str, *, detach: bool = False) -> bool:
        tried.append(target)
        raise OSError(16, "busy")

    monkeypatch.setattr(service.mount, "is_mountpoint", lambda p: p.endswith("/rootfs"))
    monkeypatch.setattr(service.mount, "unmount", unmount)
    service._empty_trash([str(bundle)])
    assert tried == [str(bundle / "rootfs")]
    assert (bundle / "rootfs" / "etc" / "seen-through-the-mount").exists()


def test_a_rootfs_unmounted_then_is_deleted_with_its_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path)
    mounted = [True]

    def unmount(target: str, *, detach: bool = False) -> bool:
        assert detach
        mounted[0] = False
        return True

    monkeypatch.setattr(service.mount, "is_mountpoint", lambda p: mounted[0] and p.endswith("/rootfs"))
    monkeypatch.setattr(service.mount, "unmount", unmount)
    service._empty_trash([str(bundle)])
    assert not bundle.exists()


def test_unmounted_bundles_and_container_directories_are_deleted(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    cdir = tmp_path / "trash2" / "abc.5678"
    cdir.mkdir(parents=True)
    (cdir / "hostname").write_text("abc\n")
    service._empty_trash([str(bundle), str(cdir), str(tmp_path / "gone")])
    assert not bundle.exists() and not cdir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_mount_below_a_rootfs_that_is_no_mount_is_not_deleted_through(tmp_path: Path) -> None:
    """Only the rootfs itself was checked: a mount below it (or anywhere in the bundle) had
    its files deleted by the rmtree. It is unmounted first; its files stay."""
    bundle = _bundle(tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    (source / "precious").write_text("x")
    target = bundle / "rootfs" / "mnt"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        service._empty_trash([str(bundle)])
        assert (source / "precious").exists()
        assert not bundle.exists()
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
