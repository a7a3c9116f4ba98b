"""The outbox log of ``common.events``: what a publisher appends, what the next one (or the
execution service, for a dead shim) finds in it after a crash at any point, and when it is
emptied. The events service is a stand-in here (``call`` only); the real one is in
``tests/integration/test_events_service.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
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
    within the call's deadline ran out (the events before it journaled: a resend finds them
    as duplicates, journaled once). Several publishers may share one."""

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
        assert all(events.SOURCE_KEY not in i for i in items)  # the real service refuses unknown fields
        if any(i["id"] in self.refuse for i in items):
            raise errors.InvalidArgument("refused")
        if self.follows:
            seen = set(self.ids)
            for n, i in enumerate(items):
                if i.get("after") and i["after"] not in seen:
                    self._journal(items[:n])
                    raise errors.Unavailable(f"event {i['id']} waits for event {i['after']}")
                seen.add(i["id"])
        self.calls.append(len(items))
        self._journal(items)
        replies = [{"seq": len(self.ids) - len(items) + n + 1, "duplicate": False} for n in range(len(items))]
        return replies[0] if method == "events.publish" else {"replies": replies}

    def _journal(self, items: list[dict[str, Any]]) -> None:
        journaled = set(self.ids)
        self.ids.extend(i["id"] for i in items if i["id"] not in journaled)


def _publish(pub: EventPublisher, *ids: str, source: str | None = None) -> None:
    """Publish ``ids``; with ``source``, as events handed over from that gone publisher's outbox."""
    for i in ids:
        pub.publish("/tasks/exit", {"id": i}, namespace="default", event_id=i, source=source)


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
        _publish(pub, "exit", source="shim")  # the take-over of the shim's outbox
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
    hold ours back until its wait runs out. The shim's events move ahead of ours, not ours
    behind them: ours keep their order (``other`` after ``c1/stop``)."""
    journal = Journal()

    def then(pub: EventPublisher) -> None:
        _publish_after(pub, "c1/stop", "c1/1/exit")
        _publish(pub, "other")
        _publish(pub, "c1/1/exit", "c1/1/delete", source="c1/task-1")

    _held(journal, tmp_path, ["first"], then)
    assert journal.ids == ["first", "c1/1/exit", "c1/stop", "other", "c1/1/delete"]
    assert journal.calls == [1, 4]
    ids, acked = _state(tmp_path)
    assert acked == len(ids) == 5


def test_a_batch_grows_to_take_in_the_event_one_of_it_must_follow(tmp_path: Path) -> None:
    journal = Journal()
    fillers = [f"f{i}" for i in range(events.BATCH + 10)]

    def then(pub: EventPublisher) -> None:
        _publish_after(pub, "late/stop", "late/exit")
        _publish(pub, *fillers)
        _publish(pub, "late/exit", source="late/task-1")
        _publish(pub, "after-all")

    _held(journal, tmp_path, ["first"], then)
    assert journal.ids == ["first", "late/exit", "late/stop", *fillers, "after-all"]
    assert journal.calls == [1, events.BATCH + 12, 1]  # from the front, up to the one it follows


_Q = tuple[int, int, None, dict[str, Any]]


def _q(event_id: str, after: str = "", source: str | None = None) -> _Q:
    """A queued event; ``source``: the gone publisher it was handed over from (None: ours)."""
    item: dict[str, Any] = {"id": event_id}
    if after:
        item["after"] = after
    if source:
        item[events.SOURCE_KEY] = source
    return (0, 0, None, item)


def _ordered(batch: list[_Q]) -> list[str]:
    return [item["id"] for *_, item in events._in_causal_order(batch)]  # type: ignore[arg-type]


def test_causal_order_of_a_batch_follows_chains_and_cuts_cycles() -> None:
    assert _ordered([_q("a"), _q("b", "a")]) == ["a", "b"]  # already in order: untouched
    # handed over from two gone publishers, behind ours that follows them: moved ahead of it
    batch = [_q("c", "b"), _q("x"), _q("b", "a", "s1"), _q("a", "", "s2")]
    assert _ordered(batch) == ["a", "b", "c", "x"]
    assert _ordered([_q("d", "elsewhere"), _q("e")]) == ["d", "e"]  # another publisher's: the service waits
    # a cycle is cut at the earliest event left, at its turn in its source's order
    assert _ordered([_q("p", "q"), _q("x"), _q("q", "p", "s1"), _q("z", "", "s1")]) == ["p", "x", "q", "z"]
    # ours that names a later one of ours (an older version's outbox, which did not mark the
    # events it took over): ours keep their order, the service holds the first for the other
    assert _ordered([_q("stop", "exit"), _q("other"), _q("exit")]) == ["stop", "other", "exit"]


def test_a_batch_moves_a_handed_over_event_ahead_with_its_outboxs_earlier_ones() -> None:
    """The shim's ``kill`` goes first with its ``exit``, which our ``stop`` follows; its
    ``delete`` (nothing of ours follows it) stays where it was."""
    batch = [
        _q("stop", "1/exit"),
        _q("other"),
        _q("1/kill", "", "t1"),
        _q("1/exit", "", "t1"),
        _q("1/delete", "", "t1"),
    ]
    assert _ordered(batch) == ["1/kill", "1/exit", "stop", "other", "1/delete"]


def _restarts_while_down(handed_over_before_the_restart: bool) -> tuple[list[_Q], list[_Q]]:
    """The execution service's queue and the live shim's after three restarts of one container
    while the events service was down: per restart, ``stop`` (after the old task's exit) and
    ``restart`` (after the new task's start) of ours, and the old shim's events handed over
    (before the ``restart`` or after it); the new task's first event follows the ``stop``, its
    ``kill`` the last ``restart``. The fourth task's shim is alive: its outbox is its own."""
    ours: list[_Q] = []
    for n in (1, 2, 3):
        old = f"t{n}"
        handed = [_q(f"{n}/kill", f"restart{n - 1}" if n > 1 else "", old)]
        if n > 1:
            handed = [_q(f"{n}/create", f"stop{n - 1}", old), _q(f"{n}/start", "", old), *handed]
        handed += [_q(f"{n}/exit", "", old), _q(f"{n}/delete", "", old)]
        ours.append(_q(f"stop{n}", f"{n}/exit"))
        if handed_over_before_the_restart:
            ours += [*handed, _q(f"restart{n}", f"{n + 1}/start")]
        else:
            ours += [_q(f"restart{n}", f"{n + 1}/start"), *handed]
    live = [_q("4/create", "stop3"), _q("4/start")]
    return ours, live


DOCKERD = ["kill", "exit", "stop", "create", "start", "restart"]
"""A restart's events in dockerd's order (kill, die, stop, start, restart), as ids' verbs."""


def _verbs(ids: list[str]) -> list[str]:
    verbs = [i.split("/")[-1].rstrip("0123456789") for i in ids]
    return [v for v in verbs if v in DOCKERD]


@pytest.mark.parametrize("before", [False, True])
def test_restarts_while_down_batch_keeps_ours_in_order(before: bool) -> None:
    """Regression (README, known gaps): ``stop3`` was moved behind the handed-over ``3/exit``,
    and so behind ``restart3``, which follows the live shim's ``4/start``, whose ``4/create``
    follows ``stop3``: the two outboxes waited on each other for ``events_after_wait_s``."""
    ours, _live = _restarts_while_down(before)
    got = _ordered(ours)
    assert got.index("stop3") < got.index("restart3")
    assert _verbs(got) == DOCKERD * 2 + ["kill", "exit", "stop", "restart"]


@pytest.mark.parametrize("before", [False, True])
def test_restarts_while_down_reach_the_journal_at_once_in_dockerds_order(tmp_path: Path, before: bool) -> None:
    """Both outboxes of ``_restarts_while_down`` against one journal that holds an event for the
    one it follows (as the events service does): all journaled at once, in dockerd's order.
    Before, they waited on each other until the service's wait ran out (forever here)."""
    ours, live = _restarts_while_down(before)
    journal = Journal()
    journal.follows = True
    journal.down = True

    def fill(pub: EventPublisher, queued: list[_Q]) -> None:
        for *_, item in queued:
            pub.publish(
                "/tasks/exit",
                {},
                namespace="default",
                event_id=item["id"],
                after=item.get("after"),
                source=item.get(events.SOURCE_KEY),
            )

    async def go() -> None:
        execution = EventPublisher(journal, tmp_path / "execution")  # type: ignore[arg-type]
        shim = EventPublisher(journal, tmp_path / "shim")  # type: ignore[arg-type]
        execution.start()
        shim.start()
        fill(execution, ours)
        fill(shim, live)
        await asyncio.sleep(0.1)
        journal.down = False
        assert await execution.flush(3) and await shim.flush(3)
        await execution.close()
        await shim.close()

    asyncio.run(go())
    ids = journal.ids
    assert sorted(ids) == sorted(item["id"] for *_, item in ours + live)
    assert _verbs(ids) == DOCKERD * 3
    for *_, item in ours + live:
        if item.get("after") and item["after"] in ids:
            assert ids.index(item["after"]) < ids.index(item["id"]), item


@pytest.mark.parametrize("seed", range(300))
def test_a_batch_honours_every_after_and_each_sources_order(seed: int) -> None:
    """Random histories: events of our own, of gone publishers (handed over to our queue, all at
    once, some time after their last event) and of live ones (never in our queue), each maybe
    following an earlier event of any of them. Any history has an order that honours all, so
    the batch's must: every ``after`` in the batch before its follower, each source's order
    kept, nothing lost or doubled."""
    rng = random.Random(seed)
    history: list[tuple[str, str | None, str]] = []  # (id, source or None for ours, after)
    sources: list[str | None] = [None, "gone1", "gone2", "gone3", "live"]
    for n in range(rng.randint(2, 40)):
        after = rng.choice(history)[0] if history and rng.random() < 0.4 else ""
        history.append((f"e{n}", rng.choice(sources), after))
    handed_at: dict[str | None, int] = {}
    for source in sources[1:4]:
        last = max((n for n, (_, s, _) in enumerate(history) if s == source), default=-1)
        if last >= 0:
            handed_at[source] = rng.randint(last, len(history) - 1)
    queue: list[_Q] = []
    for n, (event_id, source, after) in enumerate(history):
        if source is None:
            queue.append(_q(event_id, after))
        for gone, at in handed_at.items():
            if at == n:
                queue += [_q(i, a, gone) for i, s, a in history if s == gone]
    got = _ordered(queue)
    assert sorted(got) == sorted(item["id"] for *_, item in queue)
    for *_, item in queue:
        if item.get("after") in got:
            assert got.index(item["after"]) < got.index(item["id"]), (got, item)
    for source in sources:
        mine = [item["id"] for *_, item in queue if item.get(events.SOURCE_KEY) == source]
        assert [i for i in got if i in mine] == mine
    if all(item.get("after") not in got[n:] for n, (*_, item) in enumerate(queue)):
        assert got == [item["id"] for *_, item in queue]  # nothing to move: untouched


def test_a_handed_over_events_source_stays_in_the_outbox_and_is_not_sent(tmp_path: Path) -> None:
    """The source of a handed-over event is kept in the log (a restarted publisher orders its
    batch by it too) and never sent: the events service refuses fields it does not know."""
    journal = Journal()
    journal.down = True

    async def crash() -> None:
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        _publish_after(pub, "stop", "1/exit")
        _publish(pub, "other")
        _publish(pub, "1/kill", "1/exit", source="t1")
        await asyncio.sleep(0.01)
        await pub.close()

    async def restarted() -> None:
        journal.down = False
        journal.follows = True
        pub = EventPublisher(journal, tmp_path)  # type: ignore[arg-type]
        pub.start()
        assert await pub.flush(2)
        await pub.close()

    asyncio.run(crash())
    found, _, _ = read_log((tmp_path / LOG_NAME).read_bytes())
    assert [e.get(events.SOURCE_KEY) for e in found] == [None, None, "t1", "t1"]
    asyncio.run(restarted())
    assert journal.ids == ["1/kill", "1/exit", "stop", "other"]


def test_an_event_handed_over_keeps_the_time_it_happened(tmp_path: Path) -> None:
    """A dead shim's events taken into the execution service's outbox (``take_leftovers``) keep
    their own timestamps: they were stamped again when taken over (seconds later, after the
    ``stop`` and ``restart`` that follow them), so ``docker events`` showed times out of order and
    a follow with ``--until`` ended at the first of them."""
    journal = Journal()
    journal.down = True
    shim_box, ours = tmp_path / "shim", tmp_path / "ours"
    shim_box.mkdir()
    ours.mkdir()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)

    async def go() -> None:
        shim = EventPublisher(journal, shim_box)  # type: ignore[arg-type]
        shim.publish("/tasks/exit", {"n": 1}, namespace="d", event_id="exit", timestamp=when)
        await shim.close()
        pub = EventPublisher(journal, ours)  # type: ignore[arg-type]
        taken: list[dict[str, Any]] = []
        take_leftovers(shim_box, taken.append)
        for item in taken:
            pub.publish(
                item["topic"],
                item["event"],
                namespace=item["namespace"],
                event_id=item["id"],
                source=str(shim_box),
                timestamp=item["timestamp"],
            )
        pub.publish("/containers/stop", {}, namespace="d", event_id="stop")
        await pub.close()

    asyncio.run(go())
    events, _, _ = read_log((ours / LOG_NAME).read_bytes())
    assert (events[0]["id"], events[0]["timestamp"]) == ("exit", when)
    assert events[1]["timestamp"] > when
