"""C06: hard links with absolute and relative targets, links into lower layers (copied up
on overlay), links replacing existing paths; targets escaping the root, directories or
missing targets refuse the layer, and no link to a host file is ever made.
"""

from __future__ import annotations

import os

import pytest

from common import errors
from tests.snapshot_util import Direct, Layer, Outside, read


def test_c06_reproducer(direct: Direct) -> None:
    l1 = Layer().dir("usr").dir("usr/bin").file("usr/bin/perl", "P", mode=0o755).file("usr/bin/perl5", "old")
    l2 = (
        Layer()
        .hardlink("usr/bin/perl5", "/usr/bin/perl")
        .file("usr/bin/a", "A")
        .hardlink("usr/bin/b", "usr/bin/a")
        .hardlink("usr/bin/c", "./usr/bin/a")
    )
    with direct.container([l1.raw(), l2.raw()]) as root:
        b = os.path.join(root, "usr/bin")
        assert read(b, "perl5") == "P" and read(b, "perl") == "P"
        assert os.stat(os.path.join(b, "perl5")).st_ino == os.stat(os.path.join(b, "perl")).st_ino
        inodes = {os.stat(os.path.join(b, n)).st_ino for n in ("a", "b", "c")}
        assert len(inodes) == 1 and os.stat(os.path.join(b, "a")).st_nlink == 3
        assert os.stat(os.path.join(b, "perl")).st_mode & 0o777 == 0o755


def test_c06_hostile_target_escaping_the_root_is_refused(direct: Direct) -> None:
    watch = Outside(direct.base, os.path.join(direct.base, "HOSTDIR"))
    passwd_links = os.stat("/etc/passwd").st_nlink
    layer = Layer().file("ok", "x").hardlink("esc", "/../../etc/passwd")
    with pytest.raises(errors.InvalidArgument, match=r"entry 'esc' refused: hard link target .* escapes the root"):
        direct.unpack([layer.raw()])
    assert direct.call("snapshot.list")["snapshots"] == []
    assert os.stat("/etc/passwd").st_nlink == passwd_links
    watch.check()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (Layer().dir("d").hardlink("l", "d"), "is a directory"),
        (Layer().hardlink("l", "missing"), "/missing does not exist"),
        (Layer().hardlink("l", "/"), "hard link to the root directory"),
        (Layer().hardlink("l", "../x"), "escapes the root"),
    ],
    ids=["directory", "missing", "root", "dotdot"],
)
def test_bad_hard_link_targets_refuse_the_layer(direct: Direct, layer: Layer, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=f"entry 'l' refused: .*{message}"):
        direct.unpack([layer.raw()])
    assert direct.call("snapshot.list")["snapshots"] == []


def test_hard_link_to_a_symlink_links_the_symlink_itself(direct: Direct) -> None:
    watch = Outside(direct.base, os.path.join(direct.base, "HOSTDIR"))
    layer = Layer().symlink("s", watch.canary).hardlink("h", "s").symlink("sd", watch.host_dir).file("f", "f")
    with direct.container([layer.raw()]) as root:
        assert os.readlink(os.path.join(root, "h")) == watch.canary
        assert os.lstat(os.path.join(root, "h")).st_ino == os.lstat(os.path.join(root, "s")).st_ino
    watch.check()


def test_hard_link_replaces_a_path_of_a_lower_layer(direct: Direct) -> None:
    l1 = Layer().file("x", "old x").dir("d").file("d/in", "in")
    l2 = Layer().file("y", "Y").hardlink("x", "y").hardlink("d", "y")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert read(root, "x") == "Y" and read(root, "d") == "Y"
        assert os.stat(os.path.join(root, "x")).st_nlink == 3


def test_lower_file_linked_then_whited_out_in_the_same_layer(direct: Direct) -> None:
    """The copied-up target of a link is not this layer's: a whiteout of it must hide it,
    while the new link keeps the content."""
    l1 = Layer().dir("d").file("d/orig", "content")
    l2 = Layer().hardlink("keep", "d/orig").whiteout("d/orig")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert not os.path.exists(os.path.join(root, "d/orig"))
        assert read(root, "keep") == "content"


def test_lower_file_linked_inside_an_opaque_directory(direct: Direct) -> None:
    l1 = Layer().dir("d").file("d/orig", "content").file("d/other", "other")
    l2 = Layer().dir("d").hardlink("d/link", "d/orig").opaque("d")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert sorted(os.listdir(os.path.join(root, "d"))) == ["link"]
        assert read(root, "d/link") == "content"
