"""The event journal and event filters (no sockets: the journal is a SQLite file)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from common.api.events import EventFilters
from services.events.journal import Journal, NewEvent
from services.events.service import event_kind, matches

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _ev(event_id: str, topic: str = "/tasks/start", **event: object) -> NewEvent:
    return NewEvent(event_id, T0, "default", topic, dict(event))


def test_append_is_idempotent_by_id_and_seqs_stay_dense(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    first = j.append([_ev("a"), _ev("b")])
    assert [(r.seq, dup) for r, dup in first] == [(1, False), (2, False)]
    again = j.append([_ev("b"), _ev("c")])
    assert [(r.seq, dup) for r, dup in again] == [(2, True), (3, False)]
    assert [r.id for r in j.read(0, 10)] == ["a", "b", "c"]
    assert j.head() == 3 and j.count() == 3


def test_sequence_numbers_are_never_reused_after_compaction(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.append([_ev(f"e{i}") for i in range(10)])
    assert j.compact(max_age_s=1e12, max_events=4) == 6
    assert j.first_seq() == 7 and j.head() == 10
    ((rec, _),) = j.append([_ev("new")])
    assert rec.seq == 11


def test_journal_survives_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.append([_ev("a", container_id="c1")])
    j.close()
    j2 = Journal(tmp_path / "j.db")
    (rec,) = j2.read(0, 10)
    assert rec.event == {"container_id": "c1"} and rec.timestamp == T0


def test_read_window_and_time_lookup(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.append([NewEvent(f"e{i}", T0 + dt.timedelta(seconds=i), "default", "/tasks/start", {}) for i in range(5)])
    assert [r.seq for r in j.read(1, 10, until_seq=3)] == [2, 3]
    assert j.seq_at(T0 + dt.timedelta(seconds=2)) == 2  # events at or after t: seq > 2


def test_filters() -> None:
    j_start = _rec("/tasks/start", container_id="abc123", labels={"tier": "web"})
    assert event_kind("/tasks/start") == "task" and event_kind("/images/create") == "image"
    assert matches(j_start, EventFilters())
    assert matches(j_start, EventFilters(topic=["/tasks/"]))
    assert matches(j_start, EventFilters(topic=["start"]))
    assert not matches(j_start, EventFilters(topic=["/tasks/exit"]))
    assert matches(j_start, EventFilters(type=["task", "image"]))
    assert matches(j_start, EventFilters(container=["abc"]))
    assert not matches(j_start, EventFilters(container=["zzz"]))
    assert matches(j_start, EventFilters(label=["tier=web"])) and matches(j_start, EventFilters(label=["tier"]))
    assert not matches(j_start, EventFilters(label=["tier=db"]))
    assert not matches(j_start, EventFilters(namespace=["other"]))
    created = _rec("/containers/create", id="abc123", name="web", image="busybox")
    assert matches(created, EventFilters(container=["web"])) and matches(created, EventFilters(image=["busybox"]))


def _rec(topic: str, **event: object):  # type: ignore[no-untyped-def]
    from services.events.journal import Record

    return Record(1, "x", T0, "default", topic, dict(event))


def test_has_tells_whether_an_event_is_journaled(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.append([_ev("present")])
    assert j.has("present") and not j.has("absent")


def test_a_full_disk_is_the_error_raised_and_the_journal_goes_on_after(tmp_path: Path) -> None:
    """An append that cannot be written (``SQLITE_FULL``, here by a page limit) raises the
    write's own error, not the rollback's, and leaves nothing half-written: once there is
    room again the same events are appended, with dense sequence numbers."""
    j = Journal(tmp_path / "j.db")
    j.append([_ev("a")])
    pages = j._writer.execute("PRAGMA page_count").fetchone()[0]
    j._writer.execute(f"PRAGMA max_page_count = {pages}")
    big = [_ev(f"big{i}", blob="x" * 20000) for i in range(5)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        j.append(big)
    assert j.head() == 1 and [r.id for r in j.read(0, 10)] == ["a"]
    j._writer.execute("PRAGMA max_page_count = 1073741823")
    assert [rec.seq for rec, _ in j.append(big)] == [2, 3, 4, 5, 6]
