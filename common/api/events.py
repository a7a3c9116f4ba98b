"""Event service API: publish with acknowledgement, replay from the journal.

Methods (service ``events``):

- ``events.publish`` ``PublishRequest`` -> ``PublishReply``: journal one event, then fan it
  out on the XPUB socket. Idempotent: an ``id`` already journaled is acknowledged
  again with its original ``seq`` and ``duplicate=True`` (at-least-once senders retry).
  With ``after``, the event is held back (the call answers Unavailable, so its sender
  retries) until the named event is journaled, for at most ``events_after_wait_s`` from
  the first attempt: a container's events keep their causal order even when several
  publishers' outboxes drain at once after the events service was down.
- ``events.publish_batch`` ``PublishBatchRequest`` -> ``PublishBatchReply``: several events
  of one publisher (``events``, 1 to ``MAX_PUBLISH_BATCH``) in its order, journaled as
  ``events.publish`` of each in turn would (idempotent by ``id``, each ``after`` honoured,
  in one journal transaction when none waits: an ``after`` naming an earlier event of the
  batch costs no wait); ``replies`` in the same order. When it
  answers Unavailable (an ``after`` not journaled yet) the events before that one may be
  journaled already: the sender sends the whole batch again and they are acknowledged as
  duplicates. Senders whose outbox holds several events use it: one round trip instead
  of one per event.
- ``events.replay`` ``ReplayRequest`` -> stream of ``Envelope``: journaled events with
  ``seq > since`` (and ``<= until_seq`` / ``timestamp <= until``), in ``seq`` order, then
  (``follow=True``) live events with no gap and no duplicate at the seam. A subscriber
  that falls further behind than the journal keeps receives one ``Envelope`` with
  topic ``/events/lost`` whose event is ``{first_seq, last_seq}`` of what it missed.
- ``events.head`` -> ``{seq}``: the newest sequence number.

Live fan-out: XPUB at ``common.endpoints.events_subscribe_endpoint()``, two frames per
event: ``topic`` (utf-8, for SUB prefix filters) and the msgpack ``Envelope``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field, field_validator

from common.api.base import Reply, Request

LOST_TOPIC = "/events/lost"


class PublishRequest(Request):
    id: str = Field(min_length=1, max_length=200, description="required; sender-assigned unique id (dedup key)")
    topic: str = Field(pattern=r"^(/[a-z0-9_-]+)+$", description="required; e.g. /tasks/exit")
    namespace: str = Field(default="default", description="namespace the event belongs to")
    timestamp: dt.datetime | None = Field(default=None, description="when it happened (UTC); default: now")
    event: dict[str, Any] = Field(default_factory=dict, description="topic-specific payload")
    after: str | None = Field(
        default=None,
        max_length=200,
        description="optional; id of an event (from another publisher) that must be journaled before this one",
    )


class PublishReply(Reply):
    seq: int
    duplicate: bool = False


MAX_PUBLISH_BATCH = 1024
"""Most events in one ``events.publish_batch``."""


class PublishBatchRequest(Request):
    events: list[PublishRequest] = Field(
        min_length=1, max_length=MAX_PUBLISH_BATCH, description="one publisher's events, in its order"
    )


class PublishBatchReply(Reply):
    replies: list[PublishReply] = Field(description="one per event, in the request's order")


class Envelope(Reply):
    """One journaled event: immutable once written."""

    seq: int = Field(description="journal sequence number, strictly increasing, never reused")
    id: str = Field(description="sender-assigned unique id")
    timestamp: dt.datetime
    namespace: str
    topic: str
    event: dict[str, Any] = Field(default_factory=dict)


class EventFilters(Request):
    """Filters; within a field values are OR-ed, fields are AND-ed. Empty = everything."""

    topic: list[str] = Field(
        default_factory=list, description="exact topics, prefixes ending in '/', or bare verbs ('exit')"
    )
    type: list[str] = Field(
        default_factory=list, description="resource kinds: task, container, image, snapshot, content"
    )
    namespace: list[str] = Field(default_factory=list)
    container: list[str] = Field(default_factory=list, description="container ids (or prefixes) or names")
    image: list[str] = Field(default_factory=list)
    label: list[str] = Field(default_factory=list, description="key or key=value, matched on event.labels")


class ReplayRequest(Request):
    since: int = Field(default=0, ge=0, description="deliver events with seq > since")
    since_time: dt.datetime | None = Field(default=None, description="deliver events at or after this time")
    until_seq: int | None = Field(default=None, ge=0)
    until: dt.datetime | None = Field(
        default=None, description="stop at this time (a future time ends the follow then)"
    )
    follow: bool = Field(default=False, description="after the journal, keep streaming live events")
    filters: EventFilters = Field(default_factory=EventFilters)

    @field_validator("since_time", "until")
    @classmethod
    def _in_journal_range(cls, value: dt.datetime | None) -> dt.datetime | None:
        """Journal times are int64 nanoseconds since 1970: refuse what cannot be one."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        if not JOURNAL_TIME_MIN <= value <= JOURNAL_TIME_MAX:
            raise ValueError("time must be between 1970-01-01 and 2262-04-11")
        return value


JOURNAL_TIME_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""The earliest ``since_time``/``until`` a replay takes (journal times are int64 ns since 1970)."""
JOURNAL_TIME_MAX = dt.datetime(2262, 4, 11, tzinfo=dt.UTC)
"""The latest ``since_time``/``until`` a replay takes."""


class HeadReply(Reply):
    seq: int
