"""Wiring of the image service process: ``python -m services.image``."""

from __future__ import annotations

import logging

from common.events import EventPublisher
from common.rpc.aio import AsyncClient
from common.service import ServiceHost, run
from services.image.service import ImageService


async def setup(host: ServiceHost) -> list[object]:
    """Open the stores, the clients of the snapshot/execution/events services and the outbox."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request is too much
    settings = host.settings
    events = AsyncClient("events", settings.control_endpoint("events"), liveness_s=settings.liveness_s)
    snapshot = AsyncClient("snapshot", settings.control_endpoint("snapshot"), liveness_s=settings.liveness_s)
    execution = AsyncClient(
        "execution", settings.control_endpoint("execution"), liveness_s=settings.liveness_s, connect_timeout_s=0.5
    )
    publisher = EventPublisher(events, host.data_dir / "outbox")
    publisher.start()
    service = ImageService(settings, host.data_dir, snapshot=snapshot, execution=execution, publisher=publisher)

    async def close() -> None:
        await service.close()
        await publisher.flush(1.0)
        await publisher.close()
        for client in (events, snapshot, execution):
            await client.close()

    host.on_close(close)
    host.spawn(service.startup_gc(), "image-startup-gc")
    return [service]


if __name__ == "__main__":
    run("image", setup)
