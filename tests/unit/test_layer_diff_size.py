"""A layer's diff size (Docker's DiffSize) and an image's size: the rules, on plain directories.

moby's definitions, which these tests pin down:

- overlay2 (``daemon/graphdriver/overlay2``, ``ApplyDiff``/``DiffSize``): ``pkg/directory.Size``
  of the layer's ``diff`` directory: every non-directory by its ``st_size`` (regular files,
  symlinks: the length of their target; whiteouts, 0/0 devices, nothing), each inode once;
- the naive diff driver (``vfs``): at unpack, ``archive.UnpackLayer``'s count, the sum of the
  tar members' sizes; afterwards ``archive.ChangesSize``: the added and modified
  non-directories against the parent, hard links once;
- an image's Size: ``layer.Size()`` of its top layer, the sum of the DiffSize of its chain.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from services.image import listing
from services.image.images import ImageView
from services.image.oci import Descriptor, Manifest, chain_ids, parse_config
from services.snapshot import apply, fsutil
from services.snapshot import diff as differ
from services.snapshot.snapshotters import ApplyTarget
from tests.snapshot_util import Layer, sha256

MTIME_NS = 1_704_067_200 * 10**9


def _file(path: Path, size: int, *, mtime_ns: int = MTIME_NS) -> None:
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_content_size_counts_hard_links_once_symlinks_by_target_and_directories_not(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    _file(tmp_path / "d" / "big", 3000)
    os.link(tmp_path / "d" / "big", tmp_path / "d" / "e" / "same-inode")  # counted once
    os.link(tmp_path / "d" / "big", tmp_path / "again")
    (tmp_path / "empty").write_bytes(b"")
    target = "d/big-is-where-the-link-points"
    os.symlink(target, tmp_path / "link")  # lstat size: the target's length; never followed
    os.symlink("/etc/passwd", tmp_path / "outside")
    expected = 3000 + len(target) + len("/etc/passwd")
    assert fsutil.content_size(str(tmp_path)) == expected
    # the walk a commit makes anyway gives the same figure
    assert fsutil.disk_usage(str(tmp_path)).content == expected
    assert fsutil.content_size(str(tmp_path / "gone")) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a whiteout is a 0/0 character device: needs root to make")
def test_whiteouts_and_opaque_markers_weigh_nothing(tmp_path: Path) -> None:
    _file(tmp_path / "kept", 10)
    os.mknod(tmp_path / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlayfs whiteout
    (tmp_path / "opaque").mkdir()
    os.setxattr(tmp_path / "opaque", "trusted.overlay.opaque", b"y")
    assert fsutil.content_size(str(tmp_path)) == 10
    source = ApplyTarget(str(tmp_path), [], overlay=True)
    assert differ.diff_size(source) == 10


def test_overlay_diff_size_is_the_upper_directory_alone(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _file(lower / "base", 1_000_000)
    _file(upper / "added", 1234)
    source = ApplyTarget(str(upper), [str(lower)], overlay=True)
    assert differ.diff_size(source) == 1234
    assert differ.diff_size(source, walked=99) == 99  # the caller's walk of the upper directory


def test_native_diff_size_is_the_change_set_against_the_parent_copy(tmp_path: Path) -> None:
    """A native snapshot holds its parent's files too: only what changed counts (ChangesSize)."""
    parent, child = tmp_path / "parent", tmp_path / "child"
    for d in (parent, child):
        (d / "dir").mkdir(parents=True)
        _file(d / "same", 500)
        _file(d / "dir" / "same-too", 400)
    _file(parent / "changed", 300)
    _file(parent / "deleted", 200)
    _file(child / "changed", 700, mtime_ns=MTIME_NS + 1)
    _file(child / "dir" / "added", 50)
    os.link(child / "dir" / "added", child / "added-link")  # one inode: counted once
    (child / "newdir").mkdir()
    os.utime(parent / "dir", ns=(MTIME_NS, MTIME_NS))
    source = ApplyTarget(str(child), [str(parent)], overlay=False)
    assert differ.diff_size(source) == 700 + 50
    # a first layer (no parent) is its whole tree
    assert differ.diff_size(ApplyTarget(str(parent), [], overlay=False)) == 500 + 400 + 300 + 200


def test_applier_counts_the_tar_members_sizes_as_unpack_layer(tmp_path: Path) -> None:
    """What a native snapshot records at unpack (moby's vfs: ``UnpackLayer``'s ``size += hdr.Size``):
    regular files' data; hard links, symlinks, directories and whiteouts weigh nothing."""
    uid, gid = os.getuid(), os.getgid()
    layer = Layer()
    layer.dir("etc", uid=uid, gid=gid)
    layer.file("etc/zeros", b"\0" * 3_000_000, uid=uid, gid=gid)
    layer.hardlink("etc/zeros-again", "etc/zeros", uid=uid, gid=gid)
    layer.symlink("etc/link", "zeros", uid=uid, gid=gid)
    layer.file("etc/small", b"abc", uid=uid, gid=gid)
    layer.whiteout("etc/nothing-below")
    target = tmp_path / "fs"
    target.mkdir()
    applied = apply.apply_stream(io.BytesIO(layer.raw()), str(target), [], overlay=False, sync=False)
    assert applied.content_size == 3_000_003
    assert applied.entries == 6
    # on this first layer the walk overlay2 makes agrees, but for the symlink's target length
    assert fsutil.content_size(str(target)) == 3_000_003 + len("zeros")


# -- an image's size ---------------------------------------------------------------------------
def _view(blob_sizes: list[int], history: list[dict[str, object]] | None = None) -> ImageView:
    diff_ids = [sha256(f"layer {i}".encode()) for i in range(len(blob_sizes))]
    layers = [
        Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", sha256(f"blob {i}".encode()), size)
        for i, size in enumerate(blob_sizes)
    ]
    raw: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if history is not None:
        raw["history"] = history
    config_bytes = json.dumps(raw).encode()
    config_desc = Descriptor("application/vnd.oci.image.config.v1+json", sha256(config_bytes), len(config_bytes))
    manifest = Manifest("application/vnd.oci.image.manifest.v1+json", config_desc, layers)
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", sha256(b"manifest"), 500)
    return ImageView(
        target, target, manifest, config_desc, config_bytes, parse_config(config_bytes), chain_ids(diff_ids)
    )


def test_image_size_is_the_sum_of_the_diff_sizes_once_every_layer_is_unpacked() -> None:
    view = _view([1000, 2000])
    lower, top = view.chain_ids
    assert listing.image_size(view, {lower: 3_000_000, top: 5}) == 3_000_005
    assert listing.image_size(view, {lower: 3_000_000, top: 5, "sha256:other": 7}) == 3_000_005
    # a layer not unpacked (yet), or the snapshot service unable to say: the compressed size
    assert listing.image_size(view, {lower: 3_000_000}) == 3000
    assert listing.image_size(view, None) == 3000
    assert listing.image_size(_view([]), {}) == 0


def test_history_sizes_add_up_to_the_image_size() -> None:
    steps: list[dict[str, object]] = [
        {"created_by": "ADD rootfs"},
        {"created_by": "ENV X=1", "empty_layer": True},
        {"created_by": "RUN make"},
    ]
    view = _view([1000, 2000], steps)
    lower, top = view.chain_ids
    sizes = {lower: 3_000_000, top: 5}
    entries = listing.history(view, ["x:1"], sizes)
    assert [e.size for e in entries] == [5, 0, 3_000_000]
    assert sum(e.size for e in entries) == listing.image_size(view, sizes)
    assert [e.size for e in listing.history(view, [], {lower: 3_000_000})] == [2000, 0, 1000]
