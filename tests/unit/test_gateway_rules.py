"""The gateway's rules that need no socket: versioned paths, routes, Docker's error texts,
stream content types, detach keys, the TLS requirement of the TCP listener, the OpenAPI document."""

from __future__ import annotations

import pytest

from common import errors
from services.gateway import config, streams
from services.gateway.backends import docker_error, is_missing_method
from services.gateway.docker_api import split_version
from services.gateway.http import HTTPError, Router
from services.gateway.native import openapi_document


def test_version_prefixes() -> None:
    assert split_version("/v1.45/containers/json") == ((1, 45), "/containers/json")
    assert split_version("/v1.24/_ping") == ((1, 24), "/_ping")
    assert split_version("/containers/json") == (None, "/containers/json")
    with pytest.raises(HTTPError, match=r"too old\. Minimum supported API version is 1\.24"):
        split_version("/v1.23/info")
    with pytest.raises(HTTPError, match="too new"):
        split_version("/v2.0/info")


def test_router_segments_paths_and_methods() -> None:
    router = Router()

    async def h(_r: object) -> object:
        return None

    router.add("GET", "/images/json", h)  # type: ignore[arg-type]
    router.add("GET", "/images/{name:path}/json", h)  # type: ignore[arg-type]
    router.add("POST", "/containers/{id}/start", h)  # type: ignore[arg-type]
    assert router.route("GET", "/images/json")[1] == {}
    assert router.route("GET", "/images/127.0.0.1:5000/a/b:1/json")[1] == {"name": "127.0.0.1:5000/a/b:1"}
    assert router.route("POST", "/containers/a%2Fb/start")[1] == {"id": "a/b"}
    assert router.route("HEAD", "/images/json")[1] == {}  # HEAD is served by GET handlers
    with pytest.raises(HTTPError) as nf:
        router.route("GET", "/containers/x/y/start")
    assert nf.value.status == 404 and nf.value.message == "page not found"
    with pytest.raises(HTTPError) as na:
        router.route("GET", "/containers/x/start")
    assert na.value.status == 405


def test_docker_error_texts() -> None:
    nf = docker_error(errors.NotFound("container 'web' not found"), "container", "web")
    assert (nf.message, nf.http_status) == ("No such container: web", 404)
    img = docker_error(errors.NotFound("image 'x' not found", {"kind": "image", "ref": "busybox:latest"}), "container")
    assert img.message == "No such image: busybox:latest"
    clash = docker_error(errors.AlreadyExists("taken", {"name": "web", "id": "abc"}), "container", "web")
    assert clash.message.startswith('Conflict. The container name "/web" is already in use by container "abc".')
    running = docker_error(
        errors.Conflict("you cannot remove a running container abc. Stop it", {"id": "abc"}), "container", "abc"
    )
    assert running.message == (
        "You cannot remove a running container abc. Stop the container before attempting removal or force remove"
    )
    assert docker_error(errors.Conflict("container 'w' is not running", {"id": "abc"}), "container").message == (
        "Container abc is not running"
    )
    assert is_missing_method(errors.Unimplemented("execution service has no method 'execution.rename'"))
    assert not is_missing_method(errors.Unimplemented("schema 1 manifests are not supported"))


def test_stream_types_and_framing() -> None:
    assert streams.content_type(True, (1, 45)) == streams.RAW_STREAM
    assert streams.content_type(False, (1, 45)) == streams.MULTIPLEXED_STREAM
    assert streams.content_type(False, (1, 41)) == streams.RAW_STREAM
    assert streams.encode(True, 1, b"x") == b"x"
    assert streams.encode(False, 2, b"x") == b"\x02\x00\x00\x00\x00\x00\x00\x01x"


def test_detach_keys() -> None:
    assert streams.parse_detach_keys("") == b"\x10\x11"
    assert streams.parse_detach_keys("ctrl-x,y") == b"\x18y"
    assert streams.parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    for bad in ("ctrl-??", "abc", "ctrl-1"):
        with pytest.raises(errors.InvalidArgument):
            streams.parse_detach_keys(bad)


def test_tcp_needs_tls_or_the_insecure_flag() -> None:
    with pytest.raises(errors.InvalidArgument, match="refusing to listen on TCP"):
        config.tls_context(config.GatewaySettings(tcp="127.0.0.1:2376"))
    assert config.tls_context(config.GatewaySettings(tcp="127.0.0.1:2375", tcp_insecure=True)) is None
    assert config.parse_address("[::1]:2376") == ("::1", 2376)
    for bad in ("nohost", "h:0", "h:99999", "h:x"):
        with pytest.raises(errors.InvalidArgument):
            config.parse_address(bad)


def test_openapi_document_refs_resolve() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.split("/")[-1] in schemas, ref
    assert all(p.startswith("/dockyard/v1/") for p in doc["paths"])
