"""Dockyard's native HTTP API (``/dockyard/v1/...``): what Docker's API lacks.

- the event journal with sequence numbers: ``GET /dockyard/v1/events`` (NDJSON
  ``Envelope`` lines: replay from ``since`` = a seq, optionally follow live events with
  no gap at the seam) and ``GET /dockyard/v1/events/head``;
- namespaces: every object route is ``/dockyard/v1/namespaces/{namespace}/...``;
- snapshots (list, stat, usage, mounts), containers and images as Dockyard's own
  models (``common.api``), not Docker's shapes;
- ``GET /dockyard/v1/openapi.json``: the OpenAPI 3.1 document of all of the above,
  built from the same pydantic models the services answer with.

Errors are ``{"message", "code"}`` with the status of the ``common.errors`` class.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from common import errors, ids
from common.api import events as events_api
from common.api import execution as execution_api
from common.api import image as image_api
from common.api import snapshot as snapshot_api
from common.api.base import NamespacesReply
from services.gateway.backends import Backends
from services.gateway.http import HTTPError, Request, Response, Router, json_bytes

log = logging.getLogger(__name__)

PREFIX = "/dockyard/v1"
NATIVE_VERSION = "1.0"


class ErrorReply(BaseModel):
    message: str = Field(description="one line naming what failed and the object")
    code: str = Field(default="", description="Dockyard error class (NotFound, InvalidArgument, ...)")


class VersionReply(BaseModel):
    version: str
    api_version: str


def _error(exc: errors.DockyardError) -> Response:
    return Response.json({"message": exc.message, "code": exc.code}, exc.http_status)


def _bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.arg(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise HTTPError(400, f"invalid value for {name}: {value!r} is not a boolean")


def _int(request: Request, name: str, minimum: int = 0) -> int | None:
    value = request.arg(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise HTTPError(400, f"invalid value for {name}: {value!r} is not an integer") from None
    if number < minimum or number > 2**63 - 1:
        raise HTTPError(400, f"invalid value for {name}: {number} is out of range")
    return number


def _time(request: Request, name: str) -> str | None:
    value = request.arg(name)
    if value is None or value == "":
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPError(400, f"invalid value for {name}: {value!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if not _EPOCH <= when <= _LAST_NS:
        raise HTTPError(400, f"invalid value for {name}: {value!r} is out of range (1970 to 2262)")
    return when.isoformat()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LAST_NS = dt.datetime(2262, 4, 11, tzinfo=dt.UTC)
"""Journal times are int64 nanoseconds since the epoch: what lies outside cannot match anything."""


def _namespace(request: Request) -> str:
    ns = request.params["namespace"]
    try:
        return ids.validate_namespace(ns)
    except errors.InvalidArgument as exc:
        raise HTTPError(400, exc.message) from None


class NativeAPI:
    """The ``/dockyard/v1`` routes (see module docstring)."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def routes(self, router: Router) -> None:
        add = router.add
        ns = PREFIX + "/namespaces/{namespace}"
        add("GET", PREFIX + "/openapi.json", self.openapi)
        add("GET", PREFIX + "/version", self.version)
        add("GET", PREFIX + "/events/head", self.events_head)
        add("GET", PREFIX + "/events", self.events)
        add("GET", PREFIX + "/namespaces", self.namespaces)
        add("GET", ns + "/containers", self.containers)
        add("GET", ns + "/containers/{id}", self.container)
        add("GET", ns + "/images", self.images)
        add("GET", ns + "/images/{ref:path}", self.image)
        add("GET", ns + "/snapshots", self.snapshots)
        add("GET", ns + "/snapshots/{key}/usage", self.snapshot_usage)
        add("GET", ns + "/snapshots/{key}/mounts", self.snapshot_mounts)
        add("GET", ns + "/snapshots/{key}", self.snapshot)

    async def _call(self, service: str, method: str, body: Any, namespace: str | None = None) -> Any:
        client = self.b.clients[service]
        return await client.call(method, body, namespace=namespace)

    def wrap(self, app: Any) -> Any:
        """Route ``/dockyard/`` paths here with native errors, the rest to ``app`` (Docker's)."""
        router = Router()
        self.routes(router)

        async def native_app(request: Request) -> Response:
            if not request.path.startswith("/dockyard/"):
                return await app(request)  # type: ignore[no-any-return]
            try:
                handler, params = router.route(request.method, request.path)
                request.params = params
                return await handler(request)
            except HTTPError as exc:
                return Response.json({"message": exc.message, "code": "InvalidArgument"}, exc.status)
            except errors.DockyardError as exc:
                return _error(exc)
            except Exception as exc:
                log.exception("%s %s failed", request.method, request.path)
                return Response.json({"message": f"internal error: {type(exc).__name__}", "code": "Internal"}, 500)

        return native_app

    # -- system --------------------------------------------------------------------------------------
    async def openapi(self, _request: Request) -> Response:
        return Response.json(openapi_document())

    async def version(self, _request: Request) -> Response:
        from services.gateway.docker_api import ENGINE_VERSION

        return Response.json({"version": ENGINE_VERSION, "api_version": NATIVE_VERSION})

    async def namespaces(self, _request: Request) -> Response:
        """Every namespace that holds a container, an image or a snapshot."""
        found: set[str] = set()
        for service in ("execution", "image", "snapshot"):
            reply = await self._call(service, f"{service}.namespaces", {})
            found.update(reply.get("namespaces") or [])
        return Response.json({"namespaces": sorted(found)})

    # -- events --------------------------------------------------------------------------------------
    async def events_head(self, _request: Request) -> Response:
        return Response.json(await self._call("events", "events.head", {}))

    async def events(self, request: Request) -> Response:
        body: dict[str, Any] = {"since": _int(request, "since") or 0, "follow": _bool(request, "follow")}
        until_seq = _int(request, "until_seq")
        if until_seq is not None:
            body["until_seq"] = until_seq
        for name in ("since_time", "until"):
            value = _time(request, name)
            if value is not None:
                body[name] = value
        filters = {}
        for key in ("topic", "type", "namespace", "container", "image", "label"):
            values = [v for v in request.query.get(key, []) if v]
            if key == "namespace":
                for v in values:
                    try:
                        ids.validate_namespace(v)
                    except errors.InvalidArgument as exc:
                        raise HTTPError(400, exc.message) from None
            if values:
                filters[key] = values
        body["filters"] = filters
        try:
            events_api.ReplayRequest.model_validate(body)
        except ValueError as exc:
            raise HTTPError(400, f"invalid event query: {str(exc).splitlines()[0]}") from None
        timeout_s = _int(request, "timeout_s")
        replay = await self.b.events.start("events.replay", body, timeout_s=None)
        # an error that comes at once (the events service is down) is a proper status; a follow
        # with nothing to say yet must not hold back the headers
        first = asyncio.ensure_future(replay.next_frame())
        await asyncio.wait({first}, timeout=0.5)
        if first.done() and first.exception() is not None:
            await replay.cancel()
            first.result()

        async def gen() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            deadline = None if timeout_s is None else loop.time() + timeout_s
            pending: asyncio.Future[tuple[bool, Any]] | None = first
            try:
                while True:
                    if pending is None:
                        pending = asyncio.ensure_future(replay.next_frame())
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    done, _ = await asyncio.wait({pending}, timeout=left)
                    if not done:
                        return  # timeout_s is over
                    more, frame = pending.result()
                    pending = None
                    if isinstance(frame, dict) and "seq" in frame:
                        yield json_bytes(frame)
                    if not more:
                        return
            except errors.DockyardError as exc:
                yield json_bytes({"error": {"message": exc.message, "code": exc.code}})
            finally:
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                if not replay.done:
                    await replay.cancel()

        return Response(200, {"Content-Type": "application/x-ndjson"}, stream=gen())

    # -- containers, images --------------------------------------------------------------------------
    async def containers(self, request: Request) -> Response:
        ns = _namespace(request)
        body = {"all": _bool(request, "all", True)}
        return Response.json(await self._call("execution", "execution.list", body, ns))

    async def container(self, request: Request) -> Response:
        ns = _namespace(request)
        return Response.json(await self._call("execution", "execution.inspect", {"id": request.params["id"]}, ns))

    async def images(self, request: Request) -> Response:
        ns = _namespace(request)
        return Response.json(await self._call("image", "image.list", {}, ns))

    async def image(self, request: Request) -> Response:
        ns = _namespace(request)
        ref = request.params["ref"]
        if len(ref) > 1024:
            raise HTTPError(400, "image reference longer than 1024 characters")
        return Response.json(await self._call("image", "image.get", {"ref": ref}, ns))

    # -- snapshots -----------------------------------------------------------------------------------
    def _key(self, request: Request) -> str:
        key = request.params["key"]
        if len(key) > 512:
            raise HTTPError(400, "snapshot key longer than 512 characters")
        return key

    async def snapshots(self, request: Request) -> Response:
        ns = _namespace(request)
        filters = [f for f in request.query.get("filter", []) if f]
        return Response.json(await self._call("snapshot", "snapshot.list", {"filters": filters}, ns))

    async def snapshot(self, request: Request) -> Response:
        ns = _namespace(request)
        return Response.json(await self._call("snapshot", "snapshot.stat", {"key": self._key(request)}, ns))

    async def snapshot_usage(self, request: Request) -> Response:
        ns = _namespace(request)
        return Response.json(await self._call("snapshot", "snapshot.usage", {"key": self._key(request)}, ns))

    async def snapshot_mounts(self, request: Request) -> Response:
        ns = _namespace(request)
        return Response.json(await self._call("snapshot", "snapshot.mounts", {"key": self._key(request)}, ns))


# -- OpenAPI ---------------------------------------------------------------------------------------------
_MODELS: list[type[BaseModel]] = [
    ErrorReply,
    VersionReply,
    events_api.Envelope,
    events_api.HeadReply,
    execution_api.Container,
    execution_api.ListReply,
    image_api.ImageInspect,
    snapshot_api.Info,
    snapshot_api.ListReply,
    snapshot_api.Usage,
    snapshot_api.MountsReply,
    NamespacesReply,
]
_LIST_REPLIES = {"ImageListReply": image_api.ImageSummary}

_NS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$",
    "maxLength": 76,
}
_NS_PARAM: dict[str, Any] = {
    "name": "namespace",
    "in": "path",
    "required": True,
    "description": "namespace (letters, digits and single . _ -; at most 76)",
    "schema": _NS_SCHEMA,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "bad request", 404: "not found", 501: "not implemented", 503: "a service is unavailable"}
    return {str(c): _ok(_ref("ErrorReply"), texts.get(c, "error")) for c in codes}


def _path_param(name: str, description: str, max_length: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": max_length},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the native API (schemas from the ``common.api`` models)."""
    _, defs = models_json_schema([(m, "serialization") for m in _MODELS], ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    summary_schema = image_api.ImageSummary.model_json_schema(
        mode="serialization", ref_template="#/components/schemas/{model}"
    )
    for name, sub in summary_schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas["ImageSummary"] = summary_schema
    schemas["ImageListReply"] = {
        "type": "object",
        "properties": {"images": {"type": "array", "items": _ref("ImageSummary")}},
        "required": ["images"],
    }
    ns = PREFIX + "/namespaces/{namespace}"
    key_param = _path_param("key", "snapshot key or committed name (a chain ID for layers)", 512)
    paths: dict[str, Any] = {
        PREFIX + "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _ok({"type": "object"})},
            }
        },
        PREFIX + "/version": {
            "get": {
                "operationId": "version",
                "summary": "Engine version",
                "responses": {"200": _ok(_ref("VersionReply"))},
            }
        },
        PREFIX + "/namespaces": {
            "get": {
                "operationId": "namespaces",
                "summary": "Namespaces holding containers, images or snapshots",
                "responses": {"200": _ok(_ref("NamespacesReply")), **_errors(503)},
            }
        },
        PREFIX + "/events/head": {
            "get": {
                "operationId": "eventsHead",
                "summary": "Newest journal sequence number",
                "responses": {"200": _ok(_ref("HeadReply")), **_errors(503)},
            }
        },
        PREFIX + "/events": {
            "get": {
                "operationId": "events",
                "summary": "Replay the event journal from a sequence number, optionally following live events",
                "description": "One Envelope per line (NDJSON), in seq order; with follow, live events follow the "
                "journal with no gap and no duplicate. timeout_s ends a follow after that many seconds.",
                "parameters": [
                    _query("since", {"type": "integer", "minimum": 0}, "deliver events with seq > since"),
                    _query("until_seq", {"type": "integer", "minimum": 0}, "stop after this seq"),
                    _query("since_time", {"type": "string", "format": "date-time"}, "events at or after this time"),
                    _query("until", {"type": "string", "format": "date-time"}, "stop at this time"),
                    _query("follow", {"type": "boolean"}, "keep streaming live events"),
                    _query("timeout_s", {"type": "integer", "minimum": 0, "maximum": 3}, "end a follow after this"),
                    _query("topic", {"type": "string"}, "exact topic, prefix ending in /, or bare verb"),
                    _query("type", {"type": "string"}, "task, container, image, snapshot, content"),
                    _query("namespace", _NS_SCHEMA, "only this namespace"),
                    _query("container", {"type": "string"}, "container id, prefix or name"),
                    _query("image", {"type": "string"}, "image name"),
                    _query("label", {"type": "string"}, "key or key=value"),
                ],
                "responses": {
                    "200": {
                        "description": "NDJSON stream of Envelope",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 503),
                },
            }
        },
        ns + "/containers": {
            "get": {
                "operationId": "listContainers",
                "summary": "Containers of a namespace (metadata and state)",
                "parameters": [_NS_PARAM, _query("all", {"type": "boolean"}, "include stopped ones (default true)")],
                "responses": {"200": _ok(_ref("ListReply")), **_errors(400, 503)},
            }
        },
        ns + "/containers/{id}": {
            "get": {
                "operationId": "inspectContainer",
                "summary": "One container",
                "parameters": [_NS_PARAM, _path_param("id", "id, unique id prefix or name", 128)],
                "responses": {"200": _ok(_ref("Container")), **_errors(400, 404, 503)},
            }
        },
        ns + "/images": {
            "get": {
                "operationId": "listImages",
                "summary": "Image records of a namespace",
                "parameters": [_NS_PARAM],
                "responses": {"200": _ok(_ref("ImageListReply")), **_errors(400, 503)},
            }
        },
        ns + "/images/{ref}": {
            "get": {
                "operationId": "inspectImage",
                "summary": "One image (reference, id or id prefix)",
                "parameters": [_NS_PARAM, _path_param("ref", "reference, image id or id prefix", 1024)],
                "responses": {"200": _ok(_ref("ImageInspect")), **_errors(400, 404, 503)},
            }
        },
        ns + "/snapshots": {
            "get": {
                "operationId": "listSnapshots",
                "summary": "Snapshots of a namespace",
                "parameters": [
                    _NS_PARAM,
                    _query("filter", {"type": "string"}, "containerd filter, e.g. kind==committed,labels.x"),
                ],
                "responses": {"200": _ok(_ref("snapshot__ListReply")), **_errors(400, 503)},
            }
        },
        ns + "/snapshots/{key}": {
            "get": {
                "operationId": "statSnapshot",
                "summary": "One snapshot",
                "parameters": [_NS_PARAM, key_param],
                "responses": {"200": _ok(_ref("Info")), **_errors(400, 404, 503)},
            }
        },
        ns + "/snapshots/{key}/usage": {
            "get": {
                "operationId": "snapshotUsage",
                "summary": "Disk usage of one snapshot (its own layer)",
                "parameters": [_NS_PARAM, key_param],
                "responses": {"200": _ok(_ref("Usage")), **_errors(400, 404, 503)},
            }
        },
        ns + "/snapshots/{key}/mounts": {
            "get": {
                "operationId": "snapshotMounts",
                "summary": "Mounts of an active or view snapshot",
                "parameters": [_NS_PARAM, key_param],
                "responses": {"200": _ok(_ref("MountsReply")), **_errors(400, 404, 503)},
            }
        },
    }
    # two models are both called ListReply: pydantic names them by module
    schemas = _rename_list_replies(schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dockyard native API",
            "version": NATIVE_VERSION,
            "description": "What Docker's Engine API lacks: the event journal with sequence numbers, namespaces, "
            "snapshots. Served by the gateway on the same socket as the Docker API.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _rename_list_replies(schemas: dict[str, Any]) -> dict[str, Any]:
    """Make sure ``ListReply`` (execution) and ``snapshot__ListReply`` both exist."""
    out = dict(schemas)
    for name in list(out):
        if name.endswith("__ListReply") and "snapshot" in name and name != "snapshot__ListReply":
            out["snapshot__ListReply"] = out[name]
        if name.endswith("__ListReply") and "execution" in name:
            out["ListReply"] = out[name]
    return out
