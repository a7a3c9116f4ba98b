"""The gateway's own settings (TCP listener, TLS) and the TLS context it builds.

Read from ``DOCKYARD_GATEWAY_*`` environment variables next to the shared
``common.settings.Settings``. The unix socket is always served; TCP only when
``DOCKYARD_GATEWAY_TCP=host:port`` is set, and then only with TLS that verifies
client certificates (``..._TLS_CERT``, ``..._TLS_KEY``, ``..._TLS_CA``), unless
``DOCKYARD_GATEWAY_TCP_INSECURE=1`` says plain TCP is wanted (tests, a trusted
loopback). Anything else refuses to start: a Docker API on an open port is root
on the host for whoever reaches it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import errors


class GatewaySettings(BaseSettings):
    """Settings of the gateway process only."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_GATEWAY_", extra="ignore")

    tcp: str | None = Field(default=None, description="host:port to listen on over TCP as well (default: unix only)")
    tls_cert: Path | None = Field(default=None, description="server certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="server private key (PEM)")
    tls_ca: Path | None = Field(default=None, description="CA bundle that client certificates must chain to")
    tcp_insecure: bool = Field(default=False, description="allow TCP without TLS client verification")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; InvalidArgument otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"invalid gateway TCP address {text!r}: expected host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def tls_context(cfg: GatewaySettings) -> ssl.SSLContext | None:
    """The server TLS context for the TCP listener, or None for an explicitly insecure one.

    Raises InvalidArgument when TCP is asked for without cert, key and CA and without
    ``tcp_insecure``, or when the files cannot be loaded.
    """
    have = [cfg.tls_cert, cfg.tls_key, cfg.tls_ca]
    if not all(have):
        if cfg.tcp_insecure:
            return None
        raise errors.InvalidArgument(
            "refusing to listen on TCP without TLS client-certificate verification: set "
            "DOCKYARD_GATEWAY_TLS_CERT, DOCKYARD_GATEWAY_TLS_KEY and DOCKYARD_GATEWAY_TLS_CA, "
            "or DOCKYARD_GATEWAY_TCP_INSECURE=1 to accept anyone who can reach the port"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
        ctx.load_verify_locations(cafile=str(cfg.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidArgument(f"cannot load the gateway's TLS files: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
