"""User lookup inside a hostile rootfs (CASES.md C15, CVE-2024-9676) and WORKDIR creation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.shim import rootfs
from services.shim.rootfs import RootfsError, resolve_user


def _root(tmp_path: Path, passwd: str | None = None, group: str | None = None) -> str:
    (tmp_path / "etc").mkdir(exist_ok=True)
    if passwd is not None:
        (tmp_path / "etc/passwd").write_text(passwd)
    if group is not None:
        (tmp_path / "etc/group").write_text(group)
    return str(tmp_path)


def test_numeric_user_and_group_without_passwd(tmp_path: Path) -> None:
    u = resolve_user(_root(tmp_path), "1000:1000")
    assert (u.uid, u.gid, u.home) == (1000, 1000, "/")


def test_numeric_uid_not_in_passwd_gets_gid_0(tmp_path: Path) -> None:
    u = resolve_user(_root(tmp_path, "root:x:0:0:root:/root:/bin/sh\n"), "1000")
    assert (u.uid, u.gid) == (1000, 0)


def test_name_with_supplementary_groups(tmp_path: Path) -> None:
    root = _root(tmp_path, "app:x:1001:1002::/home/app:/bin/sh\n", "app:x:1002:\nextra:x:2000:app,other\n")
    u = resolve_user(root, "app")
    assert (u.uid, u.gid, u.home) == (1001, 1002, "/home/app")
    assert u.additional_gids == [1002, 2000]
    assert resolve_user(root, "app:extra").gid == 2000
    assert resolve_user(root, "1001").gid == 1002


def test_the_primary_group_is_the_first_additional_gid(tmp_path: Path) -> None:
    """dockerd's getUser (CVE-2022-36109) lists the primary gid first among the additional ones:
    `docker run -u nobody busybox id` says groups=65534(nogroup), `-u 1234:55` groups=55."""
    root = _root(tmp_path, "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n", "root:x:0:\n")
    assert resolve_user(root, "").additional_gids == [0]
    assert resolve_user(root, "nobody").additional_gids == [65534]
    assert resolve_user(root, "1234:55").additional_gids == [55]
    assert resolve_user(root, "nobody", ["0"]).additional_gids == [65534, 0]


def test_unknown_names_fail_clearly(tmp_path: Path) -> None:
    root = _root(tmp_path, "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n")
    with pytest.raises(RootfsError, match="unable to find user ghost"):
        resolve_user(root, "ghost")
    with pytest.raises(RootfsError, match="unable to find group nope"):
        resolve_user(root, "root:nope")


def test_empty_user_is_root(tmp_path: Path) -> None:
    u = resolve_user(_root(tmp_path, "root:x:0:0::/root:/bin/sh\n"), "")
    assert (u.uid, u.gid, u.home) == (0, 0, "/root")


@pytest.mark.parametrize("target", ["/dev/zero", "../../../../dev/zero", "/etc/shadow-host"])
def test_symlinked_passwd_never_reads_a_host_file(tmp_path: Path, target: str) -> None:
    root = _root(tmp_path)
    os.symlink(target, tmp_path / "etc/passwd")
    start = time.monotonic()
    with pytest.raises(RootfsError):
        resolve_user(root, "app")
    assert time.monotonic() - start < 1.0


def test_symlink_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "real/passwd").write_text("app:x:5:6::/:/bin/sh\n")
    os.symlink("/real/passwd", tmp_path / "etc/passwd")  # absolute: relative to the rootfs
    assert resolve_user(root, "app").uid == 5


def test_fifo_passwd_does_not_hang(tmp_path: Path) -> None:
    root = _root(tmp_path)
    os.mkfifo(tmp_path / "etc/passwd")
    start = time.monotonic()
    with pytest.raises(RootfsError, match="not a regular file"):
        resolve_user(root, "app")
    assert time.monotonic() - start < 1.0


def test_huge_passwd_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    with open(tmp_path / "etc/passwd", "wb") as f:
        f.truncate(rootfs.MAX_FILE_BYTES + 1)
    with pytest.raises(RootfsError, match="larger than"):
        resolve_user(root, "app")


def test_secure_join_stays_inside(tmp_path: Path) -> None:
    os.symlink("/../../..", tmp_path / "up")
    assert rootfs.secure_join(str(tmp_path), "up/etc/passwd") == str(tmp_path.resolve() / "etc/passwd")
    assert rootfs.secure_join(str(tmp_path), "../../x") == str(tmp_path.resolve() / "x")


def test_make_workdir_creates_missing_dirs_only(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    rootfs.make_workdir(str(tmp_path), "/srv/app/data", os.getuid(), os.getgid())
    assert (tmp_path / "srv/app/data").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RootfsError, match="not a directory"):
        rootfs.make_workdir(str(tmp_path), "/file/sub", 0, 0)


def test_missing_interpreter_is_found_before_the_runtime_runs(tmp_path: Path) -> None:
    import shutil

    (tmp_path / "bin").mkdir()
    script = tmp_path / "bad.sh"
    script.write_text("#!/nointerp -x\necho hi\n")
    script.chmod(0o755)
    good = tmp_path / "good.sh"
    good.write_text("#!/bin/sh\necho hi\n")
    good.chmod(0o755)
    shutil.copy("/bin/busybox", tmp_path / "bin/sh")  # static: needs no loader
    shutil.copy("/usr/bin/env", tmp_path / "bin/dyn")  # dynamic: its loader is missing here
    root = str(tmp_path)
    msg = rootfs.missing_interpreter(root, ["/bad.sh"], ["PATH=/bin"])
    assert msg is not None and "/nointerp" in msg
    assert rootfs.missing_interpreter(root, ["/good.sh"], []) is None
    assert rootfs.missing_interpreter(root, ["sh", "-c", "x"], ["PATH=/bin"]) is None
    dyn = rootfs.missing_interpreter(root, ["dyn"], ["PATH=/usr/bin:/bin"])
    assert dyn is not None and "dynamic loader" in dyn
    assert rootfs.missing_interpreter(root, ["nosuch"], ["PATH=/bin"]) is None  # left to the runtime (127)
