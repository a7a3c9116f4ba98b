"""Regular files and their metadata: sparse files are written sparse, owners (large ids
too), modes, mtimes of files, directories (set after their children) and symlinks, long
names in PAX and GNU form, implicit parent directories.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile

from tests.snapshot_util import EPOCH, Direct, Layer, listing, read


def test_sparse_files_are_written_sparse(direct: Direct) -> None:
    stage = tempfile.mkdtemp(prefix="sparse-", dir="/tmp")
    try:
        path = os.path.join(stage, "sparse.img")
        with open(path, "wb") as f:
            f.write(b"head")
            f.seek(32 << 20)
            f.write(b"middle")
            f.seek(64 << 20)
            f.write(b"tail")
        raw = subprocess.run(
            ["tar", "--format=pax", "--sparse", "-C", stage, "-cf", "-", "sparse.img"], capture_output=True, check=True
        ).stdout
    finally:
        subprocess.run(["rm", "-rf", stage], check=True)
    assert len(raw) < 1 << 20  # the archive holds the data extents only
    with direct.container([raw]) as root:
        st = os.stat(os.path.join(root, "sparse.img"))
        assert st.st_size == (64 << 20) + 4
        assert st.st_blocks * 512 < 1 << 20  # not 64 MiB on disk
        with open(os.path.join(root, "sparse.img"), "rb") as f:
            assert f.read(4) == b"head"
            f.seek(32 << 20)
            assert f.read(6) == b"middle"
            f.seek(64 << 20)
            assert f.read() == b"tail"


def test_owners_modes_and_times(direct: Direct) -> None:
    layer = (
        Layer()
        .dir("d", 0o750, uid=1000, gid=1001, mtime=EPOCH - 3600)
        .file("d/f", "x", mode=0o6711, uid=65534, gid=100000, mtime=EPOCH + 0.5)
        .symlink("d/s", "f", uid=7, gid=8, mtime=EPOCH - 60)
        .file("big-ids", "y", uid=3_000_000, gid=4_000_000)
        .dir("d/later", 0o700, mtime=EPOCH - 7200)
        .file("d/later/child", "written after the directory entry")
    )
    with direct.container([layer.raw()]) as root:
        d = os.stat(os.path.join(root, "d"))
        assert (d.st_mode & 0o7777, d.st_uid, d.st_gid, d.st_mtime) == (0o750, 1000, 1001, EPOCH - 3600)
        f = os.stat(os.path.join(root, "d/f"))
        assert (f.st_mode & 0o7777, f.st_uid, f.st_gid) == (0o6711, 65534, 100000)
        assert f.st_mtime_ns == int((EPOCH + 0.5) * 1e9)
        s = os.lstat(os.path.join(root, "d/s"))
        assert (s.st_uid, s.st_gid, s.st_mtime) == (7, 8, EPOCH - 60)
        big = os.stat(os.path.join(root, "big-ids"))
        assert (big.st_uid, big.st_gid) == (3_000_000, 4_000_000)
        assert os.stat(os.path.join(root, "d/later")).st_mtime == EPOCH - 7200  # restored after its child


def test_long_names_in_pax_and_gnu_form(direct: Direct) -> None:
    long_dir = "/".join(["a" * 120, "b" * 120])
    for i, fmt in enumerate((tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)):
        layer = Layer(fmt).file(f"{long_dir}/{'c' * 100}", "long").symlink("l", "/" + "t" * 250)
        with direct.container([layer.raw()], key=f"c{i}") as root:
            assert read(root, f"{long_dir}/{'c' * 100}") == "long"
            assert os.readlink(os.path.join(root, "l")) == "/" + "t" * 250


def test_missing_parent_directories_are_created(direct: Direct) -> None:
    with direct.container([Layer().file("a/b/c/file", "deep").raw()]) as root:
        assert listing(root) == ["a", "a/b", "a/b/c", "a/b/c/file"]
        assert os.stat(os.path.join(root, "a/b")).st_mode & 0o7777 == 0o755


def test_lower_directory_metadata_is_kept_when_a_child_is_added(direct: Direct) -> None:
    l1 = Layer().dir("srv", 0o710, uid=33, gid=33, mtime=EPOCH - 100).file("srv/old", "old")
    l2 = Layer().file("srv/new", "new")  # no entry for srv/ itself
    with direct.container([l1.raw(), l2.raw()]) as root:
        st = os.stat(os.path.join(root, "srv"))
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o710, 33, 33)
        assert listing(os.path.join(root, "srv")) == ["new", "old"]
