"""Wiring of the gateway: the HTTP server on the unix socket, routes, RPC health."""

from __future__ import annotations

import grp

from common.service import ServiceHost, run
from services.gateway import docker_api
from services.gateway.http import Router, Server


def _dockyard_gid() -> int | None:
    try:
        return grp.getgrnam("dockyard").gr_gid
    except KeyError:
        return None


async def setup(host: ServiceHost) -> list[object]:
    router = Router()
    docker_api.routes(router)
    server = Server(docker_api.make_app(router), docker_api.common_headers())
    await server.listen_unix(host.settings.gateway_socket, mode=0o660, group=_dockyard_gid())
    host.on_close(server.close)
    return []


if __name__ == "__main__":
    run("gateway", setup)
