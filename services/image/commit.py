"""``docker commit``: a container's changes as a new layer on top of its image.

The snapshot service writes the container's upper directory as a layer blob
(``snapshot.diff``: whiteouts and opaque directories included); this module takes
that blob into the content store (verified against the digest the snapshot service
reported), then writes the new image config (the parent's, with the container's
config section, one more diff ID and one more history entry) and a manifest of the
parent's family (OCI stays OCI, Docker schema 2 stays Docker), every blob under the
caller's lease. Blocking; run it in a thread.

Spec: OCI image-spec v1.1 config.md (rootfs.diff_ids, history) and manifest.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import InvalidArgument
from services.image import oci
from services.image.archive import commit_lock
from services.image.content import ContentStore
from services.image.images import ImageView

_CHUNK = 1 << 20


def layer_media_type(parent: ImageView) -> str:
    """The gzip layer media type of the parent's family (Docker schema 2 or OCI)."""
    return oci.DOCKER_LAYER_GZIP if parent.manifest.media_type == oci.DOCKER_MANIFEST else oci.OCI_LAYER_GZIP


def build_commit(
    store: ContentStore,
    protect: Callable[[str], None],
    parent: ImageView,
    layer_path: Path,
    layer: dict[str, Any],
    config_section: dict[str, Any],
    *,
    comment: str,
    author: str,
    container_id: str,
    created_by: str,
    created: dt.datetime | None = None,
) -> oci.Descriptor:
    """Store the layer at ``layer_path`` and the new config and manifest; return the manifest.

    ``layer`` is the ``snapshot.diff`` reply (``media_type``, ``digest``, ``size``,
    ``diff_id``). ``protect(digest)`` adds each blob to the caller's lease. Raises
    FailedPrecondition (from the content store) if the file does not match the digest,
    InvalidArgument for an inconsistent parent.
    """
    if len(parent.manifest.layers) != len(parent.config.diff_ids):
        raise InvalidArgument(
            f"image {parent.id}: {len(parent.manifest.layers)} layers but {len(parent.config.diff_ids)} diff IDs"
        )
    ingest = store.open_ingest(
        f"commit-{layer['digest']}", expected=layer["digest"], total=int(layer["size"]), resume=False
    )
    try:
        with open(layer_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                ingest.write(chunk)
        with commit_lock():  # commit and protect as one step, as GC marks under the same lock
            blob = ingest.commit()
            protect(blob.digest)
    except BaseException:
        ingest.abort()
        raise
    now = (created or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cfg: dict[str, Any] = json.loads(parent.config_bytes)
    cfg["created"] = now
    cfg["config"] = config_section
    cfg["container"] = container_id
    if author:
        cfg["author"] = author
    else:
        cfg.pop("author", None)
    if comment:
        cfg["comment"] = comment
    else:
        cfg.pop("comment", None)
    rootfs = dict(cfg.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = [*list(rootfs.get("diff_ids") or []), layer["diff_id"]]
    cfg["rootfs"] = rootfs
    entry: dict[str, Any] = {"created": now, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
    cfg["history"] = [*list(cfg.get("history") or []), entry]
    docker = parent.manifest.media_type == oci.DOCKER_MANIFEST
    cfg_bytes = json.dumps(cfg, separators=(",", ":")).encode()
    with commit_lock():
        cfg_blob = store.write_blob(cfg_bytes)
        protect(cfg_blob.digest)
    layers = [*parent.manifest.layers, oci.Descriptor(layer["media_type"], blob.digest, blob.size)]
    manifest_type = oci.DOCKER_MANIFEST if docker else oci.OCI_MANIFEST
    config_type = oci.DOCKER_CONFIG if docker else oci.OCI_CONFIG
    manifest = oci.manifest_json(oci.Descriptor(config_type, cfg_blob.digest, cfg_blob.size), layers, manifest_type)
    with commit_lock():
        man_blob = store.write_blob(manifest)
        protect(man_blob.digest)
    return oci.Descriptor(manifest_type, man_blob.digest, man_blob.size)
