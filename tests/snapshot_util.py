"""Helpers for snapshot tests: build layer tars with ``tarfile``, store them as blobs,
unpack and mount them through a running snapshot service, and describe a tree.

Layers are built with Python's ``tarfile`` (not our own writer), so the reader is
checked against an independent producer.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard

EPOCH = 1704067200
MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layer:
    """An uncompressed layer tar built entry by entry (PAX format, fixed mtimes)."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt)  # noqa: SIM115 - closed by raw()

    def _info(
        self,
        name: str,
        kind: bytes,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        mtime: float = EPOCH,
        xattrs: dict[str, str] | None = None,
    ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = mtime
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        return ti

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> Layer:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> Layer:
        data = data.encode() if isinstance(data, str) else data
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, **kw: Any) -> Layer:
        ti = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name: str, target: str, **kw: Any) -> Layer:
        ti = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def device(self, name: str, kind: bytes, major: int, minor: int, mode: int = 0o666, **kw: Any) -> Layer:
        ti = self._info(name, kind, mode, **kw)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)
        return self

    def fifo(self, name: str, mode: int = 0o644, **kw: Any) -> Layer:
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, **kw))
        return self

    def whiteout(self, path: str) -> Layer:
        d, b = os.path.split(path)
        return self.file(os.path.join(d, ".wh." + b), b"")

    def opaque(self, dirpath: str) -> Layer:
        return self.file(os.path.join(dirpath, ".wh..wh..opq"), b"")

    def raw(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def compress(raw: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        return gzip.compress(raw, mtime=0)
    if media_type.endswith("zstd"):
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def store_layer(
    directory: str, raw: bytes, media_type: str = MT_GZIP, *, diff_id: str | None = None, blob: bytes | None = None
) -> dict[str, Any]:
    """Write a layer blob under ``directory``; return its ``LayerToApply`` dict."""
    blob = compress(raw, media_type) if blob is None else blob
    digest = sha256(blob)
    path = os.path.join(directory, digest.split(":")[1])
    # as a content store does: never a partial blob at its final path (two threads storing the
    # same layer at once truncated it under the other's unpack: "is 0 bytes" in one CI run)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return {
        "digest": digest,
        "media_type": media_type,
        "size": len(blob),
        "diff_id": diff_id or sha256(raw),
        "path": path,
    }


@contextlib.contextmanager
def mounted(mounts: list[dict[str, Any]], target: str) -> Iterator[str]:
    """Mount a snapshot's mounts on ``target`` for the duration of the block."""
    from common import mount

    os.makedirs(target, exist_ok=True)
    mount.mount_all(mounts, target)
    try:
        yield target
    finally:
        mount.unmount(target)


def describe(root: str, *, content: bool = True, xattrs: bool = True) -> dict[str, tuple[Any, ...]]:
    """``{relative path: (type, mode, uid, gid, link target or content sha / rdev, xattrs)}``
    for every entry under ``root`` (not following symlinks); the root itself excluded."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                kind, extra = "symlink", os.readlink(path)
            elif stat.S_ISDIR(mode):
                kind, extra = "dir", None
            elif stat.S_ISREG(mode):
                kind = "file"
                if content:
                    with open(path, "rb") as f:
                        extra = hashlib.sha256(f.read()).hexdigest()[:16]
                else:
                    extra = st.st_size
            elif stat.S_ISCHR(mode):
                kind, extra = "char", (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif stat.S_ISBLK(mode):
                kind, extra = "block", (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif stat.S_ISFIFO(mode):
                kind, extra = "fifo", None
            else:
                kind, extra = "other", None
            xa: tuple[tuple[str, bytes], ...] = ()
            if xattrs:
                with contextlib.suppress(OSError):
                    xa = tuple(
                        sorted(
                            (k, os.getxattr(path, k, follow_symlinks=False))
                            for k in os.listxattr(path, follow_symlinks=False)
                            if not k.startswith("trusted.overlay.")
                        )
                    )
            out[rel] = (kind, stat.S_IMODE(mode) if kind != "symlink" else 0o777, st.st_uid, st.st_gid, extra, xa)
    return out


def listing(root: str) -> list[str]:
    """Sorted relative paths under ``root``."""
    return sorted(describe(root, content=False, xattrs=False))


def read(root: str, rel: str) -> str:
    with open(os.path.join(root, rel)) as f:
        return f.read()


def outside_snapshot(base: str) -> dict[str, tuple[int, int]]:
    """``{path: (mtime_ns, size)}`` of everything under ``base`` except the snapshot
    directories themselves (``snapshots/<id>``, and ``rm-<id>``/``new-<id>`` on their way
    out or in), the blobs and mount points of the test,
    and the metadata database (whose content legitimately changes; only its presence is
    recorded): hostile-layer tests show with it that nothing new exists outside."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        dirnames[:] = [
            d
            for d in dirnames
            if not (
                (os.path.basename(dirpath) == "snapshots" and (d.isdigit() or d.startswith(("rm-", "new-"))))
                or (rel == "." and d in ("blobs", "mnt"))
            )
        ]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            volatile = stat.S_ISDIR(st.st_mode) or name.startswith("metadata.db")
            found[p] = (0, 0) if volatile else (st.st_mtime_ns, st.st_size)
    return found


class Direct:
    """A ``SnapshotService`` driven in-process (no sockets), for conformance and layer tests.

    ``call("snapshot.prepare", {...})`` validates the body with the method's request model
    and returns the reply as plain data, raising Dockyard errors as the RPC client would.
    Data lives under ``base``; ``close()`` unmounts anything left under it.
    """

    def __init__(self, base: str, snapshotter: str = "overlayfs", namespace: str = "default") -> None:
        import asyncio
        import typing

        from services.snapshot import snapshotters
        from services.snapshot.service import SnapshotService
        from services.snapshot.store import Store

        self.base = base
        self.root = os.path.join(base, "snapshot")
        os.makedirs(self.root, exist_ok=True)
        self.blobs = os.path.join(base, "blobs")
        os.makedirs(self.blobs, exist_ok=True)
        self.namespace = namespace
        self.loop = asyncio.new_event_loop()
        from pathlib import Path

        self.service = SnapshotService(
            Store(Path(self.root) / "metadata.db"), snapshotters.make(snapshotter, Path(self.root))
        )
        self._typing = typing

    def call(self, method: str, body: dict[str, Any] | None = None, namespace: str | None = None) -> Any:
        from common.rpc.server import Context

        verb = method.split(".", 1)[1]
        fn = getattr(self.service, verb)
        hints = self._typing.get_type_hints(fn)
        first = next(iter(hints))
        model = hints[first]
        req = model(**(body or {})) if isinstance(model, type) and hasattr(model, "model_validate") else (body or {})
        ctx = Context("test", method, namespace or self.namespace, {}, None)
        reply = self.loop.run_until_complete(fn(req, ctx))
        return reply.model_dump(mode="python") if hasattr(reply, "model_dump") else reply

    def unpack(self, raws: list[bytes], media_type: str = MT_GZIP, **kw: Any) -> dict[str, Any]:
        layers = [store_layer(self.blobs, raw, media_type) for raw in raws]
        return self.call("snapshot.unpack", {"layers": layers, **kw})  # type: ignore[no-any-return]

    def mount_point(self, name: str) -> str:
        return os.path.join(self.base, "mnt", name)

    def snapshot_dirs(self) -> list[str]:
        """The snapshot directories left once background deletions are done."""
        self.loop.run_until_complete(self.service.drain())
        return sorted(os.listdir(os.path.join(self.root, "snapshots")))

    @contextlib.contextmanager
    def container(self, raws: list[bytes], key: str = "c", **kw: Any) -> Iterator[str]:
        """Unpack ``raws``, prepare ``key`` on the top chain ID and mount it."""
        chain = self.unpack(raws, **kw)["chain_id"]
        mounts = self.call("snapshot.prepare", {"key": key, "parent": chain})["mounts"]
        with mounted(mounts, self.mount_point(key)) as root:
            yield root

    def close(self) -> None:
        from tests.harness import mounts_under

        for point in mounts_under(self.base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        self.loop.run_until_complete(self.service.close())
        self.loop.close()


@pytest.fixture(params=["overlayfs", "native"])
def direct(request: pytest.FixtureRequest) -> Iterator[Direct]:
    """An in-process snapshot service on each snapshotter (root needed: mounts, owners)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts, owners, device nodes)")
    base = tempfile.mkdtemp(prefix="dy-snap-", dir="/tmp")
    d = Direct(base, request.param)
    try:
        yield d
    finally:
        d.close()
        from services.snapshot import fsutil

        fsutil.remove_tree(base)


class Outside:
    """Canary watch for hostile-layer tests: a host directory with a canary file (the
    target hostile links point at), plus everything under the instance's base outside
    the snapshot directories, plus the host's ``/etc/passwd`` and ``/etc/shadow``.
    ``check()`` asserts nothing was created, changed, linked or removed there."""

    WATCHED = ("/etc/passwd", "/etc/shadow", "/etc/hostname")

    def __init__(self, base: str, host_dir: str) -> None:
        self.base = base
        self.host_dir = host_dir
        os.makedirs(host_dir, exist_ok=True)
        self.canary = os.path.join(host_dir, "canary")
        with open(self.canary, "w") as f:
            f.write("canary\n")
        self.before = self._state()

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"base": outside_snapshot(self.base)}
        for path in (self.host_dir, *self.WATCHED):
            if os.path.isdir(path):
                for dirpath, dirnames, filenames in os.walk(path):
                    for name in dirnames + filenames:
                        p = os.path.join(dirpath, name)
                        st = os.lstat(p)
                        state[p] = (st.st_mode, st.st_uid, st.st_nlink, st.st_size, st.st_mtime_ns)
            elif os.path.exists(path):
                st = os.lstat(path)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[path] = (st.st_mode, st.st_uid, st.st_nlink, st.st_size, st.st_mtime_ns, digest)
        return state

    def check(self) -> None:
        after = self._state()
        assert after["base"] == self.before["base"], "something changed outside the snapshot directories"
        assert {k: v for k, v in after.items() if k != "base"} == {
            k: v for k, v in self.before.items() if k != "base"
        }, "a host file changed"
        with open(self.canary) as f:
            assert f.read() == "canary\n"
