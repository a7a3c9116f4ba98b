"""Image service API (containerd's Content + Images + pull; Docker's image commands).

Cross-service contract used by the execution service and the CLI:

- ``image.resolve`` ``ResolveRequest`` -> ``ResolvedImage``: find a local image by
  reference (normalised like Docker: ``busybox`` -> ``docker.io/library/busybox:latest``),
  by image id (config digest, or a unique hex prefix of it) or by ``name@digest``;
  pick the manifest for the host platform; with ``unpack=True`` make sure its layers
  are unpacked into committed snapshots. NotFound (``image 'x' not found``) when absent:
  the caller decides whether to pull.

The rest of the service's methods are documented in ``services/image/service.py``.
"""

from __future__ import annotations

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
    size: int
    diff_id: str


class ResolvedImage(Reply):
    name: str = Field(description="the image record's name, e.g. docker.io/library/busybox:latest ('' if found by id)")
    id: str = Field(description="image id = config digest (Docker's convention)")
    target: Descriptor = Field(description="what the image record points at (index or manifest)")
    manifest_digest: str = Field(description="the platform manifest chosen")
    config: dict[str, Any] = Field(description="the image config JSON as stored (OCI image-spec config.md)")
    layers: list[LayerRef]
    chain_id: str = Field(description="chain ID of the top layer: the parent for a container's snapshot")
    size: int = Field(description="sum of the layer blob sizes in bytes")
