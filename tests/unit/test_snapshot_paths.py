"""Entry-name cleaning and in-root path resolution (``services.snapshot.rootfs``).

Plain directories under ``tmp_path``; no root needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.snapshot.rootfs import PathError, Tree, clean


@pytest.mark.parametrize(
    ("name", "comps"),
    [
        (b"a/b/c", (b"a", b"b", b"c")),
        (b"./a/./b/", (b"a", b"b")),
        (b"/abs/path", (b"abs", b"path")),
        (b"//a//b", (b"a", b"b")),
        (b"a/../b", (b"b",)),
        (b"a/b/../../c", (b"c",)),
        (b"./", ()),
        (b"/", ()),
    ],
)
def test_clean_is_lexical_with_root_semantics(name: bytes, comps: tuple[bytes, ...]) -> None:
    assert clean(name) == comps


@pytest.mark.parametrize("name", [b"../x", b"../../escape1", b"a/../../x", b"/../etc/passwd", b"./.."])
def test_clean_refuses_names_climbing_above_the_root(name: bytes) -> None:
    with pytest.raises(PathError, match="escapes the root"):
        clean(name)


def _tree(tmp_path: Path) -> tuple[Path, Tree]:
    root = tmp_path / "root"
    root.mkdir()
    return root, Tree(str(root))


def test_symlink_components_resolve_inside_the_root(tmp_path: Path) -> None:
    root, tree = _tree(tmp_path)
    outside = tmp_path / "HOSTDIR"
    outside.mkdir()
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink(str(outside), root / "evil")  # absolute: means <root>/<tmp>/HOSTDIR inside
    os.symlink("../../../../../../" + str(outside), root / "rel")
    try:
        assert tree.resolve((b"lib",)) == (b"usr", b"lib")
        in_root = tuple(os.fsencode(p) for p in str(outside).strip("/").split("/"))
        assert tree.resolve((b"evil",), create=True) == in_root
        assert tree.resolve((b"rel",), create=True) == in_root
        assert (root / str(outside).lstrip("/")).is_dir()
        assert list(outside.iterdir()) == []
    finally:
        tree.close()


def test_dotdot_inside_a_symlink_target_is_clamped_at_the_root(tmp_path: Path) -> None:
    root, tree = _tree(tmp_path)
    (root / "a").mkdir()
    os.symlink("../../../..", root / "a" / "up")
    try:
        assert tree.resolve((b"a", b"up")) == ()
    finally:
        tree.close()


def test_symlink_loops_and_non_directories_are_errors(tmp_path: Path) -> None:
    root, tree = _tree(tmp_path)
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    (root / "file").write_text("x")
    try:
        with pytest.raises(PathError, match="too many levels"):
            tree.resolve((b"loop1", b"x"), create=True)
        with pytest.raises(PathError, match="not a directory"):
            tree.resolve((b"file", b"x"), create=True)
        with pytest.raises(PathError, match="does not exist"):
            tree.resolve((b"missing",))
    finally:
        tree.close()


def test_missing_parents_are_created_with_mode_0755(tmp_path: Path) -> None:
    root, tree = _tree(tmp_path)
    try:
        assert tree.resolve((b"x", b"y"), create=True) == (b"x", b"y")
        assert (root / "x" / "y").is_dir()
        assert (root / "x").stat().st_mode & 0o777 == 0o755
    finally:
        tree.close()


def test_overlay_tree_sees_lower_layers_through_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("whiteout devices and trusted xattrs need root")
    upper, mid, low = (tmp_path / n for n in ("upper", "mid", "low"))
    for d in (upper, mid, low):
        d.mkdir()
    (low / "d" / "sub").mkdir(parents=True)
    (low / "gone").mkdir()
    (mid / "d").mkdir()
    os.symlink("d", mid / "link")
    os.mknod(mid / "gone", 0o020000, os.makedev(0, 0))  # a whiteout in the middle layer
    (upper / "o").mkdir()
    (low / "o" / "hidden").mkdir(parents=True)
    os.setxattr(upper / "o", "trusted.overlay.opaque", b"y")
    tree = Tree(str(upper), [str(mid), str(low)], overlay=True)
    try:
        assert tree.dir_layers((b"d",)) == (1, 2)
        assert tree.resolve((b"link", b"sub")) == (b"d", b"sub")
        assert tree.lookup((b"gone",)) is None
        with pytest.raises(PathError):
            tree.resolve((b"gone",))
        assert tree.lookup((b"o", b"hidden")) is None
        tree.ensure_upper_dir((b"d", b"sub"))
        assert (upper / "d" / "sub").is_dir()
        assert tree.dir_layers((b"d", b"sub"))[0] == 0
    finally:
        tree.close()
