"""C05: the same path twice in one layer, and type changes within a layer and across
layers. Entries apply in stream order, the last one wins; a directory over a directory
changes only metadata; any other replacement unlinks first and never follows the old
symlink; the diff ID still verifies (the unpack would fail otherwise).
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.snapshot_util import Direct, Layer, Outside, listing, read


def test_c05_reproducer(direct: Direct) -> None:
    watch = Outside(direct.base, os.path.join(direct.base, "HOSTDIR"))
    layer = (
        Layer()
        .dir("d", 0o700)
        .file("d/f", "one")
        .dir("d", 0o755)
        .file("d/f", "two")
        .file("x", "data")
        .symlink("x", "d/f")
        .symlink("y", "/etc/passwd")
        .file("y", "safe")
        .symlink("z", watch.canary)
        .file("z", "safe too")
    )
    with direct.container([layer.raw()]) as root:
        assert os.stat(os.path.join(root, "d")).st_mode & 0o7777 == 0o755
        assert read(root, "d/f") == "two"
        assert os.readlink(os.path.join(root, "x")) == "d/f"
        assert not os.path.islink(os.path.join(root, "y")) and read(root, "y") == "safe"
        assert read(root, "z") == "safe too"
    watch.check()


def test_last_file_wins_with_no_leftover_bytes(direct: Direct) -> None:
    layer = Layer().file("f", "a much longer first version\n" * 100, mode=0o600, uid=5).file("f", "short", mode=0o644)
    with direct.container([layer.raw()]) as root:
        st = os.stat(os.path.join(root, "f"))
        assert read(root, "f") == "short" and st.st_size == 5
        assert (st.st_mode & 0o7777, st.st_uid) == (0o644, 0)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("file", "dir"),
        ("dir", "file"),
        ("file", "symlink"),
        ("symlink", "file"),
        ("dir", "symlink"),
        ("symlink", "dir"),
        ("hardlink", "file"),
        ("fifo", "dir"),
    ],
)
@pytest.mark.parametrize("where", ["same layer", "next layer"])
def test_type_changes_replace_cleanly(direct: Direct, first: str, second: str, where: str) -> None:
    def add(layer: Layer, kind: str) -> None:
        if kind == "file":
            layer.file("p", kind)
        elif kind == "dir":
            layer.dir("p").file("p/child", "child")
        elif kind == "symlink":
            layer.symlink("p", "target")
        elif kind == "hardlink":
            layer.hardlink("p", "target")
        elif kind == "fifo":
            layer.fifo("p")

    l1 = Layer().dir("target").file("target", "target file")  # a dir replaced by a file: "target" is a file
    add(l1, first)
    if where == "same layer":
        add(l1, second)
        raws = [l1.raw()]
    else:
        l2 = Layer()
        add(l2, second)
        raws = [l1.raw(), l2.raw()]
    with direct.container(raws) as root:
        path = os.path.join(root, "p")
        mode = os.lstat(path).st_mode
        expected = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}[second]
        assert expected(mode)
        if second == "dir":
            assert listing(path) == ["child"]  # nothing left from the first entry
        if second == "file":
            assert read(root, "p") == "file"
            if where == "same layer":  # (overlayfs reports a lower inode's own link count)
                assert os.stat(os.path.join(root, "target")).st_nlink == 1
        assert read(root, "target") == "target file"


def test_file_replaced_by_directory_and_back_across_three_layers(direct: Direct) -> None:
    l1 = Layer().file("p", "file 1")
    l2 = Layer().dir("p").file("p/inner", "inner")
    l3 = Layer().file("p", "file 3")
    l4 = Layer().dir("p").file("p/other", "other")
    with direct.container([l1.raw(), l2.raw(), l3.raw()], key="three") as root:
        assert read(root, "p") == "file 3"
    with direct.container([l1.raw(), l2.raw(), l3.raw(), l4.raw()], key="four") as root:
        assert listing(os.path.join(root, "p")) == ["other"]
