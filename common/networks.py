"""The networks Dockyard offers a container, and what it tells a user who asks for more.

Dockyard has no bridge, no NAT and no port publishing. A container gets one of two
network modes (``services.execution.spec``):

- ``none``: its own network namespace with loopback only (Dockyard's default);
- ``host``: the host's network namespace (its interfaces and ports).

Docker's ``bridge`` and ``default`` modes (what ``docker run`` sends without ``--network``)
are mapped to ``none``. Asking for ``bridge`` by name, or publishing ports (``-p``/``-P``,
``HostConfig.PortBindings``/``PublishAllPorts``), does not fail (dockerd's own precedent:
it accepts ports with ``--network host`` and answers ``Published ports are discarded when
using host network mode``), but the create's answer carries a warning saying what the
container really gets (:func:`create_warnings`); the docker CLI prints each as ``WARNING:``.
``NETWORKS`` is what ``GET /networks`` (``docker network ls``) lists. Pure, stdlib only.
"""

from __future__ import annotations

import hashlib

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

NETWORKS: dict[str, str] = {"none": "null", "host": "host"}
"""The networks a container can join, name -> Docker driver name."""

MAPPED_TO_NONE = ("bridge", "default", "")
"""Docker's mode names that become ``none`` in Dockyard."""


def network_id(name: str) -> str:
    """A stable 64-hex id of a built-in network (the same on every host and restart)."""
    return hashlib.sha256(f"dockyard network {name}".encode()).hexdigest()


def effective_mode(mode: str) -> str:
    """The network mode a container really gets for the asked ``mode`` (``bridge`` -> ``none``)."""
    return "none" if mode in MAPPED_TO_NONE else mode


def bridge_warning() -> str:
    """What ``--network bridge`` gets, said plainly."""
    return (
        "Dockyard has no bridge network: the container gets network mode none "
        "(its own network namespace, loopback only); use --network host for the host's network"
    )


def published_ports(port_bindings: Mapping[str, Any] | None) -> list[str]:
    """``HostConfig.PortBindings`` as ``docker ps`` shows them: ``0.0.0.0:18080->80/tcp``, ``80/tcp``."""
    out = []
    for port, bindings in (port_bindings or {}).items():
        spec = port if "/" in str(port) else f"{port}/tcp"
        if not bindings:
            out.append(str(spec))
            continue
        for b in bindings if isinstance(bindings, list) else [bindings]:
            b = b if isinstance(b, dict) else {}
            host_ip = str(b.get("HostIp") or "0.0.0.0")
            host_port = str(b.get("HostPort") or "")
            out.append(f"{host_ip}:{host_port}->{spec}" if host_port else f"{host_ip}::{spec}")
    return out


def ports_warning(ports: list[str], publish_all: bool, mode: str) -> str | None:
    """The warning for ports asked to be published (None when none are); ``mode`` is the asked one."""
    if not ports and not publish_all:
        return None
    if mode == "host":
        return "Published ports are discarded when using host network mode"
    what = ", ".join(ports) if ports else ""
    if publish_all:
        what = f"{what}, all exposed ports (-P)" if what else "all exposed ports (-P)"
    return (
        f"Published ports are discarded: Dockyard does not publish ports ({what}); "
        "the container has network mode none (loopback only), use --network host to serve on the host's ports"
    )


def create_warnings(mode: str, port_bindings: Mapping[str, Any] | None = None, publish_all: bool = False) -> list[str]:
    """The warnings of a create asking for network mode ``mode`` and these published ports."""
    out = []
    if mode == "bridge":
        out.append(bridge_warning())
    ports = ports_warning(published_ports(port_bindings), publish_all, mode)
    if ports:
        out.append(ports)
    return out


def docker_network(name: str) -> dict[str, Any]:
    """``GET /networks/{id}`` of a built-in network (moby ``types.NetworkResource``, API v1.45)."""
    return {
        "Name": name,
        "Id": network_id(name),
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": NETWORKS[name],
        "EnableIPv4": True,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": []},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": {},
        "Labels": {},
    }
