"""The same layers unpacked by ``umoci unpack`` (an independent OCI implementation, Debian
package ``umoci``) and by Dockyard must give the same tree: names, types, modes, owners,
link targets, device numbers, file contents and xattrs, compared entry by entry between
umoci's rootfs and Dockyard's mounted container snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from typing import Any

import pytest

from deploy import mkimage
from tests.integration.layers.test_layer_xattrs import _xattr_layer
from tests.snapshot_util import Direct, Layer, describe

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")


def _layers() -> list[bytes]:
    """Busybox plus layers covering every rule: whiteouts, opaque dirs, duplicates and
    type changes, hard links (also to lower files), special files, xattrs (from tarfile and
    from GNU tar: file capabilities, binary values), long names and link targets."""
    l2 = (
        Layer()
        .dir("data")
        .file("data/keep.txt", "keep\n")
        .file("data/del.txt", "del\n")
        .dir("data/deldir")
        .file("data/deldir/inner.txt", "inner\n")
        .file("data/owned.txt", "owned\n", mode=0o640, uid=1000, gid=1000)
        .hardlink("data/hard.txt", "data/keep.txt")
        .symlink("data/link.txt", "keep.txt")
        .dir("opq")
        .file("opq/old", "old")
        .dir("opq/sub")
        .file("opq/sub/old2", "old2")
        .dir("usr/bin")
        .file("usr/bin/perl", "P", mode=0o755)
        .file("usr/bin/perl5", "old perl5")
        .file("types/file-to-dir", "f")
        .dir("types/dir-to-file")
        .file("types/dir-to-file/child", "c")
        .symlink("types/link-to-file", "/etc/passwd")
    )
    l3 = (
        Layer()
        .dir("data")
        .whiteout("data/del.txt")
        .whiteout("data/deldir")
        .file("data/added.txt", "added\n")
        .dir("opq")
        .file("opq/new", "new")
        .opaque("opq")
        .hardlink("usr/bin/perl5", "/usr/bin/perl")
        .file("usr/bin/a", "A")
        .hardlink("usr/bin/b", "usr/bin/a")
        .dir("types/file-to-dir", 0o700)
        .file("types/file-to-dir/inside", "i")
        .file("types/dir-to-file", "now a file")
        .file("types/link-to-file", "now a file too")
        .dir("d", 0o700)
        .file("d/f", "one")
        .dir("d", 0o755)
        .file("d/f", "two")
        .device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
        .device("dev/sda", tarfile.BLKTYPE, 8, 0, mode=0o660, gid=6)
        .fifo("run/fifo", 0o644)
        .file("usr/bin/su", "su", mode=0o4755)
        .dir("sticky", 0o1777)
        .file("xattr-file", "x", xattrs={"user.foo": "bar", "user.empty": ""})
        .file("/".join(["l" * 120, "m" * 120, "n" * 50]), "long")
    )
    l4 = Layer().dir("data").dir("data/deldir").file("data/deldir/reborn.txt", "reborn\n")
    return [mkimage.busybox_rootfs_tar(), l2.raw(), l3.raw(), l4.raw(), _xattr_layer()]


def _oci_layout(path: str, layers: list[bytes]) -> None:
    img = mkimage.build_image("compare:latest", layers)
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)
    for digest, data in img.blobs.items():
        with open(os.path.join(blobs, digest.split(":")[1]), "wb") as f:
            f.write(data)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mkimage.MT_MANIFEST,
                "digest": img.manifest_digest,
                "size": len(img.blobs[img.manifest_digest]),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)


def _without_trusted(tree: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """The one intended difference: umoci applies ``trusted.*`` xattrs from a layer,
    Dockyard never does (C09; containerd refuses them too)."""
    return {p: (*v[:5], tuple(x for x in v[5] if not x[0].startswith("trusted."))) for p, v in tree.items()}


def test_dockyard_and_umoci_unpack_the_same_tree(direct: Direct) -> None:
    layers = _layers()
    layout = os.path.join(direct.base, "layout")
    bundle = os.path.join(direct.base, "umoci-bundle")
    _oci_layout(layout, layers)
    proc = subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", bundle], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    umoci_tree = describe(os.path.join(bundle, "rootfs"))
    expected = _without_trusted(umoci_tree)
    assert ("trusted.foo", b"x") in umoci_tree["g"][5]
    with direct.container(layers) as root:
        got = describe(root)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differing = {p: (expected[p], got[p]) for p in sorted(set(expected) & set(got)) if expected[p] != got[p]}
    assert (missing, extra, differing) == ([], [], {})
    # the comparison covered every rule, not an empty tree
    for path in ("data/deldir/reborn.txt", "opq/new", "usr/bin/perl5", "dev/null", "run/fifo", "xattr-file", "d/f"):
        assert path in got
    assert dict(got["bin/ping"][5])["security.capability"]
    assert "data/del.txt" not in got and "opq/old" not in got
