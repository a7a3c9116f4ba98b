"""The Docker Engine API routes (shared/reference/docker-api.md).

Paths are accepted unprefixed and as ``/v{major}.{minor}/...`` for every version
from ``MIN_API_VERSION`` to ``MAX_ACCEPTED_VERSION``; every response carries
``Api-Version``, ``Ostype`` and ``Server``. Errors are Docker's JSON
``{"message": ...}`` with Docker's status codes (``common.errors`` classes map to
their ``http_status``).
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from common import errors
from services.gateway.http import HTTPError, Request, Response, Router

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
MAX_ACCEPTED_VERSION = (1, 99)
ENGINE_VERSION = "0.1.0"

_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def common_headers() -> dict[str, str]:
    """Headers Docker's daemon puts on every response."""
    return {"Api-Version": API_VERSION, "Ostype": "linux", "Server": f"Dockyard/{ENGINE_VERSION} (linux)"}


def split_version(path: str) -> tuple[tuple[int, int] | None, str]:
    """Return ``((major, minor) | None, path without the version prefix)``.

    Raises HTTPError 400 with Docker's texts for versions out of range.
    """
    match = _VERSION_PREFIX.match(path)
    if not match:
        return None, path
    version = (int(match.group(1)), int(match.group(2)))
    low = tuple(int(x) for x in MIN_API_VERSION.split("."))
    if version < low:
        raise HTTPError(
            400,
            f"client version {version[0]}.{version[1]} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version",
        )
    if version > MAX_ACCEPTED_VERSION:
        raise HTTPError(
            400,
            f"client version {version[0]}.{version[1]} is too new. Maximum supported API version is {API_VERSION}",
        )
    return version, match.group(3)


async def ping(_req: Request) -> Response:
    resp = Response.text("OK")
    resp.headers.update(
        {
            "Docker-Experimental": "false",
            "Builder-Version": "",
            "Swarm": "inactive",
            "Cache-Control": "no-cache, no-store, must-revalidate",
            "Pragma": "no-cache",
        }
    )
    return resp


async def version(_req: Request) -> Response:
    uname = os.uname()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine)
    return Response.json(
        {
            "Platform": {"Name": "Dockyard Engine"},
            "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": {"ApiVersion": API_VERSION}}],
            "Version": ENGINE_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}",
            "Os": "linux",
            "Arch": arch,
            "KernelVersion": uname.release,
            "Experimental": False,
            "BuildTime": "",
        }
    )


def routes(router: Router) -> None:
    """Register the Docker API routes on ``router``."""
    router.add("GET", "/_ping", ping)
    router.add("GET", "/version", version)


def error_response(exc: errors.DockyardError) -> Response:
    """Docker's error JSON for a Dockyard error."""
    return Response.json({"message": exc.message}, exc.http_status)


def make_app(router: Router) -> Any:
    """The request entry point: strip the version prefix, route, map errors."""

    async def app(request: Request) -> Response:
        _version, request.path = split_version(request.path)
        handler, params = router.route(request.method, request.path)
        request.params = params
        try:
            return await handler(request)
        except errors.DockyardError as exc:
            return error_response(exc)

    return app
