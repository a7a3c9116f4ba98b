"""A pull's lease lives as long as the pull: SIGKILLed pulls and unreachable registries leak nothing.

Regression tests of a fresh user's report: after the image service was SIGKILLed mid-pull
(and restarted), ``dockyard rmi`` said Deleted but the layer blob and its snapshot stayed
on disk, ``dockyard image gc`` removed nothing and the start-up GC kept the dead pull's
lease (24 h); a pull failing on an unreachable registry left its lease too.

A real docker-registry holds ``big:1`` (busybox and two 6 MiB layers of random bytes); a
logging proxy (``tests.registry.Proxy``) stalls one layer half way so that "mid-pull" is
deterministic. What is asserted is what a user sees on disk: the content store's blobs
and ingests, the snapshot service's snapshots, bytes under ``<root>/image/content`` and
``<root>/snapshot``, and the ``leases`` table of ``<root>/image/metadata.db``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import mkimage
from services.image import oci
from tests.conftest import need_root
from tests.harness import PROJECT, Instance
from tests.image_util import blobs, busybox_rootfs, call, ingests, random_layer, snapshots
from tests.registry import Proxy, Registry, free_port, skopeo_copy

pytestmark = pytest.mark.root

MB = 1024 * 1024


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, mkimage.Image]]:
    """A registry holding ``big:1``: busybox + two 6 MiB incompressible layers."""
    need_root()
    tmp = tmp_path_factory.mktemp("leases")
    registry = Registry(tmp / "reg").start()
    try:
        layers = [busybox_rootfs(), random_layer(6 * MB, "a.bin", 11), random_layer(6 * MB, "b.bin", 12)]
        img = mkimage.build_image("big:1", layers)
        path = tmp / "big.tar"
        mkimage.write_oci_layout([img], str(path))
        skopeo_copy(f"oci-archive:{path}", f"docker://{registry.host}/big:1")
        yield registry, img
    finally:
        registry.stop()


def _wait(pred: Any, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _leases(inst: Instance) -> list[dict[str, Any]]:
    """Rows of the image service's ``leases`` table (read-only, as a user with sqlite3 would)."""
    path = Path(inst.root) / "image" / "metadata.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM leases")]
    finally:
        db.close()


def _leased_kinds(inst: Instance) -> set[str]:
    path = Path(inst.root) / "image" / "metadata.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in db.execute("SELECT DISTINCT kind FROM lease_resources")}
    finally:
        db.close()


def _disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (``du``), not following symlinks."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _ingest_bytes(inst: Instance) -> int:
    base = Path(inst.root) / "image" / "content" / "ingest"
    return sum((base / d / "data").stat().st_size for d in ingests(inst) if (base / d / "data").exists())


def _chains(inst: Instance) -> set[str]:
    return {s["name"] for s in snapshots(inst) if s["name"].startswith("sha256:")}


def _content_usage(inst: Instance) -> int:
    return _disk_usage(Path(inst.root) / "image" / "content")


def _snapshot_usage(inst: Instance) -> int:
    return _disk_usage(Path(inst.root) / "snapshot")


def _pull_in_background(inst: Instance, ref: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "pull", ref],
        env=inst.env,
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_rmi_after_a_pull_killed_mid_download_and_retried_frees_blobs_and_snapshots(
    instance: Instance, reg: tuple[Registry, mkimage.Image]
) -> None:
    registry, img = reg
    small, stalled, finished = img.layer_digests
    with Proxy(registry.host) as proxy:
        proxy.stall_after[stalled] = 2 * MB
        instance.start("snapshot", "image")
        empty_snapshot_usage = _snapshot_usage(instance)
        ref = f"{proxy.host}/big:1"
        proc = _pull_in_background(instance, ref)
        try:
            _wait(lambda: {small, finished} <= blobs(instance), what="two layers committed")
            _wait(lambda: _ingest_bytes(instance) >= 2 * MB, what="part of the third layer")
            assert [json.loads(lease["labels"]) for lease in _leases(instance)] == [
                {"purpose": f"pull {proxy.host}/big:1", "dockyard.io/owner": _owner(instance)}
            ]
            instance.kill("image")  # SIGKILL mid-pull
        finally:
            proc.wait(timeout=30)
            del proxy.stall_after[stalled]
            proxy.release()
        assert proc.returncode != 0
        instance.start("image")
        _wait(lambda: _leases(instance) == [], what="the start-up GC to release the dead pull's lease")
        # the retried pull resumes: the finished layers are not downloaded again
        served = {d: proxy.blob_bytes(d) for d in img.layer_digests}
        instance.cli("pull", ref, check=True)
        assert proxy.blob_bytes(small) == served[small] and proxy.blob_bytes(finished) == served[finished]
        assert proxy.blob_bytes(stalled) == len(img.blobs[stalled])  # the rest of it, with a Range request
        assert _leases(instance) == []
        assert _chains(instance) == set(oci.chain_ids(img.diff_ids))
        assert _content_usage(instance) > 12 * MB and _snapshot_usage(instance) > 12 * MB

        out = instance.cli("rmi", ref, check=True).stdout.decode()
        assert f"Deleted: {img.config_digest}" in out
        assert blobs(instance) == set() and ingests(instance) == []
        assert _chains(instance) == set()
        assert _content_usage(instance) < 1 * MB
        # removed snapshot directories are deleted in the background
        _wait(lambda: _snapshot_usage(instance) < empty_snapshot_usage + 1 * MB, 10, "the snapshots' space")
        assert call(instance, "image.gc") == {
            "blobs_removed": 0,
            "bytes_removed": 0,
            "snapshots_removed": 0,
            "ingests_removed": 0,
            "leases_released": 0,
        }


def _owner(inst: Instance) -> str:
    """The owner label the image service of ``inst`` gives its leases: ``<pid>:<start ticks>``."""
    pid = inst.procs["image"].pid
    stat = Path(f"/proc/{pid}/stat").read_text()
    return f"{pid}:{stat[stat.rfind(')') + 2 :].split()[19]}"


def test_gc_after_a_pull_killed_mid_unpack_frees_its_blobs_and_snapshots(
    instance: Instance, reg: tuple[Registry, mkimage.Image]
) -> None:
    """The user's case: the service died while the layers were being unpacked, its lease
    holding the blobs and the chain-ID snapshots; after a restart ``image gc`` frees both."""
    registry, img = reg
    instance.start("snapshot", "image")
    empty_snapshot_usage = _snapshot_usage(instance)
    ref = f"{registry.host}/big:1"
    call(instance, "image.gc")  # the image service is connected to the snapshot service
    snapshot_pid = instance.procs["snapshot"].pid
    # hold the snapshot service until the pull has asked it to unpack, SIGKILL the image
    # service, let the snapshot service go on: it unpacks what it was asked to, and only the
    # dead pull's lease holds the snapshots and the blobs
    os.kill(snapshot_pid, signal.SIGSTOP)
    proc = _pull_in_background(instance, ref)
    try:
        _wait(lambda: img.manifest_digest in blobs(instance), what="every blob of the pull")
        _wait(lambda: any(k.startswith("snapshot:") for k in _leased_kinds(instance)), what="the unpack to start")
        time.sleep(0.3)  # the request on its way to the snapshot service
        instance.kill("image")  # SIGKILL mid-unpack
    finally:
        os.kill(snapshot_pid, signal.SIGCONT)
        proc.wait(timeout=30)
    assert proc.returncode != 0
    # the snapshot service finishes the unpack it was asked for: nothing names its result
    _wait(lambda: set(oci.chain_ids(img.diff_ids)) <= _chains(instance), what="the orphaned unpack")
    assert _snapshot_usage(instance) > 12 * MB
    instance.start("image")
    _wait(lambda: _leases(instance) == [], what="the start-up GC to release the dead pull's lease")
    assert call(instance, "image.list")["images"] == []

    out = instance.cli("image", "gc", check=True).stdout.decode()
    assert "removed 5 blobs" in out and "3 snapshots" in out  # config, manifest, three layers
    assert blobs(instance) == set() and ingests(instance) == [] and _chains(instance) == set()
    assert _content_usage(instance) < 1 * MB
    _wait(lambda: _snapshot_usage(instance) < empty_snapshot_usage + 1 * MB, 10, "the snapshots' space")


@pytest.mark.parametrize("host", ["unreachable", "no-such-host.invalid:5000"])
def test_pull_from_an_unreachable_registry_leaves_no_lease(instance: Instance, host: str) -> None:
    if host == "unreachable":
        host = f"127.0.0.1:{free_port()}"  # nothing listens: connection refused
    instance.start("image")
    proc = instance.cli("pull", f"{host}/nothing:1")
    assert proc.returncode != 0
    assert host.split(":")[0] in proc.stderr.decode()
    assert _leases(instance) == []
    assert blobs(instance) == set() and ingests(instance) == []
