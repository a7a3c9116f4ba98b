"""The registry client against stub registries that misbehave the way real ones do.

CASES.md C26 (no Docker-Content-Digest, HEAD 405, wrong header digest, 10 MiB manifest),
C28 (challenge shapes, scopes, 401 forever, 401 vs 404), C13 (foreign layer URLs never
fetched, credentials never leaving the registry) and redirects to blob storage (no
Authorization header to another host). The stubs are plain ``http.server`` threads on
127.0.0.1; the client is ``services.image.registry.RegistryClient`` (and, for C13, the
whole image service).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidArgument, NotFound, Unauthenticated
from services.image import oci
from services.image.auth import Credentials, CredentialStore
from services.image.reference import parse
from services.image.registry import RegistryClient
from tests.registry import _ThreadingServer, free_port


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Stub:
    """A tiny registry: one repository ``x``, one tag ``t``, one layer, configurable faults."""

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.layer = gzip.compress(b"layer bytes " * 100, mtime=0)
        self.config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(b"x")]}}
        ).encode()
        self.layer_desc: dict[str, Any] = {
            "mediaType": oci.OCI_LAYER_GZIP,
            "digest": sha(self.layer),
            "size": len(self.layer),
        }
        self.set_manifest()
        self.requests: list[dict[str, Any]] = []
        self.omit_digest = False
        self.head_405 = False
        self.wrong_digest = False
        self.huge = False
        self.challenge: str | None = None  # WWW-Authenticate sent when the request has no valid token
        self.always_401 = False
        self.tokens_issued = 0
        self.basic_user: tuple[str, str] | None = None
        self.redirect_blobs_to: str | None = None
        self.ranges_refused = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                return

            def reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if stub.always_401:
                    return False
                if stub.basic_user is not None:
                    want = "Basic " + base64.b64encode(":".join(stub.basic_user).encode()).decode()
                    return auth == want
                if stub.challenge is None:
                    return True
                return auth == "Bearer good-token"

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": parsed.path,
                        "query": parsed.query,
                        "authorization": self.headers.get("Authorization", ""),
                        "accept": self.headers.get("Accept", ""),
                    }
                )
                if parsed.path == "/token":
                    stub.tokens_issued += 1
                    body = json.dumps({"access_token": "good-token", "expires_in": 60}).encode()
                    self.reply(200, body, {"Content-Type": "application/json"})
                    return
                if not self.authorized():
                    headers = {"Content-Type": "application/json"}
                    if stub.basic_user is not None:
                        headers["WWW-Authenticate"] = 'Basic realm="stub"'
                    elif stub.challenge is not None:
                        headers["WWW-Authenticate"] = stub.challenge.replace("{port}", str(stub.port))
                    err = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
                    self.reply(401, json.dumps(err).encode(), headers)
                    return
                if parsed.path == "/v2/":
                    self.reply(200, b"{}", {"Content-Type": "application/json"})
                elif parsed.path.startswith("/v2/x/manifests/"):
                    ref = parsed.path.rsplit("/", 1)[1]
                    if ref not in ("t", stub.manifest_digest):
                        err = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                        self.reply(404, json.dumps(err).encode(), {"Content-Type": "application/json"})
                        return
                    if self.command == "HEAD" and stub.head_405:
                        self.reply(405)
                        return
                    body = b" " * (10 * 1024 * 1024) if stub.huge else stub.manifest
                    headers = {"Content-Type": oci.OCI_MANIFEST}
                    if stub.wrong_digest:
                        headers["Docker-Content-Digest"] = sha(b"something else")
                    elif not stub.omit_digest:
                        headers["Docker-Content-Digest"] = stub.manifest_digest
                    self.reply(200, body, headers)
                elif parsed.path.startswith("/v2/x/blobs/"):
                    digest = parsed.path.rsplit("/", 1)[1]
                    blobs = {sha(stub.layer): stub.layer, sha(stub.config): stub.config}
                    if digest not in blobs:
                        self.reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
                        return
                    if stub.redirect_blobs_to and digest == sha(stub.layer):
                        self.reply(307, b"", {"Location": f"http://{stub.redirect_blobs_to}/storage/{digest}"})
                        return
                    rng = self.headers.get("Range", "")
                    if rng and int(rng.split("=", 1)[1].split("-", 1)[0]) >= len(blobs[digest]):
                        # what docker-registry (Go's http.ServeContent) sends: 416 with the blob's
                        # Content-Length, and a short body
                        stub.ranges_refused += 1
                        body = b"invalid range: failed to overlap"
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(blobs[digest])}")
                        self.send_header("Content-Length", str(len(blobs[digest])))
                        self.end_headers()
                        self.wfile.write(body)
                        self.close_connection = True
                        return
                    self.reply(200, blobs[digest], {"Content-Type": "application/octet-stream"})
                else:
                    self.reply(404)

            do_HEAD = do_GET  # noqa: N815

        self._server = _ThreadingServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def set_manifest(self, layer: dict[str, Any] | None = None) -> None:
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(self.config), "size": len(self.config)},
                "layers": [layer or self.layer_desc],
            }
        ).encode()
        self.manifest_digest = sha(self.manifest)

    def token_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/token"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Storage:
    """A blob storage host (another port): records the headers it gets."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.requests: list[dict[str, str]] = []
        storage = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                return

            def do_GET(self) -> None:
                storage.requests.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
                body = data.get(self.path.rsplit("/", 1)[1], b"")
                if not body:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="http://{storage.host}/token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _ThreadingServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    try:
        yield s
    finally:
        s.stop()


def _client(tmp_path: Path, creds: dict[str, Credentials] | None = None) -> RegistryClient:
    config = tmp_path / "config.json"
    auths = {
        host: {"auth": base64.b64encode(f"{c.username}:{c.password}".encode()).decode()}
        for host, c in (creds or {}).items()
    }
    config.write_text(json.dumps({"auths": auths}))
    return RegistryClient(credentials=CredentialStore(config))


def _resolve(tmp_path: Path, stub: Stub, ref: str = "t", creds: dict[str, Credentials] | None = None) -> Any:
    async def run() -> Any:
        client = _client(tmp_path, creds)
        try:
            ep = client.endpoint(stub.host)
            await client.ping(ep)
            return await client.resolve(
                ep, parse(f"{stub.host}/x:{ref}" if not ref.startswith("sha256") else f"{stub.host}/x@{ref}")
            )
        finally:
            await client.close()

    return asyncio.run(run())


# -- C26 ------------------------------------------------------------------------------------------
def test_c26_missing_docker_content_digest_hashes_the_body(tmp_path: Path, stub: Stub) -> None:
    stub.omit_digest = True
    desc, body = _resolve(tmp_path, stub)
    assert desc.digest == stub.manifest_digest and body == stub.manifest
    assert desc.media_type == oci.OCI_MANIFEST


def test_c26_head_405_falls_back_to_get(tmp_path: Path, stub: Stub) -> None:
    stub.head_405 = True
    stub.omit_digest = True
    desc, _ = _resolve(tmp_path, stub)
    assert desc.digest == stub.manifest_digest
    assert [r["method"] for r in stub.requests if "/manifests/" in r["path"]] == ["HEAD", "GET"]
    assert oci.OCI_INDEX in stub.requests[-1]["accept"] and oci.DOCKER_MANIFEST in stub.requests[-1]["accept"]


def test_c26_header_disagreeing_with_the_body_fails(tmp_path: Path, stub: Stub) -> None:
    stub.wrong_digest = True
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        _resolve(tmp_path, stub)


def test_c26_oversized_manifest_fails_before_reading_it_whole(tmp_path: Path, stub: Stub) -> None:
    stub.huge = True
    with pytest.raises(InvalidArgument, match="limit"):
        _resolve(tmp_path, stub)


def test_c26_pull_by_digest_verifies_the_body(tmp_path: Path, stub: Stub) -> None:
    desc, _ = _resolve(tmp_path, stub, stub.manifest_digest)
    assert desc.digest == stub.manifest_digest
    assert not [r for r in stub.requests if r["method"] == "HEAD"]  # by digest: no HEAD needed


# -- C28 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("challenge", "expected_scopes", "expected_service"),
    [
        ('Bearer realm="http://127.0.0.1:{port}/token",service="reg"', ["repository:x:pull"], ["reg"]),
        (
            'Bearer realm="http://127.0.0.1:{port}/token",service="reg",scope="repository:a/b:pull,push '
            'repository:c/d:pull"',
            ["repository:a/b:pull,push", "repository:c/d:pull", "repository:x:pull"],
            ["reg"],
        ),
        ("Bearer realm=http://127.0.0.1:{port}/token, service=reg", ["repository:x:pull"], ["reg"]),
        (
            'Basic realm="stub", Bearer realm="http://127.0.0.1:{port}/token",service="reg"',
            ["repository:x:pull"],
            ["reg"],
        ),
    ],
    ids=["no-scope", "two-quoted-scopes", "unquoted-realm", "basic-then-bearer"],
)
def test_c28_token_requests_carry_the_right_scopes(
    tmp_path: Path, stub: Stub, challenge: str, expected_scopes: list[str], expected_service: list[str]
) -> None:
    stub.challenge = challenge
    desc, _ = _resolve(tmp_path, stub)
    assert desc.digest == stub.manifest_digest
    tokens = stub.token_requests()
    assert tokens, "no token was requested"
    query = urllib.parse.parse_qs(tokens[-1]["query"])
    assert query["scope"] == expected_scopes
    assert query["service"] == expected_service


def test_c28_401_forever_fails_after_at_most_two_token_fetches(tmp_path: Path, stub: Stub) -> None:
    stub.challenge = 'Bearer realm="http://127.0.0.1:{port}/token",service="reg"'
    stub.always_401 = True
    with pytest.raises(Unauthenticated) as info:
        _resolve(tmp_path, stub)
    assert stub.tokens_issued <= 2
    assert stub.host in str(info.value)


def test_c28_404_is_not_found_not_unauthorized(tmp_path: Path, stub: Stub) -> None:
    stub.challenge = 'Bearer realm="http://127.0.0.1:{port}/token",service="reg"'
    with pytest.raises(NotFound, match="manifest unknown"):
        _resolve(tmp_path, stub, "nope")


def test_basic_challenge_sends_the_registrys_own_credentials(tmp_path: Path, stub: Stub) -> None:
    stub.basic_user = ("u", "p w")
    desc, _ = _resolve(tmp_path, stub, creds={stub.host: Credentials("u", "p w")})
    assert desc.digest == stub.manifest_digest
    with pytest.raises(Unauthenticated, match=f"registry {stub.host}: authentication failed as 'u'"):
        _resolve(tmp_path, stub, creds={stub.host: Credentials("u", "wrong")})
    with pytest.raises(Unauthenticated, match="dockyard login"):
        _resolve(tmp_path, stub)


# -- redirects -------------------------------------------------------------------------------------
def test_redirect_to_blob_storage_drops_the_authorization_header(tmp_path: Path, stub: Stub) -> None:
    storage = Storage({sha(stub.layer): stub.layer})
    try:
        stub.redirect_blobs_to = storage.host
        stub.basic_user = ("u", "p")

        async def run() -> bytes:
            client = _client(tmp_path, {stub.host: Credentials("u", "p")})
            try:
                ep = client.endpoint(stub.host)
                await client.ping(ep)
                desc = oci.Descriptor(oci.OCI_LAYER_GZIP, sha(stub.layer), len(stub.layer))
                async with client.open_blob(ep, "x", desc) as (start, resp):
                    assert start == 0
                    return await resp.aread()
            finally:
                await client.close()

        assert asyncio.run(run()) == stub.layer
        assert storage.requests and all(r["authorization"] == "" for r in storage.requests)
        blob_requests = [r for r in stub.requests if "/blobs/" in r["path"]]
        assert blob_requests[-1]["authorization"].startswith("Basic ")
    finally:
        storage.stop()


# -- C13 ------------------------------------------------------------------------------------------
def test_c13_foreign_layer_urls_are_never_fetched_and_get_no_credentials(tmp_path: Path, stub: Stub) -> None:
    from tests.harness import Instance

    storage = Storage({})  # answers every request with a Bearer challenge on itself
    inst = Instance(registry_config=str(tmp_path / "config.json"))
    try:
        (tmp_path / "config.json").write_text(
            json.dumps({"auths": {stub.host: {"auth": base64.b64encode(b"u:p").decode()}}})
        )
        stub.basic_user = ("u", "p")
        stub.set_manifest(
            dict(stub.layer_desc, mediaType=oci.DOCKER_FOREIGN_LAYER_GZIP, urls=[f"http://{storage.host}/blob"])
        )
        inst.start("image")
        with inst.client("image", timeout_s=60) as c:
            frames = list(c.stream("image.pull", {"ref": f"{stub.host}/x:t", "unpack": False}))
        assert frames[-1]["status"] == "done"
        assert frames[-1]["result"]["digest"] == stub.manifest_digest
        assert storage.requests == []  # the foreign URL was never contacted, with or without credentials
        assert [r for r in stub.requests if r["path"] == f"/v2/x/blobs/{sha(stub.layer)}"]
    finally:
        inst.cleanup()
        storage.stop()


def test_blob_fetch_thread_follows_redirects_without_the_authorization_header(tmp_path: Path, stub: Stub) -> None:
    """The pull's fast path (``blobfetch``, a worker thread) obeys the same redirect rule."""
    from services.image import blobfetch
    from services.image.content import ContentStore

    storage = Storage({sha(stub.layer): stub.layer})
    try:
        stub.redirect_blobs_to = storage.host
        stub.basic_user = ("u", "p")
        store = ContentStore(tmp_path / "content")

        async def run() -> None:
            client = _client(tmp_path, {stub.host: Credentials("u", "p")})
            try:
                ep = client.endpoint(stub.host)
                await client.ping(ep)
                desc = oci.Descriptor(oci.OCI_LAYER_GZIP, sha(stub.layer), len(stub.layer))
                req = await client.blob_request(ep, "x", desc, renew=True)
                ingest = store.open_ingest(desc.digest, expected=desc.digest, total=desc.size)
                await asyncio.to_thread(
                    blobfetch.fetch_blob, req, ingest, desc.size, blobfetch.Cancel(), lambda _n: None
                )
                ingest.commit()
            finally:
                await client.close()

        asyncio.run(run())
        assert store.read(sha(stub.layer)) == stub.layer
        assert storage.requests and all(r["authorization"] == "" for r in storage.requests)
        assert [r for r in stub.requests if "/blobs/" in r["path"] and r["authorization"].startswith("Basic ")]
    finally:
        storage.stop()


def test_blob_fetch_resuming_a_complete_ingest_survives_a_go_style_416(tmp_path: Path, stub: Stub) -> None:
    """An image service killed after the last byte of a layer but before its commit leaves a complete
    ingest; the next pull asks ``Range: bytes=<size>-`` and docker-registry answers 416 with the blob's
    Content-Length and a short body. The fetch starts over instead of failing on that body forever."""
    from services.image import blobfetch
    from services.image.content import ContentStore

    store = ContentStore(tmp_path / "content")
    desc = oci.Descriptor(oci.OCI_LAYER_GZIP, sha(stub.layer), len(stub.layer))
    left = store.open_ingest(desc.digest, expected=desc.digest, total=desc.size)
    left.write(stub.layer)  # all there, never committed (the service died here)
    del left

    async def run() -> None:
        client = _client(tmp_path)
        try:
            ep = client.endpoint(stub.host)
            await client.ping(ep)
            req = await client.blob_request(ep, "x", desc, renew=True)
            ingest = store.open_ingest(desc.digest, expected=desc.digest, total=desc.size)
            assert ingest.offset == desc.size
            await asyncio.to_thread(blobfetch.fetch_blob, req, ingest, desc.size, blobfetch.Cancel(), lambda _n: None)
            ingest.commit()
        finally:
            await client.close()

    asyncio.run(run())
    assert stub.ranges_refused == 1
    assert store.read(sha(stub.layer)) == stub.layer
