"""Image metadata in SQLite (WAL): image records and leases, per namespace.

An image record (containerd's Images service, containerd-model.md section 3) maps a
name (a normalised reference, e.g. ``docker.io/library/busybox:latest``, or
``<none>@sha256:...`` for a dangling image) to a target descriptor (an index or a
manifest), with labels and created/updated times. Two cached columns make lookups by
image id cheap: ``image_id`` (the config digest for the host platform, Docker's image
id) and ``manifest_digest`` (the host platform's manifest).

Leases (containerd-model.md section 2) protect what an operation writes before an image
record reaches it (blobs, ingests, chain-ID snapshots) from the garbage collector. A lease
is ``{id, namespace, created_at, expires_at, labels}`` with resources ``(kind, ref)``:
``content`` (a blob digest; the collector follows it to the manifest's config and layers),
``ingest`` (an ingest ref) and ``snapshot:<namespace>`` (a chain ID). Lifecycle:

- *created* by the image service for one operation (``pull <ref>``, ``load``, ``import``,
  ``commit``, ``save``, ``push``), labelled ``purpose`` and ``dockyard.io/owner``: the
  process that runs the operation (``<pid>:<start time in clock ticks>``, see
  ``process_owner``; the start time tells a reused pid from the owner);
- *resources* are added before anything is written (a pull names the blobs it is about
  to download before the first byte, and the chain IDs before unpacking);
- *released* (deleted) by its operation on every way out: success (the image record
  holds everything now), an error, a cancelled client. A pull lives as long as the pull;
- *expired*: ``expires_at`` (24 h for a pull, 1 h for the others, as containerd's client
  default) is a backstop; the collector treats an expired lease as gone and deletes it;
- *orphaned*: a lease whose owner process no longer exists (the image service was
  SIGKILLed) is released by the next collection, the start-up one first. Only a dead
  pull's lease outlives the start-up sweep (it is released right after it), so that a
  retried pull finds the layers that had finished; the next collection (``image gc``,
  ``rmi``, ``image prune``, a failed pull) takes them if nothing else did.

What a pull needs to resume is the partial data of its ingests, and ingests have a
lifetime of their own (``gc.INGEST_EXPIRY_S`` since their last write, unless a live lease
or an open writer holds them; ``image prune`` drops them all): they do not depend on a lease.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ids
from services.image.oci import Descriptor, Platform

LABEL_OWNER = "dockyard.io/owner"
"""Lease label: the process (``process_owner``) whose operation the lease belongs to."""
LABEL_PURPOSE = "purpose"
"""Lease label: what the lease is for (``pull docker.io/library/busybox:latest``, ``load``...)."""

DANGLING_PREFIX = "<none>@"
"""Name prefix of an image record that lost its last tag (Docker shows it as <none>:<none>)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    image_id TEXT NOT NULL DEFAULT '',
    manifest_digest TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX IF NOT EXISTS images_by_id ON images (namespace, image_id);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS lease_resources (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (lease_id, kind, ref)
);
"""


@dataclass
class ImageRecord:
    """One image record. ``name`` and ``namespace`` are immutable; the rest is mutable."""

    namespace: str
    name: str
    target: Descriptor
    image_id: str = ""
    manifest_digest: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def dangling(self) -> bool:
        return self.name.startswith(DANGLING_PREFIX)


def _desc_to_json(desc: Descriptor) -> str:
    return json.dumps(desc.to_json(), separators=(",", ":"))


def _desc_from_json(text: str) -> Descriptor:
    obj: dict[str, Any] = json.loads(text)
    return Descriptor(
        media_type=obj["mediaType"],
        digest=obj["digest"],
        size=int(obj["size"]),
        annotations=dict(obj.get("annotations") or {}),
        urls=tuple(obj.get("urls") or ()),
        platform=Platform.from_json(obj.get("platform")),
    )


def _row_to_record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        namespace=row["namespace"],
        name=row["name"],
        target=_desc_from_json(row["target"]),
        image_id=row["image_id"],
        manifest_digest=row["manifest_digest"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _start_ticks(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or '' when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return fields[19] if len(fields) > 19 else ""


def process_owner(pid: int | None = None) -> str:
    """The owner label of a lease taken by process ``pid`` (this one by default):
    ``<pid>:<start ticks>``, unique across pid reuse within one boot."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str) -> bool:
    """True while the process named by ``owner`` (``process_owner``) still runs. A malformed
    or empty owner (a lease of an older version) counts as dead; so does a process of an
    earlier boot (its start ticks do not match the process that now has the pid)."""
    pid_text, _sep, ticks = owner.partition(":")
    if not pid_text.isdigit() or not ticks:
        return False
    return _start_ticks(int(pid_text)) == ticks


class MetadataStore:
    """SQLite-backed image records and leases. Thread-safe (one connection, one lock);
    every call is a short transaction, fine to make from the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- images --------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE namespace=? AND name=?", (namespace, name)).fetchone()
        return _row_to_record(row) if row else None

    def records(self, namespace: str | None = None) -> list[ImageRecord]:
        """Records of one namespace (or of all when None), by name."""
        with self._lock:
            if namespace is None:
                rows = self._db.execute("SELECT * FROM images ORDER BY namespace, name").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM images WHERE namespace=? ORDER BY name", (namespace,)).fetchall()
        return [_row_to_record(r) for r in rows]

    def by_image_id(self, namespace: str, image_id: str) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM images WHERE namespace=? AND image_id=? ORDER BY name", (namespace, image_id)
            ).fetchall()
        return [_row_to_record(r) for r in rows]

    def by_id_prefix(self, namespace: str, hex_prefix: str) -> list[ImageRecord]:
        pattern = "sha256:" + hex_prefix.replace("%", "").replace("_", "") + "%"
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM images WHERE namespace=? AND image_id LIKE ? ORDER BY name", (namespace, pattern)
            ).fetchall()
        return [_row_to_record(r) for r in rows]

    def by_target(self, namespace: str, digest: str) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM images WHERE namespace=? AND json_extract(target, '$.digest')=? ORDER BY name",
                (namespace, digest),
            ).fetchall()
        return [_row_to_record(r) for r in rows]

    def put(self, record: ImageRecord) -> ImageRecord | None:
        """Create or replace the record named ``record.name``; return the previous one (or None).

        ``created_at`` is kept from the previous record; ``updated_at`` is set to now.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM images WHERE namespace=? AND name=?", (record.namespace, record.name)
            ).fetchone()
            previous = _row_to_record(row) if row else None
            record.created_at = previous.created_at if previous else now
            record.updated_at = now
            db.execute(
                "INSERT OR REPLACE INTO images (namespace, name, target, image_id, manifest_digest, labels,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.namespace,
                    record.name,
                    _desc_to_json(record.target),
                    record.image_id,
                    record.manifest_digest,
                    json.dumps(record.labels, sort_keys=True),
                    record.created_at,
                    record.updated_at,
                ),
            )
        return previous

    def delete(self, namespace: str, name: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM images WHERE namespace=? AND name=?", (namespace, name))
        return cur.rowcount > 0

    # -- leases --------------------------------------------------------------------------------
    def create_lease(self, namespace: str, expires_s: float, labels: dict[str, str] | None = None) -> str:
        """Create a lease valid for ``expires_s`` seconds; return its id."""
        lease_id = ids.new_id()
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO leases (id, namespace, created_at, expires_at, labels) VALUES (?,?,?,?,?)",
                (lease_id, namespace, now, now + expires_s, json.dumps(labels or {})),
            )
        return lease_id

    def add_lease_resource(self, lease_id: str, kind: str, ref: str) -> None:
        """Protect ``ref`` (kind ``content`` or ``snapshot:<namespace>``) by the lease."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO lease_resources (lease_id, kind, ref) VALUES (?,?,?)", (lease_id, kind, ref)
            )

    def delete_lease(self, lease_id: str) -> None:
        """Release a lease (and its resources); nothing happens when it is already gone."""
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE id=?", (lease_id,))

    def leased_resources(self, now: float | None = None) -> set[tuple[str, str]]:
        """``(kind, ref)`` of every resource held by a lease that has not expired."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT r.kind, r.ref FROM lease_resources r JOIN leases l ON l.id = r.lease_id WHERE l.expires_at > ?",
                (now,),
            ).fetchall()
        return {(r["kind"], r["ref"]) for r in rows}

    def list_leases(self) -> list[dict[str, Any]]:
        """Every lease, oldest first: ``{id, namespace, created_at, expires_at, labels}``
        (times in seconds since the epoch, ``labels`` a dict)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM leases ORDER BY created_at").fetchall()
        return [dict(r) | {"labels": json.loads(r["labels"] or "{}")} for r in rows]

    def orphaned_leases(self) -> list[dict[str, Any]]:
        """The leases (as ``list_leases``) whose owner process no longer exists."""
        return [lease for lease in self.list_leases() if not owner_alive(str(lease["labels"].get(LABEL_OWNER, "")))]

    def delete_expired_leases(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        return cur.rowcount
