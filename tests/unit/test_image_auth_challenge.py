"""WWW-Authenticate parsing per RFC 7235 (CASES.md C28) and config.json credentials."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from services.image.auth import Credentials, CredentialStore, parse_challenges, write_config_entry


def test_bearer_with_realm_and_service_no_scope() -> None:
    (c,) = parse_challenges('Bearer realm="https://auth.example.com/token",service="registry.example.com"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com"}
    assert c.scopes == []


def test_quoted_scope_with_commas_and_several_scopes() -> None:
    (c,) = parse_challenges('Bearer realm="https://a/token",scope="repository:a/b:pull,push repository:c/d:pull"')
    assert c.scopes == ["repository:a/b:pull,push", "repository:c/d:pull"]


def test_unquoted_realm_and_space_after_comma() -> None:
    (c,) = parse_challenges("bearer realm=https://auth.example/token, service=reg.example ,scope=repository:x:pull")
    assert c.params["realm"] == "https://auth.example/token"
    assert c.params["service"] == "reg.example"
    assert c.scopes == ["repository:x:pull"]


def test_basic_then_bearer_in_one_header() -> None:
    found = parse_challenges(
        'Basic realm="Registry Realm", Bearer realm="https://t/x",service="s", error="invalid_token"'
    )
    assert [c.scheme for c in found] == ["basic", "bearer"]
    assert found[0].params == {"realm": "Registry Realm"}
    assert found[1].params["error"] == "invalid_token"


def test_escaped_quotes_and_several_headers() -> None:
    found = parse_challenges('Basic realm="a \\"quoted\\" realm"', 'BEARER realm="r"')
    assert found[0].params["realm"] == 'a "quoted" realm'
    assert found[1].scheme == "bearer"


def test_token68() -> None:
    (c,) = parse_challenges("Negotiate abc123==")
    assert c.scheme == "negotiate" and c.token68 == "abc123=="


@pytest.mark.parametrize("garbage", ['Bearer realm="unterminated', "", ",,,"])
def test_garbage_does_not_raise(garbage: str) -> None:
    parse_challenges(garbage)


def test_config_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()}}, "other": 1})
    )
    store = CredentialStore(path)
    assert asyncio.run(store.get("docker.io")) == Credentials("u", "p")
    assert asyncio.run(store.get("localhost:5000")) is None
    write_config_entry(path, "localhost:5000", Credentials("me", "secret:with:colons"))
    assert asyncio.run(store.get("localhost:5000")) == Credentials("me", "secret:with:colons")
    assert json.loads(path.read_text())["other"] == 1
    assert (path.stat().st_mode & 0o777) == 0o600
    write_config_entry(path, "localhost:5000", None)
    assert asyncio.run(store.get("localhost:5000")) is None
    assert asyncio.run(store.get("docker.io")) == Credentials("u", "p")
