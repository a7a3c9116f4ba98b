"""The events service's logic: journal every event once, then fan it out.

``events.publish`` appends through one writer task that batches whatever is
queued into a single SQLite transaction, then hands the new records to the
fan-out (the XPUB socket, wired in ``__main__``) and to every live
``events.replay`` follower. A follower first drains the journal, then takes
live records from its own bounded queue; because each queue sees every record
in seq order, a follower knows its position exactly: it skips what it already
delivered at the seam and, if its queue overflowed while it was slow, it goes
back to the journal. Only events compacted away before a follower read them
are lost, and the follower is told so with a ``/events/lost`` envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from common import codec, errors
from common.api.events import (
    LOST_TOPIC,
    EventFilters,
    HeadReply,
    PublishBatchReply,
    PublishBatchRequest,
    PublishReply,
    PublishRequest,
    ReplayRequest,
)
from common.rpc.server import Context, rpc
from services.events.journal import Journal, NewEvent, Record

log = logging.getLogger(__name__)

_BATCH = 512
_RECENT_IDS = 4096
"""Ids of the last events journaled by this process, kept to answer ``after`` without the journal."""
_FOLLOW_QUEUE = 10_000

_KINDS = {"tasks": "task", "containers": "container", "images": "image", "snapshots": "snapshot", "content": "content"}


def event_kind(topic: str) -> str:
    """Resource kind of a topic: ``/tasks/exit`` -> ``task``."""
    part = topic.split("/")[1] if topic.count("/") >= 2 else ""
    return _KINDS.get(part, part)


def _topic_matches(topic: str, want: str) -> bool:
    if want.startswith("/"):
        return topic == want or (want.endswith("/") and topic.startswith(want))
    return topic.rsplit("/", 1)[-1] == want  # a bare verb: "exit" matches /tasks/exit


def matches(record: Record, f: EventFilters) -> bool:
    """True when ``record`` passes filters ``f`` (OR within a field, AND across fields)."""
    if f.topic and not any(_topic_matches(record.topic, t) for t in f.topic):
        return False
    if f.type and event_kind(record.topic) not in f.type:
        return False
    if f.namespace and record.namespace not in f.namespace:
        return False
    ev = record.event
    if f.container:
        is_container_topic = record.topic.startswith("/containers/")
        ids = {str(x) for x in (ev.get("container_id"), ev.get("id") if is_container_topic else None) if x}
        names = {
            str(x).lstrip("/") for x in (ev.get("container_name"), ev.get("name") if is_container_topic else None) if x
        }
        if not any(any(i.startswith(c) for i in ids) or c.lstrip("/") in names for c in f.container):
            return False
    if f.image:
        images = {str(ev.get("image") or "")}
        if record.topic.startswith("/images/"):
            images.add(str(ev.get("name") or ""))
        images.discard("")
        if not any(i in images or any(x.startswith(i) for x in images) for i in f.image):
            return False
    if f.label:
        labels = ev.get("labels") or {}
        for want in f.label:
            key, sep, value = want.partition("=")
            if key not in labels or (sep and str(labels[key]) != value):
                return False
    return True


class _Follower:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=_FOLLOW_QUEUE)
        self.overflowed = False
        self.wakeup = asyncio.Event()

    def offer(self, record: Record) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.overflowed = True
            self.wakeup.set()


class EventsService:
    """``events.publish``, ``events.replay``, ``events.head`` over a ``Journal``.

    ``fanout(record)`` is called for every newly journaled record (the XPUB socket).
    """

    def __init__(
        self, journal: Journal, fanout: Callable[[Record], None] | None = None, *, after_wait_s: float = 30.0
    ) -> None:
        self.journal = journal
        self.fanout = fanout
        self.after_wait_s = after_wait_s
        self._journaled: dict[str, asyncio.Event] = {}  # event ids someone waits for
        self._held_since: dict[str, float] = {}  # dependent event id -> first attempt (monotonic)
        self._pending: asyncio.Queue[tuple[NewEvent, asyncio.Future[tuple[Record, bool]]]] = asyncio.Queue()
        self._followers: set[_Follower] = set()
        self._recent: dict[str, None] = {}  # insertion-ordered set of the last _RECENT_IDS journaled ids

    # -- writing -------------------------------------------------------------------------------
    async def writer_loop(self) -> None:
        """Drain the append queue in batches: one transaction per batch, then fan out."""
        while True:
            first = await self._pending.get()
            batch = [first]
            while len(batch) < _BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                results = await asyncio.to_thread(self.journal.append, [ev for ev, _ in batch])
            except Exception as exc:
                log.exception("journal append failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(errors.Internal(f"events journal append failed: {exc}"))
                continue
            for (_, fut), (record, duplicate) in zip(batch, results, strict=True):
                if not duplicate:
                    self._deliver(record)
                self._recent[record.id] = None
                if len(self._recent) > _RECENT_IDS:
                    del self._recent[next(iter(self._recent))]
                waiting = self._journaled.pop(record.id, None)
                if waiting is not None:
                    waiting.set()
                if not fut.done():
                    fut.set_result((record, duplicate))

    def _deliver(self, record: Record) -> None:
        if self.fanout is not None:
            try:
                self.fanout(record)
            except Exception:
                log.exception("fan-out of event %d failed", record.seq)
        for follower in self._followers:
            follower.offer(record)

    async def append_many(self, evs: list[NewEvent]) -> list[tuple[Record, bool]]:
        """Journal ``evs`` in their order (one transaction unless the writer's batch ends
        among them); ``(record, duplicate)`` for each."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[tuple[Record, bool]]] = []
        for ev in evs:
            fut: asyncio.Future[tuple[Record, bool]] = loop.create_future()
            self._pending.put_nowait((ev, fut))
            futs.append(fut)
        return [await fut for fut in futs]

    def ingest_nowait(self, ev: NewEvent) -> None:
        """Queue a fire-and-forget event (from the XSUB socket) without waiting for it."""
        fut: asyncio.Future[tuple[Record, bool]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.exception())
        self._pending.put_nowait((ev, fut))

    @rpc("events.publish", quiet=True)
    async def publish(self, req: PublishRequest, ctx: Context) -> PublishReply:
        """Journal one event and fan it out; see ``common.api.events``.

        Idempotent by ``req.id``: a duplicate returns the original ``seq`` with
        ``duplicate=True`` and is not fanned out again. Raises Internal if the journal
        cannot be written (the sender keeps the event and retries).
        """
        return (await self._journal([req], ctx))[0]

    @rpc("events.publish_batch", quiet=True)
    async def publish_batch(self, req: PublishBatchRequest, ctx: Context) -> PublishBatchReply:
        """Journal one publisher's events in order, as ``events.publish`` of each in turn
        would; see ``common.api.events``. The events before one whose ``after`` is not
        journaled yet are journaled first (so that a dependency on one of them cannot wait
        for this batch); Unavailable from that wait leaves them journaled, and the sender's
        retry of the batch finds them as duplicates. Raises Internal if the journal cannot
        be written."""
        return PublishBatchReply(replies=await self._journal(req.events, ctx))

    async def _journal(self, events: list[PublishRequest], ctx: Context) -> list[PublishReply]:
        """Journal ``events`` in order, each after its ``after`` (``_wait_for``); see
        ``publish_batch``."""
        replies: list[PublishReply] = []
        ready: list[NewEvent] = []
        earlier: set[str] = set()  # ids of this batch journaled or about to be, before the current one

        async def flush() -> None:
            for record, duplicate in await self.append_many(ready):
                replies.append(PublishReply(seq=record.seq, duplicate=duplicate))
                self._held_since.pop(record.id, None)
            ready.clear()

        for ev in events:
            if ev.after and ev.after not in self._recent and ev.after not in earlier:
                await flush()
                await self._wait_for(ev.after, ev.id, ctx)
            earlier.add(ev.id)
            ready.append(
                NewEvent(ev.id, ev.timestamp or codec.utcnow(), ev.namespace or ctx.namespace, ev.topic, ev.event)
            )
        await flush()
        return replies

    async def _wait_for(self, after: str, event_id: str, ctx: Context) -> None:
        """Hold ``event_id`` back until ``after`` is journaled (bounded, see ``events.publish``).

        Waits within this call's deadline, then answers Unavailable so the sender retries
        (its outbox keeps the event); after ``after_wait_s`` since the first attempt the
        event goes in regardless, so a dependency that never comes cannot block a publisher.
        """
        first = self._held_since.setdefault(event_id, time.monotonic())
        left = self.after_wait_s - (time.monotonic() - first)
        if left <= 0:
            log.warning("event %s journaled without %s, which it should follow", event_id, after)
            return
        if after in self._recent:  # journaled lately: no need to ask the journal (a thread hop)
            return
        waiting = self._journaled.setdefault(after, asyncio.Event())
        if await asyncio.to_thread(self.journal.has, after):
            self._journaled.pop(after, None)
            return
        budget = left if ctx.time_left() is None else min(left, max(0.0, (ctx.time_left() or 0) - 0.5))
        try:
            await asyncio.wait_for(waiting.wait(), budget)
        except TimeoutError:
            if time.monotonic() - first >= self.after_wait_s:
                return
            raise errors.Unavailable(f"event {event_id} waits for event {after}") from None

    @rpc("events.head", quiet=True)
    async def head(self, _req: Any, _ctx: Context) -> HeadReply:
        """Return ``{seq}``, the newest sequence number."""
        return HeadReply(seq=await asyncio.to_thread(self.journal.head))

    # -- reading -------------------------------------------------------------------------------
    @rpc("events.replay", stream=True)
    async def replay(self, req: ReplayRequest, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Stream journaled events after ``since`` in seq order, then live ones if ``follow``.

        Yields ``Envelope`` dicts. No gap and no duplicate at the journal/live seam; a
        ``/events/lost`` envelope ``{first_seq, last_seq}`` reports events compacted away
        before they could be read. Ends at ``until_seq``/``until`` when given.
        """
        follower = _Follower() if req.follow else None
        if follower is not None:
            self._followers.add(follower)
        try:
            last = req.since
            if req.since_time is not None:
                last = max(last, await asyncio.to_thread(self.journal.seq_at, req.since_time))
            stop_at = req.until_seq
            until = req.until
            async for item in self._from_journal(req, last, stop_at, until):
                if isinstance(item, int):
                    last = item
                    continue
                yield item
            if _finished(last, stop_at, until):
                return
            if follower is None:
                return
            while True:
                record = await self._next_live(follower, until)
                if record is None:
                    return
                if follower.overflowed:
                    # too slow for the live queue: read the rest from the journal, then resume live
                    follower.overflowed = False
                    while not follower.queue.empty():
                        follower.queue.get_nowait()
                    async for item in self._from_journal(req, last, stop_at, until):
                        if isinstance(item, int):
                            last = item
                            continue
                        yield item
                    continue
                if record.seq <= last:
                    continue
                if record.seq > last + 1:
                    async for item in self._from_journal(req, last, record.seq - 1, until):
                        if isinstance(item, int):
                            last = item
                            continue
                        yield item
                last = record.seq
                if (stop_at is not None and record.seq > stop_at) or (until is not None and record.timestamp > until):
                    return
                if matches(record, req.filters):
                    yield record.to_wire()
                if _finished(last, stop_at, None):
                    return
        finally:
            if follower is not None:
                self._followers.discard(follower)

    async def _next_live(self, follower: _Follower, until: dt.datetime | None) -> Record | None:
        if not follower.overflowed and not follower.queue.empty():
            return follower.queue.get_nowait()  # the common case under load: no futures, no wait
        get = asyncio.ensure_future(follower.queue.get())
        wake = asyncio.ensure_future(follower.wakeup.wait())
        timeout = None
        if until is not None:
            timeout = max(0.0, (until - codec.utcnow()).total_seconds())
        try:
            done, _ = await asyncio.wait({get, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (get, wake):
                if not fut.done():
                    fut.cancel()
        follower.wakeup.clear()
        if get in done:
            return get.result()
        if wake in done:
            return Record(0, "", codec.utcnow(), "", "", {})  # a marker; the caller sees overflowed
        return None  # until reached

    async def _from_journal(
        self, req: ReplayRequest, last: int, stop_at: int | None, until: dt.datetime | None
    ) -> AsyncIterator[dict[str, Any] | int]:
        """Yield matching envelopes with seq > last; yield ints to report progress of ``last``."""
        first = await asyncio.to_thread(self.journal.first_seq)
        if first > last + 1:
            head = await asyncio.to_thread(self.journal.head)
            lost_to = min(first - 1, head)
            if lost_to > last:
                yield {
                    "seq": lost_to,
                    "id": f"lost-{last + 1}-{lost_to}",
                    "timestamp": codec.utcnow(),
                    "namespace": "",
                    "topic": LOST_TOPIC,
                    "event": {"first_seq": last + 1, "last_seq": lost_to},
                }
                last = lost_to
                yield last
        while True:
            batch = await asyncio.to_thread(self.journal.read, last, _BATCH, stop_at)
            for record in batch:
                if until is not None and record.timestamp > until:
                    yield last
                    return
                last = record.seq
                if matches(record, req.filters):
                    yield record.to_wire()
            yield last
            if len(batch) < _BATCH:
                return


def _finished(last: int, stop_at: int | None, until: dt.datetime | None) -> bool:
    if stop_at is not None and last >= stop_at:
        return True
    return until is not None and codec.utcnow() >= until


async def compactor(journal: Journal, max_age_s: float, max_events: int, interval_s: float = 60.0) -> None:
    """Compact the journal every ``interval_s`` (by age and count)."""
    while True:
        with contextlib.suppress(Exception):
            removed = await asyncio.to_thread(journal.compact, max_age_s, max_events)
            if removed:
                log.info("journal compacted: %d events removed", removed)
        await asyncio.sleep(interval_s)
