"""Docker's volume endpoints (``docker volume ...``), answered by the execution service's volumes."""

from __future__ import annotations

from typing import Any

from common import dockerfmt
from services.gateway.backends import Backends, call
from services.gateway.docker_api import api_version, filters_of
from services.gateway.http import HTTPError, Request, Response, Router


class VolumesAPI:
    """``GET /volumes``, ``POST /volumes/create``, ``GET|DELETE /volumes/{name}``, ``POST /volumes/prune``."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def routes(self, router: Router) -> None:
        router.add("GET", "/volumes", self.list_volumes)
        router.add("POST", "/volumes/create", self.create)
        router.add("POST", "/volumes/prune", self.prune)
        router.add("GET", "/volumes/{name}", self.inspect)
        router.add("DELETE", "/volumes/{name}", self.remove)

    async def list_volumes(self, request: Request) -> Response:
        filters = filters_of(request, {"name", "label", "dangling", "driver"})
        reply = await call(self.b.execution, "execution.volume_list", {})
        out = []
        for vol in reply.get("volumes") or []:
            if filters.get("name") and not any(n in vol["name"] for n in filters["name"]):
                continue
            if filters.get("dangling"):
                dangling = filters["dangling"][-1].lower() in ("1", "true")
                if dangling != (not vol.get("in_use_by")):
                    continue
            labels = vol.get("labels") or {}
            if any(k not in labels or (sep and labels[k] != v) for k, sep, v in
                   (f.partition("=") for f in filters.get("label", []))):  # fmt: skip
                continue
            out.append(dockerfmt.volume(vol))
        return Response.json({"Volumes": out, "Warnings": []})

    async def create(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid volume config: expected a JSON object")
        name, labels = body.get("Name") or "", body.get("Labels") or {}
        driver = body.get("Driver") or "local"
        if not isinstance(name, str) or not isinstance(labels, dict):
            raise HTTPError(400, "invalid volume config: Name must be a string and Labels an object")
        if driver != "local":
            raise HTTPError(400, f"volume driver {driver!r} is not supported (local only)")
        req: dict[str, Any] = {"name": name, "labels": {str(k): str(v) for k, v in labels.items()}}
        vol = await call(self.b.execution, "execution.volume_create", req, "volume", name)
        return Response.json(dockerfmt.volume(vol), 201)

    async def inspect(self, request: Request) -> Response:
        name = request.params["name"]
        vol = await call(self.b.execution, "execution.volume_inspect", {"name": name}, "volume", name)
        return Response.json(dockerfmt.volume(vol))

    async def remove(self, request: Request) -> Response:
        name = request.params["name"]
        body = {"name": name, "force": request.flag("force")}
        await call(self.b.execution, "execution.volume_remove", body, "volume", name)
        return Response(204)

    async def prune(self, request: Request) -> Response:
        """Unused anonymous volumes; named ones too with the ``all`` filter, or for a client
        speaking an API below 1.42 (which pruned every unused volume); ``label``/``label!``."""
        filters = filters_of(request, {"all", "label", "label!"})
        everything = api_version(request) < (1, 42)
        for value in filters.get("all", []):
            if value.lower() not in ("1", "true", "0", "false"):
                raise HTTPError(400, f"invalid filter 'all={value}'")
            everything = value.lower() in ("1", "true")
        body = {"all": everything, "label": filters.get("label", []), "label_not": filters.get("label!", [])}
        reply = await call(self.b.execution, "execution.volume_prune", body, timeout_s=300)
        return Response.json(
            {
                "VolumesDeleted": list(reply.get("removed") or []) or None,
                "SpaceReclaimed": int(reply.get("space_reclaimed") or 0),
            }
        )
