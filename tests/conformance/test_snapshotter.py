"""One conformance suite for every snapshotter (overlayfs and native), as containerd's
``snapshots/testsuite`` does: the same calls must give the same trees and errors.

Each test runs once per snapshotter through an in-process ``SnapshotService`` (the
``direct`` fixture) and really mounts what ``prepare``/``view`` return.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from typing import Any

import pytest

from common import errors
from deploy import mkimage
from services.snapshot.tarstream import TarReader
from tests.snapshot_util import Direct, Layer, describe, listing, mounted, read, store_layer

BUSYBOX = mkimage.busybox_rootfs_tar()


def _prepare(d: Direct, key: str, parent: str = "") -> list[dict[str, Any]]:
    return d.call("snapshot.prepare", {"key": key, "parent": parent})["mounts"]  # type: ignore[no-any-return]


def test_prepare_write_commit_and_build_on_it(direct: Direct) -> None:
    with mounted(_prepare(direct, "a"), direct.mount_point("a")) as root:
        os.makedirs(os.path.join(root, "dir/sub"))
        with open(os.path.join(root, "dir/sub/file"), "w") as f:
            f.write("one")
        os.symlink("dir/sub/file", os.path.join(root, "link"))
    info = direct.call("snapshot.commit", {"key": "a", "name": "A"})
    assert (info["name"], info["kind"], info["parent"]) == ("A", "committed", "")
    with pytest.raises(errors.NotFound):
        direct.call("snapshot.stat", {"key": "a"})

    with mounted(_prepare(direct, "b", "A"), direct.mount_point("b")) as root:
        assert read(root, "link") == "one"
        with open(os.path.join(root, "dir/sub/file"), "w") as f:
            f.write("two")
        os.unlink(os.path.join(root, "link"))
        with open(os.path.join(root, "new"), "w") as f:
            f.write("new")
    direct.call("snapshot.commit", {"key": "b", "name": "B"})

    with mounted(direct.call("snapshot.view", {"key": "va", "parent": "A"})["mounts"], direct.mount_point("va")) as va:
        assert listing(va) == ["dir", "dir/sub", "dir/sub/file", "link"] and read(va, "dir/sub/file") == "one"
    with mounted(direct.call("snapshot.view", {"key": "vb", "parent": "B"})["mounts"], direct.mount_point("vb")) as vb:
        assert listing(vb) == ["dir", "dir/sub", "dir/sub/file", "new"] and read(vb, "dir/sub/file") == "two"
        with pytest.raises(OSError):
            open(os.path.join(vb, "x"), "w").close()
    stat_vb = direct.call("snapshot.stat", {"key": "vb"})
    assert (stat_vb["kind"], stat_vb["parent"]) == ("view", "B")
    assert direct.call("snapshot.stat", {"key": "B"})["parent"] == "A"


def test_deletions_in_a_child_hide_parent_files_and_directories(direct: Direct) -> None:
    with direct.container(
        [Layer().dir("d").file("d/f", "x").dir("d/e").file("d/e/g", "y").file("top", "t").raw()], key="c"
    ) as root:
        shutil.rmtree(os.path.join(root, "d/e"))
        os.unlink(os.path.join(root, "top"))
        os.rename(os.path.join(root, "d/f"), os.path.join(root, "moved"))
    direct.call("snapshot.commit", {"key": "c", "name": "C"})
    with mounted(direct.call("snapshot.view", {"key": "v", "parent": "C"})["mounts"], direct.mount_point("v")) as v:
        assert listing(v) == ["d", "moved"]


def test_errors_are_the_same_for_every_snapshotter(direct: Direct) -> None:
    _prepare(direct, "a")
    with pytest.raises(errors.AlreadyExists, match="snapshot 'a' already exists"):
        _prepare(direct, "a")
    with pytest.raises(errors.NotFound, match="parent snapshot 'nope' not found"):
        _prepare(direct, "b", "nope")
    with pytest.raises(errors.FailedPrecondition, match="'a' is active, not committed"):
        _prepare(direct, "b", "a")
    direct.call("snapshot.commit", {"key": "a", "name": "A"})
    with pytest.raises(errors.FailedPrecondition, match="only an active one"):
        direct.call("snapshot.commit", {"key": "A", "name": "A2"})
    with pytest.raises(errors.FailedPrecondition, match="committed"):
        direct.call("snapshot.mounts", {"key": "A"})
    _prepare(direct, "x", "A")
    with pytest.raises(errors.AlreadyExists, match="'A' already exists"):
        direct.call("snapshot.commit", {"key": "x", "name": "A"})
    with pytest.raises(errors.FailedPrecondition, match="has 1 child"):
        direct.call("snapshot.remove", {"key": "A"})
    direct.call("snapshot.remove", {"key": "x"})
    direct.call("snapshot.remove", {"key": "A"})
    with pytest.raises(errors.NotFound, match="snapshot 'A' not found"):
        direct.call("snapshot.remove", {"key": "A"})
    assert direct.snapshot_dirs() == []


def test_usage_counts_bytes_and_inodes_of_the_snapshot(direct: Direct) -> None:
    with mounted(_prepare(direct, "a"), direct.mount_point("a")) as root:
        with open(os.path.join(root, "big"), "wb") as f:
            f.write(os.urandom(1 << 20))
        os.link(os.path.join(root, "big"), os.path.join(root, "big2"))
        os.mkdir(os.path.join(root, "d"))
    usage = direct.call("snapshot.usage", {"key": "a"})
    assert usage["inodes"] == 3  # the root, big (twice linked, counted once), d
    assert (1 << 20) <= usage["size"] < (1 << 20) + 64 * 1024
    assert usage["content_size"] == 1 << 20  # Docker's SizeRw: big's bytes once, no directories
    direct.call("snapshot.commit", {"key": "a", "name": "A"})
    # measured at the commit; content_size is an active snapshot's only (a container's SizeRw)
    assert direct.call("snapshot.usage", {"key": "A"}) == {**usage, "content_size": None}


def test_labels_update_and_list_filters(direct: Direct) -> None:
    direct.call("snapshot.prepare", {"key": "a", "labels": {"team": "web", "x": "1"}})
    direct.call("snapshot.commit", {"key": "a", "name": "A", "labels": {"y": "2"}})
    direct.call("snapshot.prepare", {"key": "b", "parent": "A"})
    assert direct.call("snapshot.stat", {"key": "A"})["labels"] == {"team": "web", "x": "1", "y": "2"}
    updated = direct.call("snapshot.update", {"key": "A", "labels": {"x": "", "z": "3"}})
    assert updated["labels"] == {"team": "web", "y": "2", "z": "3"}

    def names(*filters: str) -> list[str]:
        return [s["name"] for s in direct.call("snapshot.list", {"filters": list(filters)})["snapshots"]]

    assert names() == ["A", "b"]
    assert names("kind==committed") == ["A"]
    assert names("parent==A") == ["b"]
    assert names("labels.team==web,kind==committed") == ["A"]
    assert names("labels.team", "kind==active") == ["A", "b"]
    assert names('name~="^[a-z]$"') == ["b"]


def test_namespaces_do_not_see_each_other(direct: Direct) -> None:
    direct.call("snapshot.prepare", {"key": "a"}, namespace="one")
    assert direct.call("snapshot.list", {}, namespace="two")["snapshots"] == []
    direct.call("snapshot.prepare", {"key": "a"}, namespace="two")
    with pytest.raises(errors.NotFound):
        direct.call("snapshot.stat", {"key": "a"}, namespace="three")


def _change_a_container(root: str) -> None:
    """Delete, create, modify and re-create files and directories in a mounted container."""
    os.unlink(os.path.join(root, "etc/hostname"))
    shutil.rmtree(os.path.join(root, "data/deldir"))
    shutil.rmtree(os.path.join(root, "data/emptied"))
    os.mkdir(os.path.join(root, "data/emptied"))  # rm -rf + mkdir: only new content below
    with open(os.path.join(root, "data/emptied/fresh"), "w") as f:
        f.write("fresh")
    with open(os.path.join(root, "data/keep.txt"), "a") as f:
        f.write("appended\n")
    os.chmod(os.path.join(root, "data/replace.txt"), 0o600)
    os.chown(os.path.join(root, "data/replace.txt"), 1000, 1000)
    os.makedirs(os.path.join(root, "srv/app"))
    with open(os.path.join(root, "srv/app/run.sh"), "w") as f:
        f.write("#!/bin/sh\necho run\n")
    os.chmod(os.path.join(root, "srv/app/run.sh"), 0o4755)
    os.symlink("/srv/app/run.sh", os.path.join(root, "usr/bin/run"))
    os.link(os.path.join(root, "srv/app/run.sh"), os.path.join(root, "srv/app/run2.sh"))
    os.setxattr(os.path.join(root, "srv/app/run.sh"), "user.note", b"committed")
    subprocess.run(["mkfifo", os.path.join(root, "srv/fifo")], check=True)


BASE_LAYERS = [
    BUSYBOX,
    Layer()
    .dir("data")
    .file("data/keep.txt", "keep\n")
    .dir("data/deldir")
    .file("data/deldir/inner.txt", "inner\n")
    .dir("data/emptied")
    .file("data/emptied/old", "old")
    .file("data/replace.txt", "v1\n")
    .raw(),
]


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    ],
)
def test_diff_of_a_container_applied_elsewhere_gives_the_same_tree(direct: Direct, media_type: str) -> None:
    if direct.service.snapshotter.name == "native" and not media_type.endswith("gzip"):
        pytest.skip("compression is independent of the snapshotter: checked once, on overlayfs")
    with direct.container(BASE_LAYERS, key="c") as root:
        _change_a_container(root)
        expected = describe(root)
    blob = os.path.join(direct.blobs, "commit.blob")
    reply = direct.call("snapshot.diff", {"key": "c", "path": blob, "media_type": media_type})
    assert reply["media_type"] == media_type and reply["size"] == os.path.getsize(blob)
    with open(blob, "rb") as f:
        data = f.read()
    assert reply["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()

    # "elsewhere": a fresh namespace unpacks the image's layers plus the new layer
    layers = [store_layer(direct.blobs, raw) for raw in BASE_LAYERS]
    layers.append(
        {
            "digest": reply["digest"],
            "media_type": media_type,
            "size": reply["size"],
            "diff_id": reply["diff_id"],
            "path": blob,
        }
    )
    chain = direct.call("snapshot.unpack", {"layers": layers}, namespace="elsewhere")["chain_id"]
    mounts = direct.call("snapshot.prepare", {"key": "c2", "parent": chain}, namespace="elsewhere")["mounts"]
    with mounted(mounts, direct.mount_point("c2")) as root2:
        got = describe(root2)
    assert got == expected
    assert "etc/hostname" not in got and "data/deldir" not in got
    assert sorted(p for p in got if p.startswith("data/emptied")) == ["data/emptied", "data/emptied/fresh"]


def test_diff_names_whiteouts_and_opaque_directories(direct: Direct) -> None:
    with direct.container(BASE_LAYERS, key="c") as root:
        _change_a_container(root)
    blob = os.path.join(direct.blobs, "commit.tar")
    direct.call("snapshot.diff", {"key": "c", "path": blob, "media_type": "application/vnd.oci.image.layer.v1.tar"})
    with open(blob, "rb") as f:
        names = [e.name.decode() for e in TarReader(io.BytesIO(f.read()))]
    assert "etc/.wh.hostname" in names and "data/.wh.deldir" in names
    assert not any(n.startswith("data/deldir/") for n in names)
    # a re-created directory: opaque marker (overlay) or a whiteout per old child (native)
    assert "data/emptied/.wh..wh..opq" in names or "data/emptied/.wh.old" in names
    assert "bin/busybox" not in names  # unchanged files are not in the change set


def test_export_is_the_whole_merged_tree(direct: Direct) -> None:
    with direct.container(BASE_LAYERS, key="c") as root:
        _change_a_container(root)
        expected = describe(root)
    out = os.path.join(direct.blobs, "export.tar")
    reply = direct.call("snapshot.export", {"key": "c", "path": out})
    assert reply["media_type"] == "application/vnd.oci.image.layer.v1.tar" and reply["diff_id"] == reply["digest"]
    target = os.path.join(direct.base, "untarred")
    os.mkdir(target)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xpf", out, "-C", target], check=True)
    assert describe(target) == expected
    assert not [p for p in expected if ".wh." in p]


def test_view_of_a_deep_chain(direct: Direct) -> None:
    raws = [BUSYBOX] + [Layer().file(f"l{i:02d}", str(i)).whiteout(f"l{i - 1:02d}").raw() for i in range(1, 16)]
    chain = direct.unpack(raws)["chain_id"]
    with mounted(direct.call("snapshot.view", {"key": "v", "parent": chain})["mounts"], direct.mount_point("v")) as v:
        assert [p for p in os.listdir(v) if p.startswith("l")] == ["l15"]
