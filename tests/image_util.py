"""Helpers for image service tests: build busybox images, look into the store, call the service."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from deploy import mkimage
from tests.harness import Instance


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def busybox_rootfs() -> bytes:
    """The busybox rootfs tar (cached: building it runs busybox --list)."""
    return mkimage.busybox_rootfs_tar()


def busybox_image(name: str = "busybox:latest", **kw: Any) -> mkimage.Image:
    return mkimage.build_image(name, [busybox_rootfs()], **kw)


def blobs(inst: Instance) -> set[str]:
    """Digests of every committed blob of the instance's content store."""
    d = Path(inst.root) / "image" / "content" / "blobs" / "sha256"
    return {"sha256:" + p.name for p in d.iterdir()} if d.is_dir() else set()


def ingests(inst: Instance) -> list[str]:
    d = Path(inst.root) / "image" / "content" / "ingest"
    return sorted(os.listdir(d)) if d.is_dir() else []


def call(inst: Instance, method: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
    with inst.client("image", timeout_s=kw.pop("timeout_s", 60)) as c:
        return c.call(method, body or {}, **kw)


def names(inst: Instance) -> list[str]:
    return sorted(i["name"] for i in call(inst, "image.list")["images"])


def snapshots(inst: Instance) -> list[dict[str, Any]]:
    with inst.client("snapshot", timeout_s=30) as c:
        return list(c.call("snapshot.list", {})["snapshots"])


def snapshot_dirs(inst: Instance) -> list[str]:
    """Directories under the snapshot service's root that hold layer data."""
    base = Path(inst.root) / "snapshot"
    found = []
    for sub in ("snapshots",):
        d = base / sub
        if d.is_dir():
            found += sorted(os.listdir(d))
    return found


def random_layer(size: int, name: str = "data.bin", seed: int = 0) -> bytes:
    """An uncompressed layer tar holding one file of ``size`` pseudo-random (incompressible) bytes."""
    import io
    import random
    import tarfile

    rnd = random.Random(seed)
    payload = rnd.randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 1704067200
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
