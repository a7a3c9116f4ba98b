"""``events.publish`` with ``after``: an event waits for the one it must follow, in the service
itself (a real journal in a temp dir, no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.api.events import PublishRequest
from common.rpc.server import Context
from services.events.journal import Journal
from services.events.service import EventsService


def _ctx() -> Context:
    return Context("r", "events.publish", "default", {}, None)


def test_an_event_waits_for_the_one_it_follows_and_a_journaled_one_costs_no_wait(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        svc = EventsService(Journal(tmp_path / "journal.db"), after_wait_s=5.0)
        writer = asyncio.create_task(svc.writer_loop())
        try:
            later = asyncio.create_task(
                svc.publish(PublishRequest(id="task/create", topic="/tasks/create", after="ctr/create"), _ctx())
            )
            await asyncio.sleep(0.05)
            assert not later.done()  # held back: its dependency is not journaled yet
            await svc.publish(PublishRequest(id="ctr/create", topic="/containers/create"), _ctx())
            await asyncio.wait_for(later, 2)
            # journaled lately: answered from memory, at once
            await asyncio.wait_for(
                svc.publish(PublishRequest(id="ctr/delete", topic="/containers/delete", after="task/create"), _ctx()),
                0.5,
            )
            return [r.id for r in svc.journal.read(0, 10, None)]
        finally:
            writer.cancel()
            svc.journal.close()

    assert asyncio.run(scenario()) == ["ctr/create", "task/create", "ctr/delete"]


def test_a_dependency_journaled_before_a_restart_is_found_in_the_journal(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        first = EventsService(Journal(tmp_path / "journal.db"))
        writer = asyncio.create_task(first.writer_loop())
        await first.publish(PublishRequest(id="ctr/create", topic="/containers/create"), _ctx())
        writer.cancel()
        first.journal.close()
        again = EventsService(Journal(tmp_path / "journal.db"))  # nothing in memory
        writer = asyncio.create_task(again.writer_loop())
        try:
            await asyncio.wait_for(
                again.publish(PublishRequest(id="task/create", topic="/tasks/create", after="ctr/create"), _ctx()), 2
            )
            return [r.id for r in again.journal.read(0, 10, None)]
        finally:
            writer.cancel()
            again.journal.close()

    assert asyncio.run(scenario()) == ["ctr/create", "task/create"]
