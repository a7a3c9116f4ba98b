"""The image service's RPC surface: ``image.*`` methods (see ``common/api/image.py``).

``ImageService`` ties the content store, the image records, the registry client, the
snapshot service (unpack) and the event outbox together. Domain work lives in the
sibling modules (``pull``, ``archive``, ``export``, ``push``, ``gc``); this module owns the
Docker-visible behaviour: which record a name moves, when an image becomes dangling,
untag versus delete, which events are published, and the unpack after every
pull/load/import so that a ``run`` never waits for it.

No zmq here: the snapshot and execution services are reached through ``AsyncClient``
objects handed in by ``__main__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, cast

from common import errors, ids, topics
from common.api import image as api
from common.api.base import NamespacesReply
from common.api.snapshot import LayerToApply, UnpackRequest
from common.events import EventPublisher
from common.rpc.aio import AsyncClient
from common.rpc.server import Context, rpc
from common.settings import Settings
from services.image import archive, export, gc, listing, platforms
from services.image import commit as commit_mod
from services.image import reference as refs
from services.image.auth import Credentials, CredentialStore, write_config_entry
from services.image.content import ContentStore
from services.image.images import Catalog, ImageView, record_names, view_of
from services.image.metadata import (
    DANGLING_PREFIX,
    LABEL_OWNER,
    LABEL_PURPOSE,
    ImageRecord,
    MetadataStore,
    process_owner,
)
from services.image.oci import Descriptor, Platform
from services.image.pipe import ChunkPipe
from services.image.progress import ProgressPump
from services.image.pull import Puller
from services.image.push import Pusher
from services.image.registry import RegistryClient, basic_from_auth

log = logging.getLogger(__name__)

PULL_LEASE_S = 24 * 3600.0
"""Backstop expiry of a pull's lease (containerd's client default). A pull releases its lease
when it ends, however it ends; one of a killed service is released at the next start-up."""
OP_LEASE_S = 3600.0
"""Backstop expiry of the lease of a load, import, commit, save or push."""
DIFF_SIZES_TIMEOUT_S = 10.0
"""How long image sizes wait for the snapshot service's ``snapshot.diff_sizes`` (a layer
committed by an older version is measured on that call) before showing compressed sizes."""
_CHUNK = 1024 * 1024


def _dangling_name(target: Descriptor) -> str:
    return DANGLING_PREFIX + target.digest


class ImageService:
    """See the module docstring. Build with ``open``; call ``close`` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        data_dir: Path,
        *,
        snapshot: AsyncClient | None,
        execution: AsyncClient | None,
        publisher: EventPublisher | None,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.content = ContentStore(data_dir / "content")
        self.meta = MetadataStore(data_dir / "metadata.db")
        self.catalog = Catalog(self.meta, self.content)
        self.credentials = CredentialStore(settings.registry_config)
        self.registry = RegistryClient(
            insecure=settings.insecure_registries,
            mirrors=settings.registry_mirrors,
            credentials=self.credentials,
        )
        self.puller = Puller(self.content, self.registry, settings.max_concurrent_downloads)
        self.pusher = Pusher(self.content, self.registry, settings.max_concurrent_downloads)
        self.snapshot = snapshot
        self.execution = execution
        self.publisher = publisher
        self.active_leases: set[str] = set()  # leases of operations running in this process
        self.owner = process_owner()  # the owner label of this process's leases
        self._gc_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.registry.close()
        self.meta.close()

    # -- helpers: events, records -------------------------------------------------------------------
    def _publish(self, topic: str, event: dict[str, Any], namespace: str) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(topic, event, namespace=namespace, event_id=f"image/{ids.new_id()}")
        except OSError as exc:  # publishing must never fail the call
            log.error("cannot queue event %s: %s", topic, exc)

    def _set_name(
        self,
        namespace: str,
        name: str,
        target: Descriptor,
        image_id: str,
        manifest_digest: str,
        labels: dict[str, str] | None = None,
        *,
        action: str,
    ) -> str:
        """Point ``name`` at ``target``; return ``created``, ``updated`` or ``unchanged``.

        ``action`` (``pull``, ``load``, ``import``, ``tag``) goes into the event, so event
        consumers (Docker's ``pull``/``load``/``import``/``tag`` actions) can tell them apart.

        The image the name pointed at before becomes dangling if nothing else names it.
        A dangling record of the same target is dropped (the image has a name again).
        """
        record = ImageRecord(namespace, name, target, image_id, manifest_digest, dict(labels or {}))
        previous = self.meta.get(namespace, name)
        if previous is not None and previous.target.digest == target.digest:
            if previous.image_id != image_id and image_id:
                record.labels = previous.labels | record.labels
                self.meta.put(record)
            return "unchanged"
        if previous is not None:
            record.labels = previous.labels | record.labels
        self.meta.put(record)
        if not name.startswith(DANGLING_PREFIX):
            dangling = self.meta.get(namespace, _dangling_name(target))
            if dangling is not None:
                self.meta.delete(namespace, dangling.name)
        event = {"name": name, "labels": record.labels, "action": action, "image_id": image_id}
        if previous is None:
            self._publish(topics.IMAGE_CREATE, event, namespace)
            return "created"
        self._publish(topics.IMAGE_UPDATE, event, namespace)
        self._keep_dangling(previous)
        return "updated"

    def _keep_dangling(self, old: ImageRecord) -> None:
        """After ``old``'s name moved away: keep its image as ``<none>`` if nothing names it."""
        if old.dangling or self.meta.by_target(old.namespace, old.target.digest):
            return
        if old.image_id and self.meta.by_image_id(old.namespace, old.image_id):
            return
        rec = ImageRecord(old.namespace, _dangling_name(old.target), old.target, old.image_id, old.manifest_digest)
        self.meta.put(rec)
        self._publish(topics.IMAGE_CREATE, {"name": rec.name, "labels": {}, "image_id": rec.image_id}, old.namespace)

    def _find(self, namespace: str, text: str) -> tuple[ImageRecord, str]:
        return self.catalog.find(namespace, text)

    def _view(self, rec: ImageRecord, platform: Platform | None = None, *, strict: bool = True) -> ImageView:
        return view_of(self.content, rec.target, platform, strict=strict)

    async def _view_async(
        self, rec: ImageRecord, platform: Platform | None = None, *, strict: bool = True
    ) -> ImageView:
        return await asyncio.to_thread(self._view, rec, platform, strict=strict)

    def _lease(self, namespace: str, expires_s: float, purpose: str) -> str:
        """Take a lease for one operation of this process (see ``metadata`` for the lifecycle)."""
        lease = self.meta.create_lease(namespace, expires_s, {LABEL_PURPOSE: purpose, LABEL_OWNER: self.owner})
        self.active_leases.add(lease)
        return lease

    def _end_lease(self, lease: str) -> None:
        """Release a lease of this process (idempotent)."""
        self.meta.delete_lease(lease)
        self.active_leases.discard(lease)

    def _release_orphaned_leases(self, *, keep_pulls: bool = False) -> tuple[int, list[str]]:
        """Release the leases whose owner process is gone (a killed image service's operations).

        Returns how many were released and, with ``keep_pulls``, the ids of the dead pulls'
        leases, which stay for the caller to release later (the start-up GC does, after its sweep).
        """
        released = 0
        kept: list[str] = []
        for lease in self.meta.orphaned_leases():
            labels = lease["labels"]
            purpose = str(labels.get(LABEL_PURPOSE, ""))
            if keep_pulls and purpose.startswith("pull "):
                kept.append(lease["id"])
                continue
            self.meta.delete_lease(lease["id"])
            released += 1
            log.info(
                "released lease %s (%s) of process %s, which no longer exists",
                lease["id"],
                purpose or "no purpose",
                labels.get(LABEL_OWNER) or "unknown",
            )
        return released, kept

    # -- unpack -------------------------------------------------------------------------------------
    async def _snapshot_call(self, method: str, body: dict[str, Any], namespace: str) -> Any:
        if self.snapshot is None:
            raise errors.Unavailable("snapshot service not configured")
        return await self.snapshot.call(method, body, namespace=namespace, timeout_s=None)

    async def _unpack(self, namespace: str, view: ImageView, lease: str | None = None) -> str:
        """Apply the image's layers into committed snapshots (skipped when already there).

        Returns the top chain ID. Raises what the snapshot service raised.
        """
        if not view.chain_ids:
            return ""
        if lease is not None:
            for chain in view.chain_ids:
                self.meta.add_lease_resource(lease, f"snapshot:{namespace}", chain)
        req = UnpackRequest(
            layers=[
                LayerToApply(
                    digest=d.digest,
                    media_type=d.media_type,
                    size=d.size,
                    diff_id=diff_id,
                    path=str(self.content.path(d.digest)),
                )
                for d, diff_id in view.layers()
            ]
        )
        reply = await self._snapshot_call("snapshot.unpack", req.model_dump(), namespace)
        chain = str(reply.get("chain_id", "")) if isinstance(reply, dict) else ""
        if chain and chain != view.chain_id:
            raise errors.Internal(f"snapshot service unpacked chain {chain}, expected {view.chain_id}")
        return view.chain_id

    async def _diff_sizes(self, namespace: str, chain_ids: list[str]) -> listing.DiffSizes | None:
        """``{chain ID: diff size}`` of those of ``chain_ids`` that are unpacked (for image sizes);
        None when the snapshot service cannot say in ``DIFF_SIZES_TIMEOUT_S`` (down, busy
        measuring layers committed by an older version): the callers then show compressed
        sizes, and a listing never waits long on the snapshot service."""
        keys = sorted({c for c in chain_ids if c})
        if not keys:
            return {}
        if self.snapshot is None:
            return None
        try:
            reply = await self.snapshot.call(
                "snapshot.diff_sizes", {"keys": keys}, namespace=namespace, timeout_s=DIFF_SIZES_TIMEOUT_S
            )
        except errors.DockyardError as exc:  # down, slow, older (Unimplemented): never fails a listing
            log.warning("image sizes: diff sizes of the layers unknown, compressed sizes shown: %s", exc)
            return None
        sizes = reply.get("diff_sizes") if isinstance(reply, dict) else None
        return {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else None

    async def _is_unpacked(self, namespace: str, chain_id: str) -> bool:
        if not chain_id:
            return True
        try:
            await self._snapshot_call("snapshot.stat", {"key": chain_id}, namespace)
            return True
        except errors.NotFound:
            return False

    async def _unpack_after_write(
        self,
        namespace: str,
        view: ImageView,
        lease: str,
        emit: Callable[[dict[str, Any]], None],
        present: set[str] | None = None,
    ) -> None:
        """Unpack after a pull/load/import. The snapshot service being down is a warning
        (``resolve`` unpacks later); a layer it refuses (wrong diff ID...) is an error.
        Layers in ``present`` (a pull found them ``Already exists``) get no Extracting /
        Pull complete frames, as dockerd shows them."""
        present = present or set()
        for layer in view.manifest.layers:
            if layer.digest in present:
                continue
            emit(
                {
                    "status": "Extracting",
                    "id": layer.digest.split(":", 1)[1][:12],
                    "digest": layer.digest,
                    "total": layer.size,
                }
            )
        try:
            await self._unpack(namespace, view, lease)
        except errors.Unavailable as exc:
            log.warning("unpack of %s postponed: %s", view.id, exc)
            emit({"status": "warning", "message": f"layers not unpacked yet: {exc.message}"})
            return
        for layer in view.manifest.layers:
            if layer.digest in present:
                continue
            emit(
                {
                    "status": "Pull complete",
                    "id": layer.digest.split(":", 1)[1][:12],
                    "digest": layer.digest,
                    "current": layer.size,
                    "total": layer.size,
                }
            )

    # -- GC -------------------------------------------------------------------------------------------
    async def _collect(
        self,
        namespaces: set[str] | None = None,
        *,
        ingest_max_age_s: float = gc.INGEST_EXPIRY_S,
        spare_dead_pulls: bool = False,
    ) -> api.GcReply:
        """Remove unreferenced blobs, abandoned ingests and (per namespace) snapshots.

        First expired leases and those of processes that no longer exist are released.
        ``spare_dead_pulls`` (the start-up GC): a dead pull's lease is released only after
        the sweep, so that a retried pull finds the layers that had finished; the next
        collection takes them. Ingests idle for ``ingest_max_age_s`` go (see ``gc``).
        """
        async with self._gc_lock:
            expired = self.meta.delete_expired_leases()
            if expired:
                log.info("gc: %d expired leases released", expired)
            released, dead_pulls = self._release_orphaned_leases(keep_pulls=spare_dead_pulls)
            sweep = await asyncio.to_thread(gc.sweep_content, self.meta, self.content, ingest_max_age_s)
            removed_snapshots = 0
            if self.snapshot is not None:
                for ns in sorted(namespaces or set()):
                    keep = await asyncio.to_thread(gc.chain_ids_of_records, self.meta, self.content, ns)
                    try:
                        removed_snapshots += await gc.sweep_snapshots(self._snapshot_call, ns, keep)
                    except errors.Unavailable as exc:
                        log.warning("gc: snapshots of namespace %s not collected: %s", ns, exc)
            for lease in dead_pulls:
                self.meta.delete_lease(lease)
                log.info("released lease %s of a pull that died; what it kept goes at the next gc", lease)
            for digest in sweep.removed or []:
                self._publish(topics.CONTENT_DELETE, {"digest": digest}, "default")
            return api.GcReply(
                blobs_removed=sweep.blobs_removed,
                bytes_removed=sweep.bytes_removed,
                snapshots_removed=removed_snapshots,
                ingests_removed=sweep.ingests_removed,
                leases_released=expired + released + len(dead_pulls),
            )

    async def startup_gc(self) -> None:
        """Run once at start: release expired leases and those of the operations a killed
        service left (a dead pull's after the sweep, see ``_collect``), collect what a killed
        load/import/commit left. Snapshots are collected by the next ``image gc``/``rmi``."""
        try:
            await self._collect(None, spare_dead_pulls=True)
        except Exception:
            log.exception("start-up garbage collection failed")

    # -- resolve --------------------------------------------------------------------------------------
    @rpc("image.resolve")
    async def resolve(self, req: api.ResolveRequest, ctx: Context) -> api.ResolvedImage:
        """Find a local image and pick its platform manifest; see ``common/api/image.py``.

        Raises NotFound (``image 'x' not found``; ``no matching manifest for ...``), InvalidArgument
        for a malformed reference, Unavailable when unpack=True and the snapshot service is down.
        """
        rec, how = self._find(ctx.namespace, req.ref)
        platform = platforms.parse(req.platform) if req.platform else None
        view = await self._view_async(rec, platform, strict=platform is not None or not rec.dangling)
        if req.unpack and not await self._is_unpacked(ctx.namespace, view.chain_id):
            await self._unpack(ctx.namespace, view)
        return api.ResolvedImage(
            name="" if how == "id" or rec.dangling else rec.name,
            id=view.id,
            target=listing.desc_api(rec.target),
            manifest_digest=view.manifest_desc.digest,
            config=view.config.raw,
            layers=[
                api.LayerRef(digest=d.digest, media_type=d.media_type, size=d.size, diff_id=diff_id, chain_id=chain)
                for (d, diff_id), chain in zip(view.layers(), view.chain_ids, strict=True)
            ],
            chain_id=view.chain_id,
            size=view.size,
        )

    # -- pull -----------------------------------------------------------------------------------------
    @rpc("image.pull", stream=True)
    async def pull(self, req: api.PullRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Pull ``req.ref`` from its registry (OCI distribution spec); stream ``Progress`` frames.

        The last frame is ``{status: done, result: PullResult}``. Errors: NotFound (unknown
        manifest or no matching platform), Unauthenticated (401, naming the registry),
        InvalidArgument (digest mismatch, malformed documents; nothing is left behind),
        Unimplemented (schema 1, unknown layer types), Unavailable (registry unreachable).
        """
        ref = refs.parse(req.ref, default_tag=not req.all_tags)
        if req.all_tags and (ref.tag or ref.digest):
            raise errors.InvalidArgument("tag can't be used with --all-tags/-a")
        platform = platforms.parse(req.platform) if req.platform else None
        creds = basic_from_auth(req.auth)
        pump = ProgressPump()
        if req.all_tags:
            work = self._pull_all_tags(ctx.namespace, ref, platform, creds, req.unpack, pump.emit)
        else:
            work = self._pull_one(ctx.namespace, ref, platform, creds, req.unpack, pump.emit)
        async for frame in pump.run(work):
            yield frame

    async def _pull_one(
        self,
        namespace: str,
        ref: refs.Reference,
        platform: Platform | None,
        creds: Credentials | None,
        unpack: bool,
        emit: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        result, _changed = await self._pull(namespace, ref, platform, creds, unpack, emit)
        return result.model_dump()

    async def _pull_all_tags(
        self,
        namespace: str,
        repo: refs.Reference,
        platform: Platform | None,
        creds: Credentials | None,
        unpack: bool,
        emit: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """``docker pull -a``, as dockerd's puller does it: the registry's tag list, then each
        tag pulled in that order (a layer shared by tags is downloaded once: the next tag
        finds it ``Already exists``); one ``Status`` for the repository at the end. The first
        failing tag ends the pull (the tags before it stay pulled)."""
        tags = await self.puller.list_tags(repo, creds)
        changed = False
        last: api.PullResult | None = None
        names: list[str] = []
        downloaded = 0
        for tag in tags:
            last, tag_changed = await self._pull(namespace, repo.with_tag(tag), platform, creds, unpack, emit)
            changed = changed or tag_changed
            names.append(last.name)
            downloaded += last.downloaded
        familiar = repo.familiar()
        status = ("Downloaded newer image for " if changed else "Image is up to date for ") + familiar
        return api.PullResult(
            name=str(repo),
            digest=last.digest if last else "",
            id=last.id if last else "",
            manifest_digest=last.manifest_digest if last else "",
            status=status,
            downloaded=downloaded,
            tags=names,
        ).model_dump()

    async def _pull(
        self,
        namespace: str,
        ref: refs.Reference,
        platform: Platform | None,
        creds: Credentials | None,
        unpack: bool,
        emit: Callable[[dict[str, Any]], None],
    ) -> tuple[api.PullResult, bool]:
        """Pull one reference; return its result and whether a name was created or moved.

        The pull's lease protects what it downloads and unpacks until the image record
        does; it is released however the pull ends. A transient failure (registry
        unreachable or dropping the connection, deadline, cancelled client) leaves the
        ingests for the next attempt to resume (they have their own lifetime, see ``gc``)
        and the finished blobs for the next GC; any other failure collects at once.
        """
        lease = self._lease(namespace, PULL_LEASE_S, f"pull {ref}")

        def protect(digests: list[str]) -> None:
            for d in digests:
                self.meta.add_lease_resource(lease, "content", d)
                self.meta.add_lease_resource(lease, "ingest", d)

        try:
            fetched = await self.puller.fetch(ref, platform, creds, emit, protect)
            view = await asyncio.to_thread(view_of, self.content, fetched.manifest_desc, None)
            view.target = fetched.root
            if unpack:
                await self._unpack_after_write(namespace, view, lease, emit, fetched.present)
            names = [str(ref)]
            if ref.digest and ref.tag:
                names = [str(ref.with_digest(ref.digest)), str(ref.with_tag(ref.tag))]
            outcome = "unchanged"
            for name in names:
                result = self._set_name(
                    namespace, name, fetched.root, view.id, fetched.manifest_desc.digest, action="pull"
                )
                if result != "unchanged":
                    outcome = result
        except (errors.Unavailable, errors.DeadlineExceeded):
            raise  # transient: the ingests stay for a resume (the lease goes below)
        except errors.DockyardError:
            # bad content (digest or diff ID mismatch), refused credentials, unknown manifest...:
            # leave nothing behind: drop the lease and collect what only it protected
            self._end_lease(lease)
            await self._collect({namespace})
            raise
        finally:
            self._end_lease(lease)  # every way out, a cancelled client and unexpected errors too
        familiar = ref.familiar()
        status = ("Image is up to date for " if outcome == "unchanged" else "Downloaded newer image for ") + familiar
        emit({"status": f"Digest: {fetched.root.digest}"})
        pulled = api.PullResult(
            name=names[-1],
            digest=fetched.root.digest,
            id=view.id,
            manifest_digest=fetched.manifest_desc.digest,
            status=status,
            downloaded=fetched.downloaded,
        )
        return pulled, outcome != "unchanged"

    @rpc("image.distribution")
    async def distribution(self, req: api.DistributionRequest, _ctx: Context) -> api.DistributionReply:
        """Resolve ``req.ref`` at its registry without pulling (Docker's ``GET /distribution/{name}/json``):
        the descriptor of the manifest or index the reference names, and its platforms (every
        entry's of an index; a manifest's from its image config). Auth, mirrors and the
        HTTP fallback as for ``image.pull``; nothing is stored.

        Errors: InvalidArgument (malformed reference or documents), NotFound with the
        registry's words (``manifest for x:t not found: manifest unknown: manifest unknown``),
        Unauthenticated, Unavailable.
        """
        ref = refs.parse(req.ref)
        root, found = await self.puller.distribution(ref, basic_from_auth(req.auth))
        return api.DistributionReply(
            descriptor=api.Descriptor(
                mediaType=root.media_type, digest=root.digest, size=root.size, urls=list(root.urls) or None
            ),
            platforms=[p.to_json() for p in found],
        )

    # -- push ------------------------------------------------------------------------------------------
    @rpc("image.push", stream=True)
    async def push(self, req: api.PushRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``docker push``: upload a local image to the registry its name points at.

        Frames: ``Preparing``/``Pushing``/``Pushed``/``Layer already exists`` per blob; the last
        has ``result`` = ``PushResult``. Errors: NotFound (no such local image), Unauthenticated
        (401, naming the registry), PermissionDenied (403), Unavailable.
        """
        rec, how = self._find(ctx.namespace, req.ref)
        if how != "name" or rec.dangling:
            raise errors.InvalidArgument(f"cannot push {req.ref!r}: push a name (repository:tag), not an image id")
        ref = refs.parse(rec.name)
        creds = basic_from_auth(req.auth)
        lease = self._lease(ctx.namespace, OP_LEASE_S, f"push {ref}")
        self.meta.add_lease_resource(lease, "content", rec.target.digest)
        pump = ProgressPump()

        async def work() -> dict[str, Any]:
            outcome = await self.pusher.push(ref, rec.target, creds, pump.emit)
            return api.PushResult(name=ref.name, tag=ref.tag, digest=outcome.digest, size=outcome.size).model_dump()

        try:
            async for frame in pump.run(work()):
                yield frame
        finally:
            self._end_lease(lease)

    # -- load / import -------------------------------------------------------------------------------
    async def _feed(self, ctx: Context, pipe: ChunkPipe, worker: asyncio.Future[Any]) -> None:
        try:
            while True:
                chunk = await ctx.recv()
                if chunk is None:
                    break
                if worker.done():
                    return
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise errors.InvalidArgument("the client stream must carry bytes")
                await pipe.feed(bytes(chunk))
            await pipe.close_feed()
        except BaseException:
            pipe.abort()
            raise

    @rpc("image.load", stream=True)
    async def load(self, req: api.LoadRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``docker load``: read a docker-archive or OCI layout tar from the client stream.

        Frames: ``Loading layer`` progress, then ``Loaded image: <name>`` /
        ``Loaded image ID: <id>`` messages; the last has ``result`` = ``LoadReply``.
        Raises InvalidArgument for a malformed archive (nothing is recorded).
        """
        pump = ProgressPump()
        async for frame in pump.run(self._load(ctx, req, pump)):
            yield frame

    async def _load(self, ctx: Context, req: api.LoadRequest, pump: ProgressPump) -> dict[str, Any]:
        namespace = ctx.namespace
        lease = self._lease(namespace, OP_LEASE_S, "load")
        pipe = ChunkPipe()
        try:
            worker = asyncio.ensure_future(
                asyncio.to_thread(
                    archive.load_archive,
                    cast(IO[bytes], pipe),
                    self.content,
                    lambda d: self.meta.add_lease_resource(lease, "content", d),
                    pump.emit_threadsafe,
                )
            )
            feeder = asyncio.ensure_future(self._feed(ctx, pipe, worker))
            try:
                images = await worker
            except BaseException:
                pipe.abort()
                feeder.cancel()
                raise
            await feeder
            loaded: list[api.LoadedImage] = []
            for img in images:
                view = await self._host_view(img.target)
                image_id = view.id if view is not None else img.target.digest
                manifest_digest = view.manifest_desc.digest if view is not None else ""
                if view is not None:
                    view.target = img.target
                    await self._unpack_after_write(namespace, view, lease, lambda _f: None)
                names = img.names or [_dangling_name(img.target)]
                for name in names:
                    self._set_name(namespace, name, img.target, image_id, manifest_digest, action="load")
                    if not name.startswith(DANGLING_PREFIX):
                        pump.emit({"status": "message", "message": f"Loaded image: {refs.familiar(name)}"})
                        loaded.append(api.LoadedImage(name=name, id=image_id, digest=img.target.digest))
                if not img.names:
                    pump.emit({"status": "message", "message": f"Loaded image ID: {image_id}"})
                    loaded.append(api.LoadedImage(name="", id=image_id, digest=img.target.digest))
            return api.LoadReply(images=loaded).model_dump()
        finally:
            self._end_lease(lease)

    async def _host_view(self, target: Descriptor) -> ImageView | None:
        try:
            return await asyncio.to_thread(view_of, self.content, target, None)
        except errors.NotFound:
            try:
                return await asyncio.to_thread(view_of, self.content, target, None, strict=False)
            except errors.DockyardError:
                return None

    @rpc("image.import", stream=True)
    async def import_(self, req: api.ImportRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``docker import``: a rootfs tar (plain/gzip/zstd) from the client stream -> one-layer image.

        ``ref`` names the image ('' = dangling); ``changes`` are Dockerfile instructions.
        Last frame ``result`` = ``LoadedImage``. Raises InvalidArgument for a bad name, a bad
        change or input that is not a tar archive.
        """
        name = str(refs.parse(req.ref)) if req.ref else ""
        platform = platforms.parse(req.platform) if req.platform else None
        from services.image.changes import apply_changes

        apply_changes({}, req.changes)
        pump = ProgressPump()
        async for frame in pump.run(self._import(ctx, req, name, platform, pump)):
            yield frame

    async def _import(
        self, ctx: Context, req: api.ImportRequest, name: str, platform: Platform | None, pump: ProgressPump
    ) -> dict[str, Any]:
        namespace = ctx.namespace
        lease = self._lease(namespace, OP_LEASE_S, "import")
        pipe = ChunkPipe()
        try:
            worker = asyncio.ensure_future(
                asyncio.to_thread(
                    archive.import_rootfs,
                    cast(IO[bytes], pipe),
                    self.content,
                    lambda d: self.meta.add_lease_resource(lease, "content", d),
                    pump.emit_threadsafe,
                    changes=req.changes,
                    message=req.message,
                    platform=platform,
                )
            )
            feeder = asyncio.ensure_future(self._feed(ctx, pipe, worker))
            try:
                target = await worker
            except BaseException:
                pipe.abort()
                feeder.cancel()
                raise
            await feeder
            view = await asyncio.to_thread(view_of, self.content, target, None)
            if platform is None or platforms.matches(platforms.host(), platform):
                await self._unpack_after_write(namespace, view, lease, lambda _f: None)
            self._set_name(namespace, name or _dangling_name(target), target, view.id, target.digest, action="import")
            return api.LoadedImage(name=name, id=view.id, digest=target.digest).model_dump()
        finally:
            self._end_lease(lease)

    # -- commit --------------------------------------------------------------------------------------
    @rpc("image.commit")
    async def commit(self, req: api.CommitRequest, ctx: Context) -> api.CommitReply:
        """``docker commit``: the container's snapshot becomes a layer on top of ``parent``.

        ``snapshot.diff`` writes the layer (whiteouts and opaque directories included) into
        a scratch file of this service; the blob, the config and the manifest are committed
        under a lease, the new layer is unpacked, and ``ref`` (or a dangling name) points at
        it. NotFound for an unknown parent or snapshot, InvalidArgument for a bad ref or
        change; nothing is left behind on failure.
        """
        namespace = ctx.namespace
        name = str(refs.parse(req.ref)) if req.ref else ""
        record, _text = self._find(namespace, req.parent)
        parent = await asyncio.to_thread(view_of, self.content, record.target, None)
        from services.image.changes import apply_changes

        base = dict(req.config) if req.config else dict(parent.config.config)
        section = apply_changes(base, req.changes)
        lease = self._lease(namespace, OP_LEASE_S, "commit")
        scratch = self.data_dir / "commit-tmp" / f"{ids.new_id()}.layer"
        try:
            await asyncio.to_thread(scratch.parent.mkdir, parents=True, exist_ok=True)
            media_type = commit_mod.layer_media_type(parent)
            layer = await self._snapshot_call(
                "snapshot.diff", {"key": req.snapshot_key, "path": str(scratch), "media_type": media_type}, namespace
            )
            target = await asyncio.to_thread(
                commit_mod.build_commit,
                self.content,
                lambda d: self.meta.add_lease_resource(lease, "content", d),
                parent,
                scratch,
                layer,
                section,
                comment=req.comment,
                author=req.author,
                container_id=req.container_id,
                created_by=req.created_by,
            )
            view = await asyncio.to_thread(view_of, self.content, target, None)
            await self._unpack_after_write(namespace, view, lease, lambda _f: None)
            self._set_name(namespace, name or _dangling_name(target), target, view.id, target.digest, action="commit")
            return api.CommitReply(id=view.id, name=name, digest=target.digest)
        finally:
            await asyncio.to_thread(scratch.unlink, True)
            self._end_lease(lease)

    # -- save ----------------------------------------------------------------------------------------
    @rpc("image.save", stream=True)
    async def save(self, req: api.SaveRequest, ctx: Context) -> AsyncIterator[bytes]:
        """``docker save``: stream a tar (bytes frames) holding the named images.

        ``format='docker'``: a docker-archive (``manifest.json``) that is also an OCI layout,
        like Docker 25+; ``format='oci'``: the OCI layout only. Saving by name records that
        name; by id, no name. NotFound for an unknown image (before any byte is sent).
        """
        platform = platforms.parse(req.platform) if req.platform else None
        items: list[export.SaveItem] = []
        for text in req.refs:
            rec, how = self._find(ctx.namespace, text)
            view = await self._view_async(rec, platform, strict=platform is not None)
            name = rec.name if how == "name" and not rec.dangling else ""
            items.append(export.SaveItem(name, rec.target, view))
        lease = self._lease(ctx.namespace, OP_LEASE_S, "save")
        for item in items:
            self.meta.add_lease_resource(lease, "content", item.target.digest)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        cancelled = threading.Event()

        def sink(data: bytes) -> None:
            if cancelled.is_set():
                raise OSError("save cancelled by the client")
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()

        def write() -> None:
            writer = io.BufferedWriter(export.ChunkWriter(sink), buffer_size=_CHUNK)
            try:
                export.write_archive(
                    self.content, items, cast(IO[bytes], writer), docker_archive=req.format == "docker"
                )
                writer.flush()
            finally:
                if not cancelled.is_set():
                    asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        worker = asyncio.ensure_future(asyncio.to_thread(write))
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    break
                yield chunk
            await worker
        finally:
            cancelled.set()
            while not queue.empty():
                queue.get_nowait()
            if not worker.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(worker), 5)
            self._end_lease(lease)

    # -- list / inspect / history ----------------------------------------------------------------------
    @rpc("image.namespaces", quiet=True)
    async def namespaces(self, _req: Any, _ctx: Context) -> NamespacesReply:
        """``{}`` -> ``{namespaces}``: namespaces that hold at least one image record."""
        records = await asyncio.to_thread(self.meta.records, None)
        return NamespacesReply(namespaces=sorted({r.namespace for r in records}))

    @rpc("image.list")
    async def list_(self, req: api.ListRequest, ctx: Context) -> dict[str, Any]:
        """``docker images``: ``{images: [ImageSummary]}``, one per record (name), sorted by name.

        Filters (AND between keys, OR within): ``reference`` (glob on the familiar name,
        ``*`` not crossing ``/``), ``dangling``, ``label`` (``k`` or ``k=v`` on the config
        labels), ``before``/``since`` (another image). InvalidArgument for an unknown filter.
        """

        def created_of(ref: str) -> float:
            return self._find(ctx.namespace, ref)[0].created_at

        records, views = await asyncio.to_thread(listing.read_images, self.meta, self.content, ctx.namespace)
        diff_sizes = await self._diff_sizes(ctx.namespace, listing.chain_ids_of(views))
        images = await asyncio.to_thread(listing.list_images, records, views, diff_sizes, req.filters, created_of)
        return {"images": [i.model_dump() for i in images]}

    @rpc("image.get")
    async def get(self, req: api.GetRequest, ctx: Context) -> api.ImageInspect:
        """``docker image inspect``: config, RootFS diff IDs, RepoTags, RepoDigests, size (Docker's:
        the unpacked size, see ``listing``), layers (with their diff sizes once unpacked)."""
        rec, _how = self._find(ctx.namespace, req.ref)
        platform = platforms.parse(req.platform) if req.platform else None
        view = await self._view_async(rec, platform, strict=platform is not None)
        records = [
            r for r in self.meta.records(ctx.namespace) if r.image_id == view.id or r.target.digest == rec.target.digest
        ]
        diff_sizes = await self._diff_sizes(ctx.namespace, view.chain_ids)
        return listing.inspect(rec, view, records, diff_sizes)

    @rpc("image.history")
    async def history(self, req: api.GetRequest, ctx: Context) -> dict[str, Any]:
        """``docker history``: ``{history: [HistoryEntry]}``, newest first. Sizes are the layers' diff
        sizes (their blob sizes while the image is not wholly unpacked)."""
        rec, _how = self._find(ctx.namespace, req.ref)
        platform = platforms.parse(req.platform) if req.platform else None
        view = await self._view_async(rec, platform, strict=platform is not None)
        tags, _digests = record_names([r for r in self.meta.records(ctx.namespace) if r.image_id == view.id])
        diff_sizes = await self._diff_sizes(ctx.namespace, view.chain_ids)
        return {"history": [e.model_dump() for e in listing.history(view, tags, diff_sizes)]}

    # -- tag / remove / prune / gc ---------------------------------------------------------------------
    @rpc("image.tag")
    async def tag(self, req: api.TagRequest, ctx: Context) -> api.ImageSummary:
        """``docker tag SOURCE TARGET``: point the name ``target`` (``:latest`` added when no tag)
        at the image ``source`` names. NotFound for an unknown source, InvalidArgument for a
        malformed target (a digest is not allowed). Returns the new name's summary, whose
        ``size`` is the layers' blob sum: a tag does not wait for the snapshot service's diff
        sizes (``image.list``/``image.inspect`` give the unpacked size)."""
        rec, _how = self._find(ctx.namespace, req.source)
        target_ref = refs.parse(req.target)
        if target_ref.digest:
            raise errors.InvalidArgument(
                f"invalid tag {req.target!r}: refusing to create a tag with a digest reference"
            )
        view = await self._view_async(rec, None, strict=False)
        self._set_name(ctx.namespace, str(target_ref), rec.target, view.id, view.manifest_desc.digest, action="tag")
        new = self.meta.get(ctx.namespace, str(target_ref))
        assert new is not None
        return listing.summary(new, view, self.meta.records(ctx.namespace), None)

    async def _containers_using(self, namespace: str) -> dict[str, list[tuple[str, bool]]] | None:
        """``{image id: [(container name, running)]}`` from the execution service, None if unknown."""
        if self.execution is None:
            return None
        try:
            reply = await self.execution.call("execution.list", {"all": True}, namespace=namespace, timeout_s=10)
        except (errors.Unavailable, errors.Unimplemented, errors.DeadlineExceeded) as exc:
            log.warning("cannot ask the execution service which images are in use: %s", exc)
            return None
        out: dict[str, list[tuple[str, bool]]] = {}
        items = reply.get("containers", []) if isinstance(reply, dict) else []
        for c in items:
            if not isinstance(c, dict):
                continue
            image_id = str(c.get("image_id") or "")
            name = str(c.get("name") or c.get("id") or "")[:64]
            raw_state = c.get("state")
            state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
            running = bool(state.get("running")) or state.get("status") in ("running", "paused", "restarting")
            out.setdefault(image_id, []).append((name, running))
        return out

    @rpc("image.remove")
    async def remove(self, req: api.RemoveRequest, ctx: Context) -> api.RemoveReply:
        """``docker rmi``: by name untag it (and delete the image when that was its last name);
        by id delete the image and every name of it.

        Conflict when an id names an image tagged in several repositories (unless ``force``),
        or when a container uses the image (a running one even with ``force``). Deleting
        collects the blobs and snapshots nothing references any more (unless ``prune=False``).
        """
        ns = ctx.namespace
        rec, how = self._find(ns, req.ref)
        image_id = rec.image_id or rec.target.digest
        same = [r for r in self.meta.records(ns) if (r.image_id or r.target.digest) == image_id]
        usage = await self._containers_using(ns)
        users = (usage or {}).get(image_id, [])
        reply = api.RemoveReply()
        short = image_id.split(":", 1)[-1][:12]
        if how == "name" and not rec.dangling:
            others = [r for r in same if r.name != rec.name and not r.dangling]
            if not others and users and not req.force:
                name, running = users[0]
                state = "running" if running else "stopped"
                raise errors.Conflict(
                    f"unable to remove repository reference '{refs.familiar(rec.name)}' (must force) - "
                    f"container {name} ({state}) is using its referenced image {short}"
                )
            self.meta.delete(ns, rec.name)
            reply.untagged.append(refs.familiar(rec.name))
            self._publish(topics.IMAGE_DELETE, {"name": rec.name, "image_id": rec.image_id}, ns)
            if others:
                return reply
            if users:  # forced: the image stays, without a name
                self._keep_dangling(rec)
                return reply
            self._delete_records([r for r in same if r.name != rec.name], ns)
        else:
            repos = {refs.try_parse(r.name).name for r in same if not r.dangling and refs.try_parse(r.name)}  # type: ignore[union-attr]
            if len(repos) > 1 and not req.force:
                raise errors.Conflict(
                    f"unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )
            if users:
                running_users = [n for n, is_running in users if is_running]
                if running_users:
                    raise errors.Conflict(
                        f"unable to delete {short} (cannot be forced) - "
                        f"image is being used by running container {running_users[0]}"
                    )
                if not req.force:
                    raise errors.Conflict(
                        f"unable to delete {short} (must be forced) - "
                        f"image is being used by stopped container {users[0][0]}"
                    )
            for r in same:
                if not r.dangling:
                    reply.untagged.append(refs.familiar(r.name))
            self._delete_records(same, ns)
        reply.deleted.append(image_id)
        if req.prune:
            await self._collect({ns})
        return reply

    def _delete_records(self, records: list[ImageRecord], ns: str) -> None:
        for r in records:
            self.meta.delete(ns, r.name)
            self._publish(topics.IMAGE_DELETE, {"name": r.name, "image_id": r.image_id}, ns)

    @rpc("image.prune")
    async def prune(self, req: api.PruneRequest, ctx: Context) -> api.PruneReply:
        """``docker image prune [-a]``: remove dangling images (``all``: every image no container
        uses), drop what interrupted pulls kept for a resume, then collect unreferenced content
        and snapshots. Returns what went and the bytes freed."""
        ns = ctx.namespace
        usage = await self._containers_using(ns) or {}
        in_use = {k for k, v in usage.items() if v}
        reply = api.PruneReply()
        label_filters = req.filters.get("label", [])
        until = listing.parse_until(req.filters["until"][-1]) if req.filters.get("until") else None
        deleted_ids: set[str] = set()
        for rec in self.meta.records(ns):
            image_id = rec.image_id or rec.target.digest
            if image_id in in_use:
                continue
            if not req.all and not rec.dangling:
                continue
            if until is not None and not rec.created_at < until:
                continue
            if label_filters and not all(listing.label_matches(rec.labels, f) for f in label_filters):
                continue
            self.meta.delete(ns, rec.name)
            self._publish(topics.IMAGE_DELETE, {"name": rec.name, "image_id": rec.image_id}, ns)
            if not rec.dangling:
                reply.untagged.append(refs.familiar(rec.name))
            if not any((r.image_id or r.target.digest) == image_id for r in self.meta.records(ns)):
                deleted_ids.add(image_id)
        # what interrupted pulls kept for a resume (their ingests) is unused too: prune drops
        # it (a plain GC keeps an ingest for a day after its last write)
        namespaces = {ns} | {r.namespace for r in self.meta.records(None)}
        collected = await self._collect(namespaces, ingest_max_age_s=0)
        reply.deleted = sorted(deleted_ids)
        reply.space_reclaimed = collected.bytes_removed
        return reply

    @rpc("image.gc")
    async def gc(self, _req: dict[str, Any] | None, ctx: Context) -> api.GcReply:
        """``dockyard image gc``: release expired leases and those of operations whose process
        is gone (a killed service's pulls), then remove the blobs, snapshots and idle ingests
        (older than a day) nothing references: image records and live leases are the roots."""
        namespaces = {ctx.namespace} | {r.namespace for r in self.meta.records(None)}
        return await self._collect(namespaces)

    # -- login -----------------------------------------------------------------------------------------
    @rpc("image.login")
    async def login(self, req: api.LoginRequest, ctx: Context) -> dict[str, Any]:
        """``docker login``: check credentials against a registry (Basic, or a token fetch) and store
        them in the Docker-format config.json the service reads (``registry_config``).

        Raises Unauthenticated naming the registry when refused, Unavailable when unreachable.
        """
        domain = _registry_domain(req.registry)
        creds = Credentials(req.username, req.password)
        await self.registry.login(domain, creds)
        await asyncio.to_thread(write_config_entry, self.credentials.path, domain, creds)
        return {"registry": domain, "status": "Login Succeeded"}

    @rpc("image.logout")
    async def logout(self, req: api.LogoutRequest, ctx: Context) -> dict[str, Any]:
        """``docker logout``: remove the registry's stored credentials and forget its tokens."""
        domain = _registry_domain(req.registry)
        self.registry.tokens.drop(refs.registry_endpoint_host(domain))
        await asyncio.to_thread(write_config_entry, self.credentials.path, domain, None)
        return {"registry": domain}


def _registry_domain(text: str) -> str:
    value = text.strip()
    for prefix in ("https://", "http://"):
        value = value.removeprefix(prefix)
    value = value.split("/", 1)[0].lower()
    if value in ("", "docker.io", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    if not re.match(r"^[a-z0-9.\-]+(:[0-9]+)?$|^\[[0-9a-f:]+\](:[0-9]+)?$", value):
        raise errors.InvalidArgument(f"invalid registry {text!r}: expected host[:port]")
    return value
