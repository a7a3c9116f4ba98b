"""Pulling: reference -> registry -> verified blobs in the content store.

``Puller.fetch`` does the registry half of ``docker pull``: resolve the reference (mirrors
first), pick the platform from an index before anything is stored (a clear error listing
the available platforms otherwise), refuse unsupported layer types up front, then
download the config and the layers, at most ``max_concurrent`` at a time. Every blob is
written through an ingest and verified by digest and size before it is committed.

Downloads are shared and resumable:

- ``Downloads`` keeps one task per digest; a second pull needing the same layer waits for
  the first one's task (and sees its progress) instead of downloading it again; the task
  is cancelled only when no pull waits for it any more.
- the ingest of an interrupted download (service killed, connection dropped) keeps its
  bytes; the next attempt re-hashes them and asks for the rest with ``Range``.
- a dropped connection mid-blob is retried (with ``Range``) up to 3 times.

Foreign / non-distributable layers are fetched from the registry's own blob endpoint,
never from their ``urls`` (CASES.md C13).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from common.errors import DockyardError, FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from services.image import blobfetch, oci, platforms
from services.image.archive import commit_lock
from services.image.auth import Credentials
from services.image.content import ContentStore, Ingest
from services.image.oci import Descriptor, Platform
from services.image.reference import Reference
from services.image.registry import Endpoint, RegistryClient

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]

_RETRIES = 3

T = TypeVar("T")


def short_id(digest: str) -> str:
    """The 12 hex characters Docker shows for a layer."""
    return digest.split(":", 1)[-1][:12]


class IntegrityError(InvalidArgument):
    """A blob or document did not match its digest: the pull must leave nothing behind."""


@dataclass
class _Download:
    digest: str
    total: int
    current: int = 0
    waiters: int = 0
    listeners: list[Callable[[int, int, str], None]] = field(default_factory=list)
    task: asyncio.Task[int] | None = None

    def notify(self, status: str) -> None:
        for fn in list(self.listeners):
            try:
                fn(self.current, self.total, status)
            except Exception:  # a listener must never break the download
                log.exception("progress listener failed")


class Downloads:
    """One download task per digest, shared by every pull that needs it."""

    def __init__(self, store: ContentStore, client: RegistryClient) -> None:
        self.store = store
        self.client = client
        self._active: dict[str, _Download] = {}

    async def get(
        self,
        ep: Endpoint,
        repo: str,
        desc: Descriptor,
        creds: Credentials | None,
        listener: Callable[[int, int, str], None],
        semaphore: asyncio.Semaphore,
    ) -> int:
        """Make sure blob ``desc`` is in the store; return the bytes this call caused to download.

        Raises IntegrityError on a digest or size mismatch (nothing stored), Unavailable
        or Unauthenticated on registry trouble (the ingest stays for a resume).
        """
        dl = self._active.get(desc.digest)
        if dl is None:
            dl = _Download(desc.digest, desc.size)
            self._active[desc.digest] = dl
            dl.task = asyncio.create_task(
                self._run(dl, ep, repo, desc, creds, semaphore), name=f"download-{desc.digest[:19]}"
            )
            digest = desc.digest

            def forget(_task: asyncio.Task[int]) -> None:
                self._active.pop(digest, None)

            dl.task.add_done_callback(forget)
            owner = True
        else:
            owner = False
        dl.waiters += 1
        dl.listeners.append(listener)
        assert dl.task is not None
        try:
            downloaded = await asyncio.shield(dl.task)
        except asyncio.CancelledError:
            dl.waiters -= 1
            with contextlib.suppress(ValueError):
                dl.listeners.remove(listener)
            if dl.waiters <= 0 and not dl.task.done():
                dl.task.cancel()
            raise
        dl.waiters -= 1
        with contextlib.suppress(ValueError):
            dl.listeners.remove(listener)
        return downloaded if owner else 0

    async def _run(
        self,
        dl: _Download,
        ep: Endpoint,
        repo: str,
        desc: Descriptor,
        creds: Credentials | None,
        semaphore: asyncio.Semaphore,
    ) -> int:
        if await asyncio.to_thread(self.store.exists, desc.digest):
            dl.current = desc.size
            dl.notify("Already exists")
            return 0
        await semaphore.acquire()
        slot = True
        try:
            ingest = await asyncio.to_thread(
                self.store.open_ingest, desc.digest, expected=desc.digest, total=desc.size, resume=True
            )
            try:
                if ingest.offset:
                    log.info("resuming %s at %d of %d bytes", desc.digest, ingest.offset, desc.size)
                await self._fetch(dl, ep, repo, desc, creds, ingest)
                dl.current = ingest.offset
                dl.notify("Verifying Checksum")
                semaphore.release()  # the next download may start while this one is fsynced
                slot = False
                try:
                    # no commit lock needed: the pull's lease named this digest before the download
                    await asyncio.to_thread(ingest.commit)
                except FailedPrecondition as exc:
                    raise IntegrityError(f"blob {desc.digest} of {repo}: {exc.message}") from None
            except BaseException:
                ingest.close()  # keep the bytes for a resume (commit/abort removed them when bad)
                raise
        finally:
            if slot:
                semaphore.release()
        dl.notify("Download complete")
        return ingest.written

    async def _fetch(
        self, dl: _Download, ep: Endpoint, repo: str, desc: Descriptor, creds: Credentials | None, ingest: Ingest
    ) -> None:
        """Fill ``ingest`` from the registry in a worker thread (``blobfetch``); retries a broken
        connection from where it stopped, renews credentials once on a 401. Behind an HTTP
        proxy (``HTTPS_PROXY`` & co.), the bytes go through httpx, which speaks to proxies."""
        if _proxied(ep.host):
            await self._fetch_httpx(dl, ep, repo, desc, creds, ingest)
            return
        loop = asyncio.get_running_loop()

        def progress(offset: int) -> None:
            def on_loop() -> None:
                dl.current = offset
                dl.notify("Downloading")

            loop.call_soon_threadsafe(on_loop)

        request = await self.client.blob_request(ep, repo, desc, creds)
        renewed = False
        attempt = 0
        dl.current = ingest.offset
        dl.notify("Downloading")
        while True:
            offset_before = ingest.offset
            cancel = blobfetch.Cancel()
            work = loop.run_in_executor(
                None, functools.partial(blobfetch.fetch_blob, request, ingest, desc.size, cancel, progress)
            )
            try:
                await asyncio.shield(work)
                return
            except asyncio.CancelledError:
                cancel.set()
                with contextlib.suppress(BaseException):
                    await work  # the thread must stop touching the ingest before it is closed
                raise
            except blobfetch.BlobAuthError:
                if renewed:
                    raise Unauthenticated(
                        f"registry {ep.domain}: {repo}: access to blob {desc.digest} denied after renewing the token"
                    ) from None
                renewed = True
                request = await self.client.blob_request(ep, repo, desc, creds, renew=True)
            except blobfetch.BlobTransportError as exc:
                # a connection that made progress before it broke does not count against the limit
                attempt = 1 if ingest.offset > offset_before else attempt + 1
                if attempt >= _RETRIES:
                    raise Unavailable(f"blob {desc.digest}: download failed after {attempt} tries: {exc}") from None
                log.warning("blob %s: %s; retrying from byte %d", desc.digest, exc, ingest.offset)
                await asyncio.sleep(0.2 * attempt)
            except FailedPrecondition as exc:  # more bytes than the descriptor's size
                ingest.abort()
                raise IntegrityError(f"blob {desc.digest} of {repo}: {exc.message}") from None

    async def _fetch_httpx(
        self, dl: _Download, ep: Endpoint, repo: str, desc: Descriptor, creds: Credentials | None, ingest: Ingest
    ) -> None:
        """The same as ``_fetch`` through httpx's async client (used when a proxy is configured)."""
        attempt = 0
        last = 0.0
        while ingest.offset < desc.size or desc.size == 0:
            offset_before = ingest.offset
            try:
                async with self.client.open_blob(ep, repo, desc, ingest.offset, creds) as (start, resp):
                    if start == 0 and ingest.offset:
                        ingest.restart()
                    async for chunk in resp.aiter_bytes():
                        ingest.write(chunk)
                        now = time.monotonic()
                        if now - last >= 0.1:
                            last = now
                            dl.current = ingest.offset
                            dl.notify("Downloading")
                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
                attempt = 1 if ingest.offset > offset_before else attempt + 1
                if attempt >= _RETRIES:
                    raise Unavailable(f"blob {desc.digest}: download failed after {attempt} tries: {exc}") from None
                await asyncio.sleep(0.2 * attempt)
            except FailedPrecondition as exc:
                ingest.abort()
                raise IntegrityError(f"blob {desc.digest} of {repo}: {exc.message}") from None


def _proxied(host: str) -> bool:
    """True when the environment names an HTTP(S) proxy that applies to ``host``."""
    proxies = urllib.request.getproxies()
    if not (proxies.get("https") or proxies.get("http") or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host.split(":")[0] if host.count(":") == 1 else host)


@dataclass
class FetchedImage:
    """What ``Puller.fetch`` stored: the root descriptor and the platform's manifest/config/layers."""

    ref: Reference
    endpoint: Endpoint
    root: Descriptor
    manifest_desc: Descriptor
    manifest: oci.Manifest
    config_desc: Descriptor
    config: oci.ImageConfig
    downloaded: int
    present: set[str] = field(default_factory=set)  # layer digests that were already in the store


class Puller:
    """Fetch images from registries into the content store (see the module docstring)."""

    def __init__(self, store: ContentStore, client: RegistryClient, max_concurrent: int = 3) -> None:
        self.store = store
        self.client = client
        self.downloads = Downloads(store, client)
        self.max_concurrent = max_concurrent

    async def resolve(self, ref: Reference, creds: Credentials | None) -> tuple[Endpoint, Descriptor, bytes]:
        """Resolve ``ref`` on its mirrors then its registry; return the endpoint that answered."""

        async def on(ep: Endpoint) -> tuple[Endpoint, Descriptor, bytes]:
            desc, body = await self.client.resolve(ep, ref, creds)
            return ep, desc, body

        return await self._on_endpoints(ref, on)

    async def _on_endpoints(self, ref: Reference, work: Callable[[Endpoint], Awaitable[T]]) -> T:
        """Run ``work`` on ``ref``'s mirrors then its registry (pinged first); the first answer wins.
        A mirror's failure is logged and the next endpoint tried; the registry's is raised."""
        errors: list[DockyardError] = []
        for ep in self.client.pull_endpoints(ref.domain):
            try:
                await self.client.ping(ep)
                return await work(ep)
            except DockyardError as exc:
                if not ep.mirror:
                    raise
                log.warning("mirror %s failed for %s: %s; trying the next endpoint", ep.host, ref, exc)
                errors.append(exc)
        raise errors[-1] if errors else Unavailable(f"no endpoint for {ref.domain}")

    async def list_tags(self, ref: Reference, creds: Credentials | None) -> list[str]:
        """The tags of ``ref``'s repository at its registry (mirrors first), in the registry's
        order; see ``RegistryClient.list_tags`` for the errors."""
        return await self._on_endpoints(ref, lambda ep: self.client.list_tags(ep, ref, creds))

    async def distribution(self, ref: Reference, creds: Credentials | None) -> tuple[Descriptor, list[Platform]]:
        """What the registry has for ``ref`` without pulling it (Docker's ``GET /distribution/{name}/json``):
        the root descriptor and its platforms: every entry's of an index (in order, as listed),
        or the one in a manifest's image config (fetched, not stored; none when the config
        names no os/architecture). Errors as ``resolve``."""

        async def inspect(ep: Endpoint) -> tuple[Descriptor, list[Platform]]:
            root, body = await self.client.resolve(ep, ref, creds)
            doc = oci.parse_document(body, root.media_type, where=f"manifest for {ref.familiar()}")
            if isinstance(doc, oci.Index):
                return root, [m.platform or Platform("", "") for m in doc.manifests]
            limit = 2 * oci.MAX_MANIFEST_SIZE
            config = await self.client.read_blob(ep, ref.repository, doc.config, creds, limit=limit)
            try:
                obj = json.loads(config)
            except (ValueError, UnicodeDecodeError):
                return root, []
            found = Platform.from_json(obj)
            if found is None or not (found.os or found.architecture):
                return root, []
            return root, [found]

        return await self._on_endpoints(ref, inspect)

    async def fetch(
        self,
        ref: Reference,
        platform: Platform | None,
        creds: Credentials | None,
        emit: Emit,
        protect: Callable[[list[str]], None],
    ) -> FetchedImage:
        """Resolve and download one platform of ``ref``; see the module docstring.

        ``protect(digests)`` is called before any of those blobs is written (lease them).
        ``emit`` receives progress dicts (``Progress`` fields).
        """
        want = platforms.normalize(platform or platforms.host())
        ep, root, root_body = await self.resolve(ref, creds)
        # dockerd says "Pulling from" once the registry has answered for the manifest: an
        # unknown tag or repository is an error with no progress line before it
        # and names the repository's path at the registry, without its domain (moby's puller is
        # made on ``reference.Path``): ``library/busybox``, ``walk/bb`` of ``127.0.0.1:5000/walk/bb``
        emit({"status": f"Pulling from {ref.path}", "id": ref.tag or ref.digest})
        doc = oci.parse_document(root_body, root.media_type, where=f"manifest for {ref.familiar()}")
        manifest_desc, manifest_body, manifest = root, root_body, doc
        if isinstance(doc, oci.Index):
            manifest_desc = platforms.choose(doc.manifests, want, where=ref.familiar())
            protect([root.digest, manifest_desc.digest])
            manifest_body = await self.client.fetch_manifest(ep, ref, manifest_desc, creds)
            manifest = oci.parse_document(
                manifest_body, manifest_desc.media_type, where=f"manifest {manifest_desc.digest}"
            )
            if isinstance(manifest, oci.Index):
                raise InvalidArgument(f"manifest {manifest_desc.digest}: nested indexes are not supported")
        assert isinstance(manifest, oci.Manifest)
        if not oci.is_image_config(manifest.config):
            raise InvalidArgument(
                f"{ref.familiar()}: not a container image (config media type {manifest.config.media_type!r})"
            )
        for i, layer in enumerate(manifest.layers):
            oci.check_layer_type(layer, f"{ref.familiar()} layer {i}")
        protect(
            [root.digest, manifest_desc.digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        )

        semaphore = asyncio.Semaphore(self.max_concurrent)
        for layer in manifest.layers:
            emit(
                {
                    "status": "Pulling fs layer",
                    "id": short_id(layer.digest),
                    "digest": layer.digest,
                    "total": layer.size,
                }
            )

        present: set[str] = set()  # layers already in the store: "Already exists" is all dockerd says of them

        def listener_for(layer: Descriptor) -> Callable[[int, int, str], None]:
            def listen(current: int, total: int, status: str) -> None:
                if status == "Already exists":
                    present.add(layer.digest)
                emit(
                    {
                        "status": status,
                        "id": short_id(layer.digest),
                        "digest": layer.digest,
                        "current": current,
                        "total": total,
                    }
                )

            return listen

        # the config (it tells the diff IDs) and the layers download together; a config that
        # does not fit the manifest cancels the layers
        cfg_task = asyncio.create_task(
            self.downloads.get(ep, ref.repository, manifest.config, creds, lambda *_a: None, semaphore)
        )
        tasks = [
            asyncio.create_task(self.downloads.get(ep, ref.repository, layer, creds, listener_for(layer), semaphore))
            for layer in manifest.layers
        ]
        try:
            cfg_downloaded = await cfg_task
            config_bytes = await asyncio.to_thread(self.store.read, manifest.config.digest, 2 * oci.MAX_MANIFEST_SIZE)
            config = oci.parse_config(config_bytes, where=f"image config {manifest.config.digest}")
            if len(config.diff_ids) != len(manifest.layers):
                raise IntegrityError(
                    f"manifest {manifest_desc.digest}: {len(manifest.layers)} layers but the config lists "
                    f"{len(config.diff_ids)} diff IDs"
                )
            if not isinstance(doc, oci.Index) and config.platform.os and not platforms.matches(want, config.platform):
                log.warning("%s is for %s, not %s", ref, platforms.display(config.platform), platforms.display(want))
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in [cfg_task, *tasks]:
                t.cancel()
            await asyncio.gather(cfg_task, *tasks, return_exceptions=True)
            raise

        # the documents last: a manifest is only stored once everything it names is
        def write_docs() -> None:
            with commit_lock():
                self.store.write_blob(manifest_body, manifest_desc.digest)
                if root.digest != manifest_desc.digest:
                    self.store.write_blob(root_body, root.digest)

        await asyncio.to_thread(write_docs)
        return FetchedImage(
            ref, ep, root, manifest_desc, manifest, manifest.config, config, cfg_downloaded + sum(results), present
        )
