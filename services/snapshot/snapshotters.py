"""Snapshot storage: where a snapshot's files live and how it is mounted.

Two implementations of one interface, chosen by ``Settings.snapshotter``:

- ``OverlaySnapshotter`` (containerd's overlayfs snapshotter, containerd-model.md §4):
  ``<root>/snapshots/<id>/fs`` holds one layer's changes, ``work`` the overlay work dir
  of an active snapshot. Mounts: no parent -> ``bind`` of ``fs`` (``rw,rbind`` or
  ``ro,rbind`` for a view); active with parents -> ``overlay`` with ``workdir``,
  ``upperdir`` and ``lowerdir`` (nearest parent first) and ``index=off``; a view with one
  parent -> read-only bind of the parent's ``fs``, with several -> a lowerdir-only overlay.
  Commit only changes metadata. Directories are named by numeric id so that option
  strings stay short; ``common.mount`` shortens them further for very deep chains.
- ``NativeSnapshotter`` (containerd's native snapshotter): each snapshot's ``fs`` is a
  full copy of its parent's tree (hard links, xattrs, devices, holes kept); mounts are
  always binds. For hosts without overlayfs.

Both store nothing but directories; metadata is the service's (``store.Store``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.api.snapshot import Kind, Mount
from services.snapshot import fsutil


@dataclass
class ApplyTarget:
    """Where the applier writes a layer: ``upper`` over ``lowers`` (nearest first);
    ``overlay`` selects the overlay whiteout format (else naive deletion)."""

    upper: str
    lowers: list[str]
    overlay: bool


class Snapshotter:
    """The storage half of a snapshotter (see module docstring)."""

    name = "base"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots_dir = root / "snapshots"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)

    def dir(self, snapshot_id: int) -> Path:
        return self.snapshots_dir / str(snapshot_id)

    def fs(self, snapshot_id: int) -> str:
        """The directory holding snapshot ``snapshot_id``'s files."""
        return str(self.snapshots_dir / str(snapshot_id) / "fs")

    def create(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> None:
        """Make the directories of a new active or view snapshot (must not exist yet)."""
        raise NotImplementedError

    def mounts(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> list[Mount]:
        """The mounts that show snapshot ``snapshot_id`` (active or view) as one tree."""
        raise NotImplementedError

    def apply_target(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        """Where a layer applied to active snapshot ``snapshot_id`` is written."""
        raise NotImplementedError

    def diff_source(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        """The directories whose difference is the snapshot's change set (for ``diff``)."""
        raise NotImplementedError

    def merged_source(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        """The directories that, merged, are the snapshot's whole tree (for ``export``)."""
        return self.apply_target(snapshot_id, parent_ids)

    def commit(self, snapshot_id: int) -> None:
        """Storage side of a commit (metadata-only for both; drops the work dir)."""
        fsutil.remove_tree(str(self.dir(snapshot_id) / "work"))

    def remove(self, snapshot_id: int) -> None:
        """Delete the snapshot's directory now (missing is fine)."""
        fsutil.remove_tree(str(self.dir(snapshot_id)))

    def detach(self, snapshot_id: int) -> str | None:
        """Move the snapshot's directory aside to ``rm-<id>`` (atomic, instant) and return
        the new path for ``purge``; None if there is no directory."""
        target = self.snapshots_dir / f"rm-{snapshot_id}"
        try:
            os.rename(self.dir(snapshot_id), target)
        except FileNotFoundError:
            return None
        return str(target)

    def trash(self) -> list[str]:
        """Directories left to delete: ``rm-<id>`` (detached) and ``new-<id>`` (half made)."""
        return [
            str(self.snapshots_dir / name)
            for name in sorted(os.listdir(self.snapshots_dir))
            if name.startswith(("rm-", "new-"))
        ]

    @staticmethod
    def purge(path: str) -> None:
        """Delete a detached directory (slow for big layers: run it in the background)."""
        fsutil.remove_tree(path)

    def usage(self, snapshot_id: int) -> fsutil.Usage:
        """Bytes and inodes of this snapshot alone (its ``fs`` dir)."""
        return fsutil.disk_usage(self.fs(snapshot_id))

    def content_size(self, snapshot_id: int) -> int:
        """Bytes of the non-directory entries of this snapshot alone (``fsutil.content_size``)."""
        return fsutil.content_size(self.fs(snapshot_id))

    def ids_on_disk(self) -> set[int]:
        """Ids of the snapshot directories present (anything else in ``snapshots/`` is ignored)."""
        found = set()
        for entry in os.scandir(self.snapshots_dir):
            if entry.name.isdigit():
                found.add(int(entry.name))
        return found


class OverlaySnapshotter(Snapshotter):
    """overlayfs layout and mount rules (containerd's ``overlayfs`` snapshotter)."""

    name = "overlayfs"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.index_off = os.path.exists("/sys/module/overlay/parameters/index")

    def create(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> None:
        base = self.dir(snapshot_id)
        tmp = self.snapshots_dir / f"new-{snapshot_id}"
        fsutil.remove_tree(str(tmp))
        tmp.mkdir(mode=0o700)
        (tmp / "fs").mkdir(mode=0o755)
        if kind is Kind.ACTIVE:
            (tmp / "work").mkdir(mode=0o700)
        os.rename(tmp, base)

    def mounts(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> list[Mount]:
        fs = self.fs(snapshot_id)
        if not parent_ids:
            return [Mount(type="bind", source=fs, options=["ro" if kind is Kind.VIEW else "rw", "rbind"])]
        lowers = ":".join(self.fs(p) for p in parent_ids)
        options = ["index=off"] if self.index_off else []
        if kind is Kind.ACTIVE:
            options += [f"workdir={self.dir(snapshot_id) / 'work'}", f"upperdir={fs}", f"lowerdir={lowers}"]
            return [Mount(type="overlay", source="overlay", options=options)]
        if len(parent_ids) == 1:
            return [Mount(type="bind", source=self.fs(parent_ids[0]), options=["ro", "rbind"])]
        return [Mount(type="overlay", source="overlay", options=[*options, "ro", f"lowerdir={lowers}"])]

    def apply_target(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        return ApplyTarget(self.fs(snapshot_id), [self.fs(p) for p in parent_ids], overlay=True)

    def diff_source(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        return ApplyTarget(self.fs(snapshot_id), [self.fs(p) for p in parent_ids], overlay=True)


class NativeSnapshotter(Snapshotter):
    """Copy-based snapshots (containerd's ``native`` snapshotter): always bind mounts."""

    name = "native"

    def create(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> None:
        base = self.dir(snapshot_id)
        tmp = self.snapshots_dir / f"new-{snapshot_id}"
        fsutil.remove_tree(str(tmp))
        tmp.mkdir(mode=0o700)
        (tmp / "fs").mkdir(mode=0o755)
        if parent_ids:
            fsutil.copy_tree(self.fs(parent_ids[0]), str(tmp / "fs"))
        os.rename(tmp, base)

    def mounts(self, snapshot_id: int, kind: Kind, parent_ids: list[int]) -> list[Mount]:
        return [Mount(type="bind", source=self.fs(snapshot_id), options=["ro" if kind is Kind.VIEW else "rw", "rbind"])]

    def apply_target(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        return ApplyTarget(self.fs(snapshot_id), [], overlay=False)

    def diff_source(self, snapshot_id: int, parent_ids: list[int]) -> ApplyTarget:
        return ApplyTarget(self.fs(snapshot_id), [self.fs(parent_ids[0])] if parent_ids else [], overlay=False)

    def usage(self, snapshot_id: int) -> fsutil.Usage:
        # a native snapshot holds its parents' files too; like containerd we report the whole copy
        return fsutil.disk_usage(self.fs(snapshot_id))


def make(kind: str, root: Path) -> Snapshotter:
    """The snapshotter named ``kind`` (``overlayfs`` or ``native``) storing under ``root``."""
    if kind in ("overlayfs", "overlay"):
        return OverlaySnapshotter(root)
    if kind == "native":
        return NativeSnapshotter(root)
    raise ValueError(f"unknown snapshotter {kind!r}: use overlayfs or native")
