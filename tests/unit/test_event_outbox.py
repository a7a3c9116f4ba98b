"""The outbox log of ``common.events``: what a publisher appends, what the next one (or the
execution service, for a dead shim) finds in it after a crash at any point, and when it is
emptied. The events service is a stand-in here (``call`` only); the real one is in
``tests/integration/test_events_service.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from common import codec, errors, events
from common.events import LOG_NAME, EventPublisher, has_leftovers, read_log, take_leftovers


class Journal:
    """``events.publish`` as the publisher sees it: journals the event, or is down."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.down = False

    async def call(self, method: str, body: dict[str, Any], **_kw: Any) -> dict[str, Any]:
        assert method == "events.publish"
        if self.down:
            raise errors.Unavailable("events service not answering")
        self.ids.append(body["id"])
        return {"seq": len(self.ids), "duplicate": False}


def _publish(pub: EventPublisher, *ids: str) -> None:
    for i in ids:
        pub.publish("/tasks/exit", {"id": i}, namespace="default", event_id=i)


def _state(outbox: Path) -> tuple[list[str], int]:
    found, acked, size = read_log((outbox / LOG_NAME).read_bytes())
    assert size == (outbox / LOG_NAME).stat().st_size
    return [e["id"] for e in found], acked


def test_events_are_appended_and_acknowledged_in_order(tmp_path: Path) -> None:
    journal = Journal()

    async def go() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "a", "b", "c")
        assert await pub.flush(5)
        await pub.close()

    asyncio.run(go())
    assert journal.ids == ["a", "b", "c"]
    assert _state(tmp_path) == (["a", "b", "c"], 3)
    assert not has_leftovers(tmp_path)


def test_the_next_publisher_sends_what_was_not_acknowledged(tmp_path: Path) -> None:
    journal = Journal()

    async def first() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "a", "b")
        assert await pub.flush(5)
        journal.down = True
        _publish(pub, "c", "d")
        await asyncio.sleep(0.05)
        assert pub.pending() == 2
        await pub.close()  # the process dies

    async def second() -> None:
        journal.down = False
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        assert pub.pending() == 2
        _publish(pub, "e")
        assert await pub.flush(5)
        await pub.close()

    asyncio.run(first())
    assert has_leftovers(tmp_path)
    assert _state(tmp_path) == (["a", "b", "c", "d"], 2)
    asyncio.run(second())
    assert journal.ids == ["a", "b", "c", "d", "e"]
    assert _state(tmp_path) == (["a", "b", "c", "d", "e"], 5)


@pytest.mark.parametrize("cut", [1, 3, 5, 9])
def test_a_record_torn_by_a_crash_is_dropped_and_the_log_stays_readable(tmp_path: Path, cut: int) -> None:
    journal = Journal()
    journal.down = True

    async def write(*ids: str) -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, *ids)
        await pub.close()

    asyncio.run(write("a"))
    whole = (tmp_path / LOG_NAME).read_bytes()
    payload = codec.encode({"id": "torn"})
    with open(tmp_path / LOG_NAME, "ab") as f:  # killed in the middle of an append
        f.write((b"E" + len(payload).to_bytes(4, "big") + payload)[:cut])
    assert read_log((tmp_path / LOG_NAME).read_bytes())[2] == len(whole)
    asyncio.run(write("b"))
    assert _state(tmp_path) == (["a", "b"], 0)


def test_older_one_file_per_event_outboxes_are_sent_first(tmp_path: Path) -> None:
    journal = Journal()
    for n, i in enumerate(("old1", "old2")):
        item = {"id": i, "topic": "/tasks/exit", "namespace": "default", "event": {}}
        (tmp_path / f"{n:012d}.ev").write_bytes(codec.encode(item))

    async def go() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "new")
        assert await pub.flush(5)
        await pub.close()

    asyncio.run(go())
    assert journal.ids == ["old1", "old2", "new"]
    assert not list(tmp_path.glob("*.ev"))


def test_take_leftovers_empties_a_dead_publishers_outbox(tmp_path: Path) -> None:
    journal = Journal()

    async def go() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "a")
        assert await pub.flush(5)
        journal.down = True
        _publish(pub, "b", "c")
        await pub.close()

    asyncio.run(go())
    old = {"id": "old", "topic": "/t", "namespace": "d", "event": {}}
    (tmp_path / "000000000007.ev").write_bytes(codec.encode(old))
    taken: list[dict[str, Any]] = []
    take_leftovers(tmp_path, taken.append)
    assert [e["id"] for e in taken] == ["old", "b", "c"]
    assert not has_leftovers(tmp_path)
    assert list(tmp_path.iterdir()) == []
    take_leftovers(tmp_path, taken.append)
    assert len(taken) == 3


def test_leftovers_stay_until_all_of_them_were_handed_over(tmp_path: Path) -> None:
    """The taker dies (or its own outbox fails) in the middle: nothing is lost, the next
    attempt hands them over again (the journal keeps each id once)."""
    journal = Journal()
    journal.down = True

    async def go() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "a", "b", "c")
        await pub.close()

    asyncio.run(go())
    taken: list[str] = []

    def full_after_one(item: dict[str, Any]) -> None:
        if taken:
            raise OSError(28, "No space left on device")
        taken.append(item["id"])

    with pytest.raises(OSError):
        take_leftovers(tmp_path, full_after_one)
    assert has_leftovers(tmp_path) and _state(tmp_path) == (["a", "b", "c"], 0)
    again: list[dict[str, Any]] = []
    take_leftovers(tmp_path, again.append)
    assert [e["id"] for e in again] == ["a", "b", "c"]
    assert not has_leftovers(tmp_path)


def test_a_log_that_grew_is_emptied_once_all_is_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "COMPACT_BYTES", 200)
    journal = Journal()

    async def go() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        for i in range(5):
            _publish(pub, f"e{i}")
            assert await pub.flush(5)
        size = (tmp_path / LOG_NAME).stat().st_size
        assert size < 200  # emptied on the way, then appended to again
        _publish(pub, "last")
        assert await pub.flush(5)
        await pub.close()

    asyncio.run(go())
    assert journal.ids == [f"e{i}" for i in range(5)] + ["last"]
    ids, acked = _state(tmp_path)
    assert acked == len(ids) and set(ids) < set(journal.ids)  # what is left in it is acknowledged
