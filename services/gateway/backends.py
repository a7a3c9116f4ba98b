"""The gateway's clients of the services (one ``AsyncClient`` each, shared by every request)
and the translation of their errors into Docker's texts.

The gateway keeps no state: every request is answered from the services over the bus.
``docker_error`` rewrites a Dockyard error into the message a Docker client expects
(``No such container: x``, ``No such image: x``, 409 texts), keeping the status of the
error class (``common.errors``: NotFound 404, Conflict 409, ...).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

from common import errors
from common.rpc.aio import AsyncClient
from common.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("execution", "image", "events", "snapshot")


class Backends:
    """``execution``, ``image``, ``events``, ``snapshot``: AsyncClients in the default namespace."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.workdir = settings.service_dir("gateway") / "tmp"
        """Scratch space for files a service writes for one request (export, changes); emptied at start."""
        self.clients: dict[str, AsyncClient] = {
            name: AsyncClient(
                name,
                settings.control_endpoint(name),
                namespace=settings.namespace,
                timeout_s=settings.rpc_timeout_s,
                liveness_s=settings.liveness_s,
                watch_peer=True,  # a stream lost with a killed service is resumed at once
            )
            for name in SERVICES
        }

    @property
    def execution(self) -> AsyncClient:
        return self.clients["execution"]

    @property
    def image(self) -> AsyncClient:
        return self.clients["image"]

    @property
    def events(self) -> AsyncClient:
        return self.clients["events"]

    @property
    def snapshot(self) -> AsyncClient:
        return self.clients["snapshot"]

    def reset_workdir(self) -> None:
        """Empty the scratch directory (what a killed gateway left there is of no use)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def missing_method(method: str, shape: str) -> errors.Unimplemented:
    """The 501 an endpoint answers while the service method it needs does not exist yet."""
    return errors.Unimplemented(f"not implemented yet: this endpoint needs {method} ({shape})")


def is_missing_method(exc: errors.DockyardError) -> bool:
    """True for the RPC server's ``<service> service has no method '<m>'``."""
    return isinstance(exc, errors.Unimplemented) and "has no method" in exc.message


def docker_error(exc: errors.DockyardError, kind: str = "", ref: str = "") -> errors.DockyardError:
    """``exc`` with Docker's message for an object of ``kind`` (container, image, exec, volume)."""
    cls = type(exc)
    details = exc.details
    if isinstance(exc, errors.NotFound):
        if details.get("kind") == "image" or kind == "image":
            name = str(details.get("ref") or ref)
            return cls(f"No such image: {name}", details)
        if kind == "container":
            return cls(f"No such container: {ref}", details)
        if kind == "exec":
            return cls(f"No such exec instance: {ref}", details)
        if kind == "volume":
            return cls(f"get {ref}: no such volume", details)
    if isinstance(exc, errors.AlreadyExists) and kind == "container" and details.get("name"):
        return cls(
            f'Conflict. The container name "/{details["name"]}" is already in use by container '
            f'"{details.get("id", "")}". You have to remove (or rename) that container to be able to reuse that name.',
            details,
        )
    if isinstance(exc, errors.Conflict | errors.FailedPrecondition) and kind == "container":
        text = exc.message
        ident = str(details.get("id") or ref)
        if text.lower().startswith("you cannot remove a running container"):
            return cls(
                f"You cannot remove a running container {ident}. "
                "Stop the container before attempting removal or force remove",
                details,
            )
        if text.endswith("is not running"):
            return cls(f"Container {ident} is not running", details)
        if "already paused" in text:
            return cls(f"Container {ident} is already paused", details)
        if "is not paused" in text:
            return cls(f"Container {ident} is not paused", details)
    return exc


async def call(client: AsyncClient, method: str, body: Any, kind: str = "", ref: str = "", **kw: Any) -> Any:
    """A unary call whose errors come back with Docker's texts (see ``docker_error``)."""
    try:
        return await client.call(method, body, **kw)
    except errors.DockyardError as exc:
        raise docker_error(exc, kind, ref) from None


async def container_sizes(backends: Backends, containers: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{container id: (SizeRw, SizeRootFs)}``: the bytes of each container's writable
    snapshot (``snapshot.usage``'s ``content_size`` of its ``snapshot_key``: the files it
    changed, as moby's ``directory.Size`` of the rw layer) and that plus its image's size,
    as ``docker ps -s``, ``inspect --size`` and ``system df`` show them. A snapshot or image
    that cannot be measured counts 0 (the listing is still answered)."""
    if not containers:
        return {}
    image_sizes: dict[str, int] = {}
    try:
        reply = await backends.image.call("image.list", {}, timeout_s=30)
        image_sizes = {str(i["id"]): int(i.get("size") or 0) for i in reply.get("images") or []}
    except errors.DockyardError as exc:
        log.warning("container sizes: image sizes unknown: %s", exc)
    gate = asyncio.Semaphore(8)

    async def one(c: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        rw = 0
        key = str(c.get("snapshot_key") or "")
        if key:
            async with gate:
                try:
                    usage = await backends.snapshot.call("snapshot.usage", {"key": key}, timeout_s=60)
                    # Docker's SizeRw: the changes' bytes (moby directory.Size), not allocated blocks
                    content = usage.get("content_size")
                    rw = int(content if content is not None else usage.get("size") or 0)
                except errors.DockyardError as exc:
                    log.info("container %s: size of snapshot %r unknown: %s", str(c.get("id"))[:12], key, exc)
        return str(c["id"]), (rw, rw + image_sizes.get(str(c.get("image_id") or ""), 0))

    return dict(await asyncio.gather(*(one(c) for c in containers)))
