"""Reading images out of the content store: record -> (index ->) manifest -> config -> layers.

``ImageView`` is everything a caller needs about one platform of one image: the chosen
manifest, the parsed config, the layer descriptors paired with their diff IDs, the
chain IDs and the size. ``Catalog`` combines the metadata store with the content store
to find images by name, by id, by id prefix or by ``name@digest``, the way Docker does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.image import platforms
from services.image import reference as refs
from services.image.content import ContentStore
from services.image.metadata import DANGLING_PREFIX, ImageRecord, MetadataStore
from services.image.oci import (
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_ids,
    parse_config,
    parse_document,
)

_HEX_PREFIX_RE = re.compile(r"^(sha256:)?[0-9a-f]{1,64}$")


@dataclass
class ImageView:
    """One platform of an image, fully read."""

    target: Descriptor
    manifest_desc: Descriptor
    manifest: Manifest
    config_desc: Descriptor
    config_bytes: bytes
    config: ImageConfig
    chain_ids: list[str]

    @property
    def id(self) -> str:
        return self.config_desc.digest

    @property
    def chain_id(self) -> str:
        return self.chain_ids[-1] if self.chain_ids else ""

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)

    def layers(self) -> list[tuple[Descriptor, str]]:
        """``(layer descriptor, diff ID)`` lowest first."""
        return list(zip(self.manifest.layers, self.config.diff_ids, strict=True))


def read_document(store: ContentStore, desc: Descriptor) -> Manifest | Index:
    data = store.read(desc.digest, max_size=MAX_MANIFEST_SIZE)
    return parse_document(data, desc.media_type, where=f"manifest {desc.digest}")


def view_of(
    store: ContentStore, target: Descriptor, platform: Platform | None = None, *, strict: bool = True
) -> ImageView:
    """Read the image ``target`` points at, for ``platform`` (default: host).

    ``strict=False``: if the wanted platform is not in an index, fall back to the first
    entry whose manifest is present locally (used to compute an image id for listings).
    Raises NotFound when content is missing, FailedPrecondition when the config does not
    match the manifest.
    """
    doc = read_document(store, target)
    manifest_desc = target
    if isinstance(doc, Index):
        try:
            manifest_desc = platforms.choose(doc.manifests, platform, where=target.digest)
        except NotFound:
            if strict:
                raise
            present = [d for d in doc.manifests if d.media_type in MANIFEST_TYPES and store.exists(d.digest)]
            if not present:
                raise
            manifest_desc = present[0]
        doc = read_document(store, manifest_desc)
        if isinstance(doc, Index):
            raise InvalidArgument(f"manifest {manifest_desc.digest}: nested indexes are not supported")
    manifest = doc
    config_bytes = store.read(manifest.config.digest, max_size=2 * MAX_MANIFEST_SIZE)
    config = parse_config(config_bytes, where=f"image config {manifest.config.digest}")
    if len(config.diff_ids) != len(manifest.layers):
        raise FailedPrecondition(
            f"manifest {manifest_desc.digest}: {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff IDs"
        )
    return ImageView(target, manifest_desc, manifest, manifest.config, config_bytes, config, chain_ids(config.diff_ids))


def record_names(records: list[ImageRecord]) -> tuple[list[str], list[str]]:
    """RepoTags and RepoDigests (familiar forms) of the records of one image."""
    tags: list[str] = []
    digests: list[str] = []
    for rec in records:
        if rec.dangling:
            continue
        ref = refs.try_parse(rec.name)
        if ref is None:
            continue
        if ref.tag:
            tags.append(ref.familiar_name() + ":" + ref.tag)
        d = f"{ref.familiar_name()}@{rec.target.digest}"
        if d not in digests:
            digests.append(d)
    return sorted(set(tags)), sorted(digests)


class Catalog:
    """Find image records the way Docker does (see ``find``)."""

    def __init__(self, meta: MetadataStore, content: ContentStore) -> None:
        self.meta = meta
        self.content = content

    def find(self, namespace: str, text: str) -> tuple[ImageRecord, str]:
        """Return ``(record, how)`` for ``text``; ``how`` is ``"name"`` or ``"id"``.

        Order: a full image id (``sha256:<hex>`` or 64 hex); a reference with a record of that
        name (``busybox`` -> ``docker.io/library/busybox:latest``); ``name@digest`` matching
        the record whose target is that digest; a unique id prefix. NotFound
        (``image 'x' not found``) otherwise; InvalidArgument for an ambiguous prefix.
        """
        text = text.strip()
        if text.startswith(DANGLING_PREFIX):
            rec = self.meta.get(namespace, text)
            if rec is not None:
                return rec, "name"
        full = text if text.startswith("sha256:") else ("sha256:" + text if len(text) == 64 else "")
        if full and _HEX_PREFIX_RE.match(full) and len(full) == 71:
            found = self.meta.by_image_id(namespace, full) or self.meta.by_target(namespace, full)
            if found:
                return found[0], "id"
            raise NotFound(f"image '{text}' not found")
        ref = refs.try_parse(text) if not text.startswith("sha256:") else None
        if ref is not None:
            rec = self.meta.get(namespace, str(ref))
            if rec is not None:
                return rec, "name"
            if ref.digest:
                for candidate in self.meta.by_target(namespace, ref.digest):
                    cref = refs.try_parse(candidate.name)
                    if cref is not None and cref.name == ref.name:
                        return candidate, "name"
        if _HEX_PREFIX_RE.match(text):
            hex_prefix = text.removeprefix("sha256:")
            found = self.meta.by_id_prefix(namespace, hex_prefix)
            ids = {r.image_id for r in found}
            if len(ids) > 1:
                raise InvalidArgument(f"image id prefix '{text}' is ambiguous: it matches {len(ids)} images")
            if found:
                return found[0], "id"
        if ref is None and not _HEX_PREFIX_RE.match(text):
            refs.parse(text)  # raises the InvalidArgument explaining what is wrong
        raise NotFound(f"image '{text}' not found")

    def records_of_image(self, namespace: str, image_id: str) -> list[ImageRecord]:
        return self.meta.by_image_id(namespace, image_id) if image_id else []

    def host_ids(self, target: Descriptor) -> tuple[str, str]:
        """``(image id, manifest digest)`` for the host platform of ``target`` ('' if unreadable)."""
        try:
            view = view_of(self.content, target, None, strict=False)
        except (NotFound, InvalidArgument, FailedPrecondition):
            return "", ""
        return view.id, view.manifest_desc.digest
