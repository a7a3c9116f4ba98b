"""Snapshot metadata in SQLite (WAL): the snapshotter's ``metadata.db``.

One row per snapshot: ``namespace``, ``key`` (a key for active/view snapshots, the
name for committed ones; one key space per namespace), a numeric ``id`` that names
its directory and never gets reused (``AUTOINCREMENT``), ``kind``, ``parent_id`` (a
committed snapshot of the same namespace), ``labels`` (JSON), ``created_at``,
``updated_at`` and, for committed snapshots, their ``size``/``inodes`` usage measured
at commit and their ``diff_size`` (the bytes of their changes as Docker counts a layer's
DiffSize, ``diff.diff_size``), written by the same statement that commits them; NULL for
a snapshot committed before that column existed (``set_diff_size`` fills it in once it
has been measured). The methods are synchronous and must be called from one thread (the
service runs them on a dedicated executor). Errors are Dockyard errors naming the
snapshot: NotFound, AlreadyExists, FailedPrecondition.

Durability: WAL with ``synchronous=NORMAL``. Every commit survives a SIGKILL of the
service (the threat the project is built around); a power loss may roll back the last
commits, which leaves directories without a row: start-up cleanup removes those, and
an image whose layer was lost is unpacked again on its next use. No fsync sits on a
container's start path.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from common import errors
from common.api.snapshot import Kind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    kind       TEXT NOT NULL,
    parent_id  INTEGER REFERENCES snapshots(id),
    labels     TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    size       INTEGER,
    inodes     INTEGER,
    diff_size  INTEGER,
    UNIQUE (namespace, key)
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass
class Row:
    """One snapshot's metadata; ``parent`` is the parent's name ('' for none)."""

    id: int
    namespace: str
    key: str
    kind: Kind
    parent_id: int | None
    parent: str
    labels: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime
    size: int | None = None
    inodes: int | None = None
    diff_size: int | None = None
    """Committed snapshots: Docker's DiffSize of its changes (None: not measured yet)."""
    parent_ids: list[int] = field(default_factory=list)
    """Ids of every ancestor, nearest first (filled by ``get``/``chain``)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


class Store:
    """The metadata database at ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(snapshots)")}
        if "diff_size" not in columns:  # a database made before diff sizes were recorded
            self._db.execute("ALTER TABLE snapshots ADD COLUMN diff_size INTEGER")

    def close(self) -> None:
        self._db.close()

    def claim(self, snapshotter: str) -> None:
        """Record which snapshotter owns these snapshots, or check it is the same one.

        Raises FailedPrecondition when the data was made by another snapshotter (their
        directories are not interchangeable).
        """
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE name = 'snapshotter'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (name, value) VALUES ('snapshotter', ?)", (snapshotter,))
            elif row[0] != snapshotter:
                raise errors.FailedPrecondition(
                    f"snapshots in {self.path.parent} were made by the {row[0]} snapshotter, not {snapshotter}: "
                    f"set DOCKYARD_SNAPSHOTTER={row[0]} or use another DOCKYARD_ROOT"
                )

    _SELECT = (
        "SELECT s.id, s.namespace, s.key, s.kind, s.parent_id, COALESCE(p.key, ''), s.labels, s.created_at,"
        " s.updated_at, s.size, s.inodes, s.diff_size FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id"
    )

    def _row(self, r: tuple) -> Row:  # type: ignore[type-arg]
        return Row(
            id=r[0],
            namespace=r[1],
            key=r[2],
            kind=Kind(r[3]),
            parent_id=r[4],
            parent=r[5],
            labels=json.loads(r[6]),
            created_at=_time(r[7]),
            updated_at=_time(r[8]),
            size=r[9],
            inodes=r[10],
            diff_size=r[11],
        )

    def _chain(self, parent_id: int | None) -> list[int]:
        ids: list[int] = []
        while parent_id is not None:
            ids.append(parent_id)
            cur = self._db.execute("SELECT parent_id FROM snapshots WHERE id = ?", (parent_id,)).fetchone()
            parent_id = cur[0] if cur else None
        return ids

    def find(self, namespace: str, key: str) -> Row | None:
        """The snapshot ``key`` of ``namespace`` with its ``parent_ids``, or None."""
        r = self._db.execute(self._SELECT + " WHERE s.namespace = ? AND s.key = ?", (namespace, key)).fetchone()
        if r is None:
            return None
        row = self._row(r)
        row.parent_ids = self._chain(row.parent_id)
        return row

    def get(self, namespace: str, key: str) -> Row:
        """Like ``find``; NotFound (``snapshot 'x' not found``) when absent."""
        row = self.find(namespace, key)
        if row is None:
            raise errors.NotFound(f"snapshot {key!r} not found")
        return row

    def create(self, namespace: str, key: str, kind: Kind, parent: str, labels: dict[str, str]) -> Row:
        """Add an active or view snapshot on committed ``parent`` ('' = none).

        AlreadyExists if ``key`` is taken; NotFound if ``parent`` does not exist;
        FailedPrecondition if it is not committed.
        """
        now = _now().isoformat()
        with self._tx():
            parent_id = None
            if parent:
                prow = self.find(namespace, parent)
                if prow is None:
                    raise errors.NotFound(f"parent snapshot {parent!r} not found")
                if prow.kind is not Kind.COMMITTED:
                    raise errors.FailedPrecondition(f"parent snapshot {parent!r} is {prow.kind.value}, not committed")
                parent_id = prow.id
            try:
                self._db.execute(
                    "INSERT INTO snapshots (namespace, key, kind, parent_id, labels, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (namespace, key, kind.value, parent_id, json.dumps(labels, sort_keys=True), now, now),
                )
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f"snapshot {key!r} already exists") from None
        return self.get(namespace, key)

    def commit(
        self,
        namespace: str,
        key: str,
        name: str,
        labels: dict[str, str],
        size: int,
        inodes: int,
        diff_size: int | None = None,
    ) -> Row:
        """Turn active ``key`` into committed ``name`` (same id and directory), recording its
        usage (``size``, ``inodes``) and ``diff_size`` in the same statement.

        ``labels`` are merged over the active snapshot's. NotFound, FailedPrecondition
        (not active), AlreadyExists (``name`` taken).
        """
        with self._tx():
            row = self.get(namespace, key)
            if row.kind is not Kind.ACTIVE:
                raise errors.FailedPrecondition(
                    f"snapshot {key!r} is {row.kind.value}, only an active one can be committed"
                )
            merged = {**row.labels, **labels}
            try:
                self._db.execute(
                    "UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_at = ?, size = ?, inodes = ?,"
                    " diff_size = ? WHERE id = ?",
                    (
                        name,
                        Kind.COMMITTED.value,
                        json.dumps(merged, sort_keys=True),
                        _now().isoformat(),
                        size,
                        inodes,
                        diff_size,
                        row.id,
                    ),
                )
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f"snapshot {name!r} already exists") from None
        return self.get(namespace, name)

    def children(self, snapshot_id: int) -> list[str]:
        """Keys of the snapshots whose parent is ``snapshot_id``."""
        return [r[0] for r in self._db.execute("SELECT key FROM snapshots WHERE parent_id = ?", (snapshot_id,))]

    def remove(self, namespace: str, key: str) -> Row:
        """Delete the metadata of ``key``; FailedPrecondition while it has children."""
        with self._tx():
            row = self.get(namespace, key)
            kids = self.children(row.id)
            if kids:
                shown = ", ".join(repr(k) for k in kids[:3]) + (" ..." if len(kids) > 3 else "")
                raise errors.FailedPrecondition(
                    f"snapshot {key!r} has {len(kids)} child snapshot{'s' if len(kids) > 1 else ''} ({shown})"
                )
            self._db.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
        return row

    def update_labels(self, namespace: str, key: str, labels: dict[str, str], replace: bool) -> Row:
        """Set labels (merge; an empty value deletes the label) or replace them all."""
        with self._tx():
            row = self.get(namespace, key)
            if replace:
                merged = {k: v for k, v in labels.items() if v != ""}
            else:
                merged = dict(row.labels)
                for k, v in labels.items():
                    if v == "":
                        merged.pop(k, None)
                    else:
                        merged[k] = v
            self._db.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?",
                (json.dumps(merged, sort_keys=True), _now().isoformat(), row.id),
            )
        return self.get(namespace, key)

    def set_usage(self, snapshot_id: int, size: int, inodes: int) -> None:
        self._db.execute("UPDATE snapshots SET size = ?, inodes = ? WHERE id = ?", (size, inodes, snapshot_id))

    def set_diff_size(self, snapshot_id: int, diff_size: int) -> None:
        """Record the diff size measured for committed snapshot ``snapshot_id`` if it has none
        yet (one statement; a snapshot removed meanwhile is left alone)."""
        self._db.execute(
            "UPDATE snapshots SET diff_size = ? WHERE id = ? AND kind = ? AND diff_size IS NULL",
            (diff_size, snapshot_id, Kind.COMMITTED.value),
        )

    def committed(self, namespace: str, keys: builtins.list[str]) -> builtins.list[Row]:
        """The committed snapshots of ``namespace`` among ``keys`` (others are left out), in
        the order of ``keys``; ``parent_ids`` filled for those whose ``diff_size`` is unknown."""
        found: dict[str, Row] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # under SQLite's limit of bound parameters
            batch = unique[start : start + 500]
            marks = ", ".join("?" * len(batch))
            for r in self._db.execute(
                self._SELECT + f" WHERE s.namespace = ? AND s.kind = ? AND s.key IN ({marks})",
                (namespace, Kind.COMMITTED.value, *batch),
            ):
                row = self._row(r)
                if row.diff_size is None:
                    row.parent_ids = self._chain(row.parent_id)
                found[row.key] = row
        return [found[k] for k in unique if k in found]

    def list(self, namespace: str) -> builtins.list[Row]:
        """Every snapshot of ``namespace``, by key."""
        rows = [
            self._row(r) for r in self._db.execute(self._SELECT + " WHERE s.namespace = ? ORDER BY s.key", (namespace,))
        ]
        return rows

    def namespaces(self) -> builtins.list[str]:
        """Namespaces holding at least one snapshot."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT namespace FROM snapshots ORDER BY namespace")]

    def all_ids(self) -> set[int]:
        """Ids of every snapshot of every namespace."""
        return {r[0] for r in self._db.execute("SELECT id FROM snapshots")}

    def stale_extractions(self) -> builtins.list[tuple[str, str]]:
        """``(namespace, key)`` of active ``extract-*`` snapshots (left by a crash), children first."""
        rows = self._db.execute(
            "SELECT namespace, key FROM snapshots WHERE kind = ? AND key LIKE 'extract-%' ORDER BY id DESC",
            (Kind.ACTIVE.value,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
