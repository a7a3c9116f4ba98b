"""Container metadata in SQLite (WAL), owned by the execution service alone.

One row per container: the immutable metadata (id, image, config as received, the
OCI spec, snapshot key, created_at), the mutable name and labels, and the execution
service's record of its last task (incarnation, status, pid, exit code, times). The
shim's ``state.json`` is the authority on a live task; this record is what survives
the task and what ``ps``/``inspect`` show.

Names are unique per namespace (a UNIQUE index, so two racing creates cannot both
win). Every write is one transaction; WAL with ``synchronous=NORMAL`` survives a
SIGKILL of the process at any point.

Tombstones: a container removed while calls held it (the hold tokens of ``run --rm`` and
the gateway, ``services.execution.service``) leaves one row per token with its exit status,
written in the same transaction as the delete, so that a call sent again after a SIGKILL of
the service (which may come right after the delete, before the answer went out) still gets
the exit status (``tombstone``). Rows expire after ``TOMBSTONE_TTL_S``: pruned when the
store opens and at each delete that writes some.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common import errors, ids

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    image_name TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    spec TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    runtime TEXT NOT NULL,
    hostname TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'created',
    incarnation INTEGER NOT NULL DEFAULT 0,
    handled INTEGER NOT NULL DEFAULT 0,
    tasked INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    oom_killed INTEGER NOT NULL DEFAULT 0,
    started_at TEXT,
    finished_at TEXT,
    restart_count INTEGER NOT NULL DEFAULT 0,
    manual_stop INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (namespace, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS containers_name ON containers (namespace, name);
CREATE TABLE IF NOT EXISTS tombstones (
    namespace TEXT NOT NULL,
    hold TEXT NOT NULL,
    container_id TEXT NOT NULL,
    name TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    error TEXT NOT NULL,
    removed_at TEXT NOT NULL,
    PRIMARY KEY (namespace, hold)
);
CREATE INDEX IF NOT EXISTS tombstones_removed_at ON tombstones (removed_at);
"""

TOMBSTONE_TTL_S = 600.0
"""How long the exit status of a removed container is kept for the calls that held it (seconds)."""

_JSON_FIELDS = ("config", "spec", "labels", "extra")
_TIME_FIELDS = ("created_at", "started_at", "finished_at")
_BOOL_FIELDS = ("oom_killed", "manual_stop")


@dataclass
class Record:
    """One container row (see module docstring). ``handled`` = last incarnation whose exit was recorded."""

    namespace: str
    id: str
    name: str
    image: str
    image_id: str
    config: dict[str, Any]
    spec: dict[str, Any]
    snapshot_key: str
    runtime: str
    created_at: dt.datetime
    image_name: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "created"
    incarnation: int = 0
    handled: int = 0
    tasked: int = 0
    """last incarnation whose task was created: its /tasks/delete is owed to the journal"""
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    restart_count: int = 0
    manual_stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_COLUMNS_BUT_SPEC = ", ".join("'{}' AS spec" if f.name == "spec" else f.name for f in fields(Record))


@dataclass(frozen=True)
class Tombstone:
    """What a removed container left for the call that held it under ``hold`` (all immutable):
    its id and name, the exit status and error of its last task, when it was removed (UTC)."""

    namespace: str
    hold: str
    container_id: str
    name: str
    exit_code: int
    error: str
    removed_at: dt.datetime

    def names(self, ref: str) -> bool:
        """True when ``ref`` (full id, unique id prefix, name with or without ``/``) named this container."""
        ref = ref.strip()
        if ref.removeprefix("/") == self.name:
            return True
        return ids.is_id_prefix(ref) and self.container_id.startswith(ref)


def _stamp(when: dt.datetime) -> str:
    """A fixed-width UTC time, so that the text order of ``removed_at`` is the time order."""
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _to_row(rec: Record) -> dict[str, Any]:
    # a shallow copy: ``asdict`` would deep-copy the OCI spec (seccomp profile and all) only for
    # json.dumps to read it once
    row = {f.name: getattr(rec, f.name) for f in fields(rec)}
    for key in _JSON_FIELDS:
        row[key] = json.dumps(row[key])
    for key in _TIME_FIELDS:
        row[key] = row[key].isoformat() if row[key] is not None else None
    for key in _BOOL_FIELDS:
        row[key] = int(bool(row[key]))
    return row


def _from_row(row: sqlite3.Row) -> Record:
    data = dict(row)
    for key in _JSON_FIELDS:
        data[key] = json.loads(data[key])
    for key in _TIME_FIELDS:
        data[key] = dt.datetime.fromisoformat(data[key]) if data[key] else None
    for key in _BOOL_FIELDS:
        data[key] = bool(data[key])
    return Record(**data)


def name_in_use(name: str, holder_id: str) -> errors.AlreadyExists:
    """AlreadyExists for a container name taken by ``holder_id`` (``""``: unknown), in
    dockerd's wording (moby ``daemon/names.go``), with ``{"name", "id"}`` as details."""
    if not holder_id:
        return errors.AlreadyExists(
            f'the container name "/{name}" is already in use; '
            "remove (or rename) that container to be able to reuse that name",
            {"name": name},
        )
    return errors.AlreadyExists(
        f'the container name "/{name}" is already in use by container "{holder_id}"; '
        "remove (or rename) that container to be able to reuse that name",
        {"name": name, "id": holder_id},
    )


class Store:
    """The container table (see module docstring). Calls are short; safe from one event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(containers)")}
        if "tasked" not in columns:  # a store written before the column existed
            self._db.execute("ALTER TABLE containers ADD COLUMN tasked INTEGER NOT NULL DEFAULT 0")
        self.prune_tombstones()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def insert(self, rec: Record) -> None:
        """Add a container; AlreadyExists when the name (or id) is taken in its namespace."""
        row = _to_row(rec)
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock:
            try:
                self._db.execute(f"INSERT INTO containers ({cols}) VALUES ({marks})", row)
            except sqlite3.IntegrityError:
                raise self._name_in_use(rec.namespace, rec.name) from None

    def update(self, namespace: str, container_id: str, **fields: Any) -> None:
        """Set some fields of one container (no-op if it is gone)."""
        if not fields:
            return
        rec_fields = {k: v for k, v in fields.items()}
        for key in _JSON_FIELDS:
            if key in rec_fields:
                rec_fields[key] = json.dumps(rec_fields[key])
        for key in _TIME_FIELDS:
            if key in rec_fields and rec_fields[key] is not None:
                rec_fields[key] = rec_fields[key].isoformat()
        for key in _BOOL_FIELDS:
            if key in rec_fields:
                rec_fields[key] = int(bool(rec_fields[key]))
        sets = ", ".join(f"{k} = :{k}" for k in rec_fields)
        with self._lock:
            try:
                self._db.execute(
                    f"UPDATE containers SET {sets} WHERE namespace = :_ns AND id = :_id",
                    {**rec_fields, "_ns": namespace, "_id": container_id},
                )
            except sqlite3.IntegrityError:
                raise self._name_in_use(namespace, str(fields.get("name"))) from None

    def _name_in_use(self, namespace: str, name: str) -> errors.AlreadyExists:
        """The error of an insert or rename that met ``name`` taken (the lock held): dockerd's
        wording, with the holder's id when it is there to find."""
        row = self._db.execute(
            "SELECT id FROM containers WHERE namespace = ? AND name = ?", (namespace, name)
        ).fetchone()
        return name_in_use(name, row[0] if row else "")

    def delete(
        self,
        namespace: str,
        container_id: str,
        *,
        tombstones: Sequence[str] = (),
        now: dt.datetime | None = None,
    ) -> None:
        """Delete one container (no-op if it is gone). ``tombstones``: hold tokens whose calls
        get its exit status (its record's ``exit_code`` and ``error``) from ``tombstone`` after
        the delete; written in the same transaction, expired ones pruned then. ``now``: the
        removal's time (default: the clock's, UTC)."""
        if not tombstones:
            with self._lock:
                self._db.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id))
            return
        now = now or dt.datetime.now(dt.UTC)
        stamp, cutoff = _stamp(now), _stamp(now - dt.timedelta(seconds=TOMBSTONE_TTL_S))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM tombstones WHERE removed_at < ?", (cutoff,))
                self._db.executemany(
                    "INSERT OR REPLACE INTO tombstones (namespace, hold, container_id, name, exit_code, error,"
                    " removed_at) SELECT namespace, ?, id, name, exit_code, error, ? FROM containers"
                    " WHERE namespace = ? AND id = ?",
                    [(hold, stamp, namespace, container_id) for hold in dict.fromkeys(tombstones)],
                )
                self._db.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def tombstone(self, namespace: str, hold: str, *, now: dt.datetime | None = None) -> Tombstone | None:
        """The unexpired tombstone left for the call that held a removed container under
        ``hold`` in ``namespace`` (see module docstring), or None."""
        cutoff = _stamp((now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=TOMBSTONE_TTL_S))
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tombstones WHERE namespace = ? AND hold = ? AND removed_at >= ?",
                (namespace, hold, cutoff),
            ).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["removed_at"] = dt.datetime.fromisoformat(data["removed_at"])
        return Tombstone(**data)

    def prune_tombstones(self, *, now: dt.datetime | None = None) -> int:
        """Drop the tombstones older than ``TOMBSTONE_TTL_S``; how many were dropped."""
        cutoff = _stamp((now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=TOMBSTONE_TTL_S))
        with self._lock:
            return self._db.execute("DELETE FROM tombstones WHERE removed_at < ?", (cutoff,)).rowcount

    def get(self, namespace: str, container_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id)
            ).fetchone()
        return _from_row(row) if row else None

    def name_taken(self, namespace: str, name: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM containers WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        return row is not None

    def find(self, namespace: str, ref: str) -> Record:
        """Look a container up by full id, name (``/`` optional) or unique id prefix.

        NotFound ``container 'x' not found``; InvalidArgument when a prefix is ambiguous.
        """
        ref = ref.strip()
        with self._lock:
            if ids.is_full_id(ref):
                row = self._db.execute(
                    "SELECT * FROM containers WHERE namespace = ? AND id = ?", (namespace, ref)
                ).fetchone()
                if row:
                    return _from_row(row)
            name = ref[1:] if ref.startswith("/") else ref
            row = self._db.execute(
                "SELECT * FROM containers WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            if row:
                return _from_row(row)
            if ids.is_id_prefix(ref):
                rows = self._db.execute(
                    "SELECT * FROM containers WHERE namespace = ? AND id >= ? AND id < ? LIMIT 2",
                    (namespace, ref, ref + "g"),
                ).fetchall()
                if len(rows) == 1:
                    return _from_row(rows[0])
                if len(rows) > 1:
                    raise errors.InvalidArgument(f"container id prefix '{ref}' is ambiguous")
        raise errors.NotFound(f"container '{ref}' not found", {"kind": "container", "ref": ref})

    def list(self, namespace: str | None = None, *, with_spec: bool = True) -> list[Record]:
        """Containers of ``namespace`` (all namespaces when None), newest first.

        ``with_spec=False`` leaves each record's OCI spec out (``spec`` is ``{}``): a listing
        that shows no spec field need not parse a few KiB of JSON per container.
        """
        cols = "*" if with_spec else _COLUMNS_BUT_SPEC
        where = "" if namespace is None else "WHERE namespace = ?"
        params = () if namespace is None else (namespace,)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {cols} FROM containers {where} ORDER BY created_at DESC", params
            ).fetchall()
        return [_from_row(r) for r in rows]
