"""``common.fsarchive``: lookups stay in the scope, moby's names and stat bits, extraction refusals."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from common.fsarchive import (
    GO_MODE_DIR,
    GO_MODE_SYMLINK,
    ArchiveError,
    BreakoutError,
    ExtractOptions,
    Mount,
    ReadOnlyError,
    Scope,
    extract_tar,
    go_file_mode,
    path_stat,
    write_tar,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root\n")
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a").write_text("a")
    (root / "d" / "sub" / "b").write_text("b")
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../..", root / "d" / "up")
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("secret")
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "v").write_text("v")
    return root


def names(scope: Scope, path: str) -> list[str]:
    buf = io.BytesIO()
    write_tar(scope, path, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        return [m.name for m in t]


def tar_of(*entries: tuple[str, str, str]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "f":
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data.encode()))
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            else:
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
    buf.seek(0)
    return buf


def test_go_file_mode_bits() -> None:
    assert go_file_mode(stat.S_IFDIR | 0o755) == GO_MODE_DIR | 0o755
    assert go_file_mode(stat.S_IFLNK | 0o777) == GO_MODE_SYMLINK | 0o777
    assert go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o755) == (1 << 23) | 0o755
    assert go_file_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666


def test_lookups_never_leave_the_root(tree: Path) -> None:
    with Scope(str(tree), [Mount("/data", str(tree.parent / "vol"), volume=True)]) as scope:
        assert path_stat(scope, "/d/up/etc/passwd")["size"] == 5  # ../../.. stops at the root
        assert path_stat(scope, "/abs")["linkTarget"] == "/etc"
        assert path_stat(scope, "/d/up")["linkTarget"] == "/"
        with pytest.raises(FileNotFoundError):
            path_stat(scope, "/d/up/../host/secret")
        assert path_stat(scope, "/data/v")["size"] == 1  # a mount's source
        assert path_stat(scope, "/")["name"] == "/" and path_stat(scope, "/d/.")["name"] == "."


def test_archive_names_as_moby(tree: Path) -> None:
    with Scope(str(tree)) as scope:
        assert names(scope, "/d") == ["d", "d/a", "d/sub", "d/sub/b", "d/up"]
        assert names(scope, "/d/.") == [".", "./a", "./sub", "./sub/b", "./up"]
        assert names(scope, "/abs/") == ["abs", "abs/passwd"]
        assert names(scope, "/abs") == ["abs"]  # the link itself
        assert names(scope, "/etc/passwd") == ["passwd"]


def test_extraction_refuses_escapes_and_contains_links(tree: Path) -> None:
    (tree / "dest").mkdir()
    opts = ExtractOptions(no_lchown=True)
    with Scope(str(tree)) as scope:
        for bad in (("../evil", "f", "x"), ("a/../../evil", "f", "x"), ("l", "l", "../../x")):
            with pytest.raises(BreakoutError):
                extract_tar(scope, "/dest", tar_of(bad), opts)
        assert not (tree / "evil").exists() and os.listdir(tree / "dest") == []
        extract_tar(scope, "/dest", tar_of(("/abs-name", "f", "1"), ("r", "l", "/"), ("r/etc/x", "f", "2")), opts)
        assert (tree / "dest" / "abs-name").read_text() == "1"
        assert (tree / "etc" / "x").read_text() == "2"  # through the link: in the root, never the host's /etc
        (tree / "dest" / "adir").mkdir()
        with pytest.raises(ArchiveError, match="cannot overwrite directory"):
            extract_tar(scope, "/dest", tar_of(("adir", "f", "x")), ExtractOptions(True, no_lchown=True))


def test_read_only_root_and_mounts(tree: Path) -> None:
    ro = Mount("/ro", str(tree.parent / "vol"), read_only=True, volume=True)
    with Scope(str(tree), [ro], read_only=True) as scope:
        with pytest.raises(ReadOnlyError, match="container rootfs is marked read-only"):
            extract_tar(scope, "/d", tar_of(("x", "f", "x")), ExtractOptions(no_lchown=True))
        with pytest.raises(ReadOnlyError, match="mounted volume is marked read-only"):
            extract_tar(scope, "/ro", tar_of(("x", "f", "x")), ExtractOptions(no_lchown=True))
