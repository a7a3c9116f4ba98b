"""Wiring of the snapshot service: metadata store, snapshotter, event publisher, RPC.

``python -m services.snapshot``; data under ``<root>/snapshot`` (``metadata.db``,
``snapshots/<id>/``, ``outbox/``); the snapshotter is ``DOCKYARD_SNAPSHOTTER``
(``overlayfs``, default, or ``native``).
"""

from __future__ import annotations

from common.events import EventPublisher
from common.rpc.aio import AsyncClient
from common.service import ServiceHost, run
from services.snapshot import snapshotters
from services.snapshot.service import SnapshotService
from services.snapshot.store import Store


async def setup(host: ServiceHost) -> list[object]:
    store = Store(host.data_dir / "metadata.db")
    snapshotter = snapshotters.make(host.settings.snapshotter, host.data_dir)
    store.claim(snapshotter.name)
    events = AsyncClient("events", host.settings.control_endpoint("events"), liveness_s=host.settings.liveness_s)
    publisher = EventPublisher(events, host.data_dir / "outbox")
    publisher.start()
    service = SnapshotService(store, snapshotter, publisher)

    async def close() -> None:
        await publisher.flush(1.0)
        await publisher.close()
        await events.close()
        await service.close()

    host.on_close(close)
    await service.recover()
    return [service]


if __name__ == "__main__":
    run("snapshot", setup)
