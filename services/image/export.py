"""Writing image archives: ``docker save`` (docker-archive that is also an OCI layout) and OCI layouts.

``write_archive`` streams one tar holding, like Docker 25+'s ``docker save``:

- ``oci-layout`` and ``index.json``: one entry per saved name, the record's own target
  descriptor (index or manifest, so a load gives back the same digests), annotated
  ``io.containerd.image.name`` (full name) and ``org.opencontainers.image.ref.name`` (tag);
- ``blobs/sha256/<hex>``: every blob those targets reach that is present locally (an
  index's other platforms are usually not: that is allowed by the layout spec);
- with ``docker_archive=True``: ``manifest.json`` ``[{Config, RepoTags, Layers}]`` whose
  paths point into ``blobs/sha256`` (the layer blobs as stored, which ``docker load`` and
  skopeo decompress), and the legacy ``repositories`` file.

Blocking code (reads the content store, writes the tar): run it in a thread with a
writer that hands the bytes to the event loop.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from services.image import oci
from services.image import reference as refs
from services.image.content import ContentStore
from services.image.images import ImageView, read_document

EPOCH = 0


@dataclass
class SaveItem:
    """One name to save: the record name ('' for an unnamed image), its target and the view
    (platform manifest) used for the docker-archive part."""

    name: str
    target: oci.Descriptor
    view: ImageView


class ChunkWriter(io.RawIOBase):
    """A write-only file that hands each write to ``sink`` (which may block for flow control)."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        super().__init__()
        self._sink = sink
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if data:
            self._sink(data)
            self.written += len(data)
        return len(data)


def _reachable(store: ContentStore, target: oci.Descriptor) -> list[oci.Descriptor]:
    """Blobs of ``target`` present locally: documents first, then configs and layers."""
    out: dict[str, oci.Descriptor] = {}
    stack = [target]
    while stack:
        desc = stack.pop()
        if desc.digest in out or not store.exists(desc.digest):
            continue
        out[desc.digest] = desc
        if desc.media_type in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
            doc = read_document(store, desc)
            if isinstance(doc, oci.Index):
                stack.extend(doc.manifests)
            else:
                stack.append(doc.config)
                stack.extend(doc.layers)
    return list(out.values())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = EPOCH
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = EPOCH
    tar.addfile(info)


def write_archive(store: ContentStore, items: list[SaveItem], out: IO[bytes], *, docker_archive: bool) -> None:
    """Write the archive of ``items`` to ``out`` (see the module docstring)."""
    index_entries: list[dict[str, Any]] = []
    blobs: dict[str, oci.Descriptor] = {}
    docker_manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    by_config: dict[str, dict[str, Any]] = {}
    for item in items:
        desc = item.target.to_json()
        annotations = dict(item.target.annotations)
        ref = refs.try_parse(item.name) if item.name else None
        if ref is not None:
            annotations[oci.ANNOTATION_CONTAINERD_NAME] = str(ref)
            if ref.tag:
                annotations[oci.ANNOTATION_REF_NAME] = ref.tag
        if annotations:
            desc["annotations"] = annotations
        if desc not in index_entries:
            index_entries.append(desc)
        for b in _reachable(store, item.target):
            blobs.setdefault(b.digest, b)
        if docker_archive:
            view = item.view
            entry = by_config.get(view.id)
            if entry is None:
                entry = {
                    "Config": "blobs/sha256/" + view.id.split(":", 1)[1],
                    "RepoTags": [],
                    "Layers": ["blobs/sha256/" + d.digest.split(":", 1)[1] for d in view.manifest.layers],
                }
                by_config[view.id] = entry
                docker_manifest.append(entry)
            if ref is not None and ref.tag:
                tag = f"{ref.familiar_name()}:{ref.tag}"
                if tag not in entry["RepoTags"]:
                    entry["RepoTags"].append(tag)
                if view.manifest.layers:
                    top = view.chain_id.split(":", 1)[1]
                    repositories.setdefault(ref.familiar_name(), {})[ref.tag] = top
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": index_entries}
        _add_bytes(tar, "index.json", json.dumps(index, separators=(",", ":")).encode())
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for digest in sorted(blobs):
            path = store.path(digest)
            with open(path, "rb") as f:
                info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
                info.size = path.stat().st_size
                info.mtime = EPOCH
                info.mode = 0o644
                tar.addfile(info, f)
        if docker_archive:
            _add_bytes(tar, "manifest.json", json.dumps(docker_manifest, separators=(",", ":")).encode())
            _add_bytes(tar, "repositories", json.dumps(repositories, separators=(",", ":")).encode())
