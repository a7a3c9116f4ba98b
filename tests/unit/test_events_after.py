"""``events.publish`` with ``after``: an event waits for the one it must follow, in the service
itself (a real journal in a temp dir, no sockets); ``events.publish_batch`` keeps the same
rules for several events of one publisher."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.api.events import PublishBatchRequest, PublishRequest
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


def _batch(*events: PublishRequest) -> PublishBatchRequest:
    return PublishBatchRequest(events=list(events))


def test_a_batch_is_journaled_in_order_and_a_resent_one_is_all_duplicates(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[int], list[bool]]:
        svc = EventsService(Journal(tmp_path / "journal.db"))
        writer = asyncio.create_task(svc.writer_loop())
        try:
            batch = _batch(*(PublishRequest(id=f"t/{v}", topic=f"/tasks/{v}") for v in ("create", "start", "exit")))
            first = await svc.publish_batch(batch, _ctx())
            again = await svc.publish_batch(batch, _ctx())  # its acknowledgement was lost: sent again
            assert [r.seq for r in again.replies] == [r.seq for r in first.replies]
            return (
                [r.id for r in svc.journal.read(0, 10, None)],
                [r.seq for r in first.replies],
                [r.duplicate for r in first.replies + again.replies],
            )
        finally:
            writer.cancel()
            svc.journal.close()

    ids, seqs, duplicates = asyncio.run(scenario())
    assert ids == ["t/create", "t/start", "t/exit"]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert duplicates == [False] * 3 + [True] * 3


def test_a_batch_journals_what_comes_before_an_event_that_must_wait(tmp_path: Path) -> None:
    """The second event of a batch follows another publisher's event, which itself follows the
    batch's first: the first is journaled before the wait, so neither waits for the other."""

    async def scenario() -> list[str]:
        svc = EventsService(Journal(tmp_path / "journal.db"), after_wait_s=5.0)
        writer = asyncio.create_task(svc.writer_loop())
        try:
            batch = asyncio.create_task(
                svc.publish_batch(
                    _batch(
                        PublishRequest(id="ctr/create", topic="/containers/create"),
                        PublishRequest(id="ctr/delete", topic="/containers/delete", after="task/delete"),
                    ),
                    _ctx(),
                )
            )
            await asyncio.sleep(0.05)
            assert not batch.done()  # held back at its second event
            await asyncio.wait_for(
                svc.publish(PublishRequest(id="task/delete", topic="/tasks/delete", after="ctr/create"), _ctx()), 2
            )
            reply = await asyncio.wait_for(batch, 2)
            assert len(reply.replies) == 2
            return [r.id for r in svc.journal.read(0, 10, None)]
        finally:
            writer.cancel()
            svc.journal.close()

    assert asyncio.run(scenario()) == ["ctr/create", "task/delete", "ctr/delete"]


def test_an_event_following_an_earlier_one_of_its_batch_costs_no_wait(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        svc = EventsService(Journal(tmp_path / "journal.db"), after_wait_s=30.0)
        writer = asyncio.create_task(svc.writer_loop())
        try:
            batch = _batch(
                PublishRequest(id="c/1/exit", topic="/tasks/exit"),
                PublishRequest(id="c/stop", topic="/containers/stop", after="c/1/exit"),
            )
            await asyncio.wait_for(svc.publish_batch(batch, _ctx()), 1)
            return [r.id for r in svc.journal.read(0, 10, None)]
        finally:
            writer.cancel()
            svc.journal.close()

    assert asyncio.run(scenario()) == ["c/1/exit", "c/stop"]
