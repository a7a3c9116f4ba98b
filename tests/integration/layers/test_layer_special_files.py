"""C08: device nodes, FIFOs, whiteouts and setuid/setgid/sticky bits, as root and inside
an unprivileged user namespace (``unshare -Ur``), plus entry types tar cannot hold for
us (unknown type flags are skipped with a warning, never a failed pull).
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile

from tests.harness import PROJECT
from tests.snapshot_util import Direct, Layer, listing


def _c08_layers(gid: int = 5) -> tuple[bytes, bytes]:
    l1 = (
        Layer()
        .dir("etc")
        .file("etc/motd", "hello")
        .dir("dev")
        .device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
        .device("dev/sda", tarfile.BLKTYPE, 8, 0, mode=0o660, gid=gid)
        .dir("run")
        .fifo("run/fifo", 0o644)
        .dir("usr")
        .dir("usr/bin")
        .file("usr/bin/su", "su", mode=0o4755)
        .file("usr/bin/wall", "wall", mode=0o2755, gid=gid)
        .dir("scratch", 0o1777)
    )
    l2 = Layer().dir("etc").whiteout("etc/motd")
    return l1.raw(), l2.raw()


def test_c08_as_root(direct: Direct) -> None:
    with direct.container(list(_c08_layers())) as root:
        null = os.lstat(os.path.join(root, "dev/null"))
        assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
        assert null.st_mode & 0o7777 == 0o666
        sda = os.lstat(os.path.join(root, "dev/sda"))
        assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
        assert sda.st_gid == 5
        fifo = os.lstat(os.path.join(root, "run/fifo"))
        assert stat.S_ISFIFO(fifo.st_mode) and fifo.st_mode & 0o7777 == 0o644
        assert os.stat(os.path.join(root, "usr/bin/su")).st_mode & 0o7777 == 0o4755
        wall = os.stat(os.path.join(root, "usr/bin/wall"))
        assert (wall.st_mode & 0o7777, wall.st_gid) == (0o2755, 5)
        assert os.stat(os.path.join(root, "scratch")).st_mode & 0o7777 == 0o1777
        assert listing(os.path.join(root, "etc")) == []


_USERNS_SCRIPT = r"""
import io, json, os, stat, sys
sys.path.insert(0, sys.argv[1])
import logging
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from services.snapshot import apply
target = sys.argv[2]
warnings = []
for path in sys.argv[3:]:
    with open(path, "rb") as f:
        w = apply.apply_stream(io.BytesIO(f.read()), target, [], overlay=False, what=os.path.basename(path)).warnings
    warnings += w
out = {}
for rel in ("dev/null", "dev/sda", "run/fifo", "usr/bin/su", "etc/motd"):
    try:
        st = os.lstat(os.path.join(target, rel))
        out[rel] = [stat.S_IFMT(st.st_mode), st.st_mode & 0o7777]
    except FileNotFoundError:
        out[rel] = None
print(json.dumps({"files": out, "warnings": warnings, "uid_map": open("/proc/self/uid_map").read().split()}))
"""


def test_c08_inside_an_unprivileged_user_namespace(direct: Direct, tmp_path: object) -> None:
    """Rootless-style apply (naive whiteouts, no CAP_MKNOD): devices skipped with a
    warning, everything else as with root."""
    l1, l2 = _c08_layers(gid=0)  # `unshare -Ur` maps id 0 only
    paths = []
    for i, raw in enumerate((l1, l2)):
        p = os.path.join(direct.blobs, f"c08-{i}.tar")
        with open(p, "wb") as f:
            f.write(raw)
        paths.append(p)
    target = os.path.join(direct.base, "userns-rootfs")
    os.mkdir(target)
    proc = subprocess.run(
        ["unshare", "-Ur", sys.executable, "-c", _USERNS_SCRIPT, str(PROJECT), target, *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["uid_map"][:3] != ["0", "0", "4294967295"]  # really in a user namespace
    files = result["files"]
    assert files["dev/null"] is None and files["dev/sda"] is None
    assert files["run/fifo"] == [stat.S_IFIFO, 0o644]
    assert files["usr/bin/su"] == [stat.S_IFREG, 0o4755]
    assert files["etc/motd"] is None
    assert sum("device node skipped" in w for w in result["warnings"]) == 2

    unmapped = os.path.join(direct.blobs, "unmapped.tar")
    with open(unmapped, "wb") as f:
        f.write(Layer().file("owned", "x", uid=1000).raw())
    proc = subprocess.run(
        ["unshare", "-Ur", sys.executable, "-c", _USERNS_SCRIPT, str(PROJECT), target, unmapped],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "entry 'owned' refused: owner 1000:0 is not mapped" in proc.stderr


def test_unknown_entry_types_are_skipped_with_a_warning(direct: Direct) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        odd = tarfile.TarInfo("volume-label")
        odd.type = b"V"
        tar.addfile(odd)
        ok = tarfile.TarInfo("ok")
        tar.addfile(ok, io.BytesIO(b""))
    with direct.container([buf.getvalue()]) as root:
        assert listing(root) == ["ok"]


def test_sockets_in_a_container_are_left_out_of_its_diff(direct: Direct) -> None:
    import socket

    with direct.container([Layer().file("f", "f").raw()]) as root:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(root, "app.sock"))
        sock.close()
        with open(os.path.join(root, "g"), "w") as f:
            f.write("g")
    blob = os.path.join(direct.blobs, "diff.tar")
    direct.call("snapshot.diff", {"key": "c", "path": blob, "media_type": "application/vnd.oci.image.layer.v1.tar"})
    with tarfile.open(blob) as tar:
        assert tar.getnames() == ["g"]
