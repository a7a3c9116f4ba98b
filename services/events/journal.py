"""The event journal: every event once, numbered, in SQLite.

Table ``events(seq, id, ts_ns, namespace, topic, payload)``: ``seq`` is an
AUTOINCREMENT key, so sequence numbers strictly increase and are never reused,
even after compaction deletes old rows; ``id`` is the sender's event id and is
UNIQUE, which makes appends idempotent (a resent event gets its original seq
back). ``payload`` is the msgpack of the event body. WAL mode: one writer, any
number of concurrent readers.

Blocking; call it from a thread (the service does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import codec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    ts_ns INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts_ns);
"""


@dataclass(frozen=True)
class Record:
    """One journaled event (what ``Envelope`` carries on the wire)."""

    seq: int
    id: str
    timestamp: dt.datetime
    namespace: str
    topic: str
    event: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "timestamp": self.timestamp,
            "namespace": self.namespace,
            "topic": self.topic,
            "event": self.event,
        }


@dataclass(frozen=True)
class NewEvent:
    """An event to append: sender id, time, namespace, topic, body."""

    id: str
    timestamp: dt.datetime
    namespace: str
    topic: str
    event: dict[str, Any]


def _ns(ts: dt.datetime) -> int:
    return int(ts.timestamp() * 1_000_000_000)


def _from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1_000_000_000, dt.UTC)


class Journal:
    """The SQLite journal at ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def append(self, events: Iterable[NewEvent]) -> list[tuple[Record, bool]]:
        """Append events in one transaction; return ``(record, duplicate)`` for each, in order.

        A duplicate (an id already journaled) is not stored again: its original record
        comes back with ``duplicate=True``. Raises ``sqlite3.Error`` on disk failure
        (nothing of the batch is then stored).
        """
        out: list[tuple[Record, bool]] = []
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ev in events:
                row = conn.execute(
                    "SELECT seq, id, ts_ns, namespace, topic, payload FROM events WHERE id = ?", (ev.id,)
                ).fetchone()
                if row is not None:
                    out.append((self._record(row), True))
                    continue
                cur = conn.execute(
                    "INSERT INTO events(id, ts_ns, namespace, topic, payload) VALUES (?,?,?,?,?)",
                    (ev.id, _ns(ev.timestamp), ev.namespace, ev.topic, codec.encode(ev.event)),
                )
                out.append(
                    (Record(int(cur.lastrowid or 0), ev.id, ev.timestamp, ev.namespace, ev.topic, ev.event), False)
                )
            conn.execute("COMMIT")
        except BaseException:
            # a COMMIT that failed (a full disk) may have ended the transaction already: the
            # error to raise is its own, not the ROLLBACK's "no transaction is active"
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _record(row: tuple[Any, ...]) -> Record:
        seq, event_id, ts_ns, namespace, topic, payload = row
        return Record(int(seq), event_id, _from_ns(ts_ns), namespace, topic, codec.decode(payload))

    def read(self, since: int, limit: int, until_seq: int | None = None) -> list[Record]:
        """Return up to ``limit`` records with ``seq > since`` (and ``<= until_seq``), by seq."""
        if until_seq is None:
            rows = self._reader().execute(
                "SELECT seq, id, ts_ns, namespace, topic, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (since, limit),
            )
        else:
            rows = self._reader().execute(
                "SELECT seq, id, ts_ns, namespace, topic, payload FROM events WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (since, until_seq, limit),
            )
        return [self._record(r) for r in rows]

    def has(self, event_id: str) -> bool:
        """True when the event ``event_id`` is in the journal."""
        return self._reader().execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is not None

    def head(self) -> int:
        """The newest sequence number ever assigned (0 for an empty journal)."""
        row = self._reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int:
        """The oldest sequence number still kept (head + 1 when the journal is empty)."""
        row = self._reader().execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else self.head() + 1

    def seq_at(self, when: dt.datetime) -> int:
        """The largest seq whose event happened before ``when`` (for ``since=<time>``)."""
        row = self._reader().execute("SELECT MIN(seq) FROM events WHERE ts_ns >= ?", (_ns(when),)).fetchone()
        if row and row[0] is not None:
            return int(row[0]) - 1
        return self.head()

    def compact(self, max_age_s: float, max_events: int) -> int:
        """Delete events older than ``max_age_s`` and beyond the newest ``max_events``; return how many."""
        cutoff = max(0, int((time.time() - max_age_s) * 1_000_000_000))
        conn = self._writer
        removed = conn.execute("DELETE FROM events WHERE ts_ns < ?", (cutoff,)).rowcount
        head = self.head()
        removed += conn.execute("DELETE FROM events WHERE seq <= ?", (head - max_events,)).rowcount
        if removed:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(removed)

    def count(self) -> int:
        row = self._reader().execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._writer.close()
