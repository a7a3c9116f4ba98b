"""Pushing: a local image to its registry (OCI distribution spec, ``docker push``).

For each manifest (the index's children present locally, or the single manifest), the
config and layers are checked with ``HEAD /v2/<repo>/blobs/<digest>`` and uploaded only
when missing (POST an upload session, then one monolithic PUT streaming the blob from
the content store), at most ``max_concurrent`` at a time; then the manifests are PUT by
digest and the top document under the tag. When an index's children are not all
present (a pull keeps only the host platform), only the host platform's manifest is
pushed under the tag: the registry then gets exactly what we have, verified.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from common.errors import FailedPrecondition, InvalidArgument
from services.image import oci
from services.image.auth import Credentials
from services.image.content import ContentStore
from services.image.images import ImageView, read_document, view_of
from services.image.pull import short_id
from services.image.reference import Reference
from services.image.registry import Endpoint, RegistryClient

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
_CHUNK = 1024 * 1024


@dataclass
class PushOutcome:
    digest: str
    size: int
    media_type: str


class Pusher:
    """Upload images from the content store (see the module docstring)."""

    def __init__(self, store: ContentStore, client: RegistryClient, max_concurrent: int = 3) -> None:
        self.store = store
        self.client = client
        self.max_concurrent = max_concurrent

    def _body(self, desc: oci.Descriptor, progress: Callable[[int], None]) -> Callable[[], AsyncIterator[bytes]]:
        path = self.store.path(desc.digest)

        async def gen() -> AsyncIterator[bytes]:
            sent = 0
            f = await asyncio.to_thread(open, path, "rb")
            try:
                while True:
                    chunk = await asyncio.to_thread(f.read, _CHUNK)
                    if not chunk:
                        break
                    sent += len(chunk)
                    progress(sent)
                    yield chunk
            finally:
                await asyncio.to_thread(f.close)

        return gen

    async def _blob(
        self,
        ep: Endpoint,
        repo: str,
        desc: oci.Descriptor,
        creds: Credentials | None,
        emit: Emit,
        sem: asyncio.Semaphore,
    ) -> None:
        if not self.store.exists(desc.digest):
            raise FailedPrecondition(f"content {desc.digest} is not in the local store; pull the image again")
        ident = short_id(desc.digest)
        async with sem:
            if await self.client.blob_exists(ep, repo, desc, creds):
                emit(
                    {
                        "status": "Layer already exists",
                        "id": ident,
                        "digest": desc.digest,
                        "current": desc.size,
                        "total": desc.size,
                    }
                )
                return
            emit({"status": "Pushing", "id": ident, "digest": desc.digest, "current": 0, "total": desc.size})

            def progress(sent: int) -> None:
                emit({"status": "Pushing", "id": ident, "digest": desc.digest, "current": sent, "total": desc.size})

            await self.client.upload_blob(ep, repo, desc, self._body(desc, progress), creds)
            emit({"status": "Pushed", "id": ident, "digest": desc.digest, "current": desc.size, "total": desc.size})

    async def _manifest(
        self, ep: Endpoint, repo: str, view: ImageView, creds: Credentials | None, emit: Emit, sem: asyncio.Semaphore
    ) -> None:
        emit({"status": "Preparing", "id": short_id(view.config_desc.digest)})
        tasks = [self._blob(ep, repo, d, creds, emit, sem) for d in [*view.manifest.layers, view.config_desc]]
        await asyncio.gather(*tasks)

    async def push(self, ref: Reference, target: oci.Descriptor, creds: Credentials | None, emit: Emit) -> PushOutcome:
        """Push ``target`` (what the local record names) to ``ref``'s registry under ``ref.tag``."""
        if not ref.tag:
            raise InvalidArgument(f"cannot push {ref}: a tag is needed (push by digest is not supported)")
        ep = self.client.endpoint(ref.domain)
        await self.client.ping(ep)
        repo = ref.repository
        emit({"status": f"The push refers to repository [{ref.name}]"})
        sem = asyncio.Semaphore(self.max_concurrent)
        doc = await asyncio.to_thread(read_document, self.store, target)
        top = target
        if isinstance(doc, oci.Index):
            children = [d for d in doc.manifests if d.media_type in oci.MANIFEST_TYPES]
            present = [d for d in children if self.store.exists(d.digest)]
            if len(present) == len(doc.manifests):
                for child in present:
                    view = await asyncio.to_thread(view_of, self.store, child, None)
                    await self._manifest(ep, repo, view, creds, emit, sem)
                    body = await asyncio.to_thread(self.store.read, child.digest, oci.MAX_MANIFEST_SIZE)
                    await self.client.put_manifest(ep, repo, child.digest, child.media_type, body, creds)
            else:
                view = await asyncio.to_thread(view_of, self.store, target, None)
                top = view.manifest_desc
                emit(
                    {
                        "status": "warning",
                        "message": f"only {len(present)} of the index's {len(doc.manifests)} "
                        f"manifests are local: pushing the host platform's manifest {top.digest}",
                    }
                )
                await self._manifest(ep, repo, view, creds, emit, sem)
        else:
            view = await asyncio.to_thread(view_of, self.store, target, None)
            await self._manifest(ep, repo, view, creds, emit, sem)
        body = await asyncio.to_thread(self.store.read, top.digest, oci.MAX_MANIFEST_SIZE)
        digest = await self.client.put_manifest(ep, repo, ref.tag, top.media_type, body, creds)
        if digest != top.digest:
            log.warning("registry %s reports %s for manifest %s", ep.host, digest, top.digest)
        return PushOutcome(top.digest, len(body), top.media_type)
