"""Docker's network endpoints, read-only: ``GET /networks`` (``docker network ls``) and
``GET /networks/{id}`` (``docker network inspect``) answer the built-in networks a
container can use (``common.networks.NETWORKS``: none and host). Dockyard creates no
networks; their ids are stable (``common.networks.network_id``). ``POST /networks/prune``
(part of ``docker system prune``) removes nothing: built-in networks are never pruned.
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
    """``GET /networks``, ``GET /networks/{id}`` and ``POST /networks/prune`` (see module docstring)."""

    def routes(self, router: Router) -> None:
        router.add("GET", "/networks", self.list_networks)
        router.add("POST", "/networks/prune", self.prune)
        router.add("GET", "/networks/{id}", self.inspect)

    async def prune(self, request: Request) -> Response:
        """``{"NetworksDeleted": null}``: there are only built-in networks, which Docker never prunes."""
        filters_of(request, {"until", "label", "label!"})
        return Response.json({"NetworksDeleted": None})

    async def list_networks(self, request: Request) -> Response:
        filters = filters_of(request, {"name", "id", "driver", "scope", "type", "label", "dangling"})
        for t in filters.get("type", []):
            if t not in ("builtin", "custom"):
                raise HTTPError(400, f"invalid filter: 'type'='{t}'")
        nets = [networks.docker_network(name) for name in networks.NETWORKS]
        return Response.json([n for n in nets if _matches(n, filters)])

    async def inspect(self, request: Request) -> Response:
        ref = request.params["id"]
        for name in networks.NETWORKS:
            net = networks.docker_network(name)
            if ref == name or (len(ref) >= 1 and net["Id"].startswith(ref)):
                return Response.json(net)
        raise HTTPError(404, f"network {ref} not found")
