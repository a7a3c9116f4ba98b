"""Named and anonymous volumes (Docker's ``local`` driver): directories the execution service keeps.

A volume is ``<data_dir>/volumes/<name>/_data`` plus a row in the execution store's
database (name, created_at, labels, anonymous). ``-v name:/path`` creates the volume on
first use; ``-v /path`` (and each path of Config.Volumes or of the image's Volumes that
no mount covers) makes an anonymous one (64-hex name, label ``com.docker.volume.anonymous``)
that ``rm -v`` and ``--rm`` remove with the container. A volume in use by a container
cannot be removed. New volumes are filled from the image at first start (copy-up, done by
the shim).

RPC methods (service ``execution``): ``execution.volume_create``
``VolumeCreateRequest`` -> ``Volume``; ``execution.volume_list`` ``{size?: bool}`` ->
``VolumeListReply`` (with ``size``, each volume's bytes, as ``docker system df``);
``execution.volume_inspect`` ``{name}`` -> ``Volume``; ``execution.volume_remove``
``VolumeRemoveRequest`` -> ``{}`` (Conflict while in use,
NotFound if unknown); ``execution.volume_prune`` ``VolumePruneRequest`` ->
``{removed: [name], space_reclaimed: bytes}`` (unused anonymous volumes, or every unused
one with ``all``, as Docker's API 1.42+ prune).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import codec, errors, ids
from common.api.execution import (
    Volume,
    VolumeCreateRequest,
    VolumeListReply,
    VolumePruneRequest,
    VolumeRemoveRequest,
)
from common.rpc.server import Context, rpc
from services.snapshot import fsutil

ANONYMOUS_LABEL = "com.docker.volume.anonymous"
"""The label moby (23+) gives the volumes it makes without a name; Dockyard gives it too."""

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    anonymous INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, name)
);
"""


class Volumes:
    """The volume table and directories; ``users(ns, name)`` lists the containers using a volume."""

    def __init__(self, db_path: Path, root: Path, users: Callable[[str, str], list[str]]) -> None:
        self.root = root
        self.users = users
        self._db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path(self, namespace: str, name: str) -> Path:
        """Host directory of a volume's data."""
        ns_dir = self.root if namespace == "default" else self.root / f"ns-{namespace}"
        return ns_dir / name / "_data"

    def _volume(self, row: sqlite3.Row) -> Volume:
        return Volume(
            name=row["name"],
            mountpoint=str(self.path(row["namespace"], row["name"])),
            created_at=dt.datetime.fromisoformat(row["created_at"]),
            labels=json.loads(row["labels"]),
            anonymous=bool(row["anonymous"]),
            in_use_by=self.users(row["namespace"], row["name"]),
        )

    def get(self, namespace: str, name: str) -> Volume | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM volumes WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        return self._volume(row) if row else None

    def ensure(self, namespace: str, name: str = "", labels: dict[str, str] | None = None) -> tuple[Volume, bool]:
        """Return ``(volume, created)``; ``name=""`` makes an anonymous volume."""
        anonymous = not name
        if anonymous:
            name = ids.new_id()
            labels = {ANONYMOUS_LABEL: "", **(labels or {})}
        elif not _NAME_RE.match(name):
            raise errors.InvalidArgument(
                f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (2 or more characters)"
            )
        existing = self.get(namespace, name)
        if existing is not None:
            return existing, False
        self.path(namespace, name).mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO volumes (namespace, name, created_at, labels, anonymous) VALUES (?, ?, ?, ?, ?)",
                (namespace, name, codec.utcnow().isoformat(), json.dumps(labels or {}), int(anonymous)),
            )
        vol = self.get(namespace, name)
        assert vol is not None
        return vol, True

    def list(self, namespace: str) -> list[Volume]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM volumes WHERE namespace = ? ORDER BY name", (namespace,)).fetchall()
        return [self._volume(r) for r in rows]

    def remove(self, namespace: str, name: str, force: bool = False) -> None:
        """Remove a volume and its data; Conflict while a container uses it, NotFound if unknown."""
        vol = self.get(namespace, name)
        if vol is None:
            raise errors.NotFound(f"volume '{name}' not found")
        if vol.in_use_by and not force:
            raise errors.Conflict(f"volume '{name}' is in use by container(s) {', '.join(vol.in_use_by)}")
        with self._lock:
            self._db.execute("DELETE FROM volumes WHERE namespace = ? AND name = ?", (namespace, name))
        shutil.rmtree(self.path(namespace, name).parent, ignore_errors=True)


class VolumeService:
    """The ``execution.volume_*`` RPC methods (see module docstring)."""

    def __init__(self, volumes: Volumes) -> None:
        self.volumes = volumes

    @rpc("execution.volume_create")
    async def volume_create(self, req: VolumeCreateRequest, ctx: Context) -> Volume:
        """Create a named (or, with no name, anonymous) volume; an existing one is returned as is."""
        vol, _ = await asyncio.to_thread(self.volumes.ensure, ctx.namespace, req.name, req.labels)
        return vol

    @rpc("execution.volume_list", quiet=True)
    async def volume_list(self, req: dict[str, Any] | None, ctx: Context) -> VolumeListReply:
        """Every volume of the namespace with the containers using it; with ``size: true``
        each one's ``size`` too (bytes of its files, moby's ``directory.Size``: a walk of every
        volume, so only ``system df`` asks for it)."""
        volumes = self.volumes.list(ctx.namespace)
        if (req or {}).get("size"):

            def measure() -> None:
                for vol in volumes:
                    vol.size = fsutil.content_size(vol.mountpoint)

            await asyncio.to_thread(measure)
        return VolumeListReply(volumes=volumes)

    @rpc("execution.volume_inspect", quiet=True)
    async def volume_inspect(self, req: dict[str, Any], ctx: Context) -> Volume:
        """One volume; NotFound ``volume 'x' not found``."""
        name = str((req or {}).get("name") or "")
        vol = self.volumes.get(ctx.namespace, name)
        if vol is None:
            raise errors.NotFound(f"volume '{name}' not found")
        return vol

    @rpc("execution.volume_remove")
    async def volume_remove(self, req: VolumeRemoveRequest, ctx: Context) -> dict[str, Any]:
        """Remove a volume (Conflict while in use)."""
        await asyncio.to_thread(self.volumes.remove, ctx.namespace, req.name, req.force)
        return {}

    @rpc("execution.volume_prune")
    async def volume_prune(self, req: VolumePruneRequest, ctx: Context) -> dict[str, Any]:
        """Remove the unused volumes ``req`` selects: anonymous ones (named ones too with
        ``all``) carrying every ``label`` and not every ``label_not`` (Docker's prune filters).
        A volume a container uses (running or not) stays."""
        removed = []
        reclaimed = 0
        for vol in self.volumes.list(ctx.namespace):
            if vol.in_use_by or not (req.all or vol.anonymous):
                continue
            if not _labels_match(req.label, vol.labels):
                continue
            if req.label_not and _labels_match(req.label_not, vol.labels):
                continue
            size = await asyncio.to_thread(fsutil.content_size, str(self.volumes.path(ctx.namespace, vol.name)))
            try:
                await asyncio.to_thread(self.volumes.remove, ctx.namespace, vol.name)
            except (errors.NotFound, errors.Conflict):  # removed, or taken into use, meanwhile
                continue
            removed.append(vol.name)
            reclaimed += size
        return {"removed": removed, "space_reclaimed": reclaimed}


def _labels_match(wanted: list[str], labels: dict[str, str]) -> bool:
    """Docker's MatchKVList: every ``key`` / ``key=value`` of ``wanted`` is in ``labels``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True
