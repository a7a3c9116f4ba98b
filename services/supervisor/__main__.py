"""Wiring of the supervisor: start the services, serve status/stop, stop them on SIGTERM."""

from __future__ import annotations

import asyncio

from common import endpoints, errors
from common.rpc.aio import AsyncClient
from common.service import ServiceHost, run
from services.supervisor.service import Supervisor


async def setup(host: ServiceHost) -> list[object]:
    env = host.settings.env()

    async def health(name: str, timeout_s: float) -> bool:
        client = AsyncClient(
            name, endpoints.control_endpoint(name, env), liveness_s=timeout_s, connect_timeout_s=timeout_s
        )
        try:
            await client.call(f"{name}.health", {}, timeout_s=timeout_s)
            return True
        except errors.DockyardError:
            return False
        finally:
            await client.close()

    supervisor = Supervisor(endpoints.SERVICES, host.settings.state, env, health)

    async def start_then_wait_for_stop() -> None:
        await supervisor.start_all()
        await supervisor.all_stopped.wait()
        await asyncio.sleep(0.2)  # let the stop call's reply go out
        host.stopping.set()

    host.spawn(start_then_wait_for_stop(), "supervise")

    async def stop_services() -> None:
        if not supervisor.all_stopped.is_set():
            await supervisor.stop_all()

    host.on_close(stop_services)
    return [supervisor]


if __name__ == "__main__":
    run("supervisor", setup)
