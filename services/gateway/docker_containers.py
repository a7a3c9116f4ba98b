"""Docker's container and exec endpoints, answered by the execution service.

Lifecycle (create, start, stop, restart, kill, pause/unpause, rename, update, resize,
delete, prune, wait), observation (list, inspect, logs, top, stats, changes, export) and
the hijacked attach / exec start (``services.gateway.streams``). Status codes follow
Docker: 201 create, 204 on success (200 with an empty body for a resize and a detached
exec start, as dockerd), 304 for a double start or stop (case C25), 404
``No such container: x``, 409 conflicts; a wait flushes its headers at once and
answers when the condition holds (the docker CLI waits for those headers before it
starts the container).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import signal as signal_mod
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from common import dockerfmt, errors, resources
from common.api.execution import CONTAINER_STATUSES, LIST_FILTERS
from services.gateway import resume, streams
from services.gateway.backends import (
    Backends,
    call,
    container_sizes,
    docker_error,
    is_missing_method,
    missing_method,
)
from services.gateway.docker_api import api_version, filters_of, int_arg, ndjson
from services.gateway.http import HTTPError, Request, Response, Router, json_bytes

log = logging.getLogger(__name__)

_LIST_FILTERS = {
    "id",
    "name",
    "label",
    "status",
    "ancestor",
    "exited",
    "before",
    "since",
    "volume",
    "network",
    "health",
    "is-task",
    "publish",
    "expose",
}
_WAIT_CONDITIONS = {"not-running", "next-exit", "removed"}


class ContainersAPI:
    """Container and exec routes (see module docstring)."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends
        # per container id (and the reference it was asked by): the waits for `removed` whose
        # answer is not yet written; a failed start of a --rm container lets them go first
        self._removed_waits: dict[str, list[asyncio.Event]] = {}

    def routes(self, router: Router) -> None:
        add = router.add
        add("POST", "/containers/create", self.create)
        add("GET", "/containers/json", self.list_containers)
        add("POST", "/containers/prune", self.prune)
        add("GET", "/containers/{id}/json", self.inspect)
        add("POST", "/containers/{id}/start", self.start)
        add("POST", "/containers/{id}/stop", self.stop)
        add("POST", "/containers/{id}/restart", self.restart)
        add("POST", "/containers/{id}/kill", self.kill)
        add("POST", "/containers/{id}/pause", self.pause)
        add("POST", "/containers/{id}/unpause", self.unpause)
        add("POST", "/containers/{id}/rename", self.rename)
        add("POST", "/commit", self.commit)
        add("POST", "/containers/{id}/update", self.update)
        add("POST", "/containers/{id}/resize", self.resize)
        add("POST", "/containers/{id}/wait", self.wait)
        add("DELETE", "/containers/{id}", self.remove)
        add("GET", "/containers/{id}/logs", self.logs)
        add("POST", "/containers/{id}/attach", self.attach)
        add("GET", "/containers/{id}/top", self.top)
        add("GET", "/containers/{id}/stats", self.stats)
        add("GET", "/containers/{id}/changes", self.changes)
        add("GET", "/containers/{id}/export", self.export)
        add("HEAD", "/containers/{id}/archive", self.archive_head)
        add("GET", "/containers/{id}/archive", self.archive_get)
        add("PUT", "/containers/{id}/archive", self.archive_put)
        add("POST", "/containers/{id}/exec", self.exec_create)
        add("POST", "/exec/{id}/start", self.exec_start)
        add("POST", "/exec/{id}/resize", self.exec_resize)
        add("GET", "/exec/{id}/json", self.exec_inspect)

    # -- helpers -------------------------------------------------------------------------------------
    async def _container(self, ref: str) -> dict[str, Any]:
        return await call(self.b.execution, "execution.inspect", {"id": ref}, "container", ref)  # type: ignore[no-any-return]

    async def _needs(self, method: str, shape: str, body: Any, ref: str, kind: str = "container", **kw: Any) -> Any:
        """A call to a method that another branch may not have yet: 501 naming it while missing."""
        try:
            return await self.b.execution.call(method, body, **kw)
        except errors.DockyardError as exc:
            if is_missing_method(exc):
                raise missing_method(method, shape) from None
            raise docker_error(exc, kind, ref) from None

    # -- create, list, inspect -----------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        body = await request.json()
        name = request.arg("name") or None
        try:
            req = dockerfmt.create_request(body, name)
            resources.validate(req.get("resources") or {})
        except (dockerfmt.FormatError, resources.ResourceError) as exc:
            raise HTTPError(400, str(exc)) from None
        if request.arg("platform"):
            req["platform"] = request.arg("platform")
        try:
            reply = await self.b.execution.call("execution.create", req, timeout_s=300)
        except errors.NotFound as exc:
            if exc.details.get("kind") == "image" or "image" in exc.message:
                raise errors.NotFound(f"No such image: {_familiar_ref(req['image'])}", exc.details) from None
            raise
        except errors.DockyardError as exc:
            raise docker_error(exc, "container", name or "") from None
        warnings = list(reply.get("warnings") or []) + dockerfmt.create_warnings(body)
        for w in warnings:
            log.info("create of %s: warning: %s", reply["id"][:12], w)
        return Response.json({"Id": reply["id"], "Warnings": warnings}, 201)

    async def list_containers(self, request: Request) -> Response:
        filters = filters_of(request, _LIST_FILTERS)
        for status in filters.get("status", []):
            if status not in CONTAINER_STATUSES:
                raise HTTPError(400, f"invalid filter 'status={status}'")
        limit = int_arg(request, "limit")
        show_all = request.flag("all") or (limit is not None and limit > 0)
        passed = {k: v for k, v in filters.items() if k in LIST_FILTERS}
        if "status" in passed or "exited" in passed:
            show_all = True
        reply = await call(self.b.execution, "execution.list", {"all": show_all, "filters": passed})
        containers = list(reply.get("containers") or [])
        containers = await self._filter_more(containers, filters)
        if limit is not None and limit > 0:
            containers = containers[:limit]
        now = dt.datetime.now(dt.UTC)
        out = [dockerfmt.container_summary(c, now) for c in containers]
        if request.flag("size"):
            sizes = await container_sizes(self.b, containers)
            for entry in out:
                entry["SizeRw"], entry["SizeRootFs"] = sizes.get(entry["Id"], (0, 0))
        return Response.json(out)

    async def _filter_more(
        self, containers: list[dict[str, Any]], filters: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        """The filters the execution service does not know: before, since, network, volume, health."""
        for key in ("before", "since"):
            for ref in filters.get(key, []):
                pivot = await self._container(ref)
                created = dockerfmt.to_datetime(pivot["created_at"])
                assert created is not None
                containers = [
                    c
                    for c in containers
                    if c["id"] != pivot["id"]
                    and (
                        (dockerfmt.to_datetime(c["created_at"]) or created) < created
                        if key == "before"
                        else (dockerfmt.to_datetime(c["created_at"]) or created) > created
                    )
                ]
        if filters.get("network"):
            containers = [
                c for c in containers if (c.get("config") or {}).get("network_mode", "none") in filters["network"]
            ]
        if filters.get("volume"):
            wanted = set(filters["volume"])
            containers = [
                c
                for c in containers
                if any(  # moby: a volume by its name (a bind by its source) or any mount by its destination
                    (m.get("name") or m.get("source")) in wanted or m.get("destination") in wanted
                    for m in c.get("mounts") or []
                )
            ]
        if filters.get("health"):
            containers = [c for c in containers if "none" in filters["health"]]
        return containers

    async def inspect(self, request: Request) -> Response:
        c = await self._container(request.params["id"])
        out = dockerfmt.container_inspect(c)
        if request.flag("size"):
            out["SizeRw"], out["SizeRootFs"] = (await container_sizes(self.b, [c]))[c["id"]]
        return Response.json(out)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, request: Request) -> Response:
        """204, or 304 when it runs already. A start whose reply was lost with the execution
        service (SIGKILLed once the task ran: an attached ``docker run`` has its first output by
        then) is settled when the service is back, from the container's state: running, or
        started since this request, is 204; a container still not started is started again."""
        ref = request.params["id"]
        since = dt.datetime.now(dt.UTC)
        for attempt in (1, 2):
            starting = await self.b.execution.start("execution.start", {"id": ref}, timeout_s=120)
            try:
                reply = await starting.result()
            except errors.DockyardError as exc:
                if attempt == 2 or not resume.lost_contact(starting, exc):
                    await self._removed_waits_answered(ref)
                    raise docker_error(exc, "container", ref) from None
                info = await resume.answering(self.b.execution, ref, exc)
                if info is None:
                    raise docker_error(errors.NotFound(f"container '{ref}' not found"), "container", ref) from None
                state = info.get("state") or {}
                started = state.get("started_at")
                if isinstance(started, str):
                    started = dt.datetime.fromisoformat(started)
                if state.get("running") or (isinstance(started, dt.datetime) and started >= since):
                    return Response(204)
                continue
            finally:
                if not starting.done:
                    await starting.cancel()
            return Response(304) if reply.get("already_running") else Response(204)
        raise AssertionError("unreachable")  # the second attempt answers or raises

    async def _removed_waits_answered(self, ref: str, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until the waits for ``removed`` of ``ref`` have written their answer:
        the execution service removed a --rm container whose start failed before it answered,
        as dockerd does, and the docker CLI cancels its wait once the start's error is in (20.10
        printed "error waiting for container: context canceled" when the wait came second)."""
        waits = [asyncio.ensure_future(e.wait()) for e in self._removed_waits.get(ref, [])]
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
            for w in waits:
                w.cancel()  # one still unanswered after the bound: nobody waits for it here

    async def stop(self, request: Request) -> Response:
        ref = request.params["id"]
        t = int_arg(request, "t", int_arg(request, "timeout"))
        body: dict[str, Any] = {"id": ref}
        if t is not None:
            body["timeout_s"] = t
        if request.arg("signal"):
            body["signal"] = _signal_arg(request.arg("signal") or "")
        timeout = None if t is not None and t < 0 else (t if t is not None else 10) + 90
        reply = await call(self.b.execution, "execution.stop", body, "container", ref, timeout_s=timeout)
        return Response(304 if reply.get("already_stopped") else 204)

    async def restart(self, request: Request) -> Response:
        ref = request.params["id"]
        t = int_arg(request, "t", int_arg(request, "timeout"))
        body: dict[str, Any] = {"id": ref}
        if t is not None:
            body["timeout_s"] = t
        if request.arg("signal"):
            body["signal"] = _signal_arg(request.arg("signal") or "")
        timeout = None if t is not None and t < 0 else (t if t is not None else 10) + 120
        try:
            await self.b.execution.call("execution.restart", body, timeout_s=timeout)
        except errors.DockyardError as exc:
            if not is_missing_method(exc):
                raise docker_error(exc, "container", ref) from None
            # Docker's restart is stop then start; without execution.restart, compose the two
            await call(self.b.execution, "execution.stop", body, "container", ref, timeout_s=timeout)
            await call(self.b.execution, "execution.start", {"id": ref}, "container", ref, timeout_s=120)
        return Response(204)

    async def kill(self, request: Request) -> Response:
        ref = request.params["id"]
        sig = _signal_arg(request.arg("signal") or "SIGKILL")
        await call(self.b.execution, "execution.kill", {"id": ref, "signal": sig}, "container", ref)
        return Response(204)

    async def pause(self, request: Request) -> Response:
        ref = request.params["id"]
        await self._needs("execution.pause", "IdRequest {id} -> {}", {"id": ref}, ref)
        return Response(204)

    async def unpause(self, request: Request) -> Response:
        ref = request.params["id"]
        await self._needs("execution.unpause", "IdRequest {id} -> {}", {"id": ref}, ref)
        return Response(204)

    async def rename(self, request: Request) -> Response:
        ref = request.params["id"]
        name = request.arg("name")
        if not name:
            raise HTTPError(400, "new name is required")
        await self._container(ref)
        await self._needs("execution.rename", "{id, name} -> {}", {"id": ref, "name": name.lstrip("/")}, ref)
        return Response(204)

    async def commit(self, request: Request) -> Response:
        """``POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=`` -> 201 ``{Id}``."""
        ref = request.arg("container") or ""
        if not ref:
            raise HTTPError(400, "container is required")
        repo, tag = request.arg("repo") or "", request.arg("tag") or ""
        if tag and not repo:
            raise HTTPError(400, "tag given without a repository")
        name = f"{repo}:{tag}" if repo and tag else repo
        changes = [c for value in request.query.get("changes", []) for c in value.splitlines() if c.strip()]
        body = {
            "id": ref,
            "ref": name,
            "comment": request.arg("comment") or "",
            "author": request.arg("author") or "",
            "changes": changes,
            "pause": request.flag("pause", default=True),
        }
        config = await request.json()
        if config is not None and not isinstance(config, dict):
            raise HTTPError(400, "invalid commit config: expected a JSON object")
        if config:
            body["config"] = config
        reply = await call(self.b.execution, "execution.commit", body, "container", ref, timeout_s=600)
        return Response.json({"Id": reply["id"]}, 201)

    async def update(self, request: Request) -> Response:
        ref = request.params["id"]
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid update config: expected a JSON object")
        try:
            converted = dockerfmt.create_request({"Image": "-", "HostConfig": body})
            resources.validate(converted.get("resources") or {}, update=True)
        except (dockerfmt.FormatError, resources.ResourceError) as exc:
            raise HTTPError(400, str(exc)) from None
        req: dict[str, Any] = {"id": ref, "resources": converted.get("resources") or {}}
        if "restart_policy" in converted:
            req["restart_policy"] = converted["restart_policy"]
        await self._container(ref)
        await self._needs("execution.update", "UpdateRequest {id, resources, restart_policy} -> {}", req, ref)
        return Response.json({"Warnings": []})

    async def resize(self, request: Request) -> Response:
        ref = request.params["id"]
        h, w = _size_args(request)
        await self._container(ref)
        await self._needs(
            "execution.resize", "ResizeRequest {id, height, width} -> {}", {"id": ref, "height": h, "width": w}, ref
        )
        return Response(200)  # dockerd: 200 with no body and no Content-Type

    async def remove(self, request: Request) -> Response:
        ref = request.params["id"]
        body = {"id": ref, "force": request.flag("force"), "volumes": request.flag("v")}
        if resume.FOLLOWERS.any_interrupted():  # a stream of it may still be catching up after an outage
            c = await self._container(ref)
            await resume.caught_up(self.b.execution, c["id"])
        await call(self.b.execution, "execution.remove", body, "container", ref, timeout_s=120)
        return Response(204)

    async def prune(self, request: Request) -> Response:
        filters = filters_of(request, {"until", "label", "label!"})
        reply = await call(self.b.execution, "execution.list", {"all": True, "filters": {}})
        now = dt.datetime.now(dt.UTC)
        until = None
        if filters.get("until"):
            try:
                until = dockerfmt.parse_docker_time(filters["until"][-1], now)
            except dockerfmt.FormatError as exc:
                raise HTTPError(400, str(exc)) from None
        deleted = []
        for c in reply.get("containers") or []:
            if c["state"]["status"] not in ("exited", "created", "dead"):
                continue
            created = dockerfmt.to_datetime(c["created_at"])
            if until is not None and created is not None and created >= until:
                continue
            if not _labels_match(c.get("labels") or {}, filters):
                continue
            try:
                await self.b.execution.call("execution.remove", {"id": c["id"]}, timeout_s=120)
            except (errors.NotFound, errors.Conflict):
                continue
            deleted.append(c["id"])
        return Response.json({"ContainersDeleted": deleted or None, "SpaceReclaimed": 0})

    async def wait(self, request: Request) -> Response:
        ref = request.params["id"]
        condition = request.arg("condition") or "not-running"
        if condition not in _WAIT_CONDITIONS:
            raise HTTPError(400, f"invalid condition: {condition!r} (expected not-running, next-exit or removed)")
        c = await self._container(ref)
        # the waiter is registered (the request is on the wire, ahead of any later start on the
        # same socket) before the headers go out
        since_ns = time.time_ns()
        req: dict[str, Any] = {"id": ref, "condition": condition}
        if condition == "removed" and (c.get("config") or {}).get("auto_remove"):
            req["hold"] = uuid.uuid4().hex  # a restarted service keeps it until this wait is back
        waiting = await self.b.execution.start("execution.wait", req, timeout_s=None)
        hold = str(req.get("hold") or "")
        answered = asyncio.Event()
        keys = {ref, c["id"]} if condition == "removed" else set()
        for key in keys:
            self._removed_waits.setdefault(key, []).append(answered)

        def forget() -> None:
            answered.set()
            for key in keys:
                left = [e for e in self._removed_waits.get(key, []) if e is not answered]
                if left:
                    self._removed_waits[key] = left
                else:
                    self._removed_waits.pop(key, None)

        async def body() -> AsyncIterator[bytes]:
            try:  # a restart of the execution service meanwhile is waited out (services.gateway.resume)
                reply = await resume.wait_reply(
                    self.b.execution, self.b.events, c["id"], condition, since_ns, waiting, hold
                )
                # dockerd answers a wait for `removed` without the container's error (the
                # failed start of a --rm container: {"Error": null, "StatusCode": 127}); the
                # docker CLI prints "Error waiting for container: ..." for one that has it
                err = "" if condition == "removed" else reply.get("error") or ""
                yield json_bytes(
                    {"StatusCode": int(reply.get("exit_code", 0)), "Error": {"Message": err} if err else None}
                )
            except errors.NotFound:
                # removed before the wait could look at it (e.g. --rm with an instant exit)
                yield json_bytes({"StatusCode": 0, "Error": None})
            except errors.DockyardError as exc:
                yield json_bytes({"StatusCode": -1, "Error": {"Message": exc.message}})
            finally:
                forget()
                if not waiting.done:
                    await waiting.cancel()

        return Response(200, {"Content-Type": "application/json"}, stream=body())

    # -- output --------------------------------------------------------------------------------------
    async def logs(self, request: Request) -> Response:
        ref = request.params["id"]
        stdout, stderr = request.flag("stdout"), request.flag("stderr")
        if not stdout and not stderr:
            raise HTTPError(400, "Bad parameters: you must choose at least one stream")
        c = await self._container(ref)
        tty = bool((c.get("config") or {}).get("tty"))
        body: dict[str, Any] = {
            "id": c["id"],
            "follow": request.flag("follow"),
            "stdout": stdout,
            "stderr": stderr,
            "timestamps": request.flag("timestamps"),
            "stamp_inline": True,  # "d" carries the timestamps: many entries per frame
        }
        tail = request.arg("tail")
        if tail not in (None, "", "all"):
            try:
                lines = int(tail or 0)
            except ValueError:
                raise HTTPError(400, f"invalid value for tail: {tail!r}") from None
            if lines >= 0:  # a negative count is "all", as in dockerd
                body["tail"] = lines
        now = dt.datetime.now(dt.UTC)
        for key in ("since", "until"):
            value = request.arg(key)
            if value and value != "0":
                try:
                    body[key] = dockerfmt.parse_docker_time(value, now).isoformat()
                except dockerfmt.FormatError as exc:
                    raise HTTPError(400, str(exc)) from None

        async def gen() -> AsyncIterator[bytes]:
            # a restart of the execution service meanwhile is ridden through (services.gateway.resume);
            # past the bounded wait the Unavailable breaks the chunked body off
            async for frame in resume.log_frames(self.b.execution, body):
                yield streams.encode(tty, int(frame.get("s") or 1), bytes(frame["d"]))

        ctype = streams.content_type(tty, api_version(request))
        return Response(200, {"Content-Type": ctype}, stream=gen())

    async def attach(self, request: Request) -> Response:
        ref = request.params["id"]
        c = await self._container(ref)
        config = c.get("config") or {}
        tty = bool(config.get("tty"))
        if c["state"].get("paused"):
            raise errors.Conflict(f"container {ref} is paused, unpause the container before attach")
        stdin = request.flag("stdin")
        if stdin and not config.get("open_stdin"):
            stdin = False  # Docker ignores stdin of a container created without OpenStdin
        detach_keys = request.arg("detachKeys") or ""
        streams.parse_detach_keys(detach_keys)  # 400 for a bad one, before the hijack
        body = {
            "id": c["id"],
            "stdin": stdin,
            "stdout": request.flag("stdout"),
            "stderr": request.flag("stderr"),
            "logs": request.flag("logs"),
            "detach_keys": detach_keys,
        }
        if config.get("auto_remove"):
            body["hold"] = uuid.uuid4().hex  # a restarted service keeps it until we read its log

        ctype = streams.content_type(tty, api_version(request))
        if not request.flag("stream"):
            return self._attach_logs_only(request, c["id"], tty, ctype)
        since_ns = time.time_ns()  # the attachment's output is in the log past this time
        att = await self.b.execution.start("execution.attach", body, timeout_s=None)
        source = streams.FrameSource(att)
        try:
            await source.prime(until_attached=True)
        except errors.DockyardError as exc:
            await source.close()
            raise docker_error(exc, "container", ref) from None
        cid = c["id"]

        def resumed(printed: dict[int, int], lost: errors.DockyardError) -> AsyncIterator[dict[str, Any]]:
            # the output stream was lost with the execution service: the rest comes from the log
            wanted = {"stdout": bool(body["stdout"]), "stderr": bool(body["stderr"])}
            hold = str(body.get("hold") or "")
            return resume.attach_output(self.b.execution, cid, printed, since_ns, lost, wanted, hold)

        async def hijack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
            with resume.FOLLOWERS.follow(cid):
                await streams.pipe_hijacked(source, reader, writer, trailing, tty=tty, stdin=stdin, resume=resumed)

        return Response(200, {"Content-Type": ctype}, hijack=hijack)

    def _attach_logs_only(self, request: Request, cid: str, tty: bool, ctype: str) -> Response:
        body = {"id": cid, "stdout": request.flag("stdout"), "stderr": request.flag("stderr")}
        if not body["stdout"] and not body["stderr"]:
            body = {"id": cid, "stdout": True, "stderr": True}

        async def hijack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
            if request.flag("logs"):
                with contextlib.suppress(errors.DockyardError):
                    async for frame in self.b.execution.stream("execution.logs", body):
                        writer.write(streams.encode(tty, int(frame.get("s") or 1), bytes(frame.get("d") or b"")))
                        await writer.drain()

        return Response(200, {"Content-Type": ctype}, hijack=hijack)

    async def top(self, request: Request) -> Response:
        ref = request.params["id"]
        ps_args = request.arg("ps_args") or "-ef"
        reply = await self._needs(
            "execution.top",
            "TopRequest {id, ps_args} -> TopReply {titles, processes}",
            {"id": ref, "ps_args": ps_args},
            ref,
        )
        return Response.json(dockerfmt.top(reply))

    async def stats(self, request: Request) -> Response:
        """One sample (``stream=0``: measured over a second) or one per second; see ``dockerfmt.stats``."""
        ref = request.params["id"]
        c = await self._container(ref)
        stream_mode = request.flag("stream", True)
        try:
            sampling = await self.b.execution.start(
                "execution.stats", {"id": c["id"], "stream": stream_mode}, timeout_s=None
            )
            more, first = await sampling.next_frame()
        except errors.DockyardError as exc:
            if is_missing_method(exc):
                raise missing_method("execution.stats", "StatsRequest {id, stream} -> stream of Stats") from None
            raise docker_error(exc, "container", ref) from None
        if not stream_mode:
            if not sampling.done:
                await sampling.cancel()
            return Response.json(dockerfmt.stats(first) if isinstance(first, dict) and first else {})

        async def gen() -> AsyncIterator[bytes]:
            previous: dict[str, Any] | None = None
            sample, m = first, more
            try:
                while True:
                    if isinstance(sample, dict) and sample:
                        yield ndjson(dockerfmt.stats(sample, previous))
                        previous = sample
                    if not m:
                        return
                    m, sample = await sampling.next_frame()
            except errors.DockyardError as exc:
                log.info("stats of %s ended: %s", c["id"][:12], exc)
            finally:
                if not sampling.done:
                    await sampling.cancel()

        return Response(200, {"Content-Type": "application/json"}, stream=gen())

    async def changes(self, request: Request) -> Response:
        """``docker diff``: the container's change set (``snapshot.diff`` as a plain tar) as
        ``[{Path, Kind}]``, Kind 0 modified, 1 added, 2 deleted (a path also present in the
        image's layers, read through the snapshot's ``lowerdir`` mounts, is modified)."""
        ref = request.params["id"]
        c = await self._container(ref)
        key = c["snapshot_key"]
        path = self.b.workdir / f"changes-{uuid.uuid4().hex}.tar"
        try:
            await call(
                self.b.snapshot,
                "snapshot.diff",
                {"key": key, "path": str(path), "media_type": "application/vnd.oci.image.layer.v1.tar"},
                "container",
                ref,
                timeout_s=300,
            )
            mounts = await call(self.b.snapshot, "snapshot.mounts", {"key": key}, "container", ref)
            lowers = _lowerdirs(mounts.get("mounts") or [])
            changes = await asyncio.to_thread(_read_changes, str(path), lowers)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return Response.json(changes or None)

    async def export(self, request: Request) -> Response:
        """``docker export``: the merged rootfs as a tar, streamed from ``execution.export`` (which
        publishes Docker's ``export`` event once the whole tar went out)."""
        ref = request.params["id"]
        c = await self._container(ref)
        exporting = await self.b.execution.start("execution.export", {"id": c["id"]}, timeout_s=None)
        try:  # the first frame (or the error of a snapshot that cannot be exported) before the 200
            more, first = await exporting.next_frame()
        except errors.DockyardError as exc:
            raise docker_error(exc, "container", ref) from None

        async def gen() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield bytes(first)
                if not more:
                    return
                while True:
                    going, chunk = await exporting.next_frame()
                    if chunk:
                        yield bytes(chunk)
                    if not going:
                        return
            finally:
                if not exporting.done:
                    await exporting.cancel()

        return Response(200, {"Content-Type": "application/x-tar"}, stream=gen())

    # -- archive (docker cp) ---------------------------------------------------------------------------
    async def _archive_target(self, request: Request) -> tuple[str, str]:
        """``(container id, path)`` of an archive request: moby's 400 for a missing path, 404 for
        an unknown container."""
        ref = request.params["id"]
        path = request.arg("path") or ""
        if not path:
            raise HTTPError(400, "bad parameter: path cannot be empty")
        c = await self._container(ref)
        return str(c["id"]), path

    async def _path_error(self, exc: errors.DockyardError, ref: str, path: str) -> errors.DockyardError:
        """A service error with moby's texts: the user's own container reference in a missing path."""
        if isinstance(exc, errors.NotFound) and exc.details.get("kind") == "path":
            return errors.NotFound(f"Could not find the file {path} in container {ref}", exc.details)
        if is_missing_method(exc):
            return missing_method("execution.archive_*", "{id, path} -> stat / tar stream (docker cp)")
        return docker_error(exc, "container", ref)

    async def archive_head(self, request: Request) -> Response:
        """``HEAD /containers/{id}/archive?path=``: the path's stat in ``X-Docker-Container-Path-Stat``."""
        cid, path = await self._archive_target(request)
        try:
            stat = await self.b.execution.call("execution.archive_stat", {"id": cid, "path": path}, timeout_s=60)
        except errors.DockyardError as exc:
            raise await self._path_error(exc, request.params["id"], path) from None
        return Response(200, {"X-Docker-Container-Path-Stat": _path_stat_header(stat)})

    async def archive_get(self, request: Request) -> Response:
        """``GET /containers/{id}/archive?path=``: the tar of the path (moby's names), its stat in
        the header; errors (404 ``Could not find the file``) before the 200."""
        cid, path = await self._archive_target(request)
        ref = request.params["id"]
        reading = await self.b.execution.start("execution.archive_get", {"id": cid, "path": path}, timeout_s=None)
        try:
            more, first = await reading.next_frame()
        except errors.DockyardError as exc:
            raise await self._path_error(exc, ref, path) from None
        headers = {"Content-Type": "application/x-tar"}
        if isinstance(first, dict) and first.get("stat"):
            headers["X-Docker-Container-Path-Stat"] = _path_stat_header(first["stat"])

        async def gen() -> AsyncIterator[bytes]:
            going = more
            try:
                while going:
                    going, chunk = await reading.next_frame()
                    if isinstance(chunk, bytes | bytearray) and chunk:
                        yield bytes(chunk)
            except errors.DockyardError as exc:  # after the 200: the client sees a short tar
                log.warning("archive of %s in %s ended early: %s", path, cid[:12], exc)
            finally:
                if not reading.done:
                    await reading.cancel()

        return Response(200, headers, stream=gen())

    async def archive_put(self, request: Request) -> Response:
        """``PUT /containers/{id}/archive?path=&noOverwriteDirNonDir=&copyUIDGID=``: extract the
        body (a tar) into the directory ``path``; 200 with no body. The destination is checked
        before the body is read (moby's 404 / 400 texts)."""
        cid, path = await self._archive_target(request)
        ref = request.params["id"]
        body = {
            "id": cid,
            "path": path,
            "no_overwrite_dir_non_dir": request.flag("noOverwriteDirNonDir"),
            "copy_uid_gid": request.flag("copyUIDGID"),
        }
        putting = await self.b.execution.start("execution.archive_put", body, timeout_s=None)
        feeder: asyncio.Future[None] | None = None
        try:
            try:
                await putting.next_frame()  # {"ready": true}: the destination is good
                feeder = asyncio.ensure_future(streams.feed_body(request, putting))
                going = True
                while going:
                    going, _frame = await putting.next_frame()
            except errors.DockyardError as exc:
                raise await self._path_error(exc, ref, path) from None
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            if not putting.done:
                await putting.cancel()
        return Response(200, {"Content-Type": "text/plain; charset=utf-8"})

    # -- exec ----------------------------------------------------------------------------------------
    async def exec_create(self, request: Request) -> Response:
        ref = request.params["id"]
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid exec config: expected a JSON object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) for x in cmd):
            raise HTTPError(400, "No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(x, str) for x in env):
            raise HTTPError(400, "invalid Env: expected a list of strings")
        for key in ("User", "WorkingDir", "DetachKeys"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise HTTPError(400, f"invalid {key}: expected a string")
        for key in ("Tty", "AttachStdin", "Privileged"):
            if body.get(key) is not None and not isinstance(body[key], bool):
                raise HTTPError(400, f"invalid {key}: expected a boolean")
        if body.get("DetachKeys"):
            streams.parse_detach_keys(body["DetachKeys"])
        req: dict[str, Any] = {
            "id": ref,
            "cmd": cmd,
            "env": env,
            "user": body.get("User") or "",
            "working_dir": body.get("WorkingDir") or "",
            "tty": bool(body.get("Tty")),
            "stdin": bool(body.get("AttachStdin")),
            "privileged": bool(body.get("Privileged")),
            "detach_keys": body.get("DetachKeys") or "",
        }
        console = body.get("ConsoleSize")
        if (
            isinstance(console, list)
            and len(console) == 2
            and all(isinstance(x, int) for x in console)
            and any(console)
        ):
            req["console_size"] = console
        c = await self._container(ref)
        if not c["state"].get("running"):
            raise errors.Conflict(f"Container {c['id']} is not running")
        if c["state"].get("paused"):
            raise errors.Conflict(f"Container {c['id']} is paused, unpause the container before exec")
        reply = await self._needs("execution.exec_create", "ExecCreateRequest -> ExecCreateReply {id}", req, ref)
        return Response.json({"Id": reply["id"]}, 201)

    async def _exec(self, exec_id: str) -> dict[str, Any]:
        return await self._needs(  # type: ignore[no-any-return]
            "execution.exec_inspect", "ExecIdRequest {exec_id} -> ExecInfo", {"exec_id": exec_id}, exec_id, "exec"
        )

    async def exec_inspect(self, request: Request) -> Response:
        info = await self._exec(request.params["id"])
        cmd = list(info.get("cmd") or [])
        return Response.json(
            {
                "ID": info["id"],
                "Running": bool(info.get("running")),
                "ExitCode": info.get("exit_code"),
                "ProcessConfig": {
                    "tty": bool(info.get("tty")),
                    "entrypoint": cmd[0] if cmd else "",
                    "arguments": cmd[1:],
                    "privileged": bool(info.get("privileged")),
                    "user": info.get("user") or "",
                },
                "OpenStdin": bool(info.get("open_stdin")),
                "OpenStderr": True,
                "OpenStdout": True,
                "CanRemove": False,
                "ContainerID": info.get("container_id", ""),
                "DetachKeys": info.get("detach_keys") or "",
                "Pid": int(info.get("pid") or 0),
            }
        )

    async def exec_start(self, request: Request) -> Response:
        exec_id = request.params["id"]
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid exec start config: expected a JSON object")
        for key in ("Detach", "Tty"):
            if body.get(key) is not None and not isinstance(body[key], bool):
                raise HTTPError(400, f"invalid {key}: expected a boolean")
        info = await self._exec(exec_id)
        if info.get("running") or info.get("exit_code") is not None:
            raise errors.Conflict(f"exec {exec_id} has already been started")
        if body.get("Detach"):
            await self._needs(
                "execution.exec_start",
                "ExecStartRequest {exec_id, detach, stdin}",
                {"exec_id": exec_id, "detach": True, "stdin": False},
                exec_id,
                "exec",
            )
            return Response(200)  # dockerd writes nothing: 200, Content-Length 0 (docker-py returns '')
        tty = bool(body.get("Tty"))
        stdin = bool(info.get("open_stdin"))
        ctype = streams.content_type(tty, api_version(request))

        async def hijack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
            # as dockerd: the exec starts after the 101 went out (a client that reads the 101 with a
            # buffered reader would otherwise lose output that follows it in the same read), and a
            # failure to start is written into the stream
            try:
                started = await self.b.execution.start(
                    "execution.exec_start", {"exec_id": exec_id, "detach": False, "stdin": stdin}, timeout_s=None
                )
                source = streams.FrameSource(started)
                await source.prime(until_attached=True)
            except errors.DockyardError as exc:
                writer.write(streams.encode(tty, 1, f"{docker_error(exc, 'exec', exec_id).message}\r\n".encode()))
                await writer.drain()
                return
            await streams.pipe_hijacked(source, reader, writer, trailing, tty=tty, stdin=stdin)

        return Response(200, {"Content-Type": ctype}, hijack=hijack)

    async def exec_resize(self, request: Request) -> Response:
        exec_id = request.params["id"]
        h, w = _size_args(request)
        await self._needs(
            "execution.exec_resize",
            "ExecResizeRequest {exec_id, height, width} -> {}",
            {"exec_id": exec_id, "height": h, "width": w},
            exec_id,
            "exec",
        )
        return Response(200)  # dockerd: 200 with no body and no Content-Type


def _path_stat_header(stat: dict[str, Any]) -> str:
    """moby's ``X-Docker-Container-Path-Stat``: base64 (standard) of the ContainerPathStat JSON."""
    doc = {
        "name": str(stat.get("name") or ""),
        "size": int(stat.get("size") or 0),
        "mode": int(stat.get("mode") or 0),
        "mtime": str(stat.get("mtime") or ""),
        "linkTarget": str(stat.get("link_target") or ""),
    }
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def _familiar_ref(ref: str) -> str:
    name = dockerfmt.familiar(ref)
    last = name.rsplit("/", 1)[-1]
    if "@" not in name and ":" not in last:
        name += ":latest"
    return name


def _signal_arg(value: str) -> str:
    """A signal as name (``SIGINT``, ``INT``) or number; 400 for an unknown one."""
    text = value.strip()
    if text.isdigit():
        if not 0 < int(text) < 65:
            raise HTTPError(400, f"Invalid signal: {value}")
        return text
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal_mod.Signals.__members__ and not name.startswith("SIGRTM"):
        raise HTTPError(400, f"Invalid signal: {value}")
    return name


def _size_args(request: Request) -> tuple[int, int]:
    h = int_arg(request, "h", 0) or 0
    w = int_arg(request, "w", 0) or 0
    if not (0 <= h <= 65535 and 0 <= w <= 65535):
        raise HTTPError(400, "invalid size: h and w must be between 0 and 65535")
    return h, w


def _labels_match(labels: dict[str, str], filters: dict[str, list[str]]) -> bool:
    for v in filters.get("label", []):
        k, sep, want = v.partition("=")
        if k not in labels or (sep and labels[k] != want):
            return False
    for v in filters.get("label!", []):
        k, sep, want = v.partition("=")
        if k in labels and (not sep or labels[k] == want):
            return False
    return True


def _lowerdirs(mounts: list[dict[str, Any]]) -> list[str]:
    for m in mounts:
        for opt in m.get("options") or []:
            if opt.startswith("lowerdir="):
                return [d for d in opt[len("lowerdir=") :].split(":") if d]
    return []


def _read_changes(path: str, lowers: list[str]) -> list[dict[str, Any]]:
    """Entries of a change-set tar -> Docker's ``[{Path, Kind}]``, sorted by path."""
    out: dict[str, int] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            name = "/" + member.name.lstrip("./").rstrip("/")
            if name == "/":
                continue
            parent, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                out.setdefault(parent or "/", 0)
                continue
            if base.startswith(".wh."):
                out[f"{parent}/{base[4:]}"] = 2
                continue
            existed = any(os.path.lexists(os.path.join(low, name.lstrip("/"))) for low in lowers)
            out[name] = 0 if existed else 1
    # the files Dockyard mounts over (Docker's own mount points) are not the container's changes
    for mounted in _MOUNTED_FILES:
        out.pop(mounted, None)
    if out.get("/etc") == 0 and not any(p.startswith("/etc/") for p in out):
        out.pop("/etc")
    return [{"Path": p, "Kind": k} for p, k in sorted(out.items())]


_MOUNTED_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
