"""Real registries for tests: Debian's ``docker-registry`` on 127.0.0.1, a token server, a proxy.

- ``Registry``: ``docker-registry serve`` with its own config file (storage in a temp dir),
  anonymous, htpasswd Basic auth, or token auth against ``TokenServer``; always stopped by
  ``stop()`` (use it as a context manager).
- ``TokenServer``: a small Docker token server (RS256 JWTs signed with ``openssl``, the
  certificate given to the registry as ``rootcertbundle``); counts its requests and
  records their scopes, checks Basic credentials.
- ``Proxy``: a reverse proxy in front of a registry that logs every request and the bytes
  it served, can corrupt a blob, throttle blobs, stall a blob after N bytes and paginate
  tag lists (``tags_page_size``; Debian's registry answers them whole).
- ``skopeo_copy``: push an OCI archive to a registry (the test's "docker push").
- ``multiarch_layout``: an OCI layout whose index lists the host platform and another one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file (stdlib ``crypt``, cost 5 to keep tests fast)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TokenServer:
    """Issues registry tokens (Docker token auth spec) for ``users`` (Basic) or anonymously."""

    def __init__(self, workdir: Path, users: dict[str, str], *, allow_anonymous: bool = False) -> None:
        self.workdir = workdir
        self.users = users
        self.allow_anonymous = allow_anonymous
        self.service = "test-registry"
        self.issuer = "test-token-issuer"
        self.requests: list[dict[str, Any]] = []
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-subj",
                "/CN=token-issuer",
                "-days",
                "2",
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                return

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                auth = self.headers.get("Authorization", "")
                entry = {
                    "path": parsed.path,
                    "scopes": query.get("scope", []),
                    "service": query.get("service", []),
                    "authorization": auth,
                }
                server.requests.append(entry)
                user = ""
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(u) != p:
                        self._reply(401, {"details": "incorrect username or password"})
                        return
                    user = u
                elif not server.allow_anonymous:
                    self._reply(401, {"details": "authentication required"})
                    return
                access = []
                for scope in query.get("scope", []):
                    for item in scope.split(" "):
                        kind, _, rest = item.partition(":")
                        name, _, actions = rest.rpartition(":")
                        access.append({"type": kind, "name": name, "actions": actions.split(",") if user else ["pull"]})
                token = server.sign(user, access)
                self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

            def _reply(self, code: int, obj: dict[str, Any]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _ThreadingServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Registry:
    """``docker-registry`` on a free port of ``ip`` (127.0.0.1) with its own config (see module docstring)."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        htpasswd: dict[str, str] | None = None,
        token: TokenServer | None = None,
        ip: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="dyreg-"))
        self.port = free_port()
        self.ip = ip
        self.host = f"{ip}:{self.port}"
        self.htpasswd = htpasswd
        self.token = token
        self.tls = tls  # (certificate, key)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {data}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
        ]
        if self.tls is not None:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.htpasswd is not None:
            path = self.workdir / "htpasswd"
            path.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.htpasswd.items()))
            lines += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {path}"]
        if self.token is not None:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.realm}",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.cert}",
            ]
        config = self.workdir / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log, cwd="/", start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}")
            try:
                if self.tls is not None:
                    import ssl

                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                        self.ip, self.port, timeout=1, context=ssl._create_unverified_context()
                    )
                else:
                    conn = http.client.HTTPConnection(self.ip, self.port, timeout=1)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("registry did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(workdir: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``ip``: ``(certificate, key)``."""
    cert, key = workdir / "reg.crt", workdir / "reg.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=test-registry",
            "-days",
            "2",
            "-addext",
            f"subjectAltName=IP:{ip}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def skopeo_copy(src: str, dest: str, *, creds: str | None = None, all_images: bool = False) -> None:
    """``skopeo copy`` with TLS verification off for the destination (plain-HTTP loopback registry)."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--src-tls-verify=false"]
    if creds:
        cmd += ["--dest-creds", creds]
    if all_images:
        cmd.append("--all")
    cmd += [src, dest]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr}")


def multiarch_layout(out: str, host_image: Any, other_image: Any) -> str:
    """Write an OCI layout tar whose index.json names one image index of two platforms.

    ``host_image``/``other_image`` are ``deploy.mkimage.Image`` objects; the other one's config
    must say another architecture. Returns the digest of the nested index.
    """
    import tarfile

    def entry(img: Any, arch: str) -> dict[str, Any]:
        man = img.blobs[img.manifest_digest]
        return {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest,
            "size": len(man),
            "platform": {"os": "linux", "architecture": arch},
        }

    host_arch = json.loads(host_image.blobs[host_image.config_digest])["architecture"]
    other_arch = json.loads(other_image.blobs[other_image.config_digest])["architecture"]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(other_image, other_arch), entry(host_image, host_arch)],
    }
    index_bytes = json.dumps(index).encode()
    index_digest = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
    top = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest,
                "size": len(index_bytes),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    blobs = {**host_image.blobs, **other_image.blobs, index_digest: index_bytes}
    with tarfile.open(out, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(top).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    return index_digest


class Proxy:
    """A logging reverse proxy to ``upstream`` (host:port) on a free 127.0.0.1 port.

    ``corrupt``: blob digests whose bytes are altered (one byte flipped) on the way.
    ``rate_bps``: throttle blob bodies to this many bytes per second (0 = no limit).
    ``stall_after``: digest -> byte count after which that blob's body stops (the
    connection stays open) until ``release()``.
    ``log``: ``(method, path, range header, bytes of body sent)`` per request.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.corrupt: set[str] = set()
        self.rate_bps = 0
        self.stall_after: dict[str, int] = {}
        self.tags_page_size = 0  # >0: answer tag lists page by page (distribution spec n/last + Link)
        self.log: list[tuple[str, str, str, int]] = []
        self._released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                return

            def _tags_page(self) -> None:
                """A page of the upstream's tag list: lexical order, ``n`` (at most the proxy's
                page size) after ``last``, and ``Link: <...>; rel="next"`` when more remain."""
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("GET", parsed.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    obj = json.loads(body)
                    tags = sorted(obj.get("tags") or [])
                    last = query.get("last", [""])[0]
                    n = min(int(query.get("n", [proxy.tags_page_size])[0]), proxy.tags_page_size)
                    rest = [t for t in tags if t > last] if last else tags
                    page = rest[:n]
                    body = json.dumps({"name": obj.get("name"), "tags": page}).encode()
                link = ""
                if resp.status == 200 and len(rest) > n:
                    link = f'<{parsed.path}?n={n}&last={urllib.parse.quote(page[-1])}>; rel="next"'
                self.send_response(resp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if link:
                    self.send_header("Link", link)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                proxy.log.append((self.command, self.path, "", len(body)))
                self.close_connection = True

            def _forward(self) -> None:
                if proxy.tags_page_size and self.command == "GET" and self.path.split("?")[0].endswith("/tags/list"):
                    self._tags_page()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                digest = ""
                if "/blobs/sha256:" in self.path:
                    digest = "sha256:" + self.path.rsplit("sha256:", 1)[1].split("?")[0]
                sent = 0
                try:
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() in ("connection", "transfer-encoding"):
                            continue
                        if k.lower() == "location" and v.startswith(f"http://{proxy.upstream}"):
                            v = v.replace(proxy.upstream, proxy.host, 1)
                        self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    flipped = False
                    started = time.monotonic()
                    while True:
                        chunk = resp.read(16384)
                        if not chunk:
                            break
                        if digest in proxy.corrupt and not flipped:
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                            flipped = True
                        limit = proxy.stall_after.get(digest)
                        if limit is not None and sent + len(chunk) > limit:
                            chunk = chunk[: max(0, limit - sent)]
                            self.wfile.write(chunk)
                            sent += len(chunk)
                            self.wfile.flush()
                            proxy._released.wait(120)
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if proxy.rate_bps and digest:
                            ahead = sent / proxy.rate_bps - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
                finally:
                    proxy.log.append((self.command, self.path, self.headers.get("Range", ""), sent))
                    conn.close()
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

        self._server = _ThreadingServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def blob_bytes(self, digest: str) -> int:
        """Total body bytes served for blob ``digest``."""
        return sum(n for m, p, _r, n in self.log if m == "GET" and p.endswith("/blobs/" + digest))

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def registry(**kw: Any) -> Iterator[Registry]:
    """A started ``Registry``, stopped afterwards."""
    reg = Registry(**kw)
    try:
        yield reg.start()
    finally:
        reg.stop()


def env_with_registry_config(path: Path) -> dict[str, str]:
    """Environment making a process read/write credentials in ``path``."""
    env = dict(os.environ)
    env["DOCKYARD_REGISTRY_CONFIG"] = str(path)
    return env
