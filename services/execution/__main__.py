"""Wiring of the execution service: store, clients of image/snapshot/events, publisher, recovery."""

from __future__ import annotations

from common.events import EventPublisher
from common.rpc.aio import AsyncClient
from common.service import ServiceHost, run
from common.shimwake import ShimClient
from services.execution.service import ExecutionService
from services.execution.store import Store
from services.execution.volumes import VolumeService


async def setup(host: ServiceHost) -> list[object]:
    settings = host.settings
    store = Store(host.data_dir / "containers.db")

    def client(service: str) -> AsyncClient:
        return AsyncClient(service, settings.control_endpoint(service), liveness_s=settings.liveness_s)

    image, snapshot, events = client("image"), client("snapshot"), client("events")
    publisher = EventPublisher(events, host.data_dir / "outbox")
    publisher.start()

    def shim_client(endpoint: str, namespace: str) -> AsyncClient:
        return ShimClient(endpoint, namespace=namespace, liveness_s=settings.liveness_s)

    service = ExecutionService(settings, store, image, snapshot, events, publisher, shim_client)

    async def close() -> None:
        await service.close()
        await publisher.flush(1.0)
        await publisher.close()
        for c in (image, snapshot, events):
            await c.close()
        service.volumes.close()
        store.close()

    host.on_close(close)
    await service.recover()
    return [service, service.execs, service.archive, VolumeService(service.volumes)]


if __name__ == "__main__":
    run("execution", setup)
