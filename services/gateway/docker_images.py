"""Docker's image endpoints, answered by the image service.

List, inspect, history, tag, delete, prune, pull (``POST /images/create?fromImage``; every
tag of a repository when neither ``fromImage`` nor ``tag`` names one), the registry's view
of a reference (``GET /distribution/{name}/json``) and
import (``fromSrc=-``) with chunked progress JSON, push, save (``/images/{name}/get``,
``/images/get?names=``) and load. A streaming call's first frame is awaited before the
200 goes out, so an image that does not exist is a plain 404; errors after that arrive
in-band as ``{"errorDetail": {"message"}, "error"}`` as Docker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from common import dockerfmt, errors
from common.rpc.aio import AsyncCall
from services.gateway import streams
from services.gateway.backends import Backends, call, docker_error
from services.gateway.docker_api import api_version, filters_of, ndjson, registry_auth
from services.gateway.http import HTTPError, Request, Response, Router

log = logging.getLogger(__name__)

_LIST_FILTERS = {"reference", "dangling", "label", "before", "since", "until"}


def _names_a_version(name: str) -> bool:
    """True when ``name`` carries a tag or a digest (``repo:tag``, ``repo@sha256:..``)."""
    return "@" in name or ":" in name.rpartition("/")[2]


def _ref(name: str, tag: str | None) -> str:
    """``fromImage`` + ``tag`` -> one reference (``tag`` may be a digest)."""
    if not tag:
        return name
    if tag.startswith("sha256:"):
        return f"{name}@{tag}"
    return f"{name}:{tag}"


class ImagesAPI:
    """Image routes (see module docstring)."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def routes(self, router: Router) -> None:
        add = router.add
        add("GET", "/images/json", self.list_images)
        add("POST", "/images/create", self.create)
        add("POST", "/images/load", self.load)
        add("GET", "/images/get", self.save_many)
        add("POST", "/images/prune", self.prune)
        add("GET", "/images/search", self.search)
        add("GET", "/images/{name:path}/json", self.inspect)
        add("GET", "/images/{name:path}/history", self.history)
        add("GET", "/images/{name:path}/get", self.save_one)
        add("POST", "/images/{name:path}/tag", self.tag)
        add("POST", "/images/{name:path}/push", self.push)
        add("DELETE", "/images/{name:path}", self.remove)
        add("GET", "/distribution/{name:path}/json", self.distribution)

    # -- read ----------------------------------------------------------------------------------------
    async def list_images(self, request: Request) -> Response:
        filters = filters_of(request, _LIST_FILTERS)
        if "until" in filters:
            filters.pop("until")
        reply = await call(self.b.image, "image.list", {"filters": filters, "all": request.flag("all")})
        return Response.json(dockerfmt.image_summaries(reply.get("images") or [], api_version(request)))

    async def inspect(self, request: Request) -> Response:
        name = request.params["name"]
        img = await call(self.b.image, "image.get", {"ref": name}, "image", name)
        return Response.json(dockerfmt.image_inspect(img, api_version(request)))

    async def history(self, request: Request) -> Response:
        name = request.params["name"]
        reply = await call(self.b.image, "image.history", {"ref": name}, "image", name)
        return Response.json(dockerfmt.image_history(reply.get("history") or []))

    async def distribution(self, request: Request) -> Response:
        """``GET /distribution/{name}/json``: Docker's ``DistributionInspect`` of a reference at
        its registry (nothing pulled): ``{"Descriptor": {mediaType, digest, size, urls?},
        "Platforms": [{architecture, os, variant?, os.version?, os.features?}]}``.
        A name without tag means ``latest``; X-Registry-Auth is used as for a pull."""
        name = request.params["name"]
        body: dict[str, Any] = {"ref": name}
        auth = await registry_auth(request)
        if auth:
            body["auth"] = auth
        reply = await call(self.b.image, "image.distribution", body, timeout_s=120)
        desc = reply.get("descriptor") or {}
        descriptor: dict[str, Any] = {
            "mediaType": desc.get("mediaType") or desc.get("media_type") or "",
            "digest": desc.get("digest") or "",
            "size": int(desc.get("size") or 0),
        }
        if desc.get("urls"):
            descriptor["urls"] = desc["urls"]
        return Response.json({"Descriptor": descriptor, "Platforms": reply.get("platforms") or []})

    async def search(self, _request: Request) -> Response:
        raise errors.Unimplemented("image search is not supported: Dockyard has no registry index to search")

    # -- names ---------------------------------------------------------------------------------------
    async def tag(self, request: Request) -> Response:
        name = request.params["name"]
        repo = request.arg("repo")
        if not repo:
            raise HTTPError(400, "repository name must have at least one component")
        target = _ref(repo, request.arg("tag") or "latest")
        await call(self.b.image, "image.tag", {"source": name, "target": target}, "image", name)
        return Response(201)

    async def remove(self, request: Request) -> Response:
        name = request.params["name"]
        body = {"ref": name, "force": request.flag("force"), "prune": not request.flag("noprune")}
        reply = await call(self.b.image, "image.remove", body, "image", name, timeout_s=120)
        out: list[dict[str, str]] = [{"Untagged": u} for u in reply.get("untagged") or []]
        out += [{"Deleted": d} for d in reply.get("deleted") or []]
        return Response.json(out)

    async def prune(self, request: Request) -> Response:
        filters = filters_of(request, {"dangling", "until", "label", "label!"})
        dangling = filters.pop("dangling", ["true"])
        body = {"all": dangling[-1].lower() in ("false", "0"), "filters": filters}
        reply = await call(self.b.image, "image.prune", body, timeout_s=300)
        out = [{"Untagged": u} for u in reply.get("untagged") or []] + [
            {"Deleted": d} for d in reply.get("deleted") or []
        ]
        return Response.json({"ImagesDeleted": out or None, "SpaceReclaimed": int(reply.get("space_reclaimed") or 0)})

    # -- pull, import, push --------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        from_image = request.arg("fromImage")
        from_src = request.arg("fromSrc")
        if from_image:
            # dockerd: "pull -a" may send the name with a trailing ':'; a name with neither tag
            # nor digest and an empty ``tag`` pulls every tag (Engine API ImageCreate)
            from_image = from_image.removesuffix(":")
            tag = request.arg("tag")
            ref = _ref(from_image, tag)
            body: dict[str, Any] = {"ref": ref}
            if not tag and not _names_a_version(from_image):
                body["all_tags"] = True
            if request.arg("platform"):
                body["platform"] = request.arg("platform")
            auth = await registry_auth(request)
            if auth:
                body["auth"] = auth
            pull = await self.b.image.start("image.pull", body, timeout_s=None)
            # a registry's "manifest for x not found: manifest unknown: ..." is shown as is
            return await self._progress(pull, ref, final=_pull_final, kind="")
        if from_src == "-":
            repo = request.arg("repo") or ""
            ref = _ref(repo, request.arg("tag")) if repo else ""
            changes = request.query.get("changes", [])
            body = {"ref": ref, "changes": changes, "message": request.arg("message") or ""}
            if request.arg("platform"):
                body["platform"] = request.arg("platform")
            imported = await self.b.image.start("image.import", body, timeout_s=None)
            feeder = asyncio.ensure_future(streams.feed_body(request, imported))
            return await self._progress(imported, ref, final=_import_final, feeder=feeder)
        if from_src:
            raise HTTPError(400, "importing from a URL is not supported: send the tar as the body with fromSrc=-")
        raise HTTPError(400, "fromImage or fromSrc is required")

    async def push(self, request: Request) -> Response:
        """``POST /images/{name}/push?tag=``; with no tag (and none in ``name``) every local
        tag of the repository is pushed, one after the other in one stream, as Docker does
        (docker-py's ``images.push(repo)``); 404 when the repository has no tag here."""
        name = request.params["name"]
        tag = request.arg("tag")
        body: dict[str, Any] = {}
        auth = await registry_auth(request)
        if auth:
            body["auth"] = auth
        refs = [_ref(name, tag)] if tag or _names_a_version(name) else await self._repository_tags(name)
        pushing = await self.b.image.start("image.push", {**body, "ref": refs[0]}, timeout_s=None)
        head = await self._progress(pushing, refs[0], final=_push_final)
        if len(refs) == 1:
            return head

        async def chain() -> AsyncIterator[bytes]:
            assert head.stream is not None
            async for line in head.stream:
                yield line
            for ref in refs[1:]:
                try:
                    running = await self.b.image.start("image.push", {**body, "ref": ref}, timeout_s=None)
                    resp = await self._progress(running, ref, final=_push_final)
                except errors.DockyardError as exc:
                    yield ndjson(dockerfmt.progress_error(exc.message))
                    return
                assert resp.stream is not None
                async for line in resp.stream:
                    yield line
                    if b'"errorDetail"' in line:
                        return

        return Response(200, {"Content-Type": "application/json"}, stream=chain())

    async def _repository_tags(self, name: str) -> list[str]:
        """The local ``repo:tag`` names of repository ``name`` (familiar form), sorted."""
        reply = await call(self.b.image, "image.list", {"filters": {}})
        repo = dockerfmt.familiar(name)
        if repo.startswith("library/") and repo.count("/") == 1:
            repo = repo[len("library/") :]
        tags = sorted(
            {t for i in reply.get("images") or [] for t in i.get("repo_tags") or [] if t.rpartition(":")[0] == repo}
        )
        if not tags:
            raise errors.NotFound(f"An image does not exist locally with the tag: {name}")
        return tags

    async def load(self, request: Request) -> Response:
        quiet = request.flag("quiet")
        loading = await self.b.image.start("image.load", {"quiet": quiet}, timeout_s=None)
        feeder = asyncio.ensure_future(streams.feed_body(request, loading))

        def convert(frame: dict[str, Any]) -> dict[str, Any] | None:
            message = str(frame.get("message") or "")
            if message.startswith("Loaded image"):
                return {"stream": message + "\n"}
            if quiet:
                return None
            return dockerfmt.pull_progress(frame)

        return await self._progress(loading, "", final=lambda _r: [], feeder=feeder, convert=convert)

    async def _progress(
        self,
        running: AsyncCall,
        ref: str,
        *,
        final: Any,
        feeder: asyncio.Future[None] | None = None,
        convert: Any = dockerfmt.pull_progress,
        kind: str = "image",
    ) -> Response:
        """Stream a progress call as Docker's JSON lines; the first frame decides 200 vs an error.
        Errors get Docker's wording for ``kind`` (``No such image: x``); ``kind=""`` keeps them."""
        try:
            more, first = await running.next_frame()
        except errors.DockyardError as exc:
            if feeder is not None:
                feeder.cancel()
            raise docker_error(exc, kind, ref) from None

        async def gen() -> AsyncIterator[bytes]:
            frame, m = first, more
            try:
                while True:
                    if isinstance(frame, dict):
                        if frame.get("status") == "done" or not m:
                            for line in final(frame.get("result") or {}):
                                yield ndjson(line)
                        else:
                            out = convert(frame)
                            if out is not None:
                                yield ndjson(out)
                    if not m:
                        return
                    m, frame = await running.next_frame()
            except errors.DockyardError as exc:
                yield ndjson(dockerfmt.progress_error(docker_error(exc, kind, ref).message))
            finally:
                if feeder is not None:
                    feeder.cancel()
                    with contextlib.suppress(BaseException):
                        await feeder
                if not running.done:
                    await running.cancel()

        return Response(200, {"Content-Type": "application/json"}, stream=gen())

    # -- save ----------------------------------------------------------------------------------------
    async def save_one(self, request: Request) -> Response:
        return await self._save([request.params["name"]])

    async def save_many(self, request: Request) -> Response:
        names = request.query.get("names", [])
        if not names:
            raise HTTPError(400, "names is required: the images to save")
        return await self._save(names)

    async def _save(self, names: list[str]) -> Response:
        for name in names:  # a missing one is a 404 before the 200
            await call(self.b.image, "image.get", {"ref": name}, "image", name)
        saving = await self.b.image.start("image.save", {"refs": names}, timeout_s=None)
        try:
            more, first = await saving.next_frame()
        except errors.DockyardError as exc:
            raise docker_error(exc, "image", names[0]) from None

        async def gen() -> AsyncIterator[bytes]:
            chunk, m = first, more
            try:
                while True:
                    if isinstance(chunk, bytes | bytearray):
                        yield bytes(chunk)
                    if not m:
                        return
                    m, chunk = await saving.next_frame()
            finally:
                if not saving.done:
                    await saving.cancel()

        return Response(200, {"Content-Type": "application/x-tar"}, stream=gen())


def _pull_final(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"status": f"Status: {result.get('status', '')}"}] if result.get("status") else []


def _import_final(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"status": str(result.get("id") or "")}]


def _push_final(result: dict[str, Any]) -> list[dict[str, Any]]:
    if not result:
        return []
    tag = result.get("tag") or "latest"
    return [
        {"status": f"{tag}: digest: {result.get('digest', '')} size: {result.get('size', 0)}"},
        {
            "progressDetail": {},
            "aux": {"Tag": tag, "Digest": result.get("digest", ""), "Size": result.get("size", 0)},
        },
    ]
