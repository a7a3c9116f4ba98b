"""Snapshot service API (containerd's Snapshots + Diff/Apply + unpack, see
shared/reference/containerd-model.md sections 4-6).

Keys name active and view snapshots, names committed ones; both share one key
space per namespace. Committed image layers are named by their chain ID.

Methods (service ``snapshot``); every method takes the request's namespace:

- ``snapshot.prepare`` ``PrepareRequest`` -> ``MountsReply``: new active (writable)
  snapshot on committed ``parent`` ("" = empty). AlreadyExists if ``key`` is taken,
  NotFound if ``parent`` is not a committed snapshot.
- ``snapshot.view`` ``PrepareRequest`` -> ``MountsReply``: read-only snapshot on ``parent``.
- ``snapshot.mounts`` ``KeyRequest`` -> ``MountsReply``: mounts of an active/view snapshot.
- ``snapshot.commit`` ``CommitRequest`` -> ``Info``: active ``key`` becomes committed ``name``.
- ``snapshot.remove`` ``KeyRequest`` -> ``{}``: FailedPrecondition while children exist.
- ``snapshot.stat`` ``KeyRequest`` -> ``Info``; ``snapshot.list`` ``ListRequest`` ->
  ``ListReply`` ``{snapshots: [Info]}``; ``snapshot.usage`` ``KeyRequest`` -> ``Usage``.
- ``snapshot.update`` ``UpdateRequest`` -> ``Info``: change labels (the only mutable field).
- ``snapshot.diff`` ``DiffRequest`` -> ``DiffReply``: the changes of snapshot ``key`` against
  its parents, written as a layer blob (``.wh.`` whiteouts, opaque markers) to ``path``
  (for ``dockyard commit``).
- ``snapshot.export`` ``ExportRequest`` -> ``DiffReply``: the whole merged tree of ``key``
  as one uncompressed tar at ``path`` (for ``dockyard export``).
- ``snapshot.cleanup`` -> ``{removed: int}``: delete snapshot directories no metadata refers to.
- ``snapshot.diff_sizes`` ``DiffSizesRequest`` -> ``DiffSizesReply``: the diff size (Docker's
  DiffSize: the bytes of the files a layer unpacked to) of each committed snapshot named; for
  image sizes (``docker images``). Never waits for an unpack.
- ``snapshot.unpack`` ``UnpackRequest`` -> ``UnpackReply``: apply an image's layers in
  order into committed snapshots named by chain ID (skipping those already there),
  verifying each layer's diff ID; the same chain ID is never unpacked twice at once.
  A big image takes a while: callers give the call a long deadline (minutes; heartbeats
  keep it alive meanwhile).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from common.api.base import Reply, Request


class Kind(StrEnum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


class Mount(Reply):
    """One mount, as for mount(2): ``mount -t <type> <source> <target> -o <options>``."""

    type: str = Field(description="required; 'overlay' or 'bind'")
    source: str = Field(description="required; device/path")
    target: str = Field(default="", description="optional; sub-path under the rootfs ('' = the rootfs itself)")
    options: list[str] = Field(default_factory=list)


class PrepareRequest(Request):
    key: str = Field(min_length=1, max_length=512, description="required; the new snapshot's key")
    parent: str = Field(default="", description="committed parent name, '' for an empty snapshot")
    labels: dict[str, str] = Field(default_factory=dict)


class KeyRequest(Request):
    key: str = Field(min_length=1, max_length=512)


class CommitRequest(Request):
    name: str = Field(min_length=1, max_length=512, description="required; committed name (a chain ID for layers)")
    key: str = Field(min_length=1, max_length=512, description="required; the active snapshot to commit")
    labels: dict[str, str] = Field(default_factory=dict)


class MountsReply(Reply):
    mounts: list[Mount]


class Info(Reply):
    """A snapshot's metadata: name/kind/parent immutable, labels mutable."""

    name: str
    parent: str = ""
    kind: Kind
    created_at: dt.datetime
    updated_at: dt.datetime
    labels: dict[str, str] = Field(default_factory=dict)


class Usage(Reply):
    size: int = Field(description="bytes used by this snapshot alone (not its parents)")
    inodes: int
    content_size: int | None = Field(
        default=None,
        description="bytes of its non-directory entries (st_size, each inode once: moby's directory.Size, "
        "Docker's SizeRw); measured for active and view snapshots only",
    )


class DiffSizesRequest(Request):
    keys: list[str] = Field(
        max_length=100_000, description="required; names of committed snapshots (chain IDs); others are left out"
    )


class DiffSizesReply(Reply):
    diff_sizes: dict[str, int] = Field(
        description="{name: bytes} for each requested name that is a committed snapshot: its changes' "
        "bytes as Docker counts a layer's DiffSize (overlayfs: moby's directory.Size of the layer's own "
        "directory, measured at commit; native: the unpacked tar members' sizes, as moby's vfs). A name "
        "that is absent, not committed (an unpack still running) or cannot be measured is left out"
    )


class LayerToApply(Request):
    digest: str = Field(description="required; digest of the (compressed) layer blob")
    media_type: str = Field(description="required; OCI or Docker layer media type")
    size: int = Field(ge=0, description="required; blob size in bytes")
    diff_id: str = Field(description="required; sha256 of the uncompressed tar, from the image config")
    path: str = Field(description="required; path of the verified blob in the content store (read-only)")


class UnpackRequest(Request):
    layers: list[LayerToApply] = Field(min_length=0, description="lowest layer first")
    labels: dict[str, str] = Field(default_factory=dict, description="labels for newly committed snapshots")


class UnpackReply(Reply):
    chain_ids: list[str] = Field(description="chain ID of each layer, lowest first")
    chain_id: str = Field(description="chain ID of the top layer ('' for an image without layers)")
    unpacked: int = Field(description="how many layers had to be applied now")


class ListRequest(Request):
    """Filters as containerd's ``Walk``: each string is a conjunction of comma-separated
    terms ``field==value``, ``field!=value``, ``field~=regexp`` or ``field`` (present);
    the strings are OR-ed; no string = every snapshot. Fields: ``name``, ``parent``,
    ``kind``, ``labels.<key>`` (or ``labels."<key>"``)."""

    filters: list[str] = Field(default_factory=list)


class ListReply(Reply):
    snapshots: list[Info]


class UpdateRequest(Request):
    key: str = Field(min_length=1, max_length=512, description="required; the snapshot to change")
    labels: dict[str, str] = Field(default_factory=dict, description="labels to set ('' deletes the label)")
    replace: bool = Field(default=False, description="replace all labels instead of merging")


class DiffRequest(Request):
    key: str = Field(min_length=1, max_length=512, description="required; snapshot whose changes are wanted")
    path: str = Field(min_length=1, description="required; absolute path where the blob is written (atomically)")
    media_type: str = Field(
        default="application/vnd.oci.image.layer.v1.tar+gzip",
        description="layer media type, which picks the compression (OCI or Docker tar, tar+gzip, tar+zstd)",
    )


class ExportRequest(Request):
    key: str = Field(min_length=1, max_length=512, description="required; snapshot to flatten")
    path: str = Field(min_length=1, description="required; absolute path of the tar to write (atomically)")


class DiffReply(Reply):
    """A written blob: a descriptor (``media_type``, ``digest``, ``size``) plus ``diff_id``."""

    media_type: str
    digest: str = Field(description="sha256 of the blob as written")
    size: int = Field(description="bytes of the blob as written")
    diff_id: str = Field(description="sha256 of the uncompressed tar (the image config's rootfs.diff_ids)")
    uncompressed_size: int = Field(description="bytes of the uncompressed tar")
