"""Docker's network endpoints. ``GET /networks`` (``docker network ls``) and
``GET /networks/{id}`` (``docker network inspect``) answer the built-in networks a
container can use (``common.networks.NETWORKS``: none and host); their ids are stable
(``common.networks.network_id``).

Dockyard creates no networks, so the endpoints that would change them answer what
they can honestly answer: ``POST /networks/create`` and ``POST /networks/{id}/connect``
or ``/disconnect`` a 501 saying so (a ``docker compose`` project that creates its
network stops there with that message, not with ``page not found``); ``DELETE
/networks/{id}`` dockerd's 403 for a pre-defined network (404 for an unknown one);
``POST /networks/prune`` an empty report (there is nothing to prune).
"""

from __future__ import annotations

from typing import Any

from common import networks
from services.gateway.docker_api import filters_of
from services.gateway.http import HTTPError, Request, Response, Router


def _matches(net: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Docker's network filters: name (substring), id (prefix), driver, scope, type
    (builtin/custom), label (none carry labels), dangling (never: built-ins are not pruned)."""
    return all(any(_match_one(net, key, v) for v in values) for key, values in filters.items() if values)


def _match_one(net: dict[str, Any], key: str, value: str) -> bool:
    if key == "name":
        return value in str(net["Name"])
    if key == "id":
        return bool(net["Id"].startswith(value))
    if key in ("driver", "scope"):
        return value == str(net[key.capitalize()])
    if key == "type":
        return value == "builtin"
    if key == "dangling":
        return value.lower() in ("0", "false")
    return False  # label: built-ins carry none


class NetworksAPI:
    """Docker's network endpoints (see module docstring)."""

    def routes(self, router: Router) -> None:
        router.add("GET", "/networks", self.list_networks)
        router.add("GET", "/networks/{id}", self.inspect)
        router.add("POST", "/networks/create", self.create)
        router.add("POST", "/networks/prune", self.prune)
        router.add("DELETE", "/networks/{id}", self.remove)
        router.add("POST", "/networks/{id}/connect", self.connect)
        router.add("POST", "/networks/{id}/disconnect", self.connect)

    async def list_networks(self, request: Request) -> Response:
        filters = filters_of(request, {"name", "id", "driver", "scope", "type", "label", "dangling"})
        for t in filters.get("type", []):
            if t not in ("builtin", "custom"):
                raise HTTPError(400, f"invalid filter: 'type'='{t}'")
        nets = [networks.docker_network(name) for name in networks.NETWORKS]
        return Response.json([n for n in nets if _matches(n, filters)])

    async def inspect(self, request: Request) -> Response:
        return Response.json(_find(request.params["id"]))

    async def create(self, request: Request) -> Response:
        """501: Dockyard has no network drivers; names the network asked for and what exists."""
        body = await request.json()
        name = str(body.get("Name") or "") if isinstance(body, dict) else ""
        what = f"network {name}" if name else "a network"
        raise HTTPError(
            501,
            f"cannot create {what}: Dockyard creates no networks; a container uses {_BUILT_INS} (docker run --network)",
        )

    async def connect(self, request: Request) -> Response:
        """404 for an unknown network, else 501: a container's network is fixed at its create."""
        net = _find(request.params["id"])
        verb = "disconnect from" if request.path.endswith("/disconnect") else "connect to"
        raise HTTPError(
            501,
            f"cannot {verb} network {net['Name']}: Dockyard sets a container's network when it "
            "is created (docker run --network) and cannot change it",
        )

    async def remove(self, request: Request) -> Response:
        """dockerd's 403 for a pre-defined network; 404 for an unknown one."""
        net = _find(request.params["id"])
        raise HTTPError(403, f"{net['Name']} is a pre-defined network and cannot be removed")

    async def prune(self, request: Request) -> Response:
        """Nothing to prune: the built-in networks are never removed (moby's empty report)."""
        filters_of(request, {"until", "label", "label!"})
        return Response.json({"NetworksDeleted": None})


_BUILT_INS = " or ".join(f"'{name}'" for name in networks.NETWORKS)


def _find(ref: str) -> dict[str, Any]:
    """The built-in network named ``ref`` or whose id starts with it; 404 otherwise."""
    for name in networks.NETWORKS:
        net = networks.docker_network(name)
        if ref == name or (len(ref) >= 1 and net["Id"].startswith(ref)):
            return net
    raise HTTPError(404, f"network {ref} not found")
