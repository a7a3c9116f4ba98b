"""Garbage collection: mark from image records and leases, sweep blobs, ingests and snapshots.

Content (containerd-model.md section 2): the roots are every image record's target (all
namespaces: blobs are shared) and every resource of a lease that has not expired. Edges
are read from the documents themselves: index -> its manifests present locally,
manifest -> config and layers. ``sweep_content`` lists the blobs *before* marking and
holds the commit lock throughout, so a blob committed meanwhile (and protected by its
writer's lease under the same lock) is never taken.

Ingests are removed when no writer has them open and no live lease holds them
(``ingest`` resources). A download's ingest (its ref is the blob's digest: what a retried
pull resumes from) has a lifetime of its own on top: it stays until its last write is
older than ``ingest_max_age_s`` (``INGEST_EXPIRY_S``, 24 h, by default; ``image prune``
passes 0). So a pull's lease can be released on every way out of the pull without losing
what the next attempt needs. The ingests of a load, import or commit (``load-...``,
``commit-...``: never resumed) go as soon as nothing holds them.

Snapshots (per namespace, through the snapshot service): committed snapshots named by a
chain ID (``sha256:...``) that no image record's layer chain and no lease references are
removed leaves first; one that still has children (a container's rootfs) stays, and so
do its parents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.errors import DockyardError, FailedPrecondition, NotFound
from services.image import oci
from services.image.archive import commit_lock
from services.image.content import ContentStore
from services.image.metadata import MetadataStore

log = logging.getLogger(__name__)

INGEST_EXPIRY_S = 24 * 3600.0
"""An idle ingest nothing holds is kept this long after its last write (for a resume)."""


@dataclass
class ContentSweep:
    blobs_removed: int = 0
    bytes_removed: int = 0
    ingests_removed: int = 0
    removed: list[str] | None = None


def _children(store: ContentStore, digest: str, media_type: str) -> list[tuple[str, str]]:
    if media_type not in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
        return []
    try:
        doc = oci.parse_document(store.read(digest, max_size=oci.MAX_MANIFEST_SIZE), media_type, where=digest)
    except DockyardError:
        return []
    if isinstance(doc, oci.Index):
        return [(d.digest, d.media_type) for d in doc.manifests]
    return [(doc.config.digest, doc.config.media_type)] + [(d.digest, d.media_type) for d in doc.layers]


def mark_content(meta: MetadataStore, store: ContentStore) -> set[str]:
    """Digests reachable from image records and live leases."""
    marked: set[str] = set()
    stack: list[tuple[str, str]] = [(r.target.digest, r.target.media_type) for r in meta.records(None)]
    for kind, ref in meta.leased_resources():
        if kind == "content":
            stack.append((ref, ""))
    while stack:
        digest, media_type = stack.pop()
        if digest in marked:
            continue
        marked.add(digest)
        if not media_type:
            # a leased blob: find out what it is if it is a document
            try:
                head = store.read(digest, max_size=oci.MAX_MANIFEST_SIZE) if store.exists(digest) else b""
                doc = oci.parse_document(head, "", where=digest) if head[:1] == b"{" else None
                media_type = doc.media_type if doc is not None else ""
            except DockyardError:
                media_type = ""
        if media_type and store.exists(digest):
            stack.extend(_children(store, digest, media_type))
    return marked


def sweep_content(
    meta: MetadataStore, store: ContentStore, ingest_max_age_s: float = INGEST_EXPIRY_S, now: float | None = None
) -> ContentSweep:
    """Remove unreferenced blobs and abandoned ingests (blocking; run in a thread).

    An ingest is abandoned when no writer has it open, no live lease holds it and, for a
    download's (resumable) ingest, it was last written more than ``ingest_max_age_s``
    seconds before ``now`` (default: the clock).
    """
    now = time.time() if now is None else now
    out = ContentSweep(removed=[])
    with commit_lock():
        listed = list(store.walk())
        marked = mark_content(meta, store)
        for blob in listed:
            if blob.digest in marked:
                continue
            if store.delete(blob.digest):
                out.blobs_removed += 1
                out.bytes_removed += blob.size
                assert out.removed is not None
                out.removed.append(blob.digest)
        leased_ingests = {ref for kind, ref in meta.leased_resources() if kind == "ingest"}
        for ing in store.ingest_statuses():
            if ing.ref in store.active or ing.ref in leased_ingests:
                continue
            resumable = ing.ref.startswith("sha256:")  # a download (its ref is the digest)
            if resumable and ingest_max_age_s > 0 and now - ing.updated_at < ingest_max_age_s:
                continue
            store.remove_ingest_dir(ing.path)
            out.ingests_removed += 1
    if out.blobs_removed or out.ingests_removed:
        log.info(
            "gc: removed %d blobs (%d bytes), %d ingests", out.blobs_removed, out.bytes_removed, out.ingests_removed
        )
    return out


def chain_ids_of_records(meta: MetadataStore, store: ContentStore, namespace: str) -> set[str]:
    """Every chain ID (each layer prefix) of every manifest present for the namespace's images."""
    keep: set[str] = set()
    for rec in meta.records(namespace):
        stack = [(rec.target.digest, rec.target.media_type)]
        seen: set[str] = set()
        while stack:
            digest, media_type = stack.pop()
            if digest in seen or not store.exists(digest):
                continue
            seen.add(digest)
            if media_type in oci.INDEX_TYPES:
                stack.extend(_children(store, digest, media_type))
            elif media_type in oci.MANIFEST_TYPES:
                try:
                    doc = oci.parse_document(store.read(digest, max_size=oci.MAX_MANIFEST_SIZE), media_type)
                    if not isinstance(doc, oci.Manifest) or not store.exists(doc.config.digest):
                        continue
                    cfg = oci.parse_config(store.read(doc.config.digest, max_size=2 * oci.MAX_MANIFEST_SIZE))
                except DockyardError:
                    continue
                keep.update(oci.chain_ids(cfg.diff_ids))
    for kind, ref in meta.leased_resources():
        if kind == f"snapshot:{namespace}":
            keep.add(ref)
    return keep


SnapshotCall = Callable[[str, dict[str, Any], str], Awaitable[Any]]


async def sweep_snapshots(call: SnapshotCall, namespace: str, keep: set[str]) -> int:
    """Remove committed chain-ID snapshots of ``namespace`` not in ``keep``; return how many.

    ``call(method, body, namespace)`` calls the snapshot service.
    """
    reply = await call("snapshot.list", {}, namespace)
    infos = reply.get("snapshots", []) if isinstance(reply, dict) else []
    by_name = {i["name"]: i for i in infos}
    parents: dict[str, int] = {}
    for info in infos:
        if info.get("parent"):
            parents[info["parent"]] = parents.get(info["parent"], 0) + 1
    candidates = {
        name
        for name, info in by_name.items()
        if info.get("kind") == "committed" and name.startswith("sha256:") and name not in keep
    }
    removed = 0
    progress = True
    while progress:
        progress = False
        for name in sorted(candidates):
            if parents.get(name, 0):
                continue
            try:
                await call("snapshot.remove", {"key": name}, namespace)
            except (FailedPrecondition, NotFound) as exc:
                log.info("gc: keeping snapshot %s: %s", name, exc)
                candidates.discard(name)
                progress = True
                break
            removed += 1
            candidates.discard(name)
            parent = by_name[name].get("parent") or ""
            if parent:
                parents[parent] -= 1
            progress = True
            break
    return removed
