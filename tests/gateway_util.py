"""Helpers for gateway tests: a private Dockyard started with ``dockyard up``, a busybox image,
the real docker CLI pointed at its socket, and raw HTTP over the unix socket.

``engine()`` is a context manager (tests use it from a module-scoped fixture so that one
instance serves a module's tests; it is always cleaned up, even on failure).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PROJECT, Instance


def docker_cli() -> str | None:
    """The docker CLI to test with: /usr/local/bin/docker (28.x) if present, else Debian's."""
    for path in ("/usr/local/bin/docker", "/usr/bin/docker"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("docker")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Engine:
    """A running instance (every service under the supervisor) with ``busybox:latest`` loaded."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.sock = os.path.join(inst.state, "dockyard.sock")
        self.config_dir = tempfile.mkdtemp(prefix="dy-dockercfg-")
        self.env = dict(os.environ)
        self.env.update({"DOCKER_HOST": f"unix://{self.sock}", "DOCKER_CONFIG": self.config_dir})
        self.env.pop("DOCKER_CONTEXT", None)
        self.cli = docker_cli()

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 60, cli: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        binary = cli or self.cli
        if binary is None:
            pytest.skip("no docker CLI installed")
        return subprocess.run([binary, *args], env=self.env, input=input, capture_output=True, timeout=timeout, cwd="/")

    def ok(self, *args: str, **kw: Any) -> str:
        """Run docker and return stdout; fail the test with stderr when it exits non-zero."""
        r = self.docker(*args, **kw)
        assert r.returncode == 0, f"docker {' '.join(args)} exited {r.returncode}: {r.stderr.decode()}"
        return r.stdout.decode()

    def api(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 60
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request on the unix socket: ``(status, headers, body)``."""
        conn = UnixHTTPConnection(self.sock, timeout)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, data, hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _h, data = self.api(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {data!r}"
        return json.loads(data) if data.strip() else None

    def hijack(self, path: str, body: Any = None, timeout: float = 30) -> tuple[str, socket.socket]:
        """POST with ``Upgrade: tcp``; return the status line + headers and the raw socket after them."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.sock)
        data = json.dumps(body).encode() if body is not None else b""
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
            + data
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            ch = sock.recv(1)
            if not ch:
                break
            head += ch
        return head.decode("latin-1"), sock

    def close(self) -> None:
        """Remove the docker CLI's config directory (the instance is cleaned up by its owner)."""
        shutil.rmtree(self.config_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Containers still known to the engine."""
        return [c["Id"] for c in self.json("GET", "/containers/json?all=1")]


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        ch = sock.recv(65536)
        if not ch:
            return out
        out += ch


def busybox_archive(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, str(PROJECT / "deploy" / "mkimage.py"), "--format", "docker", "-o", str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


@contextlib.contextmanager
def engine(**settings: str) -> Iterator[Engine]:
    """``dockyard up`` on a private instance, busybox loaded; everything removed afterwards."""
    inst = Instance(**settings)
    eng: Engine | None = None
    try:
        r = inst.cli("up", timeout=90)
        assert r.returncode == 0, r.stderr.decode() + inst.log_tail("supervisor")
        inst.load_busybox()
        eng = Engine(inst)
        deadline = time.monotonic() + 20
        while not os.path.exists(eng.sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield eng
    finally:
        if eng is not None:
            eng.close()
        inst.cleanup()


@contextlib.contextmanager
def docker_py(eng: Engine, timeout_s: int = 60) -> Iterator[Any]:
    """A docker-py client of ``eng``'s socket (``docker`` must be importable), closed afterwards."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{eng.sock}", timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()
