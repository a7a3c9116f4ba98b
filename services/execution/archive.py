"""``docker cp``: stat, read and write paths inside a container (moby ``daemon/archive*.go``).

``execution.archive_stat``, ``execution.archive_get`` and ``execution.archive_put`` (shapes in
``common.api.execution``). The container's file system is seen as moby's daemon sees it: the
root file system plus the container's bind mounts (volumes, binds, ``/etc/hosts`` and
friends), each path resolved in scope by ``common.fsarchive`` (no symlink leads out of the
container, no tar entry lands outside the directory it is extracted to).

Where the root is: a container with a task has its rootfs mounted at ``<bundle>/rootfs`` by
its shim; a root fd of that mount is taken under the container's lock (so a stop cannot
swap it for the empty directory under it) and used without the lock afterwards (exit
handling is never held up by a copy). A created or stopped container's snapshot is mounted
on a private directory (``<root>/execution/archive-mnt/<id>``) for the call, with the
container's lock held until it is unmounted, as moby holds its container lock: a start or a
removal waits for the copy; the mount is taken down even on error, and a crash's leftovers
at the next start (``recover``).

The tar work runs in a thread: reads stream out in bounded frames (at most ``QUEUE_FRAMES``
of ``FRAME_BYTES`` in memory), the upload is read from the call's own stream under its
flow control.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import logging
import os
import stat as stat_mod
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import errors, ids, topics
from common.api.execution import ArchivePathRequest, ArchivePutRequest, PathStat
from common.fsarchive import ArchiveError, ExtractOptions, Mount, Scope, extract_tar, path_stat, write_tar
from common.rpc.server import Context, rpc
from services.shim import mount as mountlib
from services.shim import rootfs as rootfs_mod

if TYPE_CHECKING:
    from services.execution.service import ExecutionService
    from services.execution.store import Record

log = logging.getLogger(__name__)

FRAME_BYTES = 256 * 1024
"""Bytes of tar per frame sent to the client."""
QUEUE_FRAMES = 8
"""Frames the tar thread may run ahead of the client."""
ABORT_POLL_S = 0.5
"""How often a thread blocked on the client checks whether the call was abandoned."""


class _Aborted(Exception):
    """The call ended (client gone, cancelled): the thread stops."""


class _Opened:
    """A container's file system opened for one call: ``scope`` plus what ``close`` undoes."""

    def __init__(self, scope: Scope, root: str, temp_mount: str | None, lock: asyncio.Lock | None) -> None:
        self.scope = scope
        self.root = root
        self.temp_mount = temp_mount
        self.lock = lock

    async def close_after(self, worker: asyncio.Future[Any] | None = None) -> None:
        """``close`` once ``worker`` (the call's thread, if any) ended. Callers await it
        shielded in their ``finally``: a call cancelled again while it cleans up (the client
        left: its cancel, then a send that finds it gone) still unmounts and releases the
        lock, where the second cancellation used to cut the clean-up short and leave the
        temporary mount behind."""
        if worker is not None:
            await asyncio.gather(worker, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        try:
            self.scope.close()
            if self.temp_mount is not None:
                await asyncio.to_thread(_unmount_temp, self.temp_mount)
        finally:
            if self.lock is not None and self.lock.locked():
                self.lock.release()


def _is_mounted(path: str) -> bool:
    return os.path.isdir(path) and mountlib.is_mountpoint(path)


def _unmount_temp(point: str) -> None:
    try:
        mountlib.unmount(point, detach=True)
    except OSError as exc:
        log.error("cannot unmount %s: %s", point, exc)
        return
    with contextlib.suppress(OSError):
        os.rmdir(point)


def _mounts_of(rec: Record) -> list[Mount]:
    """The container's bind mounts as moby's daemon mounts them for a copy: every ``bind`` of its
    OCI spec (volumes, binds, init, ``/etc/hosts``...); ``volume`` for the user's own."""
    user = {
        os.path.normpath(str(m.get("target") or ""))
        for m in rec.extra.get("user_mounts") or []
        if m.get("type") == "bind"
    }
    out = []
    for m in (rec.spec or {}).get("mounts") or []:
        options = list(m.get("options") or [])
        if m.get("type") != "bind" and "bind" not in options and "rbind" not in options:
            continue
        target = os.path.normpath(str(m.get("destination") or ""))
        out.append(Mount(target, str(m.get("source") or ""), read_only="ro" in options, volume=target in user))
    return out


class ArchiveService:
    """The ``execution.archive_*`` RPC methods; ``owner`` is the ``ExecutionService``."""

    def __init__(self, owner: ExecutionService) -> None:
        self.owner = owner
        self.mount_dir = Path(owner.settings.service_dir("execution")) / "archive-mnt"

    async def recover(self) -> None:
        """Unmount and remove what a crash left in the temporary mount directory."""

        def clean() -> None:
            if not self.mount_dir.is_dir():
                return
            for entry in self.mount_dir.iterdir():
                with contextlib.suppress(OSError):
                    mountlib.unmount(str(entry), detach=True)
                with contextlib.suppress(OSError):
                    entry.rmdir()

        await asyncio.to_thread(clean)

    async def _open(self, rec: Record) -> _Opened:
        """The container's file system (see module docstring); ``close()`` it."""
        lock = self.owner.tasks.lock(rec.namespace, rec.id)
        await lock.acquire()
        try:
            bundle_rootfs = os.path.join(str(self.owner.settings.bundle_dir(rec.namespace, rec.id)), "rootfs")
            mounts = _mounts_of(rec)
            read_only = bool(rec.config.get("read_only"))
            live = await asyncio.to_thread(_is_mounted, bundle_rootfs)
            if live:
                scope = await asyncio.to_thread(Scope, bundle_rootfs, mounts, read_only=read_only)
                lock.release()
                return _Opened(scope, bundle_rootfs, None, None)
            point = str(self.mount_dir / f"{rec.id[:12]}-{ids.new_id()[:12]}")

            def mount_snapshot() -> Scope:
                os.makedirs(point, exist_ok=True)
                try:
                    mountlib.mount_all(list(rec.extra.get("mounts") or []), point)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.rmdir(point)
                    raise
                try:
                    return Scope(point, mounts, read_only=read_only)
                except BaseException:
                    _unmount_temp(point)
                    raise

            try:
                scope = await asyncio.to_thread(mount_snapshot)
            except OSError as exc:
                raise errors.Internal(f"cannot mount the file system of container '{rec.name}': {exc}") from None
            return _Opened(scope, point, point, lock)
        except BaseException:
            if lock.locked():
                lock.release()
            raise

    def _event(self, rec: Record, action: str) -> None:
        self.owner._publish_action(topics.CONTAINER_UPDATE, action, rec, {"action": action})

    # -- stat ------------------------------------------------------------------------------------
    @rpc("execution.archive_stat")
    async def archive_stat(self, req: ArchivePathRequest, ctx: Context) -> PathStat:
        """moby's ``ContainerStatPath`` (see ``common.api.execution``)."""
        rec = self.owner._find(ctx.namespace, req.id)
        opened = await self._open(rec)
        try:
            return await asyncio.to_thread(_stat, opened.scope, req.path, req.id)
        finally:
            await asyncio.shield(opened.close_after())

    # -- get -------------------------------------------------------------------------------------
    @rpc("execution.archive_get", stream=True)
    async def archive_get(self, req: ArchivePathRequest, ctx: Context) -> AsyncIterator[Any]:
        """moby's ``ContainerArchivePath``: ``{"stat"}``, then the tar in bytes frames."""
        rec = self.owner._find(ctx.namespace, req.id)
        opened = await self._open(rec)
        worker: asyncio.Future[None] | None = None
        sink: _FrameSink | None = None
        try:
            stat = await asyncio.to_thread(_stat, opened.scope, req.path, req.id)
            yield {"stat": stat.model_dump()}
            self._event(rec, "archive-path")
            sink = _FrameSink(asyncio.get_running_loop())
            worker = asyncio.ensure_future(asyncio.to_thread(_produce, opened.scope, req.path, req.id, sink))
            while True:
                chunk = await sink.get()
                if chunk is None:
                    break
                yield chunk
            await worker
        finally:
            if sink is not None:
                sink.abort()
            await asyncio.shield(opened.close_after(worker))

    # -- put -------------------------------------------------------------------------------------
    @rpc("execution.archive_put", stream=True)
    async def archive_put(self, req: ArchivePutRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """moby's ``ContainerExtractToDir``: ``{"ready": true}``, the client's tar, ``{"entries"}``."""
        rec = self.owner._find(ctx.namespace, req.id)
        opened = await self._open(rec)
        reader: _RecvReader | None = None
        worker: asyncio.Future[int] | None = None
        try:
            dest, chown = await asyncio.to_thread(_check_dest, opened, rec, req)
            yield {"ready": True}
            reader = _RecvReader(ctx, asyncio.get_running_loop())
            options = ExtractOptions(no_overwrite_dir_non_dir=req.no_overwrite_dir_non_dir, chown=chown)
            worker = asyncio.ensure_future(asyncio.to_thread(_extract, opened.scope, dest, reader, options))
            count = await worker
            while not reader.eof and await ctx.recv() is not None:  # what follows the tar's end
                pass
            log.info("extracted %d entries into %s of container %s", count, dest, rec.id[:12])
            self._event(rec, "extract-to-dir")
            yield {"entries": count}
        finally:
            if reader is not None:
                reader.abort()
            await asyncio.shield(opened.close_after(worker))


# -- the thread side -----------------------------------------------------------------------------
def _not_found(path: str, container: str) -> errors.NotFound:
    return errors.NotFound(f"Could not find the file {path} in container {container}", {"kind": "path", "path": path})


def _translate(exc: BaseException, path: str, container: str) -> errors.DockyardError:
    """An error of the file system work as Docker reports it (moby's texts)."""
    if isinstance(exc, errors.DockyardError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return _not_found(path, container)
    if isinstance(exc, ArchiveError):
        return errors.InvalidArgument(str(exc))
    if isinstance(exc, tarfile.TarError | EOFError):
        return errors.InvalidArgument(f"Error processing tar file: {exc}")
    if isinstance(exc, OSError):
        where = exc.filename if isinstance(exc.filename, str) else path
        if exc.errno == errno.EROFS:
            return errors.InvalidArgument(f"{where}: read-only file system")
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.ENOSPC, errno.EDQUOT):
            return errors.InvalidArgument(f"{where}: {exc.strerror}")
        return errors.Internal(f"{where}: {exc.strerror or exc}")
    return errors.Internal(f"{type(exc).__name__}: {exc}")


def _stat(scope: Scope, path: str, container: str) -> PathStat:
    try:
        doc = path_stat(scope, path)
        return PathStat(
            name=doc["name"], size=doc["size"], mode=doc["mode"], mtime=doc["mtime"], link_target=doc["linkTarget"]
        )
    except (OSError, ArchiveError) as exc:
        raise _translate(exc, path, container) from None


def _produce(scope: Scope, path: str, container: str, sink: _FrameSink) -> None:
    try:
        write_tar(scope, path, sink)
        sink.flush()
    except _Aborted:
        pass
    except (OSError, ArchiveError) as exc:
        raise _translate(exc, path, container) from None
    finally:
        sink.done()


def _check_dest(opened: _Opened, rec: Record, req: ArchivePutRequest) -> tuple[str, tuple[int, int] | None]:
    """The extraction directory, symlinks (the last too) followed in scope, and the owner with
    ``copy_uid_gid``; moby's checks and errors, in its order."""
    scope = opened.scope
    try:
        with scope.resolve(req.path, follow=True) as loc:
            try:
                st = loc.lstat()
            except FileNotFoundError:
                raise _not_found(req.path, req.id) from None
            if not stat_mod.S_ISDIR(st.st_mode):
                raise errors.InvalidArgument("extraction point is not a directory")
            dest, mount = loc.path, loc.mount
    except (OSError, ArchiveError) as exc:
        raise _translate(exc, req.path, req.id) from None
    if mount is not None and mount.volume:
        if mount.read_only:
            raise errors.InvalidArgument("mounted volume is marked read-only")
    elif scope.read_only:
        raise errors.InvalidArgument("container rootfs is marked read-only")
    elif mount is not None and mount.read_only:
        raise errors.InvalidArgument(f"{dest}: read-only file system")
    chown = None
    user = str(rec.config.get("user") or rec.extra.get("user") or "")
    if req.copy_uid_gid and user:
        try:
            resolved = rootfs_mod.resolve_user(opened.root, user)
        except rootfs_mod.RootfsError as exc:
            raise errors.InvalidArgument(f"cannot look up user {user!r} in the container: {exc}") from None
        chown = (resolved.uid, resolved.gid)
    return dest, chown


def _extract(scope: Scope, dest: str, reader: _RecvReader, options: ExtractOptions) -> int:
    try:
        return extract_tar(scope, dest, reader, options)
    except _Aborted:
        raise errors.Unavailable("the upload was abandoned") from None
    except FileNotFoundError as exc:
        raise errors.InvalidArgument(f"{exc.filename or dest}: no such file or directory") from None
    except (OSError, ArchiveError, tarfile.TarError, EOFError) as exc:
        raise _translate(exc, dest, "") from None


class _FrameSink:
    """Thread -> event loop: the tar writer's bytes in ``FRAME_BYTES`` frames, at most
    ``QUEUE_FRAMES`` waiting; ``None`` marks the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.slots = threading.Semaphore(QUEUE_FRAMES)
        self.aborted = False
        self.buf = bytearray()

    # thread side
    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= FRAME_BYTES:
            self._put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self._put(bytes(self.buf))
            self.buf.clear()

    def _put(self, item: bytes) -> None:
        while not self.slots.acquire(timeout=ABORT_POLL_S):
            if self.aborted:
                raise _Aborted()
        if self.aborted:
            raise _Aborted()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def done(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    # loop side
    async def get(self) -> bytes | None:
        item = await self.queue.get()
        if item is not None:
            self.slots.release()
        return item

    def abort(self) -> None:
        self.aborted = True
        self.slots.release()


class _RecvReader(io.RawIOBase):
    """The call's own stream as a file for a thread (each read takes one frame: the client gets
    credit for more only as the tar is consumed)."""

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.ctx = ctx
        self.loop = loop
        self.buf = memoryview(b"")
        self.eof = False
        self.aborted = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if self.eof:
                return 0
            fut = asyncio.run_coroutine_threadsafe(self.ctx.recv(), self.loop)
            while True:
                try:
                    item = fut.result(timeout=ABORT_POLL_S)
                    break
                except concurrent.futures.TimeoutError:
                    if self.aborted.is_set():
                        fut.cancel()
                        raise _Aborted() from None
            if item is None:
                self.eof = True
                return 0
            self.buf = memoryview(bytes(item))
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def abort(self) -> None:
        self.aborted.set()


__all__ = ["ArchiveService"]
