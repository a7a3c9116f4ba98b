"""C01: path traversal, and writing through symlinks planted earlier (in the same layer or
a lower one). Every name resolves inside the snapshot with chroot semantics; ``..``
escaping the root refuses the layer, naming the entry; nothing outside is created,
changed, linked or removed (a canary and the host's /etc are watched).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from common import errors
from deploy import mkimage
from tests.snapshot_util import Direct, Layer, Outside, listing, read

BUSYBOX = mkimage.busybox_rootfs_tar()


@pytest.fixture
def outside(direct: Direct) -> Iterator[Outside]:
    watch = Outside(direct.base, os.path.join(direct.base, "HOSTDIR"))
    yield watch
    watch.check()


def _inside(root: str, host_path: str) -> str:
    return os.path.join(root, host_path.lstrip("/"))


@pytest.mark.parametrize("name", ["../../escape1", "a/../../escape2", "../" * 12 + "tmp/escape3", "./../x"])
def test_dotdot_escaping_the_root_refuses_the_layer(direct: Direct, outside: Outside, name: str) -> None:
    layer = Layer().file("ok", "fine").file(name, "escaped")
    with pytest.raises(errors.InvalidArgument, match=f"entry '{name}' refused: .*escapes the root"):
        direct.unpack([layer.raw()])
    assert direct.call("snapshot.list")["snapshots"] == []
    assert direct.snapshot_dirs() == []


def test_absolute_and_dotted_names_land_inside(direct: Direct, outside: Outside) -> None:
    layer = Layer().file("/abs-escape", "a").file("./dot/./x", "b").file("//double//slash", "c").file("d/../e", "e")
    with direct.container([layer.raw()]) as root:
        assert listing(root) == ["abs-escape", "dot", "dot/x", "double", "double/slash", "e"]


def test_symlinks_to_host_directories_are_followed_inside_the_root(direct: Direct, outside: Outside) -> None:
    host = outside.host_dir
    layer = (
        Layer()
        .symlink("evil", host)
        .file("evil/owned", "pwned")
        .symlink("rel", "../" * 10 + host.lstrip("/"))
        .file("rel/owned2", "pwned")
        .symlink("chain1", "chain2")
        .symlink("chain2", "/")
        .file("chain1/etc/written-through-chain", "x")
        .symlink("up", "../../../../..")
        .file("up/from-up", "x")
    )
    with direct.container([BUSYBOX, layer.raw()]) as root:
        assert sorted(os.listdir(_inside(root, host))) == ["owned", "owned2"]
        assert read(root, "etc/written-through-chain") == "x" and read(root, "from-up") == "x"
        assert os.readlink(os.path.join(root, "evil")) == host  # stored verbatim


def test_a_file_entry_replaces_a_symlink_instead_of_writing_through_it(direct: Direct, outside: Outside) -> None:
    layer = (
        Layer()
        .symlink("canary", outside.canary)
        .file("canary", "replaced")
        .symlink("passwd", "/etc/passwd")
        .file("passwd", "replaced")
        .symlink("dir", outside.host_dir)
        .dir("dir", 0o700)
    )
    with direct.container([layer.raw()]) as root:
        assert read(root, "canary") == "replaced" and read(root, "passwd") == "replaced"
        assert os.path.isdir(os.path.join(root, "dir")) and not os.path.islink(os.path.join(root, "dir"))


def test_symlinks_planted_in_a_lower_layer_never_lead_outside(direct: Direct, outside: Outside) -> None:
    host = outside.host_dir
    lower = Layer().symlink("lib", host).symlink("data", "/" + host.lstrip("/") + "/../../../../../../../../srv").raw()
    upper = (
        Layer()
        .file("lib/owned", "pwned")
        .whiteout("lib/canary")  # must not delete the host canary
        .opaque("lib")  # must not hide or purge the host directory
        .file("data/passwd", "inside")
        .hardlink("lib/hl", "data/passwd")
        .raw()
    )
    with direct.container([lower, upper]) as root:
        assert sorted(os.listdir(_inside(root, host))) == ["hl", "owned"]
        assert read(root, "srv/passwd") == "inside"


def test_hard_links_to_host_files_resolve_inside_or_are_refused(direct: Direct, outside: Outside) -> None:
    ok = Layer().hardlink("passwd-link", "/etc/passwd").raw()  # the image's own /etc/passwd
    with direct.container([BUSYBOX, ok]) as root:
        assert read(root, "passwd-link") == read(root, "etc/passwd")
        assert read(root, "passwd-link").startswith("root:x:0:0:root:/root:/bin/sh")
    hostile = Layer().symlink("evil", outside.host_dir).hardlink("hl", "evil/canary").raw()
    with pytest.raises(errors.InvalidArgument, match=r"entry 'hl' refused: hard link target /evil: .* does not exist"):
        direct.unpack([hostile])


def test_whiteouts_and_opaque_markers_under_a_host_symlink_stay_inside(direct: Direct, outside: Outside) -> None:
    layer = Layer().symlink("w", outside.host_dir).whiteout("w/canary").opaque("w").raw()
    with direct.container([BUSYBOX, layer]) as root:
        assert os.path.islink(os.path.join(root, "w"))


def test_symlink_loops_fail_the_layer_cleanly(direct: Direct, outside: Outside) -> None:
    layer = Layer().symlink("a", "b").symlink("b", "a").file("a/x", "x").raw()
    with pytest.raises(errors.InvalidArgument, match=r"entry 'a/x' refused: .*too many levels of symbolic links"):
        direct.unpack([layer])
    assert direct.call("snapshot.list")["snapshots"] == []
