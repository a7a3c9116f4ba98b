"""Publishing events so that none is lost: an on-disk outbox plus acknowledged delivery.

``EventPublisher.publish()`` appends the event to the outbox's log (``<outbox>/events.log``)
and returns; a single sender task hands the events, in order, to ``events.publish`` (or,
when several queued up while a call was out, all of them to one ``events.publish_batch``)
and appends an acknowledgement record once the events service acknowledged them. If the events
service is down, the sender retries with back-off; if the publishing process dies, the log
stays and what it holds past the last acknowledgement is sent by the next
``EventPublisher`` opened on the same directory (a restarted service, a shim woken from
its sleep, or the execution service draining a dead shim's outbox). The events service
deduplicates by event id, so a resend after a lost acknowledgement is harmless: delivery
is at least once, journaling exactly once.

The log is a sequence of records, each written with one ``write(2)`` (so a process killed
at any moment leaves whole records, and a torn tail is dropped on reading): ``b"E"`` + a
4-byte big-endian length + the msgpack event, or ``b"A"`` + an 8-byte big-endian count
(the first ``count`` events of the file are acknowledged: delivery is in order). It is
emptied (``ftruncate``) once everything in it is acknowledged and it outgrew
``COMPACT_BYTES``. One append per event and one per acknowledgement, where a file per
event cost a create, a rename and an unlink: on an ext4 state directory such as this
project's test hosts' ``/run``, ~0.4-0.7 ms of system time each against ~3 us for an
append. Outboxes written by older versions (one ``NNNNNNNNNNNN.ev`` file per event) are
read and sent first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from common import codec, errors
from common.api.events import MAX_PUBLISH_BATCH
from common.rpc.aio import AsyncClient

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{12})\.ev$")
_MIN_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
_INTERNAL_LOG_EVERY = 30
"""A journal failure is logged at its first retry and then once every this many (~1 min)."""

LOG_NAME = "events.log"
"""The outbox's log file (module docstring)."""


def shim_outbox(bundle: str, incarnation: int) -> Path:
    """The outbox of the shim of task ``incarnation`` in ``bundle``: ``<bundle>/outbox/task-<n>``.

    One per incarnation, so that a shim never shares its log with the next one. With the
    events service down, a restarted container's new shim starts while the old one's events
    still wait to be taken over by the execution service (``take_leftovers``, once the old
    shim is gone): in one shared log, the new shim's acknowledgement records counted the old
    one's events, and the take-over removed the log the new shim was writing, which lost its
    later events. Shims of an older version wrote ``<bundle>/outbox`` itself."""
    return Path(bundle) / "outbox" / f"task-{incarnation}"


def bundle_outboxes(bundle: str, incarnation: int | None = None) -> list[Path]:
    """The shim outboxes of ``bundle`` to drain: ``<bundle>/outbox`` (shims of an older version)
    and that of ``incarnation``, or (None) of every incarnation, oldest first."""
    root = Path(bundle) / "outbox"
    if incarnation is not None:
        return [root, shim_outbox(bundle, incarnation)]
    try:
        tasks = [p for p in root.iterdir() if p.name.startswith("task-") and p.name[5:].isdigit()]
    except (FileNotFoundError, NotADirectoryError):
        return [root]
    return [root, *sorted(tasks, key=lambda p: int(p.name[5:]))]


COMPACT_BYTES = 64 * 1024
"""A log this large is emptied once everything in it is acknowledged."""

_EVENT = struct.Struct(">cI")
_ACK = struct.Struct(">cQ")


def _legacy_files(outbox: Path) -> list[tuple[int, Path]]:
    """One file per event (the outbox of older versions), oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(outbox):
            m = _FILE_RE.match(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


def read_log(data: bytes) -> tuple[list[dict[str, Any]], int, int]:
    """Parse an outbox log: ``(events, acknowledged, size)``.

    ``events`` in the order they were appended (an undecodable one as ``{}``),
    ``acknowledged`` how many of the first of them were acknowledged, ``size`` the length of
    the whole records (a torn last record, from a process killed mid-write, is not counted).
    """
    events: list[dict[str, Any]] = []
    acked = 0
    pos = 0
    while pos < len(data):
        kind = data[pos : pos + 1]
        if kind == b"E" and pos + _EVENT.size <= len(data):
            _, length = _EVENT.unpack_from(data, pos)
            end = pos + _EVENT.size + length
            if end > len(data):
                break
            try:
                item = codec.decode(data[pos + _EVENT.size : end])
            except ValueError:
                item = None
            events.append(item if isinstance(item, dict) else {})
            pos = end
        elif kind == b"A" and pos + _ACK.size <= len(data):
            _, count = _ACK.unpack_from(data, pos)
            acked = max(acked, count)
            pos += _ACK.size
        else:
            break
    return events, min(acked, len(events)), pos


def _read_legacy_file(path: Path) -> dict[str, Any] | None:
    """The event in an older version's outbox file; None (logged) when it cannot be read."""
    try:
        return dict(codec.decode(path.read_bytes()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("dropping unreadable outbox file %s: %s", path, exc)
        return None


def _read_log_file(path: Path) -> tuple[list[dict[str, Any]], int, int]:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return [], 0, 0
    return read_log(data)


def has_leftovers(outbox: Path) -> bool:
    """Whether ``outbox`` holds an event that was never acknowledged (one read of a small file)."""
    events, acked, _ = _read_log_file(outbox / LOG_NAME)
    return len(events) > acked or bool(_legacy_files(outbox))


def take_leftovers(outbox: Path, into: Callable[[dict[str, Any]], None]) -> None:
    """Hand the events of ``outbox`` never acknowledged to ``into``, oldest first, then remove them.

    For an outbox whose publisher is gone (a dead shim's): ``into`` publishes each event in
    the caller's own outbox. Each source is removed only after all it held was handed over,
    so a caller killed meanwhile leaves them for the next attempt (handed over twice at
    worst: the journal keeps each event id once). Unreadable events are logged and dropped;
    an ``OSError`` of ``into`` (the caller's outbox cannot be written) stops the hand-over,
    leaving the rest in place, and is raised.
    """
    for _, path in _legacy_files(outbox):
        item = _read_legacy_file(path)
        if item is not None:
            into(item)
        path.unlink(missing_ok=True)
    events, acked, _ = _read_log_file(outbox / LOG_NAME)
    for item in events[acked:]:
        if item:
            into(item)
        else:
            log.warning("dropping an unreadable event in %s", outbox / LOG_NAME)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (outbox / LOG_NAME).unlink()


class EventPublisher:
    """In-order, at-least-once publisher backed by an outbox directory.

    ``client`` is an ``AsyncClient`` of the events service; ``outbox`` a directory this
    publisher owns (created if missing). Call ``start()`` once inside the event loop:
    it queues what an earlier process left in the outbox, oldest first.
    """

    def __init__(self, client: AsyncClient, outbox: Path, *, call_timeout_s: float = 5.0) -> None:
        self.client = client
        self.outbox = outbox
        self.call_timeout_s = call_timeout_s
        # (number, index in the log or -1, an older version's file or None, the event)
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queued = asyncio.Event()  # set while the queue holds something
        self._next = 0
        self._sender: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._acked = -1
        self._progress = asyncio.Condition()
        self._fd = -1
        self._in_flight = 0  # taken from the queue, not acknowledged yet
        self._batches = True  # False once the events service said it has no events.publish_batch
        self._count = 0  # events in the log file
        self._size = 0  # its length in bytes

    def _open_log(self) -> None:
        if self._fd < 0:
            self.outbox.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.outbox / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _append(self, record: bytes) -> None:
        self._open_log()
        written = os.write(self._fd, record)
        if written != len(record):  # a full disk: drop the torn record, so the log stays readable
            os.ftruncate(self._fd, self._size)
            raise OSError(f"outbox {self.outbox}: short write")
        self._size += written

    def start(self) -> None:
        """Load leftovers from the outbox and start the sender task."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for _, path in _legacy_files(self.outbox):
            item = _read_legacy_file(path)
            if item is None:
                path.unlink(missing_ok=True)
                continue
            self._queue.append((self._next, -1, path, item))
            self._next += 1
        log_path = self.outbox / LOG_NAME
        events, acked, size = _read_log_file(log_path)
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size > size:
                os.truncate(log_path, size)  # a record torn by a process killed mid-write
        self._count, self._size = len(events), size
        for index in range(acked, len(events)):
            if not events[index]:
                log.warning("dropping an unreadable event in %s", log_path)
                continue
            self._queue.append((self._next, index, None, events[index]))
            self._next += 1
        if self._queue:
            self._queued.set()
            self._idle.clear()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="event-publisher")

    def publish(
        self,
        topic: str,
        event: dict[str, Any],
        *,
        namespace: str,
        event_id: str,
        after: str | None = None,
        source: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> int:
        """Queue one event for delivery; durable once this returns.

        ``event_id`` must be unique per event and stable across retries (e.g.
        ``"<container_id>/<task incarnation>/exit"``); the journal stores each id once.
        ``after`` names an event of another publisher that must be journaled first (the
        events service holds this one back for a while until it is; see ``events.publish``).
        ``source``: None for this publisher's own event; for one handed over from a gone
        publisher's outbox (``take_leftovers``), that outbox (any string naming it alone): a
        batch keeps the order of each source's events and may move a handed-over one ahead
        of ours (``_in_causal_order``). ``timestamp``: when it happened (None: now); a
        handed-over event keeps its own. Returns the event's number in this publisher (for
        ``delivered``). Raises ``OSError`` if the outbox cannot be written.
        """
        item: dict[str, Any] = {
            "id": event_id,
            "topic": topic,
            "namespace": namespace,
            "timestamp": timestamp or codec.utcnow(),
            "event": event,
        }
        if after:
            item["after"] = after
        if source:
            item[SOURCE_KEY] = source  # kept in the log, not sent (_wire)
        payload = codec.encode(item)
        self._append(_EVENT.pack(b"E", len(payload)) + payload)
        number, index = self._next, self._count
        self._next += 1
        self._count += 1
        self._idle.clear()
        self._queue.append((number, index, None, item))
        self._queued.set()
        return number

    async def delivered(self, number: int, timeout_s: float | None = None) -> bool:
        """Wait until event ``number`` (and so every one published before it) was acknowledged.

        False on timeout (the event stays queued). Events go out in order, so a caller that
        waits here before answering its client makes "my events are in the journal" part
        of the answer (``rm`` and ``run --rm`` do).
        """
        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self._acked >= number)
            return True
        except TimeoutError:
            return False

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued event is acknowledged; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def pending(self) -> int:
        """Number of events not yet acknowledged."""
        return len(self._queue) + self._in_flight

    async def close(self) -> None:
        """Stop sending; unacknowledged events stay in the outbox for the next publisher."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(BaseException):
                await self._sender
            self._sender = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _acknowledge(self, batch: list[_Queued]) -> None:
        """Record that the events of ``batch`` (log entries, or an older version's files) are
        journaled: one acknowledgement record for the log (a count covers all before it)."""
        last = -1
        for _number, index, legacy, _item in batch:
            if legacy is not None:
                legacy.unlink(missing_ok=True)
            else:
                last = max(last, index)
        if last < 0:
            return
        try:
            self._append(_ACK.pack(b"A", last + 1))
            if not self._queue and self._size >= COMPACT_BYTES:
                os.ftruncate(self._fd, 0)  # everything in it is journaled
                self._count = self._size = 0
        except OSError as exc:  # not recorded: the event is sent again by the next publisher (deduplicated)
            log.warning("outbox %s: cannot record an acknowledgement: %s", self.outbox, exc)

    async def _send_loop(self) -> None:
        backoff = _MIN_BACKOFF_S
        while True:
            if not self._queue:
                self._idle.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = self._take()
            self._in_flight = len(batch)
            if len(batch) == 1:
                sent = await self._send_one(_wire(batch[0][3]), retry=False)
            else:
                sent = await self._send_batch([_wire(item) for *_, item in batch])
            if sent is None:
                # not reached (down, slow, or holding an event for one it must follow): back to the
                # front in their order, taken again after a pause with whatever queued up meanwhile,
                # such as a dead shim's event that one of them follows (handed over behind them)
                self._queue.extendleft(sorted(batch, key=lambda entry: entry[0], reverse=True))
                self._in_flight = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            backoff = _MIN_BACKOFF_S
            if not sent:
                for *_, item in batch:
                    await self._send_one(_wire(item))
            self._acknowledge(batch)
            self._in_flight = 0
            async with self._progress:
                self._acked = max(self._acked, *(number for number, *_ in batch))
                self._progress.notify_all()

    def _take(self) -> list[_Queued]:
        """The next batch: what queued up while the last call was out (at most ``BATCH``,
        from the front: acknowledgements count from the front), made
        longer if one of its events must follow an event queued behind it (events a dead shim
        left, handed to this outbox after ours that follow them), and in an order where each
        such event comes after the one it follows (``_in_causal_order``). The events service
        would otherwise hold the first until its wait for the other ran out
        (``events_after_wait_s``), and journal them the wrong way round."""
        queue = self._queue
        size = min(len(queue), BATCH)
        position = {item["id"]: n for n, (*_, item) in enumerate(queue)} if len(queue) > 1 else {}
        n = 0
        while n < size:
            behind = position.get(queue[n][3].get("after") or "", -1)
            if behind >= size:
                size = min(behind + 1, MAX_PUBLISH_BATCH)
            n += 1
        batch = [queue.popleft() for _ in range(size)]
        return _in_causal_order(batch)

    async def _call(
        self, method: str, body: dict[str, Any], namespace: str, *, retry_internal: bool, retry: bool = True
    ) -> None:
        """``method`` until the events service answers: retried with back-off (50 ms doubling
        up to ``_MAX_BACKOFF_S``) while it is down or slow (unless not ``retry``: Unavailable
        or DeadlineExceeded is raised then), and with ``retry_internal`` while it cannot
        journal (``Internal``: a journal write that failed, such as on a full disk; the events
        stay queued and in the outbox meanwhile). Raises the DockyardError it answers with
        otherwise."""
        backoff = _MIN_BACKOFF_S
        failures = 0
        while True:
            try:
                await self.client.call(method, body, namespace=namespace, timeout_s=self.call_timeout_s)
                return
            except (errors.Unavailable, errors.DeadlineExceeded):
                if not retry:
                    raise
            except errors.Internal as exc:
                if not retry_internal:
                    raise
                if failures % _INTERNAL_LOG_EVERY == 0:
                    log.warning("events service cannot journal (%s); the events are kept and sent again", exc)
                failures += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _send_one(self, item: dict[str, Any], *, retry: bool = True) -> bool | None:
        """``events.publish`` of ``item`` until it is journaled (True); an event the service
        refuses (a DockyardError but ``Internal``, which is retried) is logged and dropped
        (True too). Not ``retry``: None as soon as the service is not reached (see ``_call``)."""
        try:
            await self._call("events.publish", item, item["namespace"], retry_internal=True, retry=retry)
        except (errors.Unavailable, errors.DeadlineExceeded):  # only without retry
            return None
        except errors.DockyardError as exc:
            log.error("events service refused event %s (%s): %s; dropped", item["id"], item["topic"], exc)
        return True

    async def _send_batch(self, items: list[dict[str, Any]]) -> bool | None:
        """``events.publish_batch`` of ``items``: True once they are journaled; None when the
        service was not reached (down, slow, or holding one of them for an event it must follow:
        the caller takes the batch again); False when it refused the batch (an event it
        refuses, an older service without the method, or a journal failure): the caller sends
        them one by one, so that only a refused event is dropped (and a journal failure is
        retried event by event)."""
        if not self._batches:
            return False
        try:
            await self._call(
                "events.publish_batch", {"events": items}, items[0]["namespace"], retry_internal=False, retry=False
            )
            return True
        except (errors.Unavailable, errors.DeadlineExceeded):
            return None
        except errors.Unimplemented:
            self._batches = False
            return False
        except errors.DockyardError:
            return False


_Queued = tuple[int, int, Path | None, dict[str, Any]]
"""A queued event: (number in this publisher, index in the log or -1, an older version's file or None, the event)."""

SOURCE_KEY = "source"
"""The key of a queued event (in the outbox log, never sent) naming the gone publisher's outbox
it was handed over from; absent for the publisher's own events (``publish``'s ``source``)."""

BATCH = 64
"""Most events a publisher sends in one call, unless one of them must follow an event queued
behind them: the batch then grows to take that one in (up to ``MAX_PUBLISH_BATCH``)."""


def _in_causal_order(batch: list[_Queued]) -> list[_Queued]:
    """``batch`` in an order the events service journals without holding an event for another
    event of the same batch: each event after the one its ``after`` names, if that one is in the
    batch, and the events of each source (this publisher's own, and those handed over from each
    gone publisher's outbox: ``SOURCE_KEY``) in their order. Of such orders, the one nearest the
    queue's: the earliest queued event whose predecessors are out goes next. So a handed-over
    event that one of ours follows moves ahead of ours, with the events of its outbox before it;
    ours never move behind a later one of ours. They did (``after`` was honoured by moving the
    follower), and with the events service down across several restarts of a container, a
    ``restart`` (which follows the new task's start, in that task's live shim's outbox) went out
    before the ``stop`` that moved behind its dead shim's ``exit``, while the new task's first
    event follows that ``stop``: the two outboxes waited on each other until the service's
    ``events_after_wait_s`` ran out, and were journaled out of order.

    An ``after`` that cannot be honoured so (a cycle; or one naming a later event of its own
    source, as an outbox written by an older version, which did not mark handed-over events,
    may hold) is cut: when no event is free, the earliest left goes, at its turn in its
    source's order, and the events service holds it for the other as long as it waits. Stable
    when no ``after`` names a later event of the batch (the common case: returned as is)."""
    first: dict[str, int] = {}
    for n, (*_, item) in enumerate(batch):
        first.setdefault(item["id"], n)
    dependency = [first.get(item.get("after") or "", -1) for *_, item in batch]
    if all(d < n for n, d in enumerate(dependency)):
        return batch
    followers: list[list[int]] = [[] for _ in batch]
    blockers = [0] * len(batch)
    last_of: dict[str, int] = {}
    for n, (*_, item) in enumerate(batch):
        source = str(item.get(SOURCE_KEY) or "")
        for before in {last_of.get(source, -1), dependency[n]}:
            if 0 <= before != n:
                followers[before].append(n)
                blockers[n] += 1
        last_of[source] = n
    free = [n for n in range(len(batch)) if blockers[n] == 0]
    heapq.heapify(free)
    done = [False] * len(batch)
    out: list[_Queued] = []
    earliest_left = 0
    while len(out) < len(batch):
        if free:
            n = heapq.heappop(free)
        else:  # a cycle: cut it at the earliest event left (its source's predecessors are out)
            while done[earliest_left]:
                earliest_left += 1
            n = earliest_left
        if done[n]:
            continue
        done[n] = True
        out.append(batch[n])
        for follower in followers[n]:
            blockers[follower] -= 1
            if blockers[follower] == 0 and not done[follower]:
                heapq.heappush(free, follower)
    return out


def _wire(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as the events service takes it: without what only the outbox keeps."""
    if SOURCE_KEY not in item:
        return item
    return {key: value for key, value in item.items() if key != SOURCE_KEY}


async def drain_outbox(client: AsyncClient, outbox: Path, timeout_s: float) -> bool:
    """Deliver what a dead publisher left in ``outbox``; True when it is empty.

    Used by the execution service for a shim that died before its events were acknowledged.
    """
    publisher = EventPublisher(client, outbox)
    publisher.start()
    try:
        return await publisher.flush(timeout_s)
    finally:
        await publisher.close()


RESUME_WINDOW_S = 30.0
"""How long a follower of ``events.replay`` keeps trying to resume while the events service is down."""

RESUME_BACKOFF_S = 0.2
"""The pause between two attempts to resume."""


def resume_request(body: dict[str, Any], last_seq: int | None) -> dict[str, Any]:
    """The ``events.replay`` request that continues ``body`` after the envelope ``last_seq``.

    ``None`` (no envelope received yet): ``body`` itself. Otherwise ``since`` becomes
    ``last_seq`` (the journal replays after it) and ``since_time`` goes: the sequence number
    is exact where a time is not. Filters, ``until`` and ``until_seq`` stay.
    """
    if last_seq is None:
        return dict(body)
    resumed = {k: v for k, v in body.items() if k != "since_time"}
    resumed["since"] = last_seq
    return resumed


async def follow(client: AsyncClient, body: dict[str, Any], window_s: float = RESUME_WINDOW_S) -> AsyncIterator[Any]:
    """``events.replay`` (async generator of envelopes) that survives a restart of the events service.

    When the stream fails with Unavailable (the service died: its heartbeats stopped), the
    call is made again with ``resume_request`` after the last envelope, for up to
    ``window_s`` seconds of failures in a row; the journal makes the seam exact (no envelope
    lost, none twice). Raises the last Unavailable after that, and any other error at once.
    """
    last: int | None = None
    failing_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            async for env in client.stream("events.replay", resume_request(body, last)):
                failing_since = None
                if isinstance(env, dict) and isinstance(env.get("seq"), int):
                    last = env["seq"]
                yield env
            return
        except errors.Unavailable:
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= window_s:
                raise
            log.info("events service unavailable; resuming after seq %s", last)
            await asyncio.sleep(RESUME_BACKOFF_S)
