"""The snapshot service as a process: unpack real images, prepare, mount, run.

Starts ``services.snapshot`` with the ``instance`` fixture (no events service: calls
must work without it), unpacks layers built by ``deploy/mkimage.py`` and ``tarfile``,
mounts container snapshots with the real overlayfs and checks the merged tree.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common import errors
from common.events import LOG_NAME, read_log
from deploy import mkimage
from tests.conftest import need_root
from tests.harness import Instance
from tests.snapshot_util import MT_GZIP, Layer, describe, listing, mounted, read, store_layer


class Snap:
    """A running snapshot service plus a place for blobs."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.blobs = os.path.join(instance.base, "blobs")
        os.makedirs(self.blobs, exist_ok=True)
        self.client = instance.client("snapshot", timeout_s=120)

    def call(self, method: str, body: dict[str, Any], **kw: Any) -> Any:
        return self.client.call(method, body, **kw)

    def layers(self, raws: list[bytes], media_type: str = MT_GZIP) -> list[dict[str, Any]]:
        return [store_layer(self.blobs, raw, media_type) for raw in raws]

    def unpack(self, raws: list[bytes], **kw: Any) -> dict[str, Any]:
        return self.call("snapshot.unpack", {"layers": self.layers(raws), **kw})  # type: ignore[no-any-return]

    def mount_point(self, name: str) -> str:
        return os.path.join(self.instance.base, "mnt", name)


@pytest.fixture
def snap(instance: Instance) -> Any:
    need_root()
    instance.start("snapshot")
    s = Snap(instance)
    try:
        yield s
    finally:
        s.client.close()


BUSYBOX = mkimage.busybox_rootfs_tar()


def _wait_empty_trash(root: str, snapshots: int) -> None:
    """Removed snapshot directories are deleted in the background: wait until only
    ``snapshots`` directories are left."""
    path = os.path.join(root, "snapshot", "snapshots")
    deadline = time.monotonic() + 30
    while len(os.listdir(path)) != snapshots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(path)) == snapshots, os.listdir(path)


def _whiteout_layers() -> list[bytes]:
    """shared/peers/make-images.py's whiteout image, above busybox."""
    l2 = (
        Layer()
        .dir("data")
        .file("data/keep.txt", "keep\n")
        .file("data/del.txt", "to be deleted\n")
        .dir("data/deldir")
        .file("data/deldir/inner.txt", "inner\n")
        .file("data/replace.txt", "v1\n")
        .file("data/owned.txt", "owned\n", mode=0o640, uid=1000, gid=1000)
        .hardlink("data/hard.txt", "data/keep.txt")
        .symlink("data/link.txt", "keep.txt")
    )
    l3 = (
        Layer()
        .dir("data")
        .whiteout("data/del.txt")
        .whiteout("data/deldir")
        .file("data/replace.txt", "v2\n")
        .file("data/added.txt", "added in L3\n")
    )
    l4 = Layer().dir("data").dir("data/deldir").file("data/deldir/reborn.txt", "reborn in L4\n")
    return [BUSYBOX, l2.raw(), l3.raw(), l4.raw()]


def _opaque_layers() -> list[bytes]:
    l2 = (
        Layer()
        .dir("opq")
        .file("opq/old1.txt", "old1\n")
        .dir("opq/sub")
        .file("opq/sub/old2.txt", "old2\n")
        .file("opq/keepname.txt", "old\n")
        .dir("other")
        .file("other/untouched.txt", "untouched\n")
    )
    l3 = Layer().dir("opq").opaque("opq").file("opq/new.txt", "new\n").file("opq/keepname.txt", "new\n")
    return [BUSYBOX, l2.raw(), l3.raw()]


def test_busybox_unpacks_once_and_runs_in_a_mounted_container_snapshot(snap: Snap) -> None:
    reply = snap.unpack([BUSYBOX])
    assert reply["unpacked"] == 1
    assert reply["chain_id"] == reply["chain_ids"][0] == mkimage.build_image("b", [BUSYBOX]).diff_ids[0]
    assert snap.unpack([BUSYBOX])["unpacked"] == 0  # already there: skipped

    info = snap.call("snapshot.stat", {"key": reply["chain_id"]})
    assert info["kind"] == "committed" and info["parent"] == ""
    mounts = snap.call("snapshot.prepare", {"key": "web", "parent": reply["chain_id"]})["mounts"]
    assert mounts[0]["type"] == "overlay"
    assert any(o.startswith("lowerdir=") for o in mounts[0]["options"]) and "index=off" in mounts[0]["options"]
    with mounted(mounts, snap.mount_point("web")) as root:
        out = subprocess.run(
            ["chroot", root, "/bin/sh", "-c", "echo hello > /tmp/new; cat /etc/hostname; ls /tmp"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout == "busybox\nnew\n"
    assert snap.call("snapshot.mounts", {"key": "web"})["mounts"] == mounts
    usage = snap.call("snapshot.usage", {"key": "web"})
    assert usage["inodes"] == 3 and usage["size"] > 0  # fs/, tmp/ (copied up), tmp/new
    base_usage = snap.call("snapshot.usage", {"key": reply["chain_id"]})
    assert base_usage["inodes"] > 200 and base_usage["size"] > 1_000_000

    with pytest.raises(errors.FailedPrecondition, match="child"):
        snap.call("snapshot.remove", {"key": reply["chain_id"]})
    snap.call("snapshot.remove", {"key": "web"})
    snap.call("snapshot.remove", {"key": reply["chain_id"]})
    assert snap.call("snapshot.list", {})["snapshots"] == []
    _wait_empty_trash(snap.instance.root, 0)


def test_whiteouts_of_files_and_directories_across_layers(snap: Snap) -> None:
    reply = snap.unpack(_whiteout_layers())
    assert reply["unpacked"] == 4
    mounts = snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})["mounts"]
    with mounted(mounts, snap.mount_point("c")) as root:
        data = os.path.join(root, "data")
        assert listing(data) == [
            "added.txt",
            "deldir",
            "deldir/reborn.txt",
            "hard.txt",
            "keep.txt",
            "link.txt",
            "owned.txt",
            "replace.txt",
        ]
        assert read(data, "replace.txt") == "v2\n"
        st = os.stat(os.path.join(data, "owned.txt"))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o640)
        assert os.stat(os.path.join(data, "keep.txt")).st_nlink == 2
        assert os.readlink(os.path.join(data, "link.txt")) == "keep.txt"
        assert not [p for p in listing(root) if ".wh." in p]


def test_opaque_directory_hides_only_lower_layers(snap: Snap) -> None:
    reply = snap.unpack(_opaque_layers())
    mounts = snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})["mounts"]
    with mounted(mounts, snap.mount_point("c")) as root:
        assert listing(os.path.join(root, "opq")) == ["keepname.txt", "new.txt"]
        assert read(root, "opq/keepname.txt") == "new\n"
        assert listing(os.path.join(root, "other")) == ["untouched.txt"]


@pytest.mark.parametrize("order", ["marker-first", "marker-last"])
def test_c04_whiteout_and_opaque_order_does_not_matter(snap: Snap, order: str) -> None:
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
    reply = snap.unpack([l1.raw(), l2.raw()])
    mounts = snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})["mounts"]
    with mounted(mounts, snap.mount_point("c")) as root:
        assert listing(os.path.join(root, "a")) == ["b", "b/c", "b/c/foo"]
        assert read(root, "x/y") == "new y"
        assert not [p for p in listing(root) if ".wh." in p]


def test_wrong_diff_id_fails_cleanly_with_nothing_committed(snap: Snap) -> None:
    good = snap.layers([BUSYBOX])
    bad_raw = Layer().file("etc/motd", "hello").raw()
    bad = snap.layers([bad_raw])[0]
    wrong = "sha256:" + "0" * 64
    bad["diff_id"] = wrong
    with pytest.raises(errors.InvalidArgument) as exc:
        snap.call("snapshot.unpack", {"layers": [good[0], bad]})
    message = str(exc.value)
    assert bad["digest"] in message and wrong in message
    assert mkimage._sha(bad_raw) in message  # the actual diff ID
    names = [s["name"] for s in snap.call("snapshot.list", {})["snapshots"]]
    assert names == [good[0]["diff_id"]]  # the good lower layer stays; nothing half-applied
    _wait_empty_trash(snap.instance.root, 1)


def test_media_type_that_does_not_match_the_blob_is_refused(snap: Snap) -> None:
    layer = store_layer(snap.blobs, BUSYBOX, MT_GZIP)
    layer["media_type"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    with pytest.raises(errors.InvalidArgument, match=r"tar\+zstd.*gzip"):
        snap.call("snapshot.unpack", {"layers": [layer]})
    assert snap.call("snapshot.list", {})["snapshots"] == []


def test_concurrent_unpacks_apply_a_shared_chain_id_once(snap: Snap) -> None:
    top_a = Layer().file("a.txt", "a").raw()
    top_b = Layer().file("b.txt", "b").raw()
    results: dict[str, Any] = {}

    def run(name: str, raws: list[bytes]) -> None:
        with snap.instance.client("snapshot", timeout_s=120) as c:
            results[name] = c.call("snapshot.unpack", {"layers": snap.layers(raws)})

    threads = [
        threading.Thread(target=run, args=("a", [BUSYBOX, top_a])),
        threading.Thread(target=run, args=("b", [BUSYBOX, top_b])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"]["chain_ids"][0] == results["b"]["chain_ids"][0]
    assert results["a"]["unpacked"] + results["b"]["unpacked"] == 3  # the base once, each top once
    log = (snap.instance.logs / "snapshot.log").read_text()
    assert log.count(f"as {results['a']['chain_ids'][0]}") == 1
    snapshots = snap.call("snapshot.list", {})["snapshots"]
    assert sorted(s["name"] for s in snapshots) == sorted({*results["a"]["chain_ids"], *results["b"]["chain_ids"]})


def test_restart_removes_leftover_extractions_and_orphan_directories(snap: Snap) -> None:
    chain = snap.unpack([BUSYBOX])["chain_id"]
    snap.call("snapshot.prepare", {"key": f"extract-deadbeef {chain}x", "parent": chain})
    snap.call("snapshot.prepare", {"key": "container", "parent": chain})
    orphan = os.path.join(snap.instance.root, "snapshot", "snapshots", "999")
    os.makedirs(os.path.join(orphan, "fs"))
    snap.instance.kill("snapshot")
    snap.client.close()
    snap.instance.start("snapshot")
    snap.client = snap.instance.client("snapshot", timeout_s=60)
    names = sorted(s["name"] for s in snap.call("snapshot.list", {})["snapshots"])
    assert names == ["container", chain]
    assert not os.path.exists(orphan)
    _wait_empty_trash(snap.instance.root, 2)


def test_120_layer_chain_mounts(snap: Snap) -> None:
    raws = [BUSYBOX] + [Layer().file(f"layer{i:03d}", str(i)).raw() for i in range(1, 120)]
    reply = snap.unpack(raws)
    mounts = snap.call("snapshot.prepare", {"key": "deep", "parent": reply["chain_id"]})["mounts"]
    lowerdir = next(o for o in mounts[0]["options"] if o.startswith("lowerdir="))
    assert lowerdir.count(":") == 119
    with mounted(mounts, snap.mount_point("deep")) as root:
        assert read(root, "layer001") == "1" and read(root, "layer119") == "119"
        out = subprocess.run(
            ["chroot", root, "/bin/sh", "-c", "ls / | grep -c layer"], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "119"


def test_view_is_read_only_and_calls_work_without_the_events_service(snap: Snap) -> None:
    started = time.monotonic()
    reply = snap.unpack([BUSYBOX, Layer().file("etc/motd", "hi").raw()])
    mounts = snap.call("snapshot.view", {"key": "v", "parent": reply["chain_id"]})["mounts"]
    assert time.monotonic() - started < 20
    with mounted(mounts, snap.mount_point("v")) as root:
        assert read(root, "etc/motd") == "hi"
        with pytest.raises(OSError):
            open(os.path.join(root, "etc/new"), "w").close()
    assert snap.call("snapshot.stat", {"key": "v"})["kind"] == "view"
    outbox = os.path.join(snap.instance.root, "snapshot", "outbox")
    events, acked, _ = read_log(Path(outbox, LOG_NAME).read_bytes())
    assert len(events) - acked >= 5  # 2 prepares + 2 commits + 1 view, waiting for the events service
    desc = describe(os.path.join(snap.instance.root, "snapshot", "snapshots"), content=False, xattrs=False)
    assert desc  # the layers are on disk


def test_c01_symlinks_planted_by_the_layer_never_lead_outside(snap: Snap, tmp_path: Any) -> None:
    host = tmp_path / "HOSTDIR"
    host.mkdir()
    canary = host / "canary"
    canary.write_text("canary")
    layer = (
        Layer()
        .symlink("evil", str(host))
        .file("evil/owned", "pwned")
        .symlink("rel", "../../../../../../../.." + str(host))
        .file("rel/owned2", "pwned")
        .symlink("evil/canary", "/etc/shadow")
        .file("evil/canary", "overwritten?")
    )
    reply = snap.unpack([BUSYBOX, layer.raw()])
    assert canary.read_text() == "canary" and sorted(p.name for p in host.iterdir()) == ["canary"]
    mounts = snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})["mounts"]
    with mounted(mounts, snap.mount_point("c")) as root:
        inside = os.path.join(root, str(host).lstrip("/"))
        assert sorted(os.listdir(inside)) == ["canary", "owned", "owned2"]
        assert read(inside, "canary") == "overwritten?"


@pytest.mark.parametrize("name", ["../../escape1", "a/../../../escape2"])
def test_c01_entry_escaping_the_root_fails_the_layer_naming_it(snap: Snap, name: str) -> None:
    layer = Layer().file("ok", "fine").file(name, "escaped")
    with pytest.raises(errors.InvalidArgument, match=f"entry '{name}' refused: .*escapes the root"):
        snap.unpack([layer.raw()])
    assert snap.call("snapshot.list", {})["snapshots"] == []
    assert not os.path.exists(os.path.join(snap.instance.root, "escape1"))


def test_events_reach_the_events_service_even_if_it_starts_later(snap: Snap) -> None:
    reply = snap.unpack([BUSYBOX])  # the events service is not up yet: events wait in the outbox
    snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})
    snap.call("snapshot.remove", {"key": "c"})
    snap.instance.start("events")
    expected = [
        ("/snapshots/prepare", "extract-"),
        ("/snapshots/commit", reply["chain_id"]),
        ("/snapshots/prepare", "c"),
        ("/snapshots/remove", "c"),
    ]
    deadline = time.monotonic() + 20
    with snap.instance.client("events") as events:
        while True:
            got = list(events.stream("events.replay", {"since": 0, "filters": {"type": ["snapshot"]}}))
            if len(got) >= len(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert [e["topic"] for e in got] == [t for t, _ in expected]
    assert got[0]["event"]["key"].startswith("extract-") and got[0]["event"]["parent"] == ""
    assert got[1]["event"]["name"] == reply["chain_id"] and got[1]["event"]["key"] == got[0]["event"]["key"]
    assert got[2]["event"] == {"key": "c", "parent": reply["chain_id"], "snapshotter": "overlayfs"}
    assert got[3]["event"] == {"key": "c", "snapshotter": "overlayfs"}
    assert all(e["namespace"] == "default" for e in got)


def _many_files_layer(count: int) -> bytes:
    layer = Layer().dir("many")
    for i in range(count):
        layer.file(f"many/f{i:06d}", f"file {i}\n" * 20)
    return layer.raw()


def test_sigkill_during_unpack_leaves_nothing_half_applied(snap: Snap) -> None:
    big = _many_files_layer(3000)
    layers = snap.layers([BUSYBOX, big])
    chain_ids: list[str] = []
    errors_seen: list[BaseException] = []

    def unpack() -> None:
        try:
            with snap.instance.client("snapshot", timeout_s=120) as c:
                chain_ids.extend(c.call("snapshot.unpack", {"layers": layers})["chain_ids"])
        except BaseException as exc:  # the service dies under the call: Unavailable
            errors_seen.append(exc)

    worker = threading.Thread(target=unpack)
    worker.start()
    snapshots_dir = os.path.join(snap.instance.root, "snapshot", "snapshots")
    in_progress = os.path.join(snapshots_dir, "2", "fs", "many")  # 1: the base layer, 2: the extraction
    deadline = time.monotonic() + 60
    while not os.path.exists(in_progress):  # wait until the big layer is being applied
        assert time.monotonic() < deadline and worker.is_alive(), "the big layer never started being applied"
        time.sleep(0.005)
    snap.instance.kill("snapshot")
    worker.join(60)
    assert errors_seen and isinstance(errors_seen[0], errors.Unavailable)
    snap.client.close()
    snap.instance.start("snapshot")
    snap.client = snap.instance.client("snapshot", timeout_s=120)
    names = [s["name"] for s in snap.call("snapshot.list", {})["snapshots"]]
    assert len(names) == 1 and not names[0].startswith("extract-")  # only the committed base layer
    _wait_empty_trash(snap.instance.root, 1)
    reply = snap.call("snapshot.unpack", {"layers": layers})
    assert reply["unpacked"] == 1
    mounts = snap.call("snapshot.prepare", {"key": "c", "parent": reply["chain_id"]})["mounts"]
    with mounted(mounts, snap.mount_point("c")) as root:
        assert len(os.listdir(os.path.join(root, "many"))) == 3000
