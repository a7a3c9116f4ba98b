"""The outbox log of ``common.events``: what a publisher appends, what the next one (or the
execution service, for a dead shim) finds in it after a crash at any point, and when it is
emptied. The events service is a stand-in here (``call`` only); the real one is in
``tests/integration/test_events_service.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common import codec, errors, events
from common.api.events import MAX_PUBLISH_BATCH
from common.events import LOG_NAME, EventPublisher, has_leftovers, read_log, take_leftovers


class Journal:
    """``events.publish`` and ``events.publish_batch`` as the publisher sees them: journals the
    events, or is down; ``calls`` the number of events of each call; ``refuse`` ids it refuses
    (InvalidArgument, a batch holding one is refused whole); ``batches=False`` an older
    service without the batch method; ``gate`` (if set) holds every call until it is set;
    ``failing`` the number of calls still to fail as a journal write does (Internal);
    ``follows=True``: an event whose ``after`` is neither journaled nor earlier in its call
    is held, and the call answered Unavailable, as the events service does once its wait
    within the call's deadline ran out."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.calls: list[int] = []
        self.down = False
        self.batches = True
        self.refuse: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.failing = 0
        self.follows = False

    async def call(self, method: str, body: dict[str, Any], **_kw: Any) -> dict[str, Any]:
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise errors.Unavailable("events service not answering")
        if self.failing:
            self.failing -= 1
            raise errors.Internal("events journal append failed: database or disk is full")
        if method == "events.publish_batch":
            if not self.batches:
                raise errors.Unimplemented("events service has no method 'events.publish_batch'")
            items = body["events"]
            assert 1 < len(items) <= MAX_PUBLISH_BATCH
        else:
            assert method == "events.publish"
            items = [body]
        if any(i["id"] in self.refuse for i in items):
            raise errors.InvalidArgument("refused")
        if self.follows:
            seen = set(self.ids)
            for i in items:
                if i.get("after") and i["after"] not in seen:
                    raise errors.Unavailable(f"event {i['id']} waits for event {i['after']}")
                seen.add(i["id"])
        self.calls.append(len(items))
        self.ids.extend(i["id"] for i in items)
        replies = [{"seq": len(self.ids) - len(items) + n + 1, "duplicate": False} for n in range(len(items))]
        return replies[0] if method == "events.publish" else {"replies": replies}


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


def _held(journal: Journal, tmp_path: Path, first: list[str], then: Callable[[EventPublisher], None]) -> None:
    """Publish ``first``, then what ``then`` publishes while the call that carries ``first`` is
    held; everything is delivered before this returns."""

    async def go() -> None:
        journal.gate = asyncio.Event()
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, *first)
        await asyncio.sleep(0.01)  # the sender took them and waits on the service
        then(pub)
        journal.gate.set()
        assert await pub.flush(5)
        assert pub.pending() == 0
        await pub.close()

    asyncio.run(go())


def _batched(journal: Journal, first: list[str], queued: list[str], tmp_path: Path) -> None:
    """Publish ``first``, then ``queued`` while the call that carries ``first`` is held."""

    def then(pub: EventPublisher) -> None:
        _publish(pub, *queued)
        assert pub.pending() == len(first) + len(queued)

    _held(journal, tmp_path, first, then)


def test_events_that_queued_while_a_call_was_out_go_in_one_batch(tmp_path: Path) -> None:
    journal = Journal()
    _batched(journal, ["a"], ["b", "c", "d"], tmp_path)
    assert journal.ids == ["a", "b", "c", "d"]
    assert journal.calls == [1, 3]  # one round trip for the three
    assert _state(tmp_path) == (["a", "b", "c", "d"], 4)


def test_a_batch_holds_at_most_batch_events(tmp_path: Path) -> None:
    journal = Journal()
    queued = [f"e{i}" for i in range(events.BATCH + 5)]
    _batched(journal, ["a"], queued, tmp_path)
    assert journal.ids == ["a", *queued]
    assert journal.calls == [1, events.BATCH, 5]


def test_an_older_service_without_batches_gets_the_events_one_by_one(tmp_path: Path) -> None:
    journal = Journal()
    journal.batches = False
    _batched(journal, ["a"], ["b", "c"], tmp_path)
    assert journal.ids == ["a", "b", "c"] and journal.calls == [1, 1, 1]


def test_a_refused_event_in_a_batch_is_the_only_one_dropped(tmp_path: Path) -> None:
    journal = Journal()
    journal.refuse = {"c"}
    _batched(journal, ["a"], ["b", "c", "d"], tmp_path)
    assert journal.ids == ["a", "b", "d"]
    assert _state(tmp_path)[1] == 4  # the refused one is not sent again either


def test_events_the_journal_cannot_take_are_kept_and_sent_again(tmp_path: Path) -> None:
    """A journal write that fails (Internal: a full disk, say) loses nothing: the batch falls
    back to single events, and the first is sent again with back-off until the journal takes
    it; all arrive in order and the outbox acknowledges only what was journaled."""

    async def go() -> None:
        journal = Journal()
        journal.failing = 3  # the batch of three, then "a" twice
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "a", "b", "c")  # before the sender runs: one batch
        assert await pub.flush(5)
        assert journal.ids == ["a", "b", "c"] and journal.calls == [1, 1, 1] and journal.failing == 0
        await pub.close()

    asyncio.run(go())
    assert _state(tmp_path) == (["a", "b", "c"], 3)


@pytest.mark.parametrize("before", [[], ["a", "b"]])
def test_an_event_held_for_one_queued_behind_it_is_taken_again_with_it(tmp_path: Path, before: list[str]) -> None:
    """The execution service's ``/containers/stop`` (``after`` a ``/tasks/exit``) is out, held by
    the events service, when a dead shim's ``/tasks/exit`` is handed to the same outbox behind
    it: the held call is not repeated as it was until the service's wait ran out (and the two
    journaled the wrong way round), it goes back to the queue and is taken again with the exit,
    which goes first. Alone, or in a batch."""

    async def go() -> None:
        journal = Journal()
        journal.follows = True
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, *before)
        pub.publish("/containers/stop", {"id": "c"}, namespace="default", event_id="stop", after="exit")
        await asyncio.sleep(0.02)  # sent, and held
        _publish(pub, "exit")  # the take-over of the shim's outbox
        assert await pub.flush(2)
        assert journal.ids == [*before, "exit", "stop"]
        await pub.close()

    asyncio.run(go())
    assert _state(tmp_path)[1] == len(before) + 2


def test_a_log_emptied_at_a_batchs_acknowledgement_loses_nothing_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acknowledgement of a batch is one record for its last event: an emptied log does
    not get a count that would cover the events appended after it."""
    monkeypatch.setattr(events, "COMPACT_BYTES", 100)
    journal = Journal()
    _batched(journal, ["a"], ["b", "c", "d", "e"], tmp_path)

    async def crash_with_one_unsent() -> None:
        journal.down = True
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish(pub, "f")
        await asyncio.sleep(0.01)
        await pub.close()

    asyncio.run(crash_with_one_unsent())
    ids, acked = _state(tmp_path)
    assert ids[acked:] == ["f"]  # the next publisher sends it


def _publish_after(pub: EventPublisher, event_id: str, after: str) -> None:
    pub.publish("/containers/stop", {"id": event_id}, namespace="default", event_id=event_id, after=after)


def test_an_event_goes_after_the_queued_one_it_must_follow(tmp_path: Path) -> None:
    """What a dead shim left (``c1/1/exit``) is handed to this outbox behind our own event that
    follows it (``c1/stop``): the batch sends the shim's first, so the events service need not
    hold ours back until its wait runs out."""
    journal = Journal()

    def then(pub: EventPublisher) -> None:
        _publish_after(pub, "c1/stop", "c1/1/exit")
        _publish(pub, "other", "c1/1/exit", "c1/1/delete")

    _held(journal, tmp_path, ["first"], then)
    assert journal.ids == ["first", "other", "c1/1/exit", "c1/stop", "c1/1/delete"]
    assert journal.calls == [1, 4]
    ids, acked = _state(tmp_path)
    assert acked == len(ids) == 5


def test_a_batch_grows_to_take_in_the_event_one_of_it_must_follow(tmp_path: Path) -> None:
    journal = Journal()
    fillers = [f"f{i}" for i in range(events.BATCH + 10)]

    def then(pub: EventPublisher) -> None:
        _publish_after(pub, "late/stop", "late/exit")
        _publish(pub, *fillers, "late/exit", "after-all")

    _held(journal, tmp_path, ["first"], then)
    assert journal.ids == ["first", *fillers, "late/exit", "late/stop", "after-all"]
    assert journal.calls == [1, events.BATCH + 12, 1]  # from the front, up to the one it follows


def test_causal_order_of_a_batch_follows_chains_and_cuts_cycles() -> None:
    def q(event_id: str, after: str = "") -> tuple[int, int, None, dict[str, Any]]:
        return (0, 0, None, {"id": event_id, **({"after": after} if after else {})})

    def ids(batch: list[tuple[int, int, None, dict[str, Any]]]) -> list[str]:
        return [item["id"] for *_, item in events._in_causal_order(batch)]  # type: ignore[arg-type]

    assert ids([q("a"), q("b", "a")]) == ["a", "b"]  # already in order: untouched
    assert ids([q("c", "b"), q("x"), q("b", "a"), q("a")]) == ["x", "a", "b", "c"]
    assert ids([q("p", "q"), q("q", "p"), q("z")]) == ["q", "p", "z"]  # a cycle is cut where it points back
    assert ids([q("d", "elsewhere"), q("e")]) == ["d", "e"]  # another publisher's: the service waits
