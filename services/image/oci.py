"""OCI and Docker image types: media types, descriptors, manifests, indexes, configs, chain IDs.

Follows OCI image-spec v1.1 (descriptor.md, manifest.md, image-index.md, config.md) and
Docker's image manifest v2 schema 2 (manifest lists included). ``parse_document`` turns
the exact bytes of a manifest or index into a typed object, refusing what we must not
guess about: schema 1 manifests, a document that has both ``manifests`` and ``layers``,
a ``mediaType`` field that contradicts the one the registry announced, non-sha256 digests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidArgument, Unimplemented

# -- media types -------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)

LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: "none",
    OCI_LAYER_ND_GZIP: "gzip",
    OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
}
"""Layer media type -> compression ("none", "gzip", "zstd")."""

FOREIGN_LAYER_TYPES = (OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_FOREIGN_LAYER_GZIP)

ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
"""The Accept header for manifest requests: every type we can use, and no schema 1."""

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Largest manifest/index/config document we read (bytes)."""

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# -- annotations -------------------------------------------------------------------------------
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def check_digest(value: object, where: str) -> str:
    """Return ``value`` if it is ``sha256:<64 hex>``; InvalidArgument naming ``where`` otherwise."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        if isinstance(value, str) and ":" in value and not value.startswith("sha256:"):
            raise Unimplemented(f"{where}: unsupported digest algorithm in {value!r} (only sha256)")
        raise InvalidArgument(f"{where}: invalid digest {value!r}")
    return value


# -- descriptors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Platform:
    """OCI platform (image-index.md): os, architecture, optional variant / os.version / features."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return out + (f"/{self.variant}" if self.variant else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Platform | None:
        if not isinstance(obj, dict):
            return None
        feats = obj.get("os.features") or ()
        return cls(
            os=str(obj.get("os") or ""),
            architecture=str(obj.get("architecture") or ""),
            variant=str(obj.get("variant") or ""),
            os_version=str(obj.get("os.version") or ""),
            os_features=tuple(str(f) for f in feats) if isinstance(feats, list) else (),
        )


@dataclass(frozen=True)
class Descriptor:
    """OCI content descriptor (descriptor.md). ``size`` is bytes."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        """Parse a descriptor object; InvalidArgument naming ``where`` when malformed."""
        if not isinstance(obj, dict):
            raise InvalidArgument(f"{where}: descriptor is not an object")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidArgument(f"{where}: descriptor has no mediaType")
        digest = check_digest(obj.get("digest"), where)
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{where}: descriptor {digest} has an invalid size {size!r}")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise InvalidArgument(f"{where}: annotations of {digest} are not an object")
        urls = obj.get("urls") or []
        if not isinstance(urls, list):
            raise InvalidArgument(f"{where}: urls of {digest} are not a list")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations={str(k): str(v) for k, v in annotations.items()},
            urls=tuple(str(u) for u in urls),
            platform=Platform.from_json(obj.get("platform")),
        )


# -- documents ---------------------------------------------------------------------------------
@dataclass
class Manifest:
    """An image manifest (OCI or Docker schema 2): one config and its layers, lowest first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None


@dataclass
class Index:
    """An image index / Docker manifest list: one entry per platform (or artefact)."""

    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


def _load_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    return obj


def parse_document(data: bytes, media_type: str = "", where: str = "manifest") -> Manifest | Index:
    """Parse a manifest or index from its exact bytes.

    ``media_type`` is what the registry or parent descriptor announced ("" = unknown); the
    body's ``mediaType`` field must agree with it when both are present.
    Raises InvalidArgument for malformed or ambiguous documents, Unimplemented for
    schema 1 and unknown media types.
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"{where}: {len(data)} bytes is over the {MAX_MANIFEST_SIZE} byte limit")
    if media_type in SCHEMA1_TYPES:
        raise Unimplemented(
            f"{where}: Docker image manifest schema 1 is deprecated and not supported; "
            "push the image again with a current client (schema 2 / OCI)"
        )
    obj = _load_json(data, where)
    if obj.get("schemaVersion") == 1:
        raise Unimplemented(
            f"{where}: Docker image manifest schema 1 is deprecated and not supported; "
            "push the image again with a current client (schema 2 / OCI)"
        )
    if obj.get("schemaVersion") != 2:
        raise InvalidArgument(f"{where}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
    has_manifests = "manifests" in obj
    has_layers = "layers" in obj or "config" in obj
    if has_manifests and has_layers:
        raise InvalidArgument(
            f"{where}: document has both 'manifests' and 'layers'/'config'; refusing an ambiguous manifest"
        )
    body_type = obj.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise InvalidArgument(f"{where}: mediaType is not a string")
    known = INDEX_TYPES + MANIFEST_TYPES
    # registries sometimes announce a generic type (application/json, octet-stream); trust the body then
    announced = media_type if media_type in known else ""
    if body_type and announced and body_type != announced:
        raise InvalidArgument(f"{where}: mediaType {body_type!r} in the body contradicts {announced!r}")
    kind = body_type or announced or (OCI_INDEX if has_manifests else OCI_MANIFEST)
    if kind not in known:
        raise Unimplemented(f"{where}: unsupported media type {kind!r}")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidArgument(f"{where}: annotations are not an object")
    annotations = {str(k): str(v) for k, v in annotations.items()}
    if kind in INDEX_TYPES:
        if has_layers:
            raise InvalidArgument(f"{where}: an index must not have 'layers' or 'config'")
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument(f"{where}: index has no 'manifests' list")
        return Index(
            kind, [Descriptor.from_json(e, f"{where} manifests[{i}]") for i, e in enumerate(entries)], annotations
        )
    if has_manifests:
        raise InvalidArgument(f"{where}: an image manifest must not have 'manifests'")
    if "config" not in obj:
        raise InvalidArgument(f"{where}: manifest has no config")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{where}: manifest has no 'layers' list")
    config = Descriptor.from_json(obj["config"], f"{where} config")
    subject = Descriptor.from_json(obj["subject"], f"{where} subject") if obj.get("subject") else None
    return Manifest(
        kind,
        config,
        [Descriptor.from_json(e, f"{where} layers[{i}]") for i, e in enumerate(layers)],
        annotations,
        subject,
    )


def is_image_config(desc: Descriptor) -> bool:
    return desc.media_type in CONFIG_TYPES


def check_layer_type(desc: Descriptor, where: str) -> str:
    """Return the compression of a layer descriptor; Unimplemented for an unknown media type."""
    comp = LAYER_COMPRESSION.get(desc.media_type)
    if comp is None:
        raise Unimplemented(f"{where}: unsupported layer media type {desc.media_type!r}")
    return comp


@dataclass
class ImageConfig:
    """The parts of an image config (config.md) we use; ``raw`` keeps every field as stored."""

    raw: dict[str, Any]
    diff_ids: list[str]
    platform: Platform

    @property
    def created(self) -> str:
        return str(self.raw.get("created") or "")

    @property
    def config(self) -> dict[str, Any]:
        section = self.raw.get("config")
        return section if isinstance(section, dict) else {}


def parse_config(data: bytes, where: str = "image config") -> ImageConfig:
    """Parse an image config; checks ``rootfs.diff_ids`` are sha256 digests."""
    if len(data) > MAX_MANIFEST_SIZE * 2:
        raise InvalidArgument(f"{where}: {len(data)} bytes is too large for an image config")
    obj = _load_json(data, where)
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument(f"{where}: no rootfs.diff_ids")
    diff_ids = [check_digest(d, f"{where} rootfs.diff_ids[{i}]") for i, d in enumerate(rootfs["diff_ids"])]
    platform = Platform(
        os=str(obj.get("os") or ""),
        architecture=str(obj.get("architecture") or ""),
        variant=str(obj.get("variant") or ""),
        os_version=str(obj.get("os.version") or ""),
    )
    return ImageConfig(obj, diff_ids, platform)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Chain IDs of a layer stack (image-spec config.md): ``chain[0] = diff[0]``,
    ``chain[n] = sha256(chain[n-1] + " " + diff[n])``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def manifest_json(
    config: Descriptor,
    layers: list[Descriptor],
    media_type: str = OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """Serialise a manifest (compact JSON; the bytes are what gets digested)."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if annotations:
        obj["annotations"] = annotations
    return json.dumps(obj, separators=(",", ":")).encode()


def index_json(manifests: list[Descriptor], media_type: str = OCI_INDEX) -> bytes:
    obj = {"schemaVersion": 2, "mediaType": media_type, "manifests": [d.to_json() for d in manifests]}
    return json.dumps(obj, separators=(",", ":")).encode()
