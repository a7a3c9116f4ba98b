"""The Docker Engine API: versioned paths, headers, errors, and the system routes
(shared/reference/docker-api.md).

Paths are accepted unprefixed and as ``/v{major}.{minor}/...`` for every version
from ``MIN_API_VERSION`` up to ``MAX_ACCEPTED_VERSION``; every response carries
``Api-Version``, ``Ostype`` and ``Server``. Errors are Docker's JSON
``{"message": ...}`` with Docker's status codes (``common.errors`` classes map to
their ``http_status``). System routes: ``/_ping``, ``/version``, ``/info``,
``/system/df``, ``/events``, ``/auth``. Containers, exec and images live in
``docker_containers`` and ``docker_images``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import platform
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

from common import dockerfmt, errors
from common.events import follow
from services.gateway.backends import Backends, call, container_sizes
from services.gateway.http import HTTPError, Request, Response, Router

log = logging.getLogger(__name__)

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


def api_version(request: Request) -> tuple[int, int]:
    """The version a request speaks (the prefix, else what we advertise)."""
    if request.api_version is not None:
        return request.api_version
    major, minor = API_VERSION.split(".")
    return int(major), int(minor)


def ndjson(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def filters_of(request: Request, allowed: set[str] | None = None) -> dict[str, list[str]]:
    """The ``filters`` query parameter (both encodings); 400 for a bad one or an unknown key."""
    try:
        filters = dockerfmt.parse_filters(request.arg("filters"))
    except dockerfmt.FormatError as exc:
        raise HTTPError(400, str(exc)) from None
    if allowed is not None:
        for key in filters:
            if key not in allowed:
                raise HTTPError(400, f"invalid filter '{key}'")
    return filters


def int_arg(request: Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter; 400 naming it when it is not one."""
    value = request.arg(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPError(400, f"invalid value for {name}: {value!r} is not an integer") from None


async def registry_auth(request: Request) -> dict[str, str] | None:
    """``X-Registry-Auth`` (base64url JSON) -> ``{username, password}`` / ``{identitytoken}`` or None."""
    header = request.headers.get("x-registry-auth")
    if not header:
        return None
    try:
        padded = header + "=" * (-len(header) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError):
        raise HTTPError(400, "invalid X-Registry-Auth header: not base64-encoded JSON") from None
    if not isinstance(data, dict):
        return None
    if data.get("identitytoken"):
        return {"identitytoken": str(data["identitytoken"])}
    if data.get("username") or data.get("password"):
        return {"username": str(data.get("username") or ""), "password": str(data.get("password") or "")}
    return None


class SystemAPI:
    """``/_ping``, ``/version``, ``/info``, ``/system/df``, ``/events``, ``/auth``, ``/build/prune``."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def routes(self, router: Router) -> None:
        router.add("GET", "/_ping", self.ping)
        router.add("GET", "/version", self.version)
        router.add("GET", "/info", self.info)
        router.add("GET", "/system/df", self.df)
        router.add("GET", "/events", self.events)
        router.add("POST", "/auth", self.auth)
        router.add("POST", "/build/prune", self.build_prune)

    async def build_prune(self, request: Request) -> Response:
        """``POST /build/prune`` (part of ``docker system prune``): Dockyard has no builder and so
        no build cache (``/system/df`` lists none); nothing to remove."""
        filters_of(request, {"until", "id", "parent", "type", "description", "inuse", "shared", "private"})
        return Response.json({"CachesDeleted": None, "SpaceReclaimed": 0})

    async def ping(self, _req: Request) -> Response:
        resp = Response.text("OK")
        resp.headers.update(
            {
                "Docker-Experimental": "false",
                "Builder-Version": "1",
                "Swarm": "inactive",
                "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache",
            }
        )
        return resp

    async def version(self, _req: Request) -> Response:
        uname = os.uname()
        return Response.json(
            {
                "Platform": {"Name": "Dockyard Engine"},
                "Components": [
                    {
                        "Name": "Engine",
                        "Version": ENGINE_VERSION,
                        "Details": {
                            "ApiVersion": API_VERSION,
                            "MinAPIVersion": MIN_API_VERSION,
                            "Os": "linux",
                            "Arch": _arch(),
                            "KernelVersion": uname.release,
                        },
                    }
                ],
                "Version": ENGINE_VERSION,
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": "",
                "GoVersion": f"python{platform.python_version()}",
                "Os": "linux",
                "Arch": _arch(),
                "KernelVersion": uname.release,
                "Experimental": False,
                "BuildTime": "",
            }
        )

    async def _counts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        containers, images = await asyncio.gather(
            call(self.b.execution, "execution.list", {"all": True}),
            call(self.b.image, "image.list", {}),
        )
        return list(containers.get("containers") or []), list(images.get("images") or [])

    async def info(self, _req: Request) -> Response:
        containers, images = await self._counts()
        states = [c["state"]["status"] for c in containers]
        uname = os.uname()
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        return Response.json(
            {
                "ID": _machine_id(),
                "Name": socket.gethostname(),
                "Containers": len(containers),
                "ContainersRunning": states.count("running"),
                "ContainersPaused": states.count("paused"),
                "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
                "Images": len({i["id"] for i in images}),
                "Driver": "overlay2" if self.b.settings.snapshotter == "overlayfs" else "vfs",
                "DriverStatus": [["Snapshotter", self.b.settings.snapshotter]],
                "Plugins": {"Volume": ["local"], "Network": ["host", "null"], "Log": ["json-file"]},
                "MemoryLimit": True,
                "SwapLimit": True,
                "CpuCfsPeriod": True,
                "CpuCfsQuota": True,
                "CPUShares": True,
                "CPUSet": True,
                "PidsLimit": True,
                "IPv4Forwarding": False,
                "Debug": self.b.settings.log_level == "debug",
                "NFd": len(os.listdir("/proc/self/fd")),
                "NGoroutines": len(asyncio.all_tasks()),
                "SystemTime": dockerfmt.rfc3339(dt.datetime.now(dt.UTC)),
                "LoggingDriver": "json-file",
                "CgroupDriver": "cgroupfs",
                "CgroupVersion": "2" if cgroup_v2 else "1",
                "NEventsListener": 0,
                "KernelVersion": uname.release,
                "OperatingSystem": _os_name(),
                "OSVersion": "",
                "OSType": "linux",
                "Architecture": uname.machine,
                "IndexServerAddress": "https://index.docker.io/v1/",
                "RegistryConfig": {
                    "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                    "IndexConfigs": {},
                    "Mirrors": [],
                },
                "NCPU": os.cpu_count() or 1,
                "MemTotal": mem_total,
                "DockerRootDir": str(self.b.settings.root),
                "HttpProxy": "",
                "HttpsProxy": "",
                "NoProxy": "",
                "Labels": [],
                "ExperimentalBuild": False,
                "ServerVersion": ENGINE_VERSION,
                "Runtimes": {"runc": {"path": "runc"}, "crun": {"path": "crun"}},
                "DefaultRuntime": self.b.settings.runtime,
                "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False},
                "LiveRestoreEnabled": True,
                "Isolation": "",
                "InitBinary": "tini",
                "SecurityOptions": [],
                "Warnings": [],
            }
        )

    async def df(self, request: Request) -> Response:
        containers, images = await self._counts()
        volumes = await call(self.b.execution, "execution.volume_list", {"size": True}, timeout_s=300)
        now = dt.datetime.now(dt.UTC)
        summaries = dockerfmt.image_summaries(images, _version(request))
        used: dict[str, int] = {}
        for c in containers:
            used[c.get("image_id", "")] = used.get(c.get("image_id", ""), 0) + 1
        for s in summaries:
            s["Containers"] = used.get(s["Id"], 0)
        sizes = await container_sizes(self.b, containers)
        layers = await self._image_layers([s["Id"] for s in summaries])
        shared = _shared_sizes(layers)
        for s in summaries:
            s["SharedSize"] = shared.get(s["Id"], -1)
        # each layer once (moby sums the DiffSize of its layer store's layers that images use), an
        # image whose layers are unknown by its Size
        unique: dict[str, int] = {d: size for own in layers.values() for d, size in own.items()}
        return Response.json(
            {
                "LayersSize": sum(unique.values()) + sum(s["Size"] for s in summaries if s["Id"] not in layers),
                "Images": summaries,
                "Containers": [
                    dockerfmt.container_summary(c, now)
                    | dict(zip(("SizeRw", "SizeRootFs"), sizes.get(c["id"], (0, 0)), strict=True))
                    for c in containers
                ],
                "Volumes": [dockerfmt.volume(v) for v in volumes.get("volumes") or []],
                "BuildCache": [],
            }
        )

    async def _image_layers(self, image_ids: list[str]) -> dict[str, dict[str, int]]:
        """``{image id: {layer chain ID: size}}`` (``image.get``): the layers' diff sizes once the
        image is wholly unpacked, else their blob sizes, as the image's Size counts them; by
        chain ID, as moby's layer store. An image that cannot be read is left out."""
        layers: dict[str, dict[str, int]] = {}
        for image_id in image_ids:
            try:
                img = await self.b.image.call("image.get", {"ref": image_id}, timeout_s=30)
            except errors.DockyardError as exc:
                log.info("system df: layers of %s unknown: %s", image_id[:19], exc)
                continue
            refs = [la for la in img.get("layers") or [] if isinstance(la, dict)]
            unpacked = all(la.get("diff_size") is not None for la in refs)
            layers[image_id] = {
                str(la.get("chain_id") or la["digest"]): int((la["diff_size"] if unpacked else la.get("size")) or 0)
                for la in refs
            }
        return layers

    async def auth(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid auth config: expected a JSON object")
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise HTTPError(400, "username and password are required")
        registry = str(body.get("serveraddress") or "docker.io")
        await call(self.b.image, "image.login", {"registry": registry, "username": username, "password": password})
        return Response.json({"Status": "Login Succeeded", "IdentityToken": ""})

    async def events(self, request: Request) -> Response:
        """``GET /events?since&until&filters``: journal replay from ``since`` (else from now), live
        events until ``until`` (else forever), converted and filtered as Docker's."""
        filters = filters_of(
            request, {"type", "event", "container", "image", "label", "scope", "daemon", "network", "volume", "plugin"}
        )
        now = dt.datetime.now(dt.UTC)
        try:
            since = dockerfmt.parse_docker_time(request.arg("since") or "", now) if request.arg("since") else None
            until = dockerfmt.parse_docker_time(request.arg("until") or "", now) if request.arg("until") else None
        except dockerfmt.FormatError as exc:
            raise HTTPError(400, str(exc)) from None
        if since is not None and until is not None and until < since:  # moby's getEvents
            raise HTTPError(
                400, f"`since` time ({request.arg('since')}) cannot be after `until` time ({request.arg('until')})"
            )
        body: dict[str, Any] = {"filters": {"namespace": [self.b.namespace]}}
        if since is not None:
            body["since_time"] = since.isoformat()
        else:
            head = await call(self.b.events, "events.head", {})
            body["since"] = int(head.get("seq") or 0)
        if until is not None:
            body["until"] = until.isoformat()
        body["follow"] = until is None or until > now
        stream = follow(self.b.events, body)  # resumes across a restart of the events service

        async def gen() -> AsyncIterator[bytes]:
            try:
                async for env in stream:
                    ev = dockerfmt.docker_event(env)
                    if ev is None or not dockerfmt.event_matches(ev, filters):
                        continue
                    yield ndjson(ev)
            except errors.DockyardError as exc:
                log.info("events stream ended: %s", exc)

        return Response(200, {"Content-Type": "application/json"}, stream=gen())


def _version(request: Request) -> tuple[int, int]:
    return api_version(request)


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def error_response(exc: errors.DockyardError) -> Response:
    """Docker's error JSON for a Dockyard error."""
    return Response.json({"message": exc.message}, exc.http_status)


def make_app(router: Router) -> Any:
    """The request entry point: strip the version prefix, route, map errors.

    Every error leaves as ``{"message"}`` JSON: HTTPError with its status, Dockyard errors
    with their class's status, anything else as 500 (logged with its traceback here, never
    sent to the client).
    """

    async def app(request: Request) -> Response:
        try:
            request.api_version, request.path = split_version(request.path)
            handler, params = router.route(request.method, request.path)
            request.params = params
            return await handler(request)
        except HTTPError as exc:
            return Response.json({"message": exc.message}, exc.status)
        except errors.DockyardError as exc:
            return error_response(exc)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            return Response.json({"message": f"internal error: {type(exc).__name__}"}, 500)

    return app


def _shared_sizes(layers: dict[str, dict[str, int]]) -> dict[str, int]:
    """``{image id: SharedSize}``: the bytes of its layers that another image also has
    (what ``docker system df`` subtracts to tell how much removing it reclaims). An image
    left out of ``layers`` (not resolved) is left out here too (its SharedSize stays -1)."""
    users: dict[str, int] = {}
    for own in layers.values():
        for digest in own:
            users[digest] = users.get(digest, 0) + 1
    return {i: sum(size for d, size in own.items() if users[d] > 1) for i, own in layers.items()}
