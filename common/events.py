"""Publishing events so that none is lost: an on-disk outbox plus acknowledged delivery.

``EventPublisher.publish()`` writes the event to the outbox directory (one small
msgpack file per event, named by a local sequence number) and returns; a single
sender task hands the events, in order, to ``events.publish`` and deletes each
file only once the events service acknowledged it. If the events service is
down, the sender retries with back-off; if the publishing process dies, the
files stay and are sent by the next ``EventPublisher`` opened on the same
directory (a restarted service, or the execution service draining a dead
shim's outbox). The events service deduplicates by event id, so a resend after
a lost acknowledgement is harmless: delivery is at least once, journaling exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from common import codec, errors
from common.rpc.aio import AsyncClient

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{12})\.ev$")
_MAX_BACKOFF_S = 2.0


def _outbox_files(outbox: Path) -> list[tuple[int, Path]]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(outbox):
            m = _FILE_RE.match(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


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
        self._queue: asyncio.Queue[tuple[Path, dict[str, Any]]] = asyncio.Queue()
        self._next = 0
        self._sender: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._acked = -1
        self._progress = asyncio.Condition()

    def start(self) -> None:
        """Load leftovers from the outbox and start the sender task."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for number, path in _outbox_files(self.outbox):
            try:
                item = codec.decode(path.read_bytes())
            except (OSError, ValueError):
                log.warning("dropping unreadable outbox file %s", path)
                path.unlink(missing_ok=True)
                continue
            self._next = max(self._next, number + 1)
            self._queue.put_nowait((path, item))
            self._idle.clear()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="event-publisher")

    def publish(
        self, topic: str, event: dict[str, Any], *, namespace: str, event_id: str, after: str | None = None
    ) -> None:
        """Queue one event for delivery; durable once this returns.

        ``event_id`` must be unique per event and stable across retries (e.g.
        ``"<container_id>/<task incarnation>/exit"``); the journal stores each id once.
        ``after`` names an event of another publisher that must be journaled first (the
        events service holds this one back for a while until it is; see ``events.publish``).
        Raises ``OSError`` if the outbox cannot be written.
        """
        self.publish_numbered(topic, event, namespace=namespace, event_id=event_id, after=after)

    def publish_numbered(
        self, topic: str, event: dict[str, Any], *, namespace: str, event_id: str, after: str | None = None
    ) -> int:
        """``publish``, returning the event's number in this outbox (for ``delivered``)."""
        item: dict[str, Any] = {
            "id": event_id,
            "topic": topic,
            "namespace": namespace,
            "timestamp": codec.utcnow(),
            "event": event,
        }
        if after:
            item["after"] = after
        number = self._next
        path = self.outbox / f"{number:012d}.ev"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(codec.encode(item))
        os.replace(tmp, path)
        self._idle.clear()
        self._queue.put_nowait((path, item))
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
        return self._queue.qsize()

    async def close(self) -> None:
        """Stop sending; unacknowledged events stay in the outbox for the next publisher."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(BaseException):
                await self._sender
            self._sender = None

    async def _send_loop(self) -> None:
        while True:
            if self._queue.empty():
                self._idle.set()
            path, item = await self._queue.get()
            backoff = 0.05
            while True:
                try:
                    await self.client.call(
                        "events.publish", item, namespace=item["namespace"], timeout_s=self.call_timeout_s
                    )
                    break
                except (errors.Unavailable, errors.DeadlineExceeded):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                except errors.DockyardError as exc:
                    log.error("events service refused event %s (%s): %s; dropped", item["id"], item["topic"], exc)
                    break
            path.unlink(missing_ok=True)
            async with self._progress:
                self._acked = max(self._acked, int(path.stem))
                self._progress.notify_all()


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
