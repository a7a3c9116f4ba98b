"""C04 and the image-spec's own examples (layer.md): whiteouts and opaque directories hide
lower layers only, never entries of the same layer, whatever their order in the tar;
the markers never show in the container; delete-then-recreate shows only new content.
"""

from __future__ import annotations

import os

import pytest

from deploy import mkimage
from tests.snapshot_util import Direct, Layer, listing, read

BUSYBOX = mkimage.busybox_rootfs_tar()


def _no_markers(root: str) -> None:
    assert not [p for p in listing(root) if ".wh." in p]


@pytest.mark.parametrize("order", ["marker-first", "marker-last"])
def test_c04_reproducer_in_both_orders(direct: Direct, order: str) -> None:
    l1 = (
        Layer()
        .dir("a")
        .dir("a/b")
        .dir("a/b/c")
        .file("a/b/c/bar", "bar")
        .file("a/keep", "keep")
        .dir("x")
        .file("x/y", "old y")
    )
    l2 = Layer().dir("a")
    if order == "marker-first":
        l2.opaque("a")
    l2.dir("a/b").dir("a/b/c").file("a/b/c/foo", "foo")
    if order == "marker-last":
        l2.opaque("a")
    l2.dir("x").file("x/y", "new y").whiteout("x/y").whiteout("nothere")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert listing(os.path.join(root, "a")) == ["b", "b/c", "b/c/foo"]
        assert read(root, "x/y") == "new y"
        _no_markers(root)


def test_spec_changeset_example(direct: Direct) -> None:
    """layer.md "Changesets": add etc/my-app.d/default.cfg, modify bin/my-app-tools,
    delete etc/my-app-config."""
    base = (
        Layer()
        .dir("etc")
        .file("etc/my-app-config", "config")
        .dir("bin")
        .file("bin/my-app-binary", "binary", mode=0o755)
        .file("bin/my-app-tools", "tools v1", mode=0o755)
    )
    change = (
        Layer()
        .dir("etc")
        .dir("etc/my-app.d")
        .file("etc/my-app.d/default.cfg", "default")
        .dir("bin")
        .file("bin/my-app-tools", "tools v2", mode=0o755)
        .whiteout("etc/my-app-config")
    )
    with direct.container([base.raw(), change.raw()]) as root:
        assert listing(root) == [
            "bin",
            "bin/my-app-binary",
            "bin/my-app-tools",
            "etc",
            "etc/my-app.d",
            "etc/my-app.d/default.cfg",
        ]
        assert read(root, "bin/my-app-tools") == "tools v2"


def test_spec_whiteout_of_a_directory_removes_its_children(direct: Direct) -> None:
    """layer.md "Whiteouts": ``a/.wh.b`` hides ``a/b`` and everything below it."""
    base = Layer().dir("a").dir("a/b").dir("a/b/c").file("a/b/c/bar", "x").file("a/b/f", "y").file("a/keep", "k")
    with direct.container([base.raw(), Layer().whiteout("a/b").raw()]) as root:
        assert listing(os.path.join(root, "a")) == ["keep"]


def test_spec_opaque_example(direct: Direct) -> None:
    """layer.md "Opaque Whiteout": ``a/.wh..wh..opq`` then ``a/b/c/foo`` -> only foo."""
    base = Layer().dir("a").dir("a/b").dir("a/b/c").file("a/b/c/bar", "bar")
    change = Layer().dir("a").file("a/.wh..wh..opq").dir("a/b").dir("a/b/c").file("a/b/c/foo", "foo")
    with direct.container([base.raw(), change.raw()]) as root:
        assert listing(os.path.join(root, "a")) == ["b", "b/c", "b/c/foo"]


def test_delete_a_directory_then_recreate_it_in_the_next_layer(direct: Direct) -> None:
    l1 = Layer().dir("d").file("d/old", "old").dir("d/sub").file("d/sub/deep", "deep")
    l2 = Layer().whiteout("d")
    l3 = Layer().dir("d").file("d/new", "new")
    with direct.container([l1.raw(), l2.raw(), l3.raw()]) as root:
        assert listing(os.path.join(root, "d")) == ["new"]


@pytest.mark.parametrize("order", ["whiteout-first", "whiteout-last"])
def test_whiteout_and_recreate_in_the_same_layer_shows_only_new_content(direct: Direct, order: str) -> None:
    l1 = Layer().dir("d").file("d/old", "old").file("f", "old f")
    l2 = Layer()
    if order == "whiteout-first":
        l2.whiteout("d").whiteout("f")
    l2.dir("d").file("d/new", "new").file("f", "new f")
    if order == "whiteout-last":
        l2.whiteout("d").whiteout("f")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert listing(os.path.join(root, "d")) == ["new"]
        assert read(root, "f") == "new f"


def test_whiteouts_of_missing_names_are_no_ops_and_never_create_parents(direct: Direct) -> None:
    l2 = Layer().whiteout("nothere").whiteout("no/such/dir/file").opaque("etc").file("etc/only", "only")
    with direct.container([BUSYBOX, l2.raw()]) as root:
        assert not os.path.exists(os.path.join(root, "no"))
        assert listing(os.path.join(root, "etc")) == ["only"]
        _no_markers(root)


def test_opaque_directory_keeps_earlier_entries_of_its_own_layer_at_any_depth(direct: Direct) -> None:
    l1 = Layer().dir("o").dir("o/s").file("o/s/lower", "l").file("o/lower2", "l")
    l2 = Layer().dir("o").dir("o/s").file("o/s/upper", "u").file("o/upper2", "u").opaque("o")
    with direct.container([l1.raw(), l2.raw()]) as root:
        assert listing(os.path.join(root, "o")) == ["s", "s/upper", "upper2"]


def test_aufs_metadata_entries_are_skipped(direct: Direct) -> None:
    layer = Layer().dir(".wh..wh.plnk").file(".wh..wh.plnk/123.456", "x").file(".wh..wh.aufs", "").file("f", "f")
    with direct.container([layer.raw()]) as root:
        assert listing(root) == ["f"]


def test_whiteout_in_the_first_layer_is_a_no_op(direct: Direct) -> None:
    with direct.container([Layer().file("a", "a").whiteout("a").whiteout("b").raw()]) as root:
        assert listing(root) == ["a"]
