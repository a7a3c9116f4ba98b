"""Image service API (containerd's Content + Images + Leases + pull/push; Docker's image commands).

Cross-service contract used by the execution service and the CLI:

- ``image.resolve`` ``ResolveRequest`` -> ``ResolvedImage``: find a local image by
  reference (normalised like Docker: ``busybox`` -> ``docker.io/library/busybox:latest``),
  by image id (config digest, or a unique hex prefix of it) or by ``name@digest``;
  pick the manifest for the host platform; with ``unpack=True`` make sure its layers
  are unpacked into committed snapshots. NotFound (``image 'x' not found``) when absent:
  the caller decides whether to pull.

Methods of the ``image`` service (every one takes the request's namespace):

- ``image.pull`` ``PullRequest`` -> stream of ``Progress`` frames; the last one has
  ``status == "done"`` and ``result`` set (``PullResult``). Errors end the stream.
  ``all_tags=True`` (``docker pull -a``) pulls every tag the registry lists for a
  repository named without tag or digest, one after the other.
- ``image.distribution`` ``DistributionRequest`` -> ``DistributionReply``: what the
  registry holds for a reference (descriptor and platforms), without pulling it.
- ``image.push`` ``PushRequest`` -> stream of ``Progress``; the last has ``result`` (``PushResult``).
- ``image.import`` ``ImportRequest`` + client stream of ``bytes`` (a rootfs tar, optionally
  gzip/zstd compressed) until EOF -> stream of ``Progress``; last ``result`` = ``LoadedImage``.
- ``image.load`` ``LoadRequest`` + client stream of ``bytes`` (docker-archive or OCI
  layout tar) -> stream of ``Progress``; last ``result`` = ``LoadReply``.
- ``image.save`` ``SaveRequest`` -> stream of ``bytes`` chunks of the archive.
- ``image.list`` ``ListRequest`` -> ``{images: [ImageSummary]}``.
- ``image.get`` ``GetRequest`` -> ``ImageInspect`` (Docker's ``image inspect`` shape plus the record).
- ``image.history`` ``GetRequest`` -> ``{history: [HistoryEntry]}``.
- ``image.tag`` ``TagRequest`` -> ``ImageSummary`` of the new name.
- ``image.remove`` ``RemoveRequest`` -> ``RemoveReply`` (Docker ``rmi``: untag vs delete).
- ``image.prune`` ``PruneRequest`` -> ``PruneReply`` (dangling, or all unused, images; then GC).
- ``image.gc`` ``{}`` -> ``GcReply``: release expired and orphaned leases (their process is
  gone), then remove blobs, snapshots and idle ingests (24 h) nothing references.
- ``image.login`` ``LoginRequest`` -> ``{registry, status}`` (checked against the registry, then stored
  in the service's Docker-format config.json); ``image.logout`` ``LogoutRequest`` -> ``{registry}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field

from common.api.base import Reply, Request


class Descriptor(Reply):
    """OCI content descriptor (image-spec descriptor.md)."""

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None
    platform: dict[str, Any] | None = None

    model_config = {"populate_by_name": True, "extra": "ignore"}


class ResolveRequest(Request):
    ref: str = Field(min_length=1, max_length=1024, description="required; reference, image id or id prefix")
    unpack: bool = Field(default=True, description="make sure the layers are unpacked into snapshots")
    platform: str | None = Field(default=None, description="os/arch[/variant]; default: the host's")


class LayerRef(Reply):
    digest: str
    media_type: str
    size: int = Field(description="bytes of the layer blob (compressed)")
    diff_id: str
    chain_id: str = Field(default="", description="chain ID of the layer (its snapshot's name)")
    diff_size: int | None = Field(
        default=None,
        description="bytes of the files the layer unpacked to (Docker's DiffSize); set by image.get for an "
        "unpacked layer, None otherwise (not unpacked, snapshot service unavailable, image.resolve)",
    )


class ResolvedImage(Reply):
    name: str = Field(description="the image record's name, e.g. docker.io/library/busybox:latest ('' if found by id)")
    id: str = Field(description="image id = config digest (Docker's convention)")
    target: Descriptor = Field(description="what the image record points at (index or manifest)")
    manifest_digest: str = Field(description="the platform manifest chosen")
    config: dict[str, Any] = Field(description="the image config JSON as stored (OCI image-spec config.md)")
    layers: list[LayerRef]
    chain_id: str = Field(description="chain ID of the top layer: the parent for a container's snapshot")
    size: int = Field(description="sum of the layer blob sizes in bytes")


# -- pull / push / import / load / save ----------------------------------------------------------
class PullRequest(Request):
    ref: str = Field(min_length=1, max_length=1024, description="required; reference to pull (tag or digest)")
    platform: str | None = Field(default=None, description="os/arch[/variant]; default: the host's")
    unpack: bool = Field(default=True, description="unpack the layers into snapshots before finishing")
    auth: dict[str, str] | None = Field(
        default=None,
        description="optional credentials for this pull only: {username, password} or {identitytoken} "
        "(Docker's X-Registry-Auth); default: the config.json entry of the registry",
    )
    all_tags: bool = Field(
        default=False,
        description="pull every tag of the repository (the registry's tag list, in its order); "
        "``ref`` must then name no tag or digest",
    )


class PullResult(Reply):
    name: str = Field(description="record name, e.g. docker.io/library/busybox:latest")
    digest: str = Field(description="digest of what the reference resolved to (index or manifest)")
    id: str = Field(description="image id (config digest of the chosen platform)")
    manifest_digest: str
    status: str = Field(description="'Downloaded newer image for x' or 'Image is up to date for x'")
    downloaded: int = Field(default=0, description="bytes downloaded by this pull")
    tags: list[str] = Field(
        default_factory=list,
        description="all-tags pulls: the record names pulled, in order ('name' is then the repository, "
        "'digest'/'id'/'manifest_digest' those of the last tag)",
    )


class DistributionRequest(Request):
    ref: str = Field(min_length=1, max_length=1024, description="required; reference (no tag means latest)")
    auth: dict[str, str] | None = Field(default=None, description="optional credentials, as PullRequest.auth")


class DistributionReply(Reply):
    """Docker's ``DistributionInspect``: the reference's root descriptor at the registry
    (``media_type``, ``digest``, ``size`` of the exact manifest or index bytes) and its
    platforms (OCI platform JSON: ``architecture``, ``os``, optional ``variant``,
    ``os.version``, ``os.features``): each index entry's, or the image config's."""

    descriptor: Descriptor
    platforms: list[dict[str, Any]] = Field(default_factory=list)


class Progress(Reply):
    """One progress frame. Layer frames carry ``id`` (12 hex of the layer digest) and
    Docker's status words: ``Pulling fs layer``, ``Waiting``, ``Downloading``, ``Verifying Checksum``,
    ``Download complete``, ``Extracting``, ``Pull complete``, ``Already exists``, ``Pushing``,
    ``Pushed``, ``Layer already exists``, ``Loading layer``. Frames without ``id`` are
    messages for the whole operation. The last frame has ``status='done'`` and ``result``."""

    status: str
    id: str = ""
    digest: str = ""
    current: int = 0
    total: int = 0
    message: str = ""
    result: dict[str, Any] | None = None


class PushRequest(Request):
    ref: str = Field(min_length=1, max_length=1024, description="required; local image name to push")
    auth: dict[str, str] | None = None


class PushResult(Reply):
    name: str
    tag: str
    digest: str = Field(description="digest of the pushed manifest (or index)")
    size: int


class ImportRequest(Request):
    ref: str = Field(default="", max_length=1024, description="optional; name for the image ('' = dangling)")
    changes: list[str] = Field(default_factory=list, description="Dockerfile instructions: CMD, ENTRYPOINT, ENV, ...")
    message: str = Field(default="", description="commit message recorded in the history")
    platform: str | None = Field(default=None, description="os/arch[/variant] recorded in the config; default host")


class CommitRequest(Request):
    """``image.commit``: a container's snapshot as a new layer on its image (``docker commit``)."""

    snapshot_key: str = Field(min_length=1, max_length=512, description="required; the container's snapshot")
    parent: str = Field(min_length=1, description="required; id of the container's image")
    ref: str = Field(default="", max_length=1024, description="optional; name of the new image ('' = dangling)")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="the new image's config section (OCI config.md: Cmd, Entrypoint, Env, WorkingDir, User, "
        "Labels, ExposedPorts, Volumes, StopSignal); empty = the parent's",
    )
    changes: list[str] = Field(default_factory=list, description="Dockerfile instructions applied on top")
    comment: str = Field(default="", max_length=4096)
    author: str = Field(default="", max_length=1024)
    container_id: str = Field(default="", description="recorded as the config's 'container'")
    created_by: str = Field(default="", max_length=4096, description="history entry, e.g. the container's command")


class CommitReply(Reply):
    id: str = Field(description="the new image's id (config digest)")
    name: str = Field(description="its name ('' when dangling)")
    digest: str = Field(description="manifest digest")


class LoadRequest(Request):
    quiet: bool = False


class LoadedImage(Reply):
    name: str = Field(description="record name ('' when the archive named none)")
    id: str = Field(description="image id")
    digest: str = Field(description="target digest (manifest or index)")


class LoadReply(Reply):
    images: list[LoadedImage]


class SaveRequest(Request):
    refs: list[str] = Field(min_length=1, description="required; names or ids of images to save")
    format: str = Field(
        default="docker",
        pattern="^(docker|oci)$",
        description="'docker': docker-archive that is also an OCI layout; 'oci': OCI layout only",
    )
    platform: str | None = None


# -- lifecycle ----------------------------------------------------------------------------------
class ListRequest(Request):
    filters: dict[str, list[str]] = Field(
        default_factory=dict,
        description="reference=<pattern>, dangling=true|false, label=<k>[=<v>], before/since=<ref>",
    )
    all: bool = False


class ImageSummary(Reply):
    name: str = Field(description="record name ('<none>@sha256:..' for a dangling image)")
    id: str
    target: Descriptor
    repo_tags: list[str] = Field(default_factory=list, description="familiar name:tag, e.g. busybox:latest")
    repo_digests: list[str] = Field(default_factory=list, description="familiar name@digest")
    labels: dict[str, str] = Field(default_factory=dict, description="record labels")
    config_labels: dict[str, str] = Field(default_factory=dict, description="Config.Labels of the image config")
    created: dt.datetime | None = Field(default=None, description="the image config's 'created'")
    created_at: dt.datetime
    updated_at: dt.datetime
    size: int = Field(
        description="Docker's image Size: the sum of the layers' diff sizes (bytes of the unpacked files) once "
        "every layer is unpacked; until then (or when the snapshot service cannot say) the sum of the layer "
        "blob sizes (compressed)"
    )
    dangling: bool = False


class GetRequest(Request):
    ref: str = Field(min_length=1, max_length=1024)
    platform: str | None = None


class HistoryEntry(Reply):
    id: str = Field(description="image id on the top entry, '<missing>' below (Docker's convention)")
    created: dt.datetime | None = None
    created_by: str = ""
    size: int = Field(
        default=0,
        description="bytes of the layer this step made: its diff size, or its blob size when the image is "
        "not wholly unpacked (as ImageSummary.size)",
    )
    comment: str = ""
    empty_layer: bool = False
    tags: list[str] = Field(default_factory=list)


class ImageInspect(Reply):
    """Docker's ImageInspect fields (snake case) plus our record."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    parent: str = ""
    comment: str = ""
    created: str = ""
    author: str = ""
    architecture: str = ""
    variant: str = ""
    os: str = ""
    size: int = Field(description="as ImageSummary.size")
    config: dict[str, Any] = Field(description="the config section of the image config")
    rootfs: dict[str, Any] = Field(description="{type: layers, layers: [diff IDs]}")
    layers: list[LayerRef]
    chain_id: str
    manifest_digest: str
    target: Descriptor
    name: str
    names: list[str] = Field(description="every record name pointing at this image")
    labels: dict[str, str] = Field(default_factory=dict)
    image_config: dict[str, Any] = Field(description="the whole image config JSON")
    unpacked: bool | None = Field(default=None, description="top layer unpacked; None when unknown")
    metadata: dict[str, Any] = Field(default_factory=dict, description="{last_tag_time}")


class TagRequest(Request):
    source: str = Field(min_length=1, max_length=1024, description="required; name or id of an existing image")
    target: str = Field(min_length=1, max_length=1024, description="required; new reference (tag added if absent)")


class RemoveRequest(Request):
    ref: str = Field(min_length=1, max_length=1024)
    force: bool = False
    prune: bool = Field(
        default=True, description="remove unreferenced content and snapshots afterwards (noprune=false)"
    )


class RemoveReply(Reply):
    untagged: list[str] = Field(default_factory=list, description="familiar names that were untagged")
    deleted: list[str] = Field(default_factory=list, description="image ids (and digests) that were deleted")


class PruneRequest(Request):
    all: bool = Field(default=False, description="remove every image no container uses, not only dangling ones")
    filters: dict[str, list[str]] = Field(default_factory=dict, description="label=..., until=...")


class PruneReply(Reply):
    deleted: list[str] = Field(default_factory=list)
    untagged: list[str] = Field(default_factory=list)
    space_reclaimed: int = 0


class GcReply(Reply):
    blobs_removed: int = 0
    bytes_removed: int = 0
    snapshots_removed: int = 0
    ingests_removed: int = 0
    leases_released: int = Field(
        default=0, description="expired leases and leases of operations whose process no longer exists"
    )


class LoginRequest(Request):
    registry: str = Field(default="docker.io", description="registry host[:port]; docker.io by default")
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)


class LogoutRequest(Request):
    registry: str = Field(default="docker.io")
