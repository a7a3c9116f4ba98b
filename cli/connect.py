"""Clients of the services, configured from the environment (``DOCKYARD_*``)."""

from __future__ import annotations

from common import endpoints, posixos
from common.rpc.client import Client


def namespace() -> str:
    """The namespace commands act in (``DOCKYARD_NAMESPACE``, default ``default``)."""
    return posixos.environ().get("DOCKYARD_NAMESPACE") or "default"


def client(service: str, *, timeout_s: float | None = 30.0) -> Client:
    """Return a blocking client of ``service`` (``image``, ``execution``, ...)."""
    liveness = float(posixos.environ().get("DOCKYARD_LIVENESS_S") or 3.0)
    return Client(
        service,
        endpoints.control_endpoint(service),
        namespace=namespace(),
        timeout_s=timeout_s,
        liveness_s=liveness,
    )
