"""Wiring of the gateway: clients of the services, the routes, the unix socket and the optional TCP listener."""

from __future__ import annotations

import grp
import logging

from common.service import ServiceHost, run
from services.gateway import config, docker_api
from services.gateway.backends import Backends
from services.gateway.docker_containers import ContainersAPI
from services.gateway.docker_images import ImagesAPI
from services.gateway.docker_networks import NetworksAPI
from services.gateway.docker_volumes import VolumesAPI
from services.gateway.http import Router, Server
from services.gateway.native import NativeAPI

log = logging.getLogger(__name__)


def _dockyard_gid() -> int | None:
    try:
        return grp.getgrnam("dockyard").gr_gid
    except KeyError:
        return None


def build_app(backends: Backends) -> object:
    """The request handler: the native API under ``/dockyard/``, Docker's API for the rest."""
    router = Router()
    docker_api.SystemAPI(backends).routes(router)
    ContainersAPI(backends).routes(router)
    ImagesAPI(backends).routes(router)
    VolumesAPI(backends).routes(router)
    NetworksAPI().routes(router)
    return NativeAPI(backends).wrap(docker_api.make_app(router))


async def setup(host: ServiceHost) -> list[object]:
    gw = config.GatewaySettings()
    ssl_ctx = None
    if gw.tcp:
        address = config.parse_address(gw.tcp)
        ssl_ctx = config.tls_context(gw)  # raises (the service refuses to start) without TLS or the insecure flag
    backends = Backends(host.settings)
    backends.reset_workdir()
    server = Server(build_app(backends), docker_api.common_headers())  # type: ignore[arg-type]
    await server.listen_unix(host.settings.gateway_socket, mode=0o660, group=_dockyard_gid())
    if gw.tcp:
        await server.listen_tcp(address[0], address[1], ssl=ssl_ctx)
        log.info("listening on tcp %s:%d (%s)", address[0], address[1], "TLS, client certs" if ssl_ctx else "INSECURE")
    host.on_close(server.close)
    host.on_close(backends.close)
    return []


if __name__ == "__main__":
    run("gateway", setup)
