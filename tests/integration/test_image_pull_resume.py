"""Interrupted and concurrent pulls: resume with Range after SIGKILL, shared layer downloads.

(What a killed pull's lease leaves, and what gc/rmi free afterwards: ``test_pull_leases.py``.)

A logging proxy (``tests.registry.Proxy``) sits between the image service and a real
docker-registry, so the test sees exactly which bytes were fetched, and can stall one
blob half way to make "half way" deterministic.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import mkimage
from tests.conftest import need_root
from tests.harness import PROJECT, Instance
from tests.image_util import blobs, busybox_rootfs, call, ingests, random_layer
from tests.registry import Proxy, Registry, skopeo_copy

pytestmark = pytest.mark.root

MB = 1024 * 1024


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, mkimage.Image, mkimage.Image]]:
    """A registry with ``big:1`` (busybox + two 6 MiB layers) and ``big2:1`` sharing the 6 MiB layers."""
    need_root()
    tmp = tmp_path_factory.mktemp("resume")
    registry = Registry(tmp / "reg").start()
    try:
        layers = [busybox_rootfs(), random_layer(6 * MB, "a.bin", 1), random_layer(6 * MB, "b.bin", 2)]
        img = mkimage.build_image("big:1", layers)
        img2 = mkimage.build_image("big2:1", layers, config={"Labels": {"second": "yes"}})
        for image, repo in ((img, "big"), (img2, "big2")):
            path = tmp / f"{repo}.tar"
            mkimage.write_oci_layout([image], str(path))
            skopeo_copy(f"oci-archive:{path}", f"docker://{registry.host}/{repo}:1")
        yield registry, img, img2
    finally:
        registry.stop()


def _wait(pred: Any, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _ingest_bytes(inst: Instance) -> int:
    base = Path(inst.root) / "image" / "content" / "ingest"
    return sum((base / d / "data").stat().st_size for d in ingests(inst) if (base / d / "data").exists())


def test_pull_killed_half_way_resumes_without_downloading_finished_layers(
    instance: Instance, reg: tuple[Registry, mkimage.Image, mkimage.Image]
) -> None:
    registry, img, _ = reg
    small, stalled, finished = img.layer_digests
    with Proxy(registry.host) as proxy:
        proxy.stall_after[stalled] = 2 * MB
        instance.start("snapshot", "image")
        ref = f"{proxy.host}/big:1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "pull", ref],
            env=instance.env,
            cwd=PROJECT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: finished in blobs(instance) and small in blobs(instance), what="two layers committed")
            _wait(lambda: _ingest_bytes(instance) >= 2 * MB, what="half of the third layer")
            instance.kill("image")  # SIGKILL half way through the pull
        finally:
            proc.wait(timeout=30)
        assert proc.returncode != 0
        assert stalled not in blobs(instance)
        del proxy.stall_after[stalled]
        proxy.release()
        served_before = {d: proxy.blob_bytes(d) for d in img.layer_digests}
        instance.start("image")
        instance.cli("pull", ref, check=True)
        # finished layers were not downloaded again; the stalled one continued with a Range request
        for d in (small, finished):
            assert proxy.blob_bytes(d) == served_before[d]
        ranges = [r for m, p, r, _n in proxy.log if m == "GET" and p.endswith(stalled) and r]
        assert ranges and ranges[-1].startswith("bytes=") and int(ranges[-1][6:].rstrip("-")) >= 2 * MB
        layer_size = len(img.blobs[stalled])
        assert proxy.blob_bytes(stalled) == layer_size  # every byte exactly once
        assert call(instance, "image.resolve", {"ref": ref})["id"] == img.config_digest
        assert ingests(instance) == []


def test_concurrent_pulls_download_a_shared_layer_once(
    instance: Instance, reg: tuple[Registry, mkimage.Image, mkimage.Image]
) -> None:
    registry, img, img2 = reg
    with Proxy(registry.host) as proxy:
        proxy.rate_bps = 8 * MB  # slow enough for the two pulls to overlap
        instance.start("snapshot", "image")
        results: dict[str, Any] = {}

        def pull(repo: str) -> None:
            with instance.client("image", timeout_s=None) as c:
                frames = list(c.stream("image.pull", {"ref": f"{proxy.host}/{repo}:1"}))
            results[repo] = frames[-1]

        threads = [threading.Thread(target=pull, args=(repo,)) for repo in ("big", "big2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results["big"]["status"] == "done" and results["big2"]["status"] == "done"
        for digest in img.layer_digests:
            gets = [p for m, p, _r, _n in proxy.log if m == "GET" and p.endswith(digest)]
            assert len(gets) == 1, f"{digest} fetched {len(gets)} times"
        downloaded = results["big"]["result"]["downloaded"] + results["big2"]["result"]["downloaded"]
        assert downloaded == sum(len(img.blobs[d]) for d in img.layer_digests) + len(
            img.blobs[img.config_digest]
        ) + len(img2.blobs[img2.config_digest])


def test_gc_and_prune_during_a_pull_keep_what_the_pull_needs(
    instance: Instance, reg: tuple[Registry, mkimage.Image, mkimage.Image]
) -> None:
    registry, img, _ = reg
    small, stalled, finished = img.layer_digests
    with Proxy(registry.host) as proxy:
        proxy.stall_after[stalled] = 1 * MB
        instance.start("snapshot", "image")
        ref = f"{proxy.host}/big:1"
        result: dict[str, Any] = {}

        def pull() -> None:
            with instance.client("image", timeout_s=None) as c:
                result["frames"] = list(c.stream("image.pull", {"ref": ref}))

        t = threading.Thread(target=pull)
        t.start()
        try:
            _wait(lambda: finished in blobs(instance) and small in blobs(instance), what="two layers committed")
            _wait(lambda: _ingest_bytes(instance) >= 1 * MB, what="part of the third layer")
            gc = call(instance, "image.gc")
            assert gc["blobs_removed"] == 0 and gc["ingests_removed"] == 0
            instance.cli("image", "prune", "-a", "-f", check=True)
            assert {small, finished} <= blobs(instance)
            assert _ingest_bytes(instance) >= 1 * MB
        finally:
            del proxy.stall_after[stalled]
            proxy.release()  # the stalled connection is closed: the pull goes on with a Range request
            t.join(60)
        assert result["frames"][-1]["status"] == "done"
        for digest in img.layer_digests:
            assert proxy.blob_bytes(digest) == len(img.blobs[digest])  # nothing fetched twice
        # once the pull is over its lease is gone: the image record now holds everything
        assert call(instance, "image.gc")["blobs_removed"] == 0
        assert call(instance, "image.resolve", {"ref": ref})["id"] == img.config_digest


def test_after_a_killed_pull_gc_frees_finished_layers_and_prune_drops_the_partial_one(
    instance: Instance, reg: tuple[Registry, mkimage.Image, mkimage.Image]
) -> None:
    registry, img, _ = reg
    _small, stalled, finished = img.layer_digests
    with Proxy(registry.host) as proxy:
        proxy.stall_after[stalled] = 1 * MB
        instance.start("snapshot", "image")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "pull", f"{proxy.host}/big:1"],
            env=instance.env,
            cwd=PROJECT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: finished in blobs(instance) and _ingest_bytes(instance) >= 1 * MB, what="a half pull")
            instance.kill("image")
        finally:
            proc.wait(timeout=30)
            proxy.release()
        instance.start("image")
        # the dead pull's lease is released at start-up: a plain GC frees the layers that had
        # finished, and keeps the partial one (an ingest lives a day after its last write) ...
        gc = call(instance, "image.gc")
        assert finished not in blobs(instance) and gc["bytes_removed"] >= 6 * MB
        assert ingests(instance) and _ingest_bytes(instance) >= 1 * MB
        # ... an image prune drops it too
        instance.cli("image", "prune", "-f", check=True)
        assert blobs(instance) == set() and ingests(instance) == []
