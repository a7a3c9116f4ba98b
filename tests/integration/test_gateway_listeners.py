"""The gateway's listeners on their own (no other service running): the unix socket's
mode, Docker's headers and version rules, 503 while a service is down, and the TCP
listener that refuses to start without TLS client-certificate verification."""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_util import Engine
from tests.harness import Instance
from tests.registry import free_port


@pytest.fixture
def gateway_only(instance: Instance) -> Iterator[Engine]:
    instance.start("gateway")
    eng = Engine(instance)
    try:
        yield eng
    finally:
        eng.close()


def test_unix_socket_headers_ping_and_versions(gateway_only: Engine) -> None:
    eng = gateway_only
    assert stat.S_IMODE(os.stat(eng.sock).st_mode) == 0o660
    status, headers, body = eng.api("GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["api-version"] == "1.45" and headers["ostype"] == "linux"
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"
    status, headers, body = eng.api("HEAD", "/_ping")
    assert status == 200 and body == b"" and headers["api-version"] == "1.45"
    for prefix in ("/v1.24", "/v1.41", "/v1.45", "/v1.50", ""):
        assert eng.json("GET", f"{prefix}/version")["ApiVersion"] == "1.45"
    status, _h, body = eng.api("GET", "/v1.23/version")
    assert status == 400 and b"too old" in body


def test_a_service_that_is_down_is_a_503_with_its_name(gateway_only: Engine) -> None:
    status, headers, body = gateway_only.api("GET", "/v1.45/containers/json", timeout=30)
    assert status == 503 and headers["content-type"] == "application/json"
    assert b"execution service not answering" in body
    assert gateway_only.api("GET", "/_ping")[0] == 200  # still serving


def test_tcp_without_tls_refuses_to_start(instance: Instance) -> None:
    instance.env["DOCKYARD_GATEWAY_TCP"] = f"127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="exited"):
        instance.start("gateway", timeout_s=15)
    assert "refusing to listen on TCP without TLS client-certificate verification" in instance.log_tail("gateway")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _pki(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from openssl."""
    p = {n: tmp / n for n in ("ca.crt", "ca.key", "srv.crt", "srv.key", "cli.crt", "cli.key", "srv.csr", "cli.csr")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p["ca.key"]), "-out", str(p["ca.crt"]),
             "-subj", "/CN=test-ca", "-days", "2")  # fmt: skip
    ext = tmp / "srv.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for who, subj in (("srv", "/CN=127.0.0.1"), ("cli", "/CN=client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p[f"{who}.key"]), "-out", str(p[f"{who}.csr"]),
                 "-subj", subj)  # fmt: skip
        extra = ["-extfile", str(ext)] if who == "srv" else []
        _openssl("x509", "-req", "-in", str(p[f"{who}.csr"]), "-CA", str(p["ca.crt"]), "-CAkey", str(p["ca.key"]),
                 "-CAcreateserial", "-out", str(p[f"{who}.crt"]), "-days", "2", *extra)  # fmt: skip
    return p


def test_tcp_with_tls_verifies_client_certificates(instance: Instance, tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    port = free_port()
    instance.env.update(
        {
            "DOCKYARD_GATEWAY_TCP": f"127.0.0.1:{port}",
            "DOCKYARD_GATEWAY_TLS_CERT": str(pki["srv.crt"]),
            "DOCKYARD_GATEWAY_TLS_KEY": str(pki["srv.key"]),
            "DOCKYARD_GATEWAY_TLS_CA": str(pki["ca.crt"]),
        }
    )
    instance.start("gateway")

    def ping(with_cert: bool) -> bytes:
        ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        if with_cert:
            ctx.load_cert_chain(str(pki["cli.crt"]), str(pki["cli.key"]))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().read()
        finally:
            conn.close()

    assert ping(with_cert=True) == b"OK"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ping(with_cert=False)
    # the docker CLI speaks it too, with its --tlsverify files
    docker = "/usr/local/bin/docker" if os.access("/usr/local/bin/docker", os.X_OK) else None
    if docker:
        tls = [f"--tlscacert={pki['ca.crt']}", f"--tlscert={pki['cli.crt']}", f"--tlskey={pki['cli.key']}"]
        r = subprocess.run(
            [docker, "-H", f"tcp://127.0.0.1:{port}", "--tlsverify", *tls, "version", "-f", "{{.Server.APIVersion}}"],
            capture_output=True,
            timeout=30,
            env={**os.environ, "DOCKER_CONFIG": str(tmp_path)},
        )
        assert r.stdout.strip() == b"1.45", r.stderr
