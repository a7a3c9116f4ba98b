"""C10: gzip, zstd and uncompressed layers; the media type drives decompression and is
checked against the blob's magic bytes; the diff ID is verified over the uncompressed
tar; a mismatch of any kind fails cleanly with nothing committed.
"""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard

from common import errors
from deploy import mkimage
from tests.snapshot_util import MT_GZIP, MT_TAR, MT_ZSTD, Direct, Layer, describe, mounted, sha256, store_layer

BUSYBOX = mkimage.busybox_rootfs_tar()
CONTENT = (
    Layer()
    .dir("etc")
    .file("etc/app.conf", "conf\n" * 100)
    .symlink("etc/link", "app.conf")
    .file("big", os.urandom(1 << 18))
    .raw()
)


def _tree(direct: Direct, layer: dict[str, object], key: str) -> dict[str, object]:
    chain = direct.call("snapshot.unpack", {"layers": [layer]})["chain_id"]
    mounts = direct.call("snapshot.prepare", {"key": key, "parent": chain})["mounts"]
    with mounted(mounts, direct.mount_point(key)) as root:
        return describe(root)


@pytest.mark.parametrize(
    "media_type",
    [
        MT_TAR,
        MT_GZIP,
        MT_ZSTD,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ],
)
def test_every_compression_gives_the_same_tree_and_diff_id(direct: Direct, media_type: str) -> None:
    reference = _tree(direct, store_layer(direct.blobs, CONTENT, MT_TAR), "ref")
    layer = store_layer(direct.blobs, CONTENT, media_type)
    if media_type != MT_TAR:
        # the same diff ID: this is the same chain ID, so use a fresh namespace
        direct.namespace = "other"
    assert _tree(direct, layer, "c") == reference
    assert direct.call("snapshot.stat", {"key": layer["diff_id"]})["labels"][
        "containerd.io/snapshot/diff-id"
    ] == sha256(CONTENT)


@pytest.mark.parametrize(
    ("declared", "blob_kind", "message"),
    [
        (MT_GZIP, "zstd", "does not match its content, which is zstd-compressed"),
        (MT_ZSTD, "gzip", "does not match its content, which is gzip-compressed"),
        (MT_TAR, "gzip", "does not match its content, which is gzip-compressed"),
        (MT_GZIP, "tar", "does not match its content, which is an uncompressed tar"),
        ("application/vnd.example.layer.v1.tar+lz4", "tar", "unsupported layer media type"),
    ],
)
def test_media_type_mismatch_is_a_clean_error(direct: Direct, declared: str, blob_kind: str, message: str) -> None:
    blob = {"zstd": zstandard.ZstdCompressor().compress(CONTENT), "gzip": gzip.compress(CONTENT), "tar": CONTENT}[
        blob_kind
    ]
    layer = store_layer(direct.blobs, CONTENT, declared, blob=blob)
    with pytest.raises(errors.InvalidArgument, match=message) as exc:
        direct.call("snapshot.unpack", {"layers": [layer]})
    assert declared in str(exc.value)
    assert direct.call("snapshot.list")["snapshots"] == []


def test_wrong_diff_id_fails_and_leaves_no_snapshot(direct: Direct) -> None:
    base = store_layer(direct.blobs, BUSYBOX)
    wrong = store_layer(direct.blobs, CONTENT, diff_id=sha256(b"something else"))
    with pytest.raises(errors.InvalidArgument, match="wrong diff ID") as exc:
        direct.call("snapshot.unpack", {"layers": [base, wrong]})
    assert wrong["digest"] in str(exc.value) and sha256(CONTENT) in str(exc.value)
    assert [s["name"] for s in direct.call("snapshot.list")["snapshots"]] == [base["diff_id"]]
    assert len(direct.snapshot_dirs()) == 1


def test_concatenated_gzip_members_and_trailing_zero_blocks(direct: Direct) -> None:
    raw = CONTENT + bytes(10240)  # what GNU tar's record padding looks like
    half = len(raw) // 2
    blob = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    layer = store_layer(direct.blobs, raw, MT_GZIP, blob=blob)
    reference = _tree(direct, store_layer(direct.blobs, CONTENT, MT_TAR), "ref")
    direct.namespace = "other"
    assert _tree(direct, layer, "c") == reference


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "data-after-one-end-block"])
def test_damaged_blobs_fail_cleanly(direct: Direct, damage: str) -> None:
    blob = gzip.compress(CONTENT)
    raw = CONTENT
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "corrupt":
        blob = blob[:100] + bytes(200) + blob[300:]
    else:
        end = len(Layer().file("a", "a").raw().rstrip(b"\0"))
        raw = Layer().file("a", "a").raw()[: -(-end // 512) * 512] + bytes(512) + b"x" * 512
        blob = gzip.compress(raw)
    layer = store_layer(direct.blobs, raw, MT_GZIP, blob=blob)
    with pytest.raises(errors.InvalidArgument, match=r"truncated|corrupt|after an end-of-archive block"):
        direct.call("snapshot.unpack", {"layers": [layer]})
    assert direct.call("snapshot.list")["snapshots"] == []
    assert direct.snapshot_dirs() == []


def test_data_after_the_end_of_archive_is_ignored_but_hashed(direct: Direct) -> None:
    raw = CONTENT + b"trailing junk a tool appended"
    layer = store_layer(direct.blobs, raw, MT_GZIP)
    reference = _tree(direct, store_layer(direct.blobs, CONTENT, MT_TAR), "ref")
    direct.namespace = "other"
    assert _tree(direct, layer, "c") == reference
    assert direct.call("snapshot.stat", {"key": sha256(raw)})["kind"] == "committed"


def test_a_blob_of_the_wrong_size_is_refused(direct: Direct) -> None:
    layer = store_layer(direct.blobs, CONTENT)
    layer["size"] += 1
    with pytest.raises(errors.InvalidArgument, match="descriptor says"):
        direct.call("snapshot.unpack", {"layers": [layer]})
