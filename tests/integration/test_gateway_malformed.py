"""Malformed requests get a 4xx with a message and change nothing (issue 7, "what it must show" 4),
and the native API's OpenAPI document is fuzzed with schemathesis (3): no 5xx, no hang, no crash.

One instance serves the module, its gateway also listening on TCP 127.0.0.1 without TLS
(``DOCKYARD_GATEWAY_TCP_INSECURE=1``: schemathesis speaks TCP).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from services.gateway.native import openapi_document
from tests.conftest import need_root
from tests.gateway_util import Engine, engine
from tests.registry import free_port

PORT = free_port()


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine(gateway_tcp=f"127.0.0.1:{PORT}", gateway_tcp_insecure="1") as e:
        yield e


def _snapshot(eng: Engine) -> dict[str, Any]:
    """What a malformed request must not change: containers, images, service pids."""
    return {
        "containers": sorted((c["Id"], c["State"]) for c in eng.json("GET", "/containers/json?all=1")),
        "images": sorted(tuple(i["RepoTags"]) for i in eng.json("GET", "/images/json")),
        "pids": {name: eng.inst.pid(name) for name in ("gateway", "execution", "image", "snapshot", "events")},
    }


@pytest.fixture
def unchanged(eng: Engine) -> Iterator[None]:
    before = _snapshot(eng)
    yield
    assert _snapshot(eng) == before


def _error(eng: Engine, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, str]:
    status, headers, data = eng.api(method, path, body, **kw)
    assert 400 <= status < 500, f"{method} {path}: {status} {data!r}"
    assert headers["content-type"] == "application/json"
    message = json.loads(data)["message"]
    assert message and "Traceback" not in message
    return status, message


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        ({"Image": 5}, "Image"),
        ({"Image": "busybox", "Cmd": 5}, "Cmd"),
        ({"Image": "busybox", "Tty": "yes"}, "Tty"),
        ({"Image": "busybox", "Env": [1, 2]}, "Env"),
        ({"Image": "busybox", "HostConfig": {"Memory": "1g"}}, "Memory"),
        ({"Image": "busybox", "HostConfig": {"Binds": ["../../etc:/x"]}}, "invalid volume name"),
        ({"Image": "busybox", "HostConfig": {"Binds": ["/tmp:relative"]}}, "mount path must be absolute"),
        ({"Image": "busybox", "WorkingDir": "relative"}, "working directory"),
    ],
)
def test_bad_create_bodies_are_400(eng: Engine, unchanged: None, body: Any, needle: str) -> None:
    status, message = _error(eng, "POST", "/v1.45/containers/create", body)
    assert status == 400 and needle.lower() in message.lower()


def test_huge_bodies_are_refused_without_reading_them_whole(eng: Engine, unchanged: None) -> None:
    big = b'{"Image": "busybox", "Labels": {"x": "' + b"a" * (8 << 20) + b'"}}'
    status, message = _error(eng, "POST", "/v1.45/containers/create", big)
    assert status == 413 and "larger than" in message
    status, _m = _error(eng, "POST", "/v1.45/containers/create", {"Image": "busybox", "Cmd": ["x" * 100] * 100_000})
    assert status == 413


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/containers/nope/json", 404, "No such container: nope"),
        ("POST", "/containers/nope/start", 404, "No such container: nope"),
        ("DELETE", "/containers/nope", 404, "No such container: nope"),
        ("GET", "/containers/nope/logs?stdout=1", 404, "No such container: nope"),
        ("POST", "/containers/nope/attach?stream=1&stdout=1", 404, "No such container: nope"),
        ("POST", "/containers/nope/wait", 404, "No such container: nope"),
        ("GET", "/exec/nope/json", 404, "No such exec instance: nope"),
        ("GET", "/images/nope:1/json", 404, "No such image: nope:1"),
        ("DELETE", "/images/nope:1", 404, "No such image: nope:1"),
        ("GET", "/images/nope:1/get", 404, "No such image: nope:1"),
        ("GET", "/containers/..%2F..%2Fetc%2Fpasswd/json", 404, "No such container: ../../etc/passwd"),
        ("POST", "/containers/create?name=..%2Fescape", 400, "invalid container name"),
        ("POST", "/containers/create?name=a%2Fb", 400, "invalid container name"),
        ("GET", "/containers/json?filters=notjson", 400, "invalid filter"),
        ("GET", "/containers/json?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D", 400, "invalid filter 'bogus'"),
        ("GET", "/containers/json?limit=abc", 400, "limit"),
        ("POST", "/containers/nope/wait?condition=never", 400, "invalid condition"),
        ("GET", "/no/such/route", 404, "page not found"),
        ("PUT", "/containers/json", 405, "not allowed"),
        ("GET", "/v1.12/version", 400, "is too old"),
        ("GET", "/v9.0/version", 400, "is too new"),
        ("GET", "/events?since=yesterday", 400, "invalid time"),
        # moby's getEvents refuses a since after the until (it answered 200 with nothing)
        ("GET", "/events?since=1700000100&until=1700000000", 400, "cannot be after `until`"),
        ("POST", "/images/create", 400, "fromImage or fromSrc"),
        ("GET", "/dockyard/v1/events?since=-1", 400, "out of range"),
        ("GET", "/dockyard/v1/events?since=abc", 400, "not an integer"),
        ("GET", "/dockyard/v1/namespaces/..%2Fetc/containers", 400, "invalid namespace"),
        ("GET", "/dockyard/v1/namespaces/default/snapshots/nope", 404, "nope"),
    ],
)
def test_unknown_ids_path_tricks_and_bad_parameters(
    eng: Engine, unchanged: None, method: str, path: str, status: int, message: str
) -> None:
    body = {"Image": "busybox", "Cmd": ["true"]} if "containers/create" in path else None
    got, text = _error(eng, method, path, body)
    assert (got, message.lower() in text.lower()) == (status, True), text


def test_bad_parameters_on_a_real_container(eng: Engine) -> None:
    cid = eng.json("POST", "/containers/create?name=victim", {"Image": "busybox", "Cmd": ["sleep", "300"]})["Id"]
    try:
        assert eng.api("POST", f"/containers/{cid}/start")[0] == 204
        before = _snapshot(eng)
        for method, path, needle in [
            ("POST", f"/containers/{cid}/stop?t=abc", "t"),
            ("POST", f"/containers/{cid}/kill?signal=BOGUS", "Invalid signal"),
            ("POST", f"/containers/{cid}/wait?condition=never", "invalid condition"),
            ("GET", f"/containers/{cid}/logs", "at least one stream"),
            ("POST", f"/containers/{cid}/resize?h=-1&w=10", "invalid size"),
            ("POST", f"/containers/{cid}/exec", "No exec command"),
            ("POST", "/containers/create?name=victim", "already in use"),
            ("POST", f"/containers/{cid}/attach?stream=1&stdout=1&detachKeys=ctrl-%3F%3F", "detach key"),
        ]:
            body = {"Image": "busybox", "Cmd": ["true"]} if "create" in path else ({} if "exec" in path else None)
            _status, text = _error(eng, method, path, body)
            assert needle.lower() in text.lower(), (path, text)
        assert _snapshot(eng) == before
        assert eng.json("GET", f"/containers/{cid}/json")["State"]["Running"] is True
    finally:
        eng.api("DELETE", f"/containers/{cid}?force=1")


def test_garbage_http_gets_400_and_the_gateway_keeps_serving(eng: Engine, unchanged: None) -> None:
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(eng.sock)
            s.sendall(garbage)
            reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400"), reply
    assert eng.api("GET", "/_ping")[2] == b"OK"


# -- schemathesis -----------------------------------------------------------------------------------------
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# the document the gateway serves is made by this function (checked below), so the cases can be
# generated at collection time, before the instance is up
schema = schemathesis.openapi.from_dict(openapi_document())


def test_the_served_document_is_the_generated_one(eng: Engine) -> None:
    assert eng.json("GET", "/dockyard/v1/openapi.json") == json.loads(json.dumps(openapi_document()))


@schema.parametrize()
@settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_native_api_fuzz(case: Any, eng: Engine) -> None:
    if case.query and case.query.get("follow") not in (None, False, "false") and case.query.get("timeout_s") is None:
        case.query["timeout_s"] = 1  # a follow is endless by design: bound it
    response = case.call(base_url=f"http://127.0.0.1:{PORT}", timeout=15)  # a hang fails here
    case.validate_response(
        response,
        checks=(not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance),
    )


def test_services_survived_the_fuzzing(eng: Engine) -> None:
    """Runs after the fuzz cases (file order): every service still the same process, answering."""
    pids = {name: eng.inst.pid(name) for name in ("gateway", "execution", "image", "snapshot", "events")}
    for name in pids:
        eng.inst.wait_healthy(name, 5)
    assert eng.json("GET", "/dockyard/v1/events/head")["seq"] > 0
    assert {name: eng.inst.pid(name) for name in pids} == pids
    assert "ERROR" not in (eng.inst.logs / "gateway.log").read_text()
