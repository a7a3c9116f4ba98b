"""C09: extended attributes from PAX records. File capabilities and ``user.*`` survive
byte-exact; ``trusted.*`` from a layer is never applied (overlay's own markers could
hide lower content); long names and link targets from the same PAX parsing are intact.
The layer is made by GNU tar with ``--xattrs`` from real files, as an image build does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from deploy import mkimage
from tests.snapshot_util import Direct, Layer, listing

BUSYBOX = mkimage.busybox_rootfs_tar()
LONG_DIR = "/".join(["d" * 99, "e" * 99, "f" * 60])  # 260 bytes
LONG_FILE = LONG_DIR + "/" + "g" * 40  # 301 bytes
LONG_TARGET = "/" + "t" * 199


def _xattr_layer() -> bytes:
    stage = tempfile.mkdtemp(prefix="c09-", dir="/tmp")
    try:
        os.makedirs(os.path.join(stage, "bin"))
        shutil.copy(mkimage.find_busybox(), os.path.join(stage, "bin/ping"))
        shutil.copy(mkimage.find_busybox(), os.path.join(stage, "bin/ping-nocap"))
        subprocess.run(["setcap", "cap_net_raw+ep", os.path.join(stage, "bin/ping")], check=True)
        with open(os.path.join(stage, "f"), "w") as f:
            f.write("f")
        os.setxattr(os.path.join(stage, "f"), "user.foo", b"bar")
        os.setxattr(os.path.join(stage, "f"), "user.bin", bytes(range(256)))
        os.mkdir(os.path.join(stage, "g"))
        os.setxattr(os.path.join(stage, "g"), "trusted.overlay.opaque", b"y")
        os.setxattr(os.path.join(stage, "g"), "trusted.foo", b"x")
        os.makedirs(os.path.join(stage, LONG_DIR))
        with open(os.path.join(stage, LONG_FILE), "w") as f:
            f.write("long")
        os.symlink(LONG_TARGET, os.path.join(stage, "longlink"))
        return subprocess.run(
            [
                "tar",
                "--format=pax",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-C",
                stage,
                "-cf",
                "-",
                "bin",
                "f",
                "g",
                "d" * 99,
                "longlink",
            ],
            capture_output=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(stage)


@pytest.fixture(scope="module")
def xattr_layer() -> bytes:
    if os.geteuid() != 0 or not shutil.which("setcap"):
        pytest.skip("needs root and setcap")
    return _xattr_layer()


def test_c09_capabilities_and_user_xattrs_survive_trusted_ones_do_not(direct: Direct, xattr_layer: bytes) -> None:
    lower = Layer().dir("g").file("g/lower-content", "must stay visible").raw()
    with direct.container([BUSYBOX, lower, xattr_layer]) as root:
        getcap = subprocess.run(["getcap", os.path.join(root, "bin/ping")], capture_output=True, text=True)
        assert "cap_net_raw" in getcap.stdout
        assert os.getxattr(os.path.join(root, "f"), "user.foo") == b"bar"
        assert os.getxattr(os.path.join(root, "f"), "user.bin") == bytes(range(256))
        # the layer's trusted.overlay.opaque must not have hidden the lower layer's file
        assert listing(os.path.join(root, "g")) == ["lower-content"]
        with open(os.path.join(root, LONG_FILE)) as f:
            assert f.read() == "long"
        assert os.readlink(os.path.join(root, "longlink")) == LONG_TARGET

        # a non-root user can ping thanks to the file capability, and not without it
        def ping(binary: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["chroot", "--userspec=1000:1000", root, binary, "-c", "1", "-W", "2", "127.0.0.1"],
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert ping("/bin/ping").returncode == 0
        assert ping("/bin/ping-nocap").returncode != 0
    # no trusted.* xattr from the layer anywhere in the snapshot directories
    out = subprocess.run(
        ["getfattr", "-R", "-h", "-m", "^trusted\\.", "--absolute-names", os.path.join(direct.root, "snapshots")],
        capture_output=True,
        text=True,
    ).stdout
    assert "trusted.foo" not in out
    assert not [line for line in out.splitlines() if line.startswith("# file") and line.rstrip().endswith("/g")]


def test_trusted_overlay_xattrs_in_pax_records_are_ignored_with_a_warning(direct: Direct, caplog: object) -> None:
    lower = Layer().dir("d").file("d/keep", "keep").raw()
    hostile = Layer().dir("d", xattrs={"trusted.overlay.opaque": "y", "user.ok": "1"}).raw()
    with direct.container([lower, hostile]) as root:
        assert listing(os.path.join(root, "d")) == ["keep"]
        assert os.getxattr(os.path.join(root, "d"), "user.ok") == b"1"
    assert "xattr trusted.overlay.opaque ignored" in caplog.text  # type: ignore[attr-defined]
