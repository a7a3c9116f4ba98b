"""The snapshot service: containerd's Snapshots service, its diff applier and its unpacker.

``SnapshotService`` serves the methods of ``common.api.snapshot`` over the metadata
``store.Store`` and a storage ``snapshotters.Snapshotter`` (overlayfs or native). No
zmq here: the RPC server and the event publisher are wired in ``__main__``; tests
drive this class directly.

Concurrency: metadata calls run on one dedicated thread (SQLite, one connection);
file work (copying, applying, measuring, removing) in worker threads, never on the
event loop. Unpacking takes a per-chain-ID lock, so one chain ID is applied once even
when two images sharing it are unpacked at the same time. A layer is applied into an
active snapshot ``extract-<random> <chainID>`` and becomes visible under its chain ID
only by the final (metadata-only) commit, after its diff ID was verified and the file
system synced; a failure removes the active snapshot. On start ``recover()`` drops
what a crash left: ``extract-*`` actives and directories no metadata refers to.

Diff sizes: a commit records, in the statement that commits it, the snapshot's diff size
(``diff.diff_size``: what Docker reports as the layer's DiffSize), measured in the walk
that measures its usage (overlayfs) or counted by the applier (native). A committed
snapshot without one (committed by an older version) is measured once, when
``snapshot.diff_sizes`` first asks for it, and recorded.

Events (``/snapshots/prepare|commit|remove``, containerd's payloads plus ``namespace``)
go through the durable outbox; publishing never blocks or fails a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from common import errors, topics
from common.api.base import NamespacesReply
from common.api.snapshot import (
    CommitRequest,
    DiffReply,
    DiffRequest,
    DiffSizesReply,
    DiffSizesRequest,
    ExportRequest,
    Info,
    KeyRequest,
    Kind,
    LayerToApply,
    ListReply,
    ListRequest,
    MountsReply,
    PrepareRequest,
    UnpackReply,
    UnpackRequest,
    UpdateRequest,
    Usage,
)
from common.ids import new_id
from common.rpc.server import Context, rpc
from services.snapshot import apply, filters, layers, rootfs
from services.snapshot import diff as differ
from services.snapshot.snapshotters import Snapshotter
from services.snapshot.store import Row, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_REF = "containerd.io/snapshot.ref"
LABEL_DIFF_ID = "containerd.io/snapshot/diff-id"
EXTRACT_PREFIX = "extract-"


class Publisher(Protocol):
    def publish(self, topic: str, event: dict[str, Any], *, namespace: str, event_id: str) -> object: ...


def _info(row: Row) -> Info:
    return Info(
        name=row.key,
        parent=row.parent,
        kind=row.kind,
        created_at=row.created_at,
        updated_at=row.updated_at,
        labels=row.labels,
    )


class SnapshotService:
    """The ``snapshot.*`` RPC methods (see ``common.api.snapshot`` for the shapes)."""

    def __init__(self, store: Store, snapshotter: Snapshotter, publisher: Publisher | None = None) -> None:
        self.store = store
        self.snapshotter = snapshotter
        self.publisher = publisher
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-db")
        self._chain_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._chain_users: dict[tuple[str, str], int] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._measuring: dict[int, asyncio.Future[int | None]] = {}  # snapshot id -> its diff size walk
        self._walks = asyncio.Semaphore(1)  # those walks, one at a time (created lazily in a loop, 3.10+)

    async def close(self) -> None:
        await self.drain()
        self._db_thread.shutdown(wait=True)
        await asyncio.to_thread(self.store.close)

    # -- plumbing ----------------------------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, lambda: fn(*args))

    def _publish(self, topic: str, namespace: str, event: dict[str, Any]) -> None:
        if self.publisher is None:
            return
        event = {**event, "snapshotter": self.snapshotter.name}
        try:
            self.publisher.publish(topic, event, namespace=namespace, event_id=f"snapshot-{new_id()}")
        except Exception as exc:  # an event that cannot be queued must not fail the call
            log.error("cannot queue event %s for snapshot %r: %s", topic, event.get("key"), exc)

    @contextlib.asynccontextmanager
    async def _chain_lock(self, namespace: str, chain_id: str) -> Any:
        key = (namespace, chain_id)
        lock = self._chain_locks.setdefault(key, asyncio.Lock())
        self._chain_users[key] = self._chain_users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._chain_users[key] -= 1
            if not self._chain_users[key]:
                del self._chain_users[key]
                del self._chain_locks[key]

    # -- lifecycle ---------------------------------------------------------------------------
    async def recover(self) -> None:
        """Drop what a crash left behind: ``extract-*`` active snapshots (a layer being
        applied when the service died), snapshot directories with no metadata, and
        directories half made or detached for removal. Metadata first; the directories
        are moved aside at once and deleted in the background."""
        for namespace, key in await self._db(self.store.stale_extractions):
            try:
                await self._db(self.store.remove, namespace, key)
            except errors.DockyardError as exc:
                log.warning("cannot remove stale extraction %r in %s: %s", key, namespace, exc)
                continue
            log.info("removed stale extraction %r in namespace %s", key, namespace)
            self._publish(topics.SNAPSHOT_REMOVE, namespace, {"key": key})
        await self._remove_orphans()
        for path in await asyncio.to_thread(self.snapshotter.trash):
            self._purge_later(path)

    async def _remove_orphans(self) -> int:
        known = await self._db(self.store.all_ids)
        on_disk = await asyncio.to_thread(self.snapshotter.ids_on_disk)
        orphans = sorted(on_disk - known)
        for orphan in orphans:
            log.info("removing snapshot directory %d: not in the metadata", orphan)
            path = await asyncio.to_thread(self.snapshotter.detach, orphan)
            if path is not None:
                self._purge_later(path)
        return len(orphans)

    def _purge_later(self, path: str) -> None:
        """Delete a detached directory in a worker thread, in the background."""

        async def purge() -> None:
            try:
                await asyncio.to_thread(self.snapshotter.purge, path)
            except OSError as exc:  # retried at the next start (it is still in trash())
                log.error("cannot delete %s: %s", path, exc)

        task = asyncio.ensure_future(purge())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (up to ``timeout_s``) for background deletions; the rest resume at next start."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)

    # -- snapshot verbs ----------------------------------------------------------------------
    async def _create(self, namespace: str, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> Row:
        row = await self._db(self.store.create, namespace, key, kind, parent, labels)
        try:
            await asyncio.to_thread(self.snapshotter.create, row.id, kind, row.parent_ids)
        except BaseException:
            with contextlib.suppress(errors.DockyardError):
                await self._db(self.store.remove, namespace, key)
            path = await asyncio.to_thread(self.snapshotter.detach, row.id)
            if path is not None:
                self._purge_later(path)
            raise
        self._publish(topics.SNAPSHOT_PREPARE, namespace, {"key": key, "parent": parent})
        return row

    @rpc("snapshot.prepare")
    async def prepare(self, req: PrepareRequest, ctx: Context) -> MountsReply:
        """New active snapshot ``key`` on committed ``parent`` -> its mounts.

        AlreadyExists (key taken), NotFound (no such parent), FailedPrecondition
        (parent not committed). containerd Snapshots.Prepare.
        """
        row = await self._create(ctx.namespace, Kind.ACTIVE, req.key, req.parent, req.labels)
        return MountsReply(mounts=self.snapshotter.mounts(row.id, Kind.ACTIVE, row.parent_ids))

    @rpc("snapshot.view")
    async def view(self, req: PrepareRequest, ctx: Context) -> MountsReply:
        """New read-only snapshot ``key`` on committed ``parent`` -> its mounts (as prepare)."""
        row = await self._create(ctx.namespace, Kind.VIEW, req.key, req.parent, req.labels)
        return MountsReply(mounts=self.snapshotter.mounts(row.id, Kind.VIEW, row.parent_ids))

    @rpc("snapshot.mounts")
    async def mounts(self, req: KeyRequest, ctx: Context) -> MountsReply:
        """Mounts of active or view snapshot ``key``; NotFound, FailedPrecondition if committed."""
        row = await self._db(self.store.get, ctx.namespace, req.key)
        if row.kind is Kind.COMMITTED:
            raise errors.FailedPrecondition(f"snapshot {req.key!r} is committed: prepare or view a child to mount it")
        return MountsReply(mounts=self.snapshotter.mounts(row.id, row.kind, row.parent_ids))

    @rpc("snapshot.commit")
    async def commit(self, req: CommitRequest, ctx: Context) -> Info:
        """Active ``key`` becomes committed ``name`` (metadata only; usage measured now).

        NotFound, FailedPrecondition (not active), AlreadyExists (name taken).
        """
        return _info(await self._commit(ctx.namespace, req.key, req.name, req.labels))

    async def _commit(
        self, namespace: str, key: str, name: str, labels: dict[str, str], applied_size: int | None = None
    ) -> Row:
        """Commit ``key`` as ``name`` with its usage and diff size. ``applied_size``: the
        ``content_size`` of the layer just applied into it, which a native snapshot records
        as its diff size (moby's vfs records what ``archive.UnpackLayer`` counted); an
        overlay snapshot's is the walk of its directory, as overlay2's."""
        row = await self._db(self.store.get, namespace, key)
        if row.kind is not Kind.ACTIVE:
            raise errors.FailedPrecondition(
                f"snapshot {key!r} is {row.kind.value}, only an active one can be committed"
            )
        if await self._db(self.store.find, namespace, name) is not None:
            raise errors.AlreadyExists(f"snapshot {name!r} already exists")
        source = self.snapshotter.diff_source(row.id, row.parent_ids)

        def measure() -> tuple[int, int, int]:
            usage = self.snapshotter.usage(row.id)
            if applied_size is not None and not source.overlay:
                return usage.size, usage.inodes, applied_size
            return usage.size, usage.inodes, differ.diff_size(source, walked=usage.content)

        size, inodes, diff_size = await asyncio.to_thread(measure)
        committed = await self._db(self.store.commit, namespace, key, name, labels, size, inodes, diff_size)
        await asyncio.to_thread(self.snapshotter.commit, row.id)
        self._publish(topics.SNAPSHOT_COMMIT, namespace, {"key": key, "name": name, "parent": row.parent})
        return committed

    @rpc("snapshot.remove")
    async def remove(self, req: KeyRequest, ctx: Context) -> dict[str, Any]:
        """Remove snapshot ``key`` and its files; NotFound, FailedPrecondition while it has
        children. containerd Snapshots.Remove."""
        await self._remove(ctx.namespace, req.key)
        return {}

    async def _remove(self, namespace: str, key: str) -> None:
        row = await self._db(self.store.remove, namespace, key)
        self._publish(topics.SNAPSHOT_REMOVE, namespace, {"key": key})
        try:
            path = await asyncio.to_thread(self.snapshotter.detach, row.id)
        except OSError as exc:  # metadata is gone; recover() removes the orphan at next start
            log.error("snapshot %r removed but its directory %d stays: %s", key, row.id, exc)
            return
        if path is not None:
            self._purge_later(path)

    @rpc("snapshot.stat")
    async def stat(self, req: KeyRequest, ctx: Context) -> Info:
        """Metadata of snapshot ``key``; NotFound."""
        return _info(await self._db(self.store.get, ctx.namespace, req.key))

    @rpc("snapshot.update")
    async def update(self, req: UpdateRequest, ctx: Context) -> Info:
        """Change the labels of ``key`` (merge, '' deletes; or ``replace``); NotFound."""
        return _info(await self._db(self.store.update_labels, ctx.namespace, req.key, req.labels, req.replace))

    @rpc("snapshot.list")
    async def list(self, req: ListRequest, ctx: Context) -> ListReply:
        """Snapshots of the namespace matching ``filters`` (containerd Walk), by name."""
        match = filters.compile_filters(req.filters)
        rows = await self._db(self.store.list, ctx.namespace)
        out = []
        for row in rows:
            fields = {"name": row.key, "parent": row.parent, "kind": row.kind.value}
            fields.update({f"labels.{k}": v for k, v in row.labels.items()})
            if match(fields):
                out.append(_info(row))
        return ListReply(snapshots=out)

    @rpc("snapshot.namespaces", quiet=True)
    async def namespaces(self, _req: Any, _ctx: Context) -> NamespacesReply:
        """``{}`` -> ``{namespaces}``: namespaces holding at least one snapshot."""
        return NamespacesReply(namespaces=await self._db(self.store.namespaces))

    @rpc("snapshot.usage")
    async def usage(self, req: KeyRequest, ctx: Context) -> Usage:
        """Bytes (allocated blocks) and inodes of ``key``'s own directory, excluding its
        parents; measured at commit for committed snapshots, now for the others, which also
        get ``content_size`` (what Docker shows as a container's SizeRw)."""
        row = await self._db(self.store.get, ctx.namespace, req.key)
        if row.kind is Kind.COMMITTED and row.size is not None and row.inodes is not None:
            return Usage(size=row.size, inodes=row.inodes)

        def measure() -> Usage:
            u = self.snapshotter.usage(row.id)
            content = self.snapshotter.content_size(row.id) if row.kind is not Kind.COMMITTED else None
            return Usage(size=u.size, inodes=u.inodes, content_size=content)

        return await asyncio.to_thread(measure)

    @rpc("snapshot.diff_sizes")
    async def diff_sizes(self, req: DiffSizesRequest, ctx: Context) -> DiffSizesReply:
        """``{keys}`` -> ``{diff_sizes: {name: bytes}}`` for the committed snapshots among
        ``keys`` (image layers by chain ID): Docker's DiffSize of each (see
        ``diff.diff_size``), recorded at commit. One committed before diff sizes were
        recorded is measured now, once (a walk of its directory, in a worker thread; the walks
        of all such snapshots asked for start at once and run one after the other, and go on
        if the caller gives up: their results are recorded for the next call). Names
        that are not committed snapshots (absent, or an unpack still running) are left out:
        this never waits for an unpack. Never fails for a snapshot that cannot be measured
        (it is left out and logged)."""
        rows = await self._db(self.store.committed, ctx.namespace, req.keys)
        # every walk under way before the first wait: a caller that gives up (the image service
        # does after DIFF_SIZES_TIMEOUT_S) must not leave the later ones unstarted
        walks = {row.id: self._measure_later(row) for row in rows if row.diff_size is None}
        out: dict[str, int] = {}
        for row in rows:
            size = row.diff_size
            if size is None:
                size = await asyncio.shield(walks[row.id])
            if size is not None:
                out[row.key] = size
        return DiffSizesReply(diff_sizes=out)

    def _measure_later(self, row: Row) -> asyncio.Future[int | None]:
        """The diff size walk of committed ``row`` (one at a time per snapshot), recorded when
        done; None if it could not be measured."""
        running = self._measuring.get(row.id)
        if running is not None:
            return running

        async def measure() -> int | None:
            source = self.snapshotter.diff_source(row.id, row.parent_ids)
            try:
                async with self._walks:
                    size = await asyncio.to_thread(differ.diff_size, source)
            except (OSError, rootfs.PathError) as exc:  # removed meanwhile, or unreadable
                log.warning("cannot measure the diff size of snapshot %r: %s", row.key, exc)
                return None
            await self._db(self.store.set_diff_size, row.id, size)
            log.info("measured the diff size of snapshot %r (committed before it was recorded): %d", row.key, size)
            return size

        task = asyncio.ensure_future(measure())
        self._measuring[row.id] = task
        self._background.add(task)

        def done(t: asyncio.Future[int | None]) -> None:
            self._background.discard(t)
            if self._measuring.get(row.id) is t:
                del self._measuring[row.id]

        task.add_done_callback(done)
        return task

    @rpc("snapshot.diff")
    async def diff(self, req: DiffRequest, ctx: Context) -> DiffReply:
        """Write the changes of ``key`` against its parents as a layer blob at ``path``.

        OCI image-spec layer.md change sets: added/modified entries, ``.wh.<name>`` for
        deletions, ``.wh..wh..opq`` for opaque directories; compression from
        ``media_type``. Returns the blob's descriptor and diff ID. NotFound,
        InvalidArgument (media type, path). containerd Diff service.
        """
        row = await self._db(self.store.get, ctx.namespace, req.key)
        source = self.snapshotter.diff_source(row.id, row.parent_ids)
        info = await self._write_blob(differ.write_changes, source, req.path, req.media_type, f"diff of {req.key!r}")
        log.info("diff of snapshot %r: %s (%d bytes)", req.key, info.digest, info.size)
        return DiffReply(**info.__dict__)

    @rpc("snapshot.export")
    async def export(self, req: ExportRequest, ctx: Context) -> DiffReply:
        """Write the whole merged tree of ``key`` (any kind) as an uncompressed tar at
        ``path`` (``docker export``). NotFound, InvalidArgument (path)."""
        row = await self._db(self.store.get, ctx.namespace, req.key)
        source = self.snapshotter.merged_source(row.id, row.parent_ids)
        media_type = layers.MEDIA_TYPE_FOR[layers.Compression.NONE]
        info = await self._write_blob(differ.write_flat, source, req.path, media_type, f"export of {req.key!r}")
        return DiffReply(**info.__dict__)

    async def _write_blob(self, writer: Any, source: Any, path: str, media_type: str, what: str) -> differ.BlobInfo:
        try:
            return await asyncio.to_thread(differ.write_layer_blob, writer, source, path, media_type)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.ResourceExhausted(f"{what}: no space left on device for {path}") from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise errors.PermissionDenied(f"{what}: cannot write {path}: {exc.strerror}") from None
            raise

    @rpc("snapshot.cleanup")
    async def cleanup(self, _req: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Delete snapshot directories that no metadata refers to -> ``{removed}`` (their
        count; the deletion itself finishes in the background). containerd Cleanup."""
        return {"removed": await self._remove_orphans()}

    # -- unpack ------------------------------------------------------------------------------
    @rpc("snapshot.unpack")
    async def unpack(self, req: UnpackRequest, ctx: Context) -> UnpackReply:
        """Apply an image's layers (lowest first) into committed snapshots named by chain ID.

        Layers whose chain ID is already committed are skipped. Each other layer is
        applied into ``extract-<random> <chainID>`` on the previous chain ID and
        committed once its diff ID is verified. InvalidArgument: unsupported or
        mismatched media type, corrupt or hostile layer (names the entry), wrong diff ID
        (names the layer digest, expected and actual diff IDs); NotFound: a blob path
        missing. Nothing is committed for a failed layer. containerd core/unpack.
        """
        namespace = ctx.namespace
        chain = layers.chain_ids([layer.diff_id for layer in req.layers])
        for layer in req.layers:
            layers.validate_digest(layer.digest, "layer digest")
            layers.compression_of(layer.media_type)
        unpacked = 0
        for i, layer in enumerate(req.layers):
            parent = chain[i - 1] if i else ""
            async with self._chain_lock(namespace, chain[i]):
                existing = await self._db(self.store.find, namespace, chain[i])
                if existing is not None:
                    if existing.kind is not Kind.COMMITTED:
                        raise errors.FailedPrecondition(
                            f"snapshot {chain[i]!r} exists but is {existing.kind.value}, not a committed layer"
                        )
                    continue
                # shielded: a cancelled request still finishes (or cleans up) the layer in hand
                task = asyncio.ensure_future(self._unpack_layer(namespace, layer, chain[i], parent, req.labels))
                await asyncio.shield(task)
                unpacked += 1
        return UnpackReply(chain_ids=chain, chain_id=chain[-1] if chain else "", unpacked=unpacked)

    async def _unpack_layer(
        self, namespace: str, layer: LayerToApply, chain_id: str, parent: str, labels: dict[str, str]
    ) -> None:
        try:
            size = (await asyncio.to_thread(os.stat, layer.path)).st_size
        except OSError:
            raise errors.NotFound(f"layer {layer.digest}: blob not found at {layer.path}") from None
        if size != layer.size:
            raise errors.InvalidArgument(
                f"layer {layer.digest}: blob at {layer.path} is {size} bytes, descriptor says {layer.size}"
            )
        key = f"{EXTRACT_PREFIX}{secrets.token_hex(8)} {chain_id}"
        extract_labels = {LABEL_REF: chain_id, LABEL_DIFF_ID: layer.diff_id}
        row = await self._create(namespace, Kind.ACTIVE, key, parent, extract_labels)
        committed = False
        try:
            target = self.snapshotter.apply_target(row.id, row.parent_ids)
            cancel = threading.Event()
            work = asyncio.ensure_future(
                asyncio.to_thread(
                    apply.apply_layer,
                    layer.path,
                    layer.media_type,
                    layer.digest,
                    target.upper,
                    target.lowers,
                    overlay=target.overlay,
                    cancel=cancel,
                )
            )
            try:
                result = await asyncio.shield(work)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise errors.ResourceExhausted(f"layer {layer.digest}: no space left to unpack it") from None
                raise
            except asyncio.CancelledError:
                # stop the worker between two entries and let it let go of the directory
                # before the snapshot is removed below
                cancel.set()
                await asyncio.wait([work])
                raise
            if result.diff_id != layer.diff_id:
                raise errors.InvalidArgument(
                    f"layer {layer.digest}: wrong diff ID: expected {layer.diff_id}, got {result.diff_id}"
                )
            final_labels = {**labels, LABEL_DIFF_ID: layer.diff_id}
            try:
                await self._commit(namespace, key, chain_id, final_labels, applied_size=result.content_size)
                committed = True
            except errors.AlreadyExists:
                log.info("chain %s was committed concurrently; dropping our copy", chain_id)
            log.info(
                "unpacked layer %s as %s (%d entries, %d bytes)", layer.digest, chain_id, result.entries, result.size
            )
        finally:
            if not committed:
                with contextlib.suppress(errors.NotFound):
                    await self._remove(namespace, key)
